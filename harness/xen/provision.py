"""Put a Xen build on a host and boot it, the way a lab engineer would.

1. Skip everything when the host already runs this build (its dom0 command
   line carries ``xenhil_build=<id>``): the first test starts at once.
2. Copy only what changed (SFTP, verified by checksum) into
   ``/boot/xenhil/<id>/`` (hypervisor) and install the tools (.debs with
   dpkg, a dist tree unpacked over / with tar: a symlink where a file goes,
   like Debian's /usr/sbin/xl -> xen-utils-wrapper, is replaced, never
   written through).  The Debian build's hypervisor is the one its
   xen-hypervisor package installed (dpkg), not the newest /boot/xen-*.gz,
   which may be a provisioned tree's; and the Debian files a tree replaced
   were kept before it was unpacked and are put back with it
   (harness/xen/debian_files.py).
3. Add a GRUB entry ``xenhil-<id>`` (in ``/boot/grub/custom.cfg``) with the build's Xen and dom0 command lines, and select it for ONE boot
   with grub-reboot: a build that hangs falls back to the known-good default
   entry on the next power cycle.
4. Reboot (power-cycle through the BMC when SSH is gone), follow the serial
   console through Xen's banner, wait for dom0's SSH.
5. Verify over SSH that ``xl info`` reports the build's command line and
   that dom0 booted the entry (``xenhil_build=<id>``); for a `xenhil build`,
   also that Xen's build id is the manifest's xen-syms one and the installed
   xl has the manifest's sha256.
A failure is an infrastructure failure carrying the serial transcript, and
the host is latched broken for the run.
"""
from __future__ import annotations

import logging
import re
import shlex
import stat
import time
from pathlib import Path

from xenhil.harness import budgets
from xenhil.harness.access.console import ConsoleClosed, ConsoleStalled
from xenhil.harness.access.ssh import sha256_file
from xenhil.harness.errors import InfrastructureError, TestBugError, XenhilError
from xenhil.harness.host import HostState
from xenhil.harness.step import step, step_context
from xenhil.harness.xen.build import XenBuild
from xenhil.harness.xen.toolstack import Toolstack

log = logging.getLogger("xenhil.provision")

CUSTOM_CFG = "/boot/grub/custom.cfg"
ENTRIES_DIR = "/var/lib/xenhil/grub-entries"
XEN_BANNER = r"\(XEN\) Xen version \d+\.\d+"


class ProvisionFailed(InfrastructureError):
    help = ("The build did not install or boot on this host. Read the serial transcript; "
            "the host falls back to its known-good GRUB entry on the next power cycle.")


def running_build(host) -> str | None:
    cmdline = host.ssh.run("cat /proc/cmdline", timeout=30, check=True).stdout
    m = re.search(r"\bxenhil_build=([0-9a-f]{16})\b", cmdline)
    return m.group(1) if m else None


def _dom0_boot_files(host) -> tuple[str, str, str]:
    """Kernel, initrd and root= of the dom0 that runs now: the new entry boots
    the same dom0 under the new hypervisor."""
    release = host.ssh.run("uname -r", timeout=30, check=True).stdout.strip()
    cmdline = host.ssh.run("cat /proc/cmdline", timeout=30, check=True).stdout
    root = re.search(r"\broot=(\S+)", cmdline)
    if not root:
        raise ProvisionFailed(f"{host.name}: dom0 command line has no root=: {cmdline.strip()}")
    return f"/boot/vmlinuz-{release}", f"/boot/initrd.img-{release}", root.group(1)


def _boot_prefix(host) -> str:
    """Paths as GRUB sees them: without /boot when /boot is its own partition."""
    separate = host.ssh.run("findmnt -n /boot >/dev/null", timeout=30).exit_status == 0
    return "" if separate else "/boot"


# tar options for unpacking a tree over the host's /: tar unlinks what is at a
# file's destination before creating the file, so a symlink there (Debian's
# /usr/sbin/xl -> ../lib/xen-common/bin/xen-utils-wrapper) is replaced, not
# written through as `cp -a` does; a symlink to a folder (merged /usr: /lib ->
# usr/lib) is followed, not replaced by a folder; folders that exist keep
# their owner and mode; files are root's, whoever owned them where the tree
# was made.
TAR_INSTALL = ("--keep-directory-symlink", "--no-overwrite-dir", "--no-same-owner")
DEBIAN_HYPERVISOR_PACKAGES = "xen-hypervisor-*"


def _at(root: str, path: str) -> str:
    """``path`` (absolute, as the host sees it) under ``root``: the host's own
    / when provisioning, a folder standing for it in the tests."""
    return path if root == "/" else root.rstrip("/") + path


def _untar(root: str, tarball: str) -> str:
    """The command unpacking ``tarball`` over ``root`` and updating the
    linker cache there."""
    ldconfig = "ldconfig" if root == "/" else f"ldconfig -r {shlex.quote(root)}"
    return (f"tar -xf {shlex.quote(tarball)} -C {shlex.quote(root)} {' '.join(TAR_INSTALL)} "
            f"&& {ldconfig}")


def _version_key(path: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def debian_hypervisor(host, root: str = "/") -> str:
    """The hypervisor Debian's installed xen-hypervisor package put in /boot
    (/boot/xen-4.17-amd64.gz), found through dpkg's file lists: by name order
    alone, /boot's newest xen-*.gz may be one a provisioned tree unpacked
    there (an upstream `make dist` names it xen-4.17.x.gz)."""
    fix = "install xen-hypervisor-4.17-amd64 on the host or pass --xen-build"
    query = host.ssh.run(["dpkg-query", f"--root={root}", "-W", "-f",
                          "${db:Status-Status} ${Package}\n", DEBIAN_HYPERVISOR_PACKAGES],
                         timeout=60)
    packages = [line.split()[1] for line in query.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[0] == "installed"]
    if not packages:
        raise ProvisionFailed(f"{host.name}: no Debian hypervisor package installed "
                              f"({DEBIAN_HYPERVISOR_PACKAGES})", help=fix)
    listed = host.ssh.run(["dpkg-query", f"--root={root}", "-L", *packages],
                          timeout=60, check=True).stdout.splitlines()
    found = sorted((line for line in listed if re.fullmatch(r"/boot/xen-[^/]*\.gz", line)),
                   key=_version_key)
    if not found:
        raise ProvisionFailed(f"{host.name}: {', '.join(packages)} installed no /boot/xen-*.gz",
                              help=fix)
    if host.ssh.run(["test", "-f", _at(root, found[-1])], timeout=30).exit_status != 0:
        raise ProvisionFailed(f"{host.name}: {found[-1]}, installed by {', '.join(packages)}, "
                              "is missing", help=f"reinstall {', '.join(packages)} on the host")
    return found[-1]


def _changed(host, remote: str, sha256: str) -> bool:
    result = host.ssh.run(f"sha256sum -- {shlex.quote(remote)} 2>/dev/null", timeout=120)
    return not result.stdout.startswith(sha256)


@step("install {build.label} on {host.name}")
def install(host, build: XenBuild, root: str = "/") -> str:
    """Copy and install; returns the hypervisor's path on the host.
    ``root``: the host's / (tests give a folder standing for it)."""
    target = f"/boot/xenhil/{build.build_id}"
    host.ssh.run(["mkdir", "-p", _at(root, target), _at(root, "/var/lib/xenhil/builds")],
                 check=True)
    if build.kind == "debian-default":
        found = debian_hypervisor(host, root)
        host.ssh.run(["cp", _at(root, found), _at(root, f"{target}/xen.gz")], check=True)
        _debian_files(host, root, "restore")
    elif build.kind == "debs":
        if root != "/":
            raise TestBugError("a folder of .debs installs with dpkg into the host's own /")
        staging = f"/var/lib/xenhil/builds/{build.build_id}"
        host.ssh.run(["mkdir", "-p", staging], check=True)
        for name, sha in build.files:
            remote = f"{staging}/{name}"
            if _changed(host, remote, sha):
                host.ssh.put(Path(build.source) / name, remote)
        host.ssh.run(f"cd {shlex.quote(staging)} && DEBIAN_FRONTEND=noninteractive dpkg -i -- *.deb",
                     timeout=900, check=True)
        hyp = host.ssh.run(f"dpkg -c {shlex.quote(staging + '/' + build.hypervisor)} | "
                           "grep -o '/boot/xen-[^ ]*\\.gz' | head -n 1", timeout=60).stdout.strip()
        host.ssh.run(["cp", hyp, f"{target}/xen.gz"], check=True)
    elif build.kind == "dist":
        tree = Path(build.source) / "install" if (Path(build.source) / "install").is_dir() else Path(build.source)
        staged = _at(root, f"/var/lib/xenhil/builds/{build.build_id}/root")
        for rel, sha in build.files:
            remote = f"{staged}/{rel}"
            if _changed(host, remote, sha):
                host.ssh.run(["mkdir", "-p", str(Path(remote).parent)], check=True)
                host.ssh.put(tree / rel, remote)
        _give_modes(host, staged, tree, build.files)
        _debian_files(host, root, "keep", staged)
        tarball = _at(root, f"/var/lib/xenhil/builds/{build.build_id}.root.tar")
        host.ssh.run(f"tar -C {shlex.quote(staged)} -cf {shlex.quote(tarball)} . && "
                     f"{_untar(root, tarball)} && rm -f {shlex.quote(tarball)}",
                     timeout=600, check=True)
        host.ssh.run(["cp", _at(root, f"/{build.hypervisor}"), _at(root, f"{target}/xen.gz")],
                     check=True)
    elif build.kind == "tarball":
        remote = _at(root, f"/var/lib/xenhil/builds/{build.build_id}.tar")
        if _changed(host, remote, sha256_file(Path(build.source))):
            host.ssh.put(build.source, remote)
        _debian_files(host, root, "keep", remote)
        host.ssh.run(_untar(root, remote), timeout=600, check=True)
        host.ssh.run(["cp", _at(root, "/" + build.hypervisor.lstrip("./")),
                      _at(root, f"{target}/xen.gz")], check=True)
    else:  # load_build() never makes another kind
        raise ProvisionFailed(f"unknown build kind {build.kind}")
    return _at(root, f"{target}/xen.gz")


def _give_modes(host, staged: str, tree: Path, files) -> None:
    """Give every staged file its mode in ``tree``: SFTP creates files 0644
    whatever the source's mode, and the tar that unpacks the staged tree over
    / carries its modes: xl and QEMU must stay executable (a qualification's
    reference build, a dist tree, came up with xl 0644 and Debian's wrapper
    answering "Unable to execute /usr/lib/xen-4.17/bin/xl").  Files staged
    by an earlier provisioning get theirs too."""
    by_mode: dict[int, list[str]] = {}
    for rel, _ in files:
        by_mode.setdefault(stat.S_IMODE((tree / rel).stat().st_mode), []).append(f"{staged}/{rel}")
    for mode, paths in sorted(by_mode.items()):
        host.ssh.run(["xargs", "-0", "chmod", f"{mode:o}", "--"], input="\0".join(paths),
                     timeout=120, check=True)


#: Where the host keeps the Debian files that builds' trees replaced
#: (harness/xen/debian_files.py, which runs there).
DEBIAN_FILES_STATE = "/var/lib/xenhil/debian-files"
DEBIAN_FILES_SCRIPT = "/var/lib/xenhil/debian_files.py"


def _debian_files(host, root: str, action: str, tree: str | None = None) -> str:
    """Keep the Debian files ``tree`` (on the host) will replace, or put all
    kept ones back ("restore"): a Debian build after a source build then runs
    Debian's tools and QEMU, not the source build's.  Its one-line report."""
    from xenhil.harness.xen import debian_files
    script = _at(root, DEBIAN_FILES_SCRIPT)
    host.ssh.run(["mkdir", "-p", _at(root, "/var/lib/xenhil")], check=True)
    host.ssh.put_bytes(Path(debian_files.__file__).read_text(), script)
    argv = ["python3", script, action] + ([tree] if tree else []) + \
        [root, _at(root, DEBIAN_FILES_STATE)]
    result = host.ssh.run(argv, timeout=600)
    if result.exit_status == 127:
        raise ProvisionFailed(f"{host.name}: no python3 in dom0 (needed to keep Debian's files "
                              "under a build's tree)", help="install python3 on the host")
    if result.exit_status != 0:
        raise ProvisionFailed(f"{host.name}: {action} of Debian's files under the build's tree "
                              f"failed (exit {result.exit_status}): {result.stderr.strip()[-500:]}")
    if action == "restore":
        ldconfig = "ldconfig" if root == "/" else f"ldconfig -r {shlex.quote(root)}"
        host.ssh.run(ldconfig, timeout=120, check=True)
    log.info("%s: %s", host.name, result.stdout.strip())
    return result.stdout.strip()


def grub_entry(build: XenBuild, prefix: str, kernel: str, initrd: str, root: str) -> str:
    """The menu entry, as grub.d scripts emit it.  Command lines were checked
    for GRUB-special characters when the build was loaded."""
    def boot_path(path: str) -> str:
        return prefix + path.removeprefix("/boot")
    entry_id = f"xenhil-{build.build_id}"
    hypervisor = boot_path(f"/boot/xenhil/{build.build_id}/xen.gz")
    return "\n".join([
        f"menuentry '{entry_id}' --id '{entry_id}' {{",
        "\tinsmod part_msdos\n\tinsmod part_gpt\n\tinsmod ext2\n\tinsmod gzio",
        f"\tsearch --no-floppy --file --set=root {hypervisor}",
        f"\tmultiboot2 {hypervisor} placeholder {build.xen_cmdline}",
        f"\tmodule2 {boot_path(kernel)} placeholder root={root} {build.dom0_cmdline} "
        f"xenhil_build={build.build_id}",
        f"\tmodule2 --nounzip {boot_path(initrd)}",
        "}",
    ])


@step("add GRUB entry xenhil-{build.build_id} on {host.name} and select it once")
def add_grub_entry(host, build: XenBuild) -> str:
    """Entries go to /boot/grub/custom.cfg, which Debian's generated grub.cfg
    (41_custom) and the virtual lab's grub.cfg both source: no update-grub
    run, and the known-good default entry is never touched."""
    kernel, initrd, root = _dom0_boot_files(host)
    entry = grub_entry(build, _boot_prefix(host), kernel, initrd, root)
    host.ssh.run(["mkdir", "-p", ENTRIES_DIR], check=True)
    host.ssh.put_bytes(entry + "\n", f"{ENTRIES_DIR}/{build.build_id}.cfg")
    host.ssh.run(f"cat {ENTRIES_DIR}/*.cfg > {CUSTOM_CFG}.new && mv {CUSTOM_CFG}.new {CUSTOM_CFG}",
                 timeout=60, check=True)
    entry_id = f"xenhil-{build.build_id}"
    host.ssh.run(["grub-reboot", entry_id], timeout=60, check=True)
    return entry_id


@step("reboot {host.name} into the new build and follow its console")
def reboot_and_follow(host, boot_timeout: float) -> None:
    console = host.console
    # A fresh link: the host's console may have been left open, unread, since
    # an earlier boot (its queued bytes could hold that boot's banner), or its
    # link may be dead (a power cycle of a virtual host restarts its QEMU).
    console.reconnect()
    mark = console.mark("provision reboot")
    try:
        host.ssh.run("systemctl reboot || reboot", timeout=20)
    except XenhilError:
        pass  # the connection drops while rebooting
    host.state = HostState.BOOTING
    host.facts.pop("provision_power_cycle", None)
    started = time.monotonic()
    try:
        _follow_to_banner(console, boot_timeout)
    except XenhilError:
        # No banner: the clean reboot did not happen (hung dom0); power-cycle.
        # That boot takes GRUB's default entry (grub-reboot's choice was
        # spent on the first one), so verify() says why it happened.
        host.facts["provision_power_cycle"] = _no_banner_reason(console, mark, boot_timeout)
        log.warning("%s: %s: power-cycling", host.name, host.facts["provision_power_cycle"])
        with step_context(f"power-cycle {host.name} over its BMC"):
            host.power.cycle()
        # The boot after the power cycle gets the whole boot budget, not
        # what the failed reboot left of it (which left dom0 60 s).
        started = time.monotonic()
        _follow_to_banner(console, boot_timeout)
    left = max(boot_timeout - (time.monotonic() - started), 60)
    host.wait_for_dom0(left)
    host.facts["provision_transcript"] = console.slice(mark)


def _no_banner_reason(console, mark, timeout: float) -> str:
    received = len(console.slice_bytes(mark))
    reason = f"no Xen banner on the console within {timeout:.0f}s of the reboot ({received} bytes received"
    if received == 0:
        # A serial server serves one client at a time: a link another
        # process holds leaves ours connected and silent.
        reason += "; none at all: another client may hold the serial line"
    return reason + ")"


#: How often a dropped console link is tried again while waiting for Xen's
#: banner.  A virtual host's power cycle restarts its QEMU, whose serial
#: server drops what the machine prints before a client is connected; a link
#: retried every second came back after Xen's first lines had gone (a health
#: check on the virtual lab saw "(XEN) ACPI: RSDP ..." first, no banner).
BANNER_RECONNECT_EVERY_S = 0.05


def _follow_to_banner(console, timeout: float) -> None:
    """Read the console until Xen's banner; a link the far end drops (the
    serial server restarts with the machine) is connected again at once,
    within the same ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not console.is_open:
                console.reconnect(max(deadline - time.monotonic(), 1),
                                  retry_every=BANNER_RECONNECT_EVERY_S)
            console.expect(XEN_BANNER, timeout=max(deadline - time.monotonic(), 1))
            return
        except ConsoleStalled:
            raise
        except ConsoleClosed:
            if time.monotonic() >= deadline:
                raise
            log.info("console %s dropped while waiting for Xen's banner: connecting again",
                     console.name)
            # Not a spin: reconnect() waits between refused attempts, and a
            # server that accepts then drops every link costs one round trip.
            time.sleep(BANNER_RECONNECT_EVERY_S)


@step("verify {host.name} runs {build.label}")
def verify(host, build: XenBuild, root: str = "/") -> dict:
    info = Toolstack(host.ssh, host.name).info()
    booted = running_build(host)
    problems = manifest_problems(host, build, info, root)
    if booted != build.build_id:
        problems.append(f"dom0 booted build {booted or 'none (the default GRUB entry)'}, "
                        f"expected {build.build_id}")
    booted_cmdline = (info.xen_commandline or "").split()
    # GRUB's multiboot2 passes its first word ("placeholder", Debian's and our
    # entries' convention) through to Xen, which keeps it in its command line.
    if booted_cmdline[:1] == ["placeholder"]:
        booted_cmdline = booted_cmdline[1:]
    if booted_cmdline != build.xen_cmdline.split():
        problems.append(f"xl info xen_commandline {info.xen_commandline!r}, "
                        f"expected {build.xen_cmdline!r}")
    if problems:
        power_cycle = host.facts.get("provision_power_cycle")
        if power_cycle:
            problems.append(f"the host was power-cycled after the reboot ({power_cycle}), "
                            "which boots GRUB's default entry")
        raise ProvisionFailed(f"{host.name}: " + "; ".join(problems))
    facts = {"xen_version": info.xen_version, "xen_changeset": info.xen_changeset or "",
             "xen_commandline": info.xen_commandline or "", "build_id": build.build_id}
    host.facts.update(facts)
    return facts


def manifest_problems(host, build: XenBuild, info, root: str = "/") -> list[str]:
    """What differs from a `xenhil build`'s manifest: the running Xen's build
    id (``xl info``) against the built xen-syms', the installed xl's sha256
    against the built one's.  Both values in each; none for other builds."""
    problems = []
    if build.elf_build_id and info.get("build_id") != build.elf_build_id:
        problems.append(f"xl info build_id {info.get('build_id') or 'none'}, expected "
                        f"{build.elf_build_id} (the manifest's xen-syms build id)")
    if build.xl_sha256:
        out = host.ssh.run(f"sha256sum -- {shlex.quote(_at(root, build.xl_path))} 2>/dev/null",
                           timeout=120).stdout.split()
        if (out[:1] or [""])[0] != build.xl_sha256:
            problems.append(f"{build.xl_path} sha256 {out[0] if out else 'none (missing)'}, "
                            f"expected {build.xl_sha256} (the manifest's xl_sha256)")
    return problems


def provision(host, build: XenBuild, boot_timeout: float | None = None) -> bool:
    """Make ``host`` run ``build``.  Returns False when it already did.
    ``boot_timeout``: one boot, reboot to dom0's SSH (default: the host's
    "dom0 boot" budget, harness/budgets.py)."""
    profile = host.spec.profile
    if boot_timeout is None:
        boot_timeout = budgets.seconds("dom0 boot", profile)
    # A stage: a failure, or the test's limit running out, names it.
    with budgets.stage(f"provisioning {build.label} on {host.name}",
                       budgets.provisioning_s(profile)):
        return _provision(host, build, boot_timeout)


def _provision(host, build: XenBuild, boot_timeout: float) -> bool:
    host.raise_if_broken()
    try:
        if running_build(host) == build.build_id:
            with step_context(f"{host.name} already runs {build.label}: skip provisioning"):
                verify(host, build)
            return False
        install(host, build)
        add_grub_entry(host, build)
        reboot_and_follow(host, boot_timeout)
        verify(host, build)
        return True
    except XenhilError as exc:
        transcript = getattr(host.console, "transcript_path", None) if host._console else None
        if transcript:
            exc.evidence.setdefault("serial transcript", str(transcript))
        host.mark_broken(f"provisioning {build.label}: {exc}")
        if isinstance(exc, InfrastructureError):
            raise
        raise ProvisionFailed(f"{host.name}: provisioning {build.label} failed: {exc}",
                              evidence=exc.evidence) from exc
