"""Provisioning's install and verify steps on a host reached over a real SSH
server (tests/support/sshd.py), with a folder standing for the host's / (the
``root`` argument).  The folder has a Debian 12 dom0's layout where it
matters: merged /usr (/lib -> usr/lib), Debian's xen-utils-wrapper behind
/usr/sbin/xl, and dpkg's database naming what xen-hypervisor-4.17-amd64
installed.  The commands are the real ones (dpkg-query, tar, cp, ldconfig,
sha256sum) run by sshd's shell; only `xl info` and the booted command line,
which need a booted Xen, are stand-ins, named as such."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from xenhil.harness.errors import XenhilError
from xenhil.harness.host import Host
from xenhil.harness.lab.model import HostSpec, PowerConfig
from xenhil.harness.xen import provision as prov
from xenhil.harness.xen.build import load_build
from xenhil.harness.xen.parsers.xl_info import parse_xl_info
from tests.support.console_server import console_server_factory, scripted  # noqa: F401
from tests.support.sshd import sshd_factory, sshd_server  # noqa: F401

DEBIAN_XEN = b"Debian's xen-hypervisor-4.17-amd64 image"
UPSTREAM_XEN = b"an upstream make dist hypervisor, patched"
WRAPPER = (b"#!/bin/sh\n# Debian's /usr/lib/xen-common/bin/xen-utils-wrapper: runs the tools\n"
           b"# of the running Xen from /usr/lib/xen-<version>/bin\nexec /usr/lib/xen-4.17/bin/xl \"$@\"\n")
DEBIAN_XL = b"\x7fELF Debian's xl 4.17"
RECORDED_XL_INFO = Path(__file__).parent / "data/recorded/xl_info_417_emulated.txt"

STATUS = """\
Package: xen-hypervisor-4.16-amd64
Status: deinstall ok config-files
Priority: optional
Section: kernel
Maintainer: Debian Xen Team <pkg-xen-devel@lists.alioth.debian.org>
Architecture: amd64
Source: xen
Version: 4.16.2+90-g0d39a6d1ae-1
Description: Xen Hypervisor on AMD64

Package: xen-hypervisor-4.17-amd64
Status: install ok installed
Priority: optional
Section: kernel
Installed-Size: 2731
Maintainer: Debian Xen Team <pkg-xen-devel@lists.alioth.debian.org>
Architecture: amd64
Source: xen
Version: 4.17.5+23-ga4e5191dc0-1
Provides: xen-hypervisor, xen-hypervisor-4.17
Depends: xen-hypervisor-common
Description: Xen Hypervisor on AMD64

"""
HYPERVISOR_FILES = ["/.", "/boot", "/boot/xen-4.17-amd64.config", "/boot/xen-4.17-amd64.gz",
                    "/usr", "/usr/share", "/usr/share/doc",
                    "/usr/share/doc/xen-hypervisor-4.17-amd64"]


def debian_dom0(root: Path, hypervisor_package: bool = True) -> Path:
    """The parts of a Debian 12 dom0 with Xen 4.17 that installing touches."""
    for folder in ("boot", "etc", "usr/lib/xen-common/bin", "usr/lib/xen-4.17/bin", "usr/sbin",
                   "usr/bin", "var/lib/dpkg/info"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    # A mode the tree's staging folder (0755) does not have: unpacking the
    # tree must leave the modes of folders that exist alone.
    os.chmod(root, 0o700)
    for merged in ("lib", "bin", "sbin"):          # merged /usr
        (root / merged).symlink_to(f"usr/{merged}")
    (root / "usr/lib/xen-common/bin/xen-utils-wrapper").write_bytes(WRAPPER)
    os.chmod(root / "usr/lib/xen-common/bin/xen-utils-wrapper", 0o755)
    (root / "usr/sbin/xl").symlink_to("../lib/xen-common/bin/xen-utils-wrapper")  # as dh_link makes it
    (root / "usr/lib/xen-4.17/bin/xl").write_bytes(DEBIAN_XL)
    (root / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    if hypervisor_package:
        (root / "boot/xen-4.17-amd64.gz").write_bytes(DEBIAN_XEN)
        (root / "boot/xen-4.17-amd64.config").write_text("CONFIG_X86_64=y\n")
        (root / "var/lib/dpkg/status").write_text(STATUS)
        (root / "var/lib/dpkg/info/xen-hypervisor-4.17-amd64.list").write_text(
            "\n".join(HYPERVISOR_FILES) + "\n")
    else:
        (root / "var/lib/dpkg/status").write_text(STATUS.split("\n\n")[0] + "\n\n")
    return root


def upstream_dist(tree: Path, lib: bool = False) -> Path:
    """An upstream `make dist` tree of tools built with --prefix=/usr: its xl
    lands where Debian's /usr/sbin/xl symlink is; its hypervisor is
    boot/xen-4.17.3.gz, newer by name than Debian's xen-4.17-amd64.gz.
    ``lib``: also files under lib/ (systemd units of a tree built with an
    empty prefix)."""
    install = tree / "install"
    (install / "boot").mkdir(parents=True)
    (install / "boot/xen-4.17.3.gz").write_bytes(UPSTREAM_XEN)
    for alias in ("xen-4.17.gz", "xen-4.gz", "xen.gz"):
        (install / "boot" / alias).symlink_to("xen-4.17.3.gz")
    (install / "usr/sbin").mkdir(parents=True)
    (install / "usr/sbin/xl").write_bytes(b"\x7fELF upstream xl 4.17.3")
    (install / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (install / "usr/lib/x86_64-linux-gnu/libxenlight.so.4.17.0").write_bytes(b"\x7fELF lib")
    if lib:
        (install / "lib/systemd/system").mkdir(parents=True)
        (install / "lib/systemd/system/xenstored.service").write_text("[Unit]\nDescription=xenstored\n")
    return tree


def xenhil_build_tree(tree: Path, elf_build_id: str, xl: bytes = b"\x7fELF patched xl") -> Path:
    """A tree as `xenhil build` assembles it (harness.build.engine): the
    hypervisor as boot/xen.gz, the tools in Debian's layout, the manifest."""
    import hashlib
    install = tree / "install"
    (install / "boot").mkdir(parents=True)
    (install / "boot/xen.gz").write_bytes(UPSTREAM_XEN)
    (install / "usr/lib/xen-4.17/bin").mkdir(parents=True)
    (install / "usr/lib/xen-4.17/bin/xl").write_bytes(xl)
    os.chmod(install / "usr/lib/xen-4.17/bin/xl", 0o755)
    manifest = {
        "xenhil_build": "0123456789abcdef0123", "format": 1, "recipe_version": 1,
        "compiler": "gcc (Debian 12.2.0-14+deb12u1) 12.2.0",
        "components": {"xen": {"name": "xen", "key": "k1", "elf_build_id": elf_build_id},
                       "tools": {"name": "tools", "key": "k2",
                                 "xl_sha256": hashlib.sha256(xl).hexdigest()}},
        "packaged": ["qemu"],
        "sources": {"xen": {"package": "xen", "version": "4.17.5+23-ga4e5191dc0-1"}},
        "patches": {"xen": [{"name": "0001-x.patch", "files": ["tools/xl/xl.c"]}], "qemu": []},
    }
    (install / "var/lib/xenhil").mkdir(parents=True)
    (install / "var/lib/xenhil/build-manifest.json").write_text(json.dumps(manifest))
    return tree


@pytest.fixture
def dom0(sshd_server, tmp_path):
    spec = HostSpec(name="dom0", address=sshd_server.address, ssh=sshd_server.ssh_config(),
                    serial=None, power=PowerConfig(kind="none"))
    host = Host(spec, tmp_path / "artifacts")
    yield host
    host.close()


@pytest.fixture
def root(tmp_path) -> Path:
    return debian_dom0(tmp_path / "root")


def _newest_by_name(root: Path) -> str:
    """What the old lookup picked: /boot's newest xen-*.gz by `sort -V`."""
    names = subprocess.run(f"ls {root}/boot/xen-*.gz | sort -V | tail -n 1", shell=True,
                           capture_output=True, text=True, check=True).stdout.strip()
    return Path(names).name


def test_installing_a_tree_replaces_debians_xl_symlink_and_keeps_its_wrapper(dom0, root, tmp_path):
    build = load_build(upstream_dist(tmp_path / "dist"))
    hypervisor = prov.install(dom0, build, root=str(root))

    assert (root / "usr/lib/xen-common/bin/xen-utils-wrapper").read_bytes() == WRAPPER
    xl = root / "usr/sbin/xl"
    assert not xl.is_symlink() and xl.read_bytes() == b"\x7fELF upstream xl 4.17.3"
    # folders that exist keep their mode (the tree's staging folder's is 0755)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert Path(hypervisor) == root / f"boot/xenhil/{build.build_id}/xen.gz"
    assert Path(hypervisor).read_bytes() == UPSTREAM_XEN
    assert (root / "etc/ld.so.cache").is_file()            # ldconfig ran on that root

    # Again, as a second provisioning does: nothing changed, the same result.
    prov.install(dom0, build, root=str(root))
    assert (root / "usr/lib/xen-common/bin/xen-utils-wrapper").read_bytes() == WRAPPER
    assert not list((root / "var/lib/xenhil/builds").glob("*.tar"))   # the install's tar is gone


def test_a_trees_lib_folder_goes_through_merged_usrs_lib_symlink(dom0, root, tmp_path):
    # A symlink to a folder is followed, not replaced (`cp -a` and
    # `cp --remove-destination` refuse to copy a folder over it; tar without
    # --keep-directory-symlink replaces it with a folder: /lib gone).
    build = load_build(upstream_dist(tmp_path / "dist", lib=True))
    prov.install(dom0, build, root=str(root))
    assert (root / "lib").is_symlink() and os.readlink(root / "lib") == "usr/lib"
    assert (root / "usr/lib/systemd/system/xenstored.service").is_file()
    assert (root / "usr/lib/xen-common/bin/xen-utils-wrapper").read_bytes() == WRAPPER


def test_installing_a_tarball_neither_writes_through_nor_replaces_folder_symlinks(dom0, root, tmp_path):
    # `tar -C dist/install -czf xen.tar.gz .`, made by a user (uid 1000): it
    # has folder members, ./lib/ among them.
    tree = upstream_dist(tmp_path / "dist", lib=True) / "install"
    tarball = tmp_path / "xen.tar.gz"

    def by_user(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 1000
        info.uname = info.gname = "builder"
        return info
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname=".", filter=by_user)
    build = load_build(tarball)
    prov.install(dom0, build, root=str(root))

    assert (root / "usr/lib/xen-common/bin/xen-utils-wrapper").read_bytes() == WRAPPER
    assert (root / "usr/sbin/xl").read_bytes() == b"\x7fELF upstream xl 4.17.3"
    assert (root / "lib").is_symlink(), "the tarball's ./lib/ replaced merged /usr's /lib symlink"
    assert (root / "usr/lib/systemd/system/xenstored.service").is_file()
    assert (root / "usr/sbin/xl").stat().st_uid == 0, "installed files are root's"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert (root / f"boot/xenhil/{build.build_id}/xen.gz").read_bytes() == UPSTREAM_XEN


def test_back_to_debian_boots_the_packaged_hypervisor_not_the_newest_in_boot(dom0, root, tmp_path):
    prov.install(dom0, load_build(upstream_dist(tmp_path / "dist")), root=str(root))
    assert _newest_by_name(root) == "xen-4.17.3.gz"   # the tree's, by name the newest

    assert prov.debian_hypervisor(dom0, str(root)) == "/boot/xen-4.17-amd64.gz"
    debian = load_build(None)
    hypervisor = prov.install(dom0, debian, root=str(root))
    assert Path(hypervisor) == root / f"boot/xenhil/{debian.build_id}/xen.gz"
    assert Path(hypervisor).read_bytes() == DEBIAN_XEN


def _tarball_of(tree: Path, tarball: Path) -> Path:
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname=".")
    return tarball


def test_back_to_debian_after_two_builds_puts_debians_tools_back(dom0, root, tmp_path):
    # A `make dist` tree (replaces /usr/sbin/xl's symlink, adds libxenlight),
    # then a `xenhil build` tarball over it (replaces the Debian xl under
    # /usr/lib/xen-4.17/bin): back to Debian, every file is Debian's again.
    prov.install(dom0, load_build(upstream_dist(tmp_path / "dist", lib=True)), root=str(root))
    tree = xenhil_build_tree(tmp_path / "built", elf_build_id=BUILT_ID) / "install"
    prov.install(dom0, load_build(_tarball_of(tree, tmp_path / "built.tar.gz")), root=str(root))
    assert (root / "usr/lib/xen-4.17/bin/xl").read_bytes() == b"\x7fELF patched xl"
    assert not (root / "usr/sbin/xl").is_symlink()

    prov.install(dom0, load_build(None), root=str(root))
    assert (root / "usr/lib/xen-4.17/bin/xl").read_bytes() == DEBIAN_XL
    assert (root / "usr/sbin/xl").is_symlink()
    assert os.readlink(root / "usr/sbin/xl") == "../lib/xen-common/bin/xen-utils-wrapper"
    assert (root / "usr/sbin/xl").read_bytes() == WRAPPER
    for added in ("usr/lib/x86_64-linux-gnu/libxenlight.so.4.17.0", "boot/xen-4.17.3.gz",
                  "usr/lib/systemd/system/xenstored.service", "var/lib/xenhil/build-manifest.json"):
        assert not (root / added).exists(), f"/{added} came with a build and stays after it"
    assert (root / "lib").is_symlink(), "merged /usr's /lib is still a symlink"
    assert (root / "boot/xen-4.17-amd64.gz").read_bytes() == DEBIAN_XEN

    # A build again, and back again: the kept files are still Debian's.
    prov.install(dom0, load_build(_tarball_of(tree, tmp_path / "again.tar.gz")), root=str(root))
    prov.install(dom0, load_build(None), root=str(root))
    assert (root / "usr/lib/xen-4.17/bin/xl").read_bytes() == DEBIAN_XL


def test_back_to_debian_on_a_host_never_given_a_build_changes_nothing(dom0, root):
    def files() -> dict[str, bytes]:
        # xenhil's own folders and the linker cache (ldconfig) aside.
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and "xenhil" not in str(p) and p.name != "ld.so.cache"}
    before = files()
    prov.install(dom0, load_build(None), root=str(root))
    assert files() == before


def test_a_host_without_debians_hypervisor_package_is_refused_with_the_fix(dom0, tmp_path):
    root = debian_dom0(tmp_path / "root", hypervisor_package=False)
    (root / "boot/xen-4.17.3.gz").write_bytes(UPSTREAM_XEN)   # a tree's, not Debian's
    with pytest.raises(prov.ProvisionFailed, match=r"no Debian hypervisor package installed") as err:
        prov.install(dom0, load_build(None), root=str(root))
    assert err.value.help == "install xen-hypervisor-4.17-amd64 on the host or pass --xen-build"
    assert not (root / "boot/xenhil").exists() or not any((root / "boot/xenhil").rglob("xen.gz"))


def test_a_packaged_hypervisor_that_is_gone_is_named(dom0, root):
    (root / "boot/xen-4.17-amd64.gz").unlink()
    with pytest.raises(prov.ProvisionFailed,
                       match=r"/boot/xen-4.17-amd64.gz, installed by xen-hypervisor-4.17-amd64, "
                             r"is missing") as err:
        prov.debian_hypervisor(dom0, str(root))
    assert err.value.help == "reinstall xen-hypervisor-4.17-amd64 on the host"


# --- verify() against a `xenhil build`'s manifest ------------------------------------

class ToolstackStandInReplayingRecordedXlInfo:
    """Stands for `xl info` on a booted Xen (no Xen here): the virtual lab's
    recorded answer, with the build id the stand-in is given."""

    def __init__(self, build_id: str):
        self.build_id = build_id

    def __call__(self, ssh, host_name):
        return self

    def info(self):
        text = RECORDED_XL_INFO.read_text()
        recorded = parse_xl_info(text).fields["build_id"]
        return parse_xl_info(text.replace(recorded, self.build_id))


RECORDED_BUILD_ID = parse_xl_info(RECORDED_XL_INFO.read_text()).fields["build_id"]
BUILT_ID = "5f0e1d2c3b4a69788796a5b4c3d2e1f00f1e2d3c"


@pytest.fixture
def booted(monkeypatch):
    """verify() as on a host that booted the build's GRUB entry (a stand-in for
    /proc/cmdline's xenhil_build=, which only a boot of it writes) and whose
    `xl info` names ``build_id``."""
    def boot(build, build_id):
        monkeypatch.setattr(prov, "running_build", lambda host: build.build_id)
        monkeypatch.setattr(prov, "Toolstack", ToolstackStandInReplayingRecordedXlInfo(build_id))
    return boot


def test_verify_passes_when_xen_and_xl_are_the_manifests(dom0, root, tmp_path, booted):
    build = load_build(xenhil_build_tree(tmp_path / "dist", elf_build_id=BUILT_ID))
    assert build.elf_build_id == BUILT_ID and build.xl_path == "/usr/lib/xen-4.17/bin/xl"
    prov.install(dom0, build, root=str(root))
    # Installed executable, as built (SFTP alone would leave it 0644).
    assert stat.S_IMODE((root / "usr/lib/xen-4.17/bin/xl").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "var/lib/xenhil/build-manifest.json").stat().st_mode) == 0o644
    booted(build, BUILT_ID)
    facts = prov.verify(dom0, build, root=str(root))
    assert facts["build_id"] == build.build_id


def test_verify_fails_as_infrastructure_when_xen_is_not_the_built_one(dom0, root, tmp_path, booted):
    # The host booted its Debian Xen (the recorded build id), not the build's.
    build = load_build(xenhil_build_tree(tmp_path / "dist", elf_build_id=BUILT_ID))
    prov.install(dom0, build, root=str(root))
    booted(build, RECORDED_BUILD_ID)
    with pytest.raises(prov.ProvisionFailed) as err:
        prov.verify(dom0, build, root=str(root))
    assert err.value.failure_class == "infrastructure"
    assert (f"xl info build_id {RECORDED_BUILD_ID}, expected {BUILT_ID} "
            "(the manifest's xen-syms build id)") in str(err.value)


def test_verify_fails_when_the_installed_xl_is_not_the_built_one(dom0, root, tmp_path, booted):
    import hashlib
    build = load_build(xenhil_build_tree(tmp_path / "dist", elf_build_id=BUILT_ID))
    prov.install(dom0, build, root=str(root))
    # Debian's xen-utils-4.17 reinstalled after provisioning: its xl is back.
    (root / "usr/lib/xen-4.17/bin/xl").write_bytes(DEBIAN_XL)
    booted(build, BUILT_ID)
    with pytest.raises(prov.ProvisionFailed) as err:
        prov.verify(dom0, build, root=str(root))
    assert (f"/usr/lib/xen-4.17/bin/xl sha256 {hashlib.sha256(DEBIAN_XL).hexdigest()}, "
            f"expected {build.xl_sha256} (the manifest's xl_sha256)") in str(err.value)
    (root / "usr/lib/xen-4.17/bin/xl").unlink()
    with pytest.raises(prov.ProvisionFailed, match=r"xl sha256 none \(missing\), expected"):
        prov.verify(dom0, build, root=str(root))


def test_a_hypervisor_only_build_checks_no_xl(tmp_path):
    tree = xenhil_build_tree(tmp_path / "dist", elf_build_id=BUILT_ID)
    manifest_path = tree / "install/var/lib/xenhil/build-manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["components"]["tools"]
    manifest["packaged"] = ["tools", "qemu"]
    manifest_path.write_text(json.dumps(manifest))
    (tree / "install/usr/lib/xen-4.17/bin/xl").unlink()
    build = load_build(tree)
    assert build.elf_build_id == BUILT_ID and build.xl_sha256 == "" and build.xl_path == ""
    assert load_build(None).elf_build_id == ""   # nothing to check for other builds


# --- a boot the console never showed -----------------------------------------------

def test_a_silent_console_during_the_reboot_is_named_when_verify_fails(
        dom0, root, tmp_path, booted, console_server_factory):
    """The serial line held by another client (CI's real-Xen layer): our
    link connects and reads nothing, no banner comes, the host is power-cycled
    and boots GRUB's default entry; verify() then says why."""
    from xenhil.harness.access.console import Console
    held = console_server_factory(scripted(b"(XEN) Xen version 4.17.5 (Debian)\r\n", hold=30),
                                  one_at_a_time=True)
    first = Console.tcp("h", "127.0.0.1", held.port, tmp_path / "first.log")
    ours = Console.tcp("h", "127.0.0.1", held.port, tmp_path / "ours.log")
    first.reconnect(timeout=5)
    ours.reconnect(timeout=5)
    try:
        first.expect("Xen version", timeout=5)
        mark = ours.mark("provision reboot")
        with pytest.raises(XenhilError):
            prov._follow_to_banner(ours, 1.5)
        reason = prov._no_banner_reason(ours, mark, 1.5)
        assert reason == ("no Xen banner on the console within 2s of the reboot (0 bytes "
                          "received; none at all: another client may hold the serial line)")
        first.close()                                # the other client hangs up: our turn
        ours.expect("Xen version", timeout=5)
        assert prov._no_banner_reason(ours, mark, 1.5).startswith(
            "no Xen banner on the console within 2s of the reboot (35 bytes received)")
    finally:
        first.close()
        ours.close()

    build = load_build(xenhil_build_tree(tmp_path / "dist", elf_build_id=BUILT_ID))
    prov.install(dom0, build, root=str(root))
    booted(build, RECORDED_BUILD_ID)
    dom0.facts["provision_power_cycle"] = reason
    with pytest.raises(prov.ProvisionFailed) as err:
        prov.verify(dom0, build, root=str(root))
    assert (f"the host was power-cycled after the reboot ({reason}), which boots GRUB's "
            "default entry") in str(err.value)
