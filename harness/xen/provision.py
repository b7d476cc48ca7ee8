"""Put a Xen build on a host and boot it, the way a lab engineer would.

1. Skip everything when the host already runs this build (its dom0 command
   line carries ``xenhil_build=<id>``): the first test starts at once.
2. Copy only what changed (SFTP, verified by checksum) into
   ``/boot/xenhil/<id>/`` (hypervisor) and install the tools (.debs with
   dpkg, a dist tree unpacked over /).
3. Add a GRUB entry ``xenhil-<id>`` (in ``/boot/grub/custom.cfg``) with the build's Xen and dom0 command lines, and select it for ONE boot
   with grub-reboot: a build that hangs falls back to the known-good default
   entry on the next power cycle.
4. Reboot (power-cycle through the BMC when SSH is gone), follow the serial
   console through Xen's banner, wait for dom0's SSH.
5. Verify over SSH that ``xl info`` reports the build's command line and
   that dom0 booted the entry (``xenhil_build=<id>``).
A failure is an infrastructure failure carrying the serial transcript, and
the host is latched broken for the run.
"""
from __future__ import annotations

import logging
import re
import shlex
import time
from pathlib import Path

from harness import budgets
from harness.access.ssh import sha256_file
from harness.errors import InfrastructureError, XenhilError
from harness.host import HostState
from harness.step import step, step_context
from harness.xen.build import XenBuild
from harness.xen.toolstack import Toolstack

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


def _changed(host, remote: str, sha256: str) -> bool:
    result = host.ssh.run(f"sha256sum -- {shlex.quote(remote)} 2>/dev/null", timeout=120)
    return not result.stdout.startswith(sha256)


@step("install {build.label} on {host.name}")
def install(host, build: XenBuild) -> str:
    """Copy and install; returns the hypervisor's path on the host."""
    target = f"/boot/xenhil/{build.build_id}"
    host.ssh.run(["mkdir", "-p", target, "/var/lib/xenhil/builds"], check=True)
    if build.kind == "debian-default":
        found = host.ssh.run("ls /boot/xen-*.gz 2>/dev/null | sort -V | tail -n 1",
                             timeout=30).stdout.strip()
        if not found:
            raise ProvisionFailed(f"{host.name}: no Debian hypervisor in /boot (xen-*.gz)",
                                  help="install xen-hypervisor-4.17-amd64 on the host or pass --xen-build")
        host.ssh.run(["cp", found, f"{target}/xen.gz"], check=True)
    elif build.kind == "debs":
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
        root = Path(build.source) / "install" if (Path(build.source) / "install").is_dir() else Path(build.source)
        for rel, sha in build.files:
            remote = f"/var/lib/xenhil/builds/{build.build_id}/root/{rel}"
            if _changed(host, remote, sha):
                host.ssh.run(["mkdir", "-p", str(Path(remote).parent)], check=True)
                host.ssh.put(root / rel, remote)
        host.ssh.run(f"cp -a /var/lib/xenhil/builds/{build.build_id}/root/. / && ldconfig",
                     timeout=600, check=True)
        host.ssh.run(["cp", f"/{build.hypervisor}", f"{target}/xen.gz"], check=True)
    elif build.kind == "tarball":
        remote = f"/var/lib/xenhil/builds/{build.build_id}.tar"
        if _changed(host, remote, sha256_file(Path(build.source))):
            host.ssh.put(build.source, remote)
        host.ssh.run(f"tar -xf {shlex.quote(remote)} -C / && ldconfig", timeout=600, check=True)
        host.ssh.run(["cp", "/" + build.hypervisor.lstrip("./"), f"{target}/xen.gz"], check=True)
    else:  # load_build() never makes another kind
        raise ProvisionFailed(f"unknown build kind {build.kind}")
    return f"{target}/xen.gz"


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
    console.open()
    mark = console.mark("provision reboot")
    try:
        host.ssh.run("systemctl reboot || reboot", timeout=20)
    except XenhilError:
        pass  # the connection drops while rebooting
    host.state = HostState.BOOTING
    started = time.monotonic()
    try:
        console.expect(XEN_BANNER, timeout=boot_timeout)
    except XenhilError:
        # No banner: the clean reboot did not happen (hung dom0); power-cycle.
        with step_context(f"power-cycle {host.name} over its BMC"):
            host.power.cycle()
        # The boot after the power cycle gets the whole boot budget, not
        # what the failed reboot left of it (which left dom0 60 s).
        started = time.monotonic()
        console.expect(XEN_BANNER, timeout=boot_timeout)
    left = max(boot_timeout - (time.monotonic() - started), 60)
    host.wait_for_dom0(left)
    host.facts["provision_transcript"] = console.slice(mark)


@step("verify {host.name} runs {build.label}")
def verify(host, build: XenBuild) -> dict:
    info = Toolstack(host.ssh, host.name).info()
    booted = running_build(host)
    problems = []
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
        raise ProvisionFailed(f"{host.name}: " + "; ".join(problems))
    facts = {"xen_version": info.xen_version, "xen_changeset": info.xen_changeset or "",
             "xen_commandline": info.xen_commandline or "", "build_id": build.build_id}
    host.facts.update(facts)
    return facts


def provision(host, build: XenBuild, boot_timeout: float | None = None) -> bool:
    """Make ``host`` run ``build``.  Returns False when it already did.
    ``boot_timeout``: one boot, reboot to dom0's SSH (default: the host's
    "dom0 boot" budget, harness/budgets.py)."""
    capabilities = host.spec.capabilities
    if boot_timeout is None:
        boot_timeout = budgets.seconds("dom0 boot", capabilities)
    # A stage: a failure, or the test's limit running out, names it.
    with budgets.stage(f"provisioning {build.label} on {host.name}",
                       budgets.provisioning_s(capabilities)):
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
