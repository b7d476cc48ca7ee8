"""Xen build input: validated before any host is touched; identity by content."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from xenhil.harness.xen.build import XenBuildError, as_booted_on, load_build
from xenhil.harness.xen.provision import grub_entry
from xenhil.harness.lab.profile import HostProfile


def _dist(root: Path, xen: bytes = b"xen-image") -> Path:
    (root / "install/boot").mkdir(parents=True)
    (root / "install/boot/xen-4.19.gz").write_bytes(xen)
    (root / "install/usr/sbin").mkdir(parents=True)
    (root / "install/usr/sbin/xl").write_bytes(b"\x7fELF xl")
    return root


def test_dist_tree_identity_is_content_and_command_lines(tmp_path: Path) -> None:
    a = load_build(_dist(tmp_path / "a"))
    b = load_build(_dist(tmp_path / "b"))
    assert a.kind == "dist" and a.hypervisor == "boot/xen-4.19.gz"
    assert a.build_id == b.build_id                     # same bytes, same build
    c = load_build(_dist(tmp_path / "c", xen=b"other"))
    assert c.build_id != a.build_id
    d = load_build(tmp_path / "a", xen_cmdline="console=com1 loglvl=all")
    assert d.build_id != a.build_id


@pytest.mark.parametrize("remove,message", [
    ("install/boot/xen-4.19.gz", "no hypervisor: expected boot/xen-\\*.gz"),
    ("install/usr/sbin/xl", "no tools: expected usr/sbin/xl"),
])
def test_incomplete_dist_tree_names_what_is_missing(tmp_path: Path, remove, message) -> None:
    tree = _dist(tmp_path / "t")
    (tree / remove).unlink()
    with pytest.raises(XenBuildError, match=message) as err:
        load_build(tree)
    assert "[test-bug]" in str(err.value) and "how to fix" in str(err.value)


def test_tarball_of_dist_tree(tmp_path: Path) -> None:
    tree = _dist(tmp_path / "t")
    tarball = tmp_path / "xen.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree / "install", arcname=".")
    build = load_build(tarball)
    assert build.kind == "tarball" and build.hypervisor.endswith("boot/xen-4.19.gz")


def test_tarball_with_unsafe_paths_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "p"
    payload.write_text("x")
    with tarfile.open(evil, "w") as tar:
        tar.add(payload, arcname="../../etc/passwd")
    with pytest.raises(XenBuildError, match="unsafe member path"):
        load_build(evil)


def test_not_a_tarball(tmp_path: Path) -> None:
    bad = tmp_path / "xen.tar.gz"
    bad.write_text("not a tarball")
    with pytest.raises(XenBuildError, match="not a readable tarball"):
        load_build(bad)


def test_debs_need_hypervisor_and_tools(tmp_path: Path) -> None:
    (tmp_path / "xen-utils-common_4.17_all.deb").write_bytes(b"!<arch>\nx")
    with pytest.raises(XenBuildError, match="no xen-hypervisor"):
        load_build(tmp_path)
    (tmp_path / "xen-hypervisor-4.17-amd64_4.17_amd64.deb").write_bytes(b"!<arch>\nh")
    with pytest.raises(XenBuildError, match="no xen-utils-<version>"):
        load_build(tmp_path)
    (tmp_path / "xen-utils-4.17_4.17_amd64.deb").write_bytes(b"!<arch>\nu")
    assert load_build(tmp_path).kind == "debs"
    (tmp_path / "broken.deb").write_text("text")
    with pytest.raises(XenBuildError, match="not a Debian package"):
        load_build(tmp_path)


def test_missing_path_and_default(tmp_path: Path) -> None:
    with pytest.raises(XenBuildError, match="no such file"):
        load_build(tmp_path / "nope")
    assert load_build(None).kind == "debian-default"


@pytest.mark.parametrize("cmdline", ["loglvl=all; reboot", "a\nb", "x=$(id)", "q='x'"])
def test_command_lines_that_grub_would_misparse_are_refused(cmdline) -> None:
    with pytest.raises(XenBuildError, match="GRUB parses them"):
        load_build(None, xen_cmdline=cmdline)


def test_grub_entry_boots_the_build_once_with_its_command_lines() -> None:
    build = load_build(None, xen_cmdline="console=com1 loglvl=all", dom0_cmdline="ro console=hvc0")
    text = grub_entry(build, "/boot", "/boot/vmlinuz-6.1.0-28-amd64",
                      "/boot/initrd.img-6.1.0-28-amd64", "/dev/vda1")
    assert f"menuentry 'xenhil-{build.build_id}' --id 'xenhil-{build.build_id}' {{" in text
    assert f"multiboot2 /boot/xenhil/{build.build_id}/xen.gz placeholder console=com1 loglvl=all" in text
    assert (f"module2 /boot/vmlinuz-6.1.0-28-amd64 placeholder root=/dev/vda1 ro console=hvc0 "
            f"xenhil_build={build.build_id}") in text
    assert "module2 --nounzip /boot/initrd.img-6.1.0-28-amd64" in text
    # /boot on its own partition: GRUB paths lose the /boot prefix
    separate = grub_entry(build, "", "/boot/vmlinuz-x", "/boot/initrd.img-x", "UUID=1")
    assert f"multiboot2 /xenhil/{build.build_id}/xen.gz" in separate
    assert "module2 /vmlinuz-x placeholder" in separate


def test_an_emulated_host_boots_the_build_with_eager_fpu_switching_and_credit1() -> None:
    # Lazy FPU switching loses vector state under the virtual lab's TCG, and
    # credit2 stranded dom0 there (harness.lab.virtual.quirks): the build it
    # boots says so in its command line, and is a build of its own.
    build = load_build(None)
    booted = as_booted_on(build, HostProfile.of({"emulated": True, "hvm": True}))
    assert booted.xen_cmdline.split() == build.xen_cmdline.split() + ["spec-ctrl=eager-fpu",
                                                                      "sched=credit"]
    assert booted.build_id != build.build_id
    assert booted.dom0_cmdline == build.dom0_cmdline and booted.files == build.files
    assert as_booted_on(booted, HostProfile.of({"emulated": True})).build_id == booted.build_id  # never twice


def test_real_hardware_boots_the_build_as_given() -> None:
    build = load_build(None, xen_cmdline="console=com1 dom0_mem=2048M")
    assert as_booted_on(build, HostProfile.of({"hvm": True})) is build
    assert as_booted_on(build, HostProfile.of({"emulated": False})) is build


def test_the_virtual_hosts_own_entry_switches_fpu_state_eagerly() -> None:
    from xenhil.harness.lab.virtual import builder
    template = builder.recipe_dir() / "dom0" / "grub.cfg.in"
    rendered = builder.render_grub_cfg(template.read_text(), "6.1.0-50-amd64", "xen-4.17-amd64.gz")
    assert "multiboot2 /boot/xen-4.17-amd64.gz" in rendered
    xen_line = next(line for line in rendered.splitlines() if "multiboot2 /boot/xen" in line)
    assert "spec-ctrl=eager-fpu" in xen_line.split() and "sched=credit" in xen_line.split()
