"""Crashes of dom0 processes (dom0's kernel log) and of guests (Xen's log).

On the emulated lab (real Xen under QEMU TCG with nested SVM) dom0 processes
segfaulted now and then while HVM guests ran: seen for xl, the device models,
awk, udev workers and systemd-tmpfiles, with impossible register values
(``segfault at 0`` in glibc's byte-copy loop); guests triple-faulted now and
then.  The cause found: Xen's lazy FPU switching loses vector state under
that emulation, and emulated hosts now boot Xen with eager switching
(HostProfile.xen_cmdline_options, from quirks.XEN_CMDLINE_EMULATED).  The reclassification
below stays for what else such a host may still do: a check that fails on it
while dom0 processes or the guest crashed says nothing about the patch, so
the plugin files it as an infrastructure failure and names the crashes.  On
real hardware the same lines are product failures (a device model that
segfaults is a bug) and nothing is reclassified.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from xenhil.harness.errors import XenhilError

# "[  300.363933] xen-qemu-system[633]: segfault at 0 ip ... error 6 in libc.so.6[...]"
# "[  412.001000] traps: awk[3623] general protection fault ip:... in libc.so.6[...]"
_CRASH = re.compile(
    r"^\[\s*(?P<uptime>\d+\.\d+)\]\s+(?:traps:\s+)?(?P<process>[^\[\]\s][^\[\]]*?)\[(?P<pid>\d+)\]:?\s+"
    r"(?P<what>segfault at \S+|general protection fault|trap [^\n]*?)(?=\s)",
    re.MULTILINE)


@dataclass(frozen=True)
class Dom0Crash:
    uptime: float     # seconds since dom0 booted
    process: str
    pid: int
    what: str         # "segfault at 0", "general protection fault"
    line: str

    def __str__(self) -> str:
        return f"{self.process}[{self.pid}] {self.what} at {self.uptime:.0f} s"


def parse_crashes(dmesg: str) -> list[Dom0Crash]:
    """Every user-process crash the kernel logged, oldest first."""
    crashes = []
    for m in _CRASH.finditer(dmesg):
        line_end = dmesg.find("\n", m.start())
        crashes.append(Dom0Crash(float(m.group("uptime")), m.group("process"), int(m.group("pid")),
                                 m.group("what"), dmesg[m.start():None if line_end < 0 else line_end]))
    return crashes


def dom0_uptime(ssh) -> float:
    """Seconds since dom0 booted (the clock of its kernel log)."""
    result = ssh.run(["cat", "/proc/uptime"], timeout=30, check=True)
    return float(result.stdout.split()[0])


def crashes_since(ssh, uptime: float) -> list[Dom0Crash]:
    """dom0 process crashes logged at or after ``uptime`` (dom0's clock)."""
    result = ssh.run(["dmesg"], timeout=60, check=True)
    return [c for c in parse_crashes(result.stdout) if c.uptime >= uptime]


# What a dom0 process that died of a signal or of glibc's heap checks leaves
# in the output of the command that ran it (the kernel logs only segfaults,
# not aborts): libxl naming its own child, as in CI's smoke ("domain
# monitoring daemonizing child [461] died due to fatal signal Aborted" after
# "malloc(): unsorted double linked list corrupted"), glibc's abort messages,
# and the shell's report of a segfaulted command.
_DIED_IN_OUTPUT = re.compile(
    r"[^\n]*died due to fatal signal [^\n]*"
    r"|^(?:malloc|free|realloc|calloc)\(\): [^\n]+"
    r"|^double free or corruption[^\n]*"
    r"|^corrupted (?:size|double-linked list)[^\n]*"
    r"|[^\n]*\bSegmentation fault\b[^\n]*",
    re.MULTILINE)


def process_death_in_output(text: str) -> str | None:
    """The first line of a command's output saying that a process died of a
    signal or of a glibc heap check, or None."""
    m = _DIED_IN_OUTPUT.search(text)
    return m.group(0).strip() if m else None


# "(XEN) d2v0 Triple fault - invoking HVM shutdown action 1"
_TRIPLE_FAULT = re.compile(r"^\(XEN\) d(?P<domid>\d+)v(?P<vcpu>\d+) (?P<message>Triple fault\b[^\n]*)",
                           re.MULTILINE)


@dataclass(frozen=True)
class GuestTripleFault:
    """Xen saw one of the guest's vCPUs triple-fault (it then reboots the
    domain: "HVM shutdown action 1")."""
    domid: int
    vcpu: int
    line: str
    message: str      # Xen's words: "Triple fault - invoking HVM shutdown action 1"

    def __str__(self) -> str:
        return f"guest domain {self.domid} vCPU {self.vcpu} triple fault"


def parse_triple_faults(xl_dmesg: str, domids) -> list[GuestTripleFault]:
    """Triple faults of the given domains in ``xl dmesg`` output."""
    wanted = set(domids)
    return [GuestTripleFault(int(m.group("domid")), int(m.group("vcpu")), m.group(0),
                             m.group("message").strip())
            for m in _TRIPLE_FAULT.finditer(xl_dmesg) if int(m.group("domid")) in wanted]


def emulation_note(host_name: str, crashes: list) -> str:
    """Why a failure on an emulated host whose dom0 saw ``crashes`` is filed
    as infrastructure (the text a reviewer reads under the failure)."""
    shown = "; ".join(str(c) for c in crashes[:3])
    more = f"; {len(crashes) - 3} more" if len(crashes) > 3 else ""
    return (f"[infrastructure] the guest or dom0 processes crashed while this guest ran on emulated host "
            f"{host_name} ({shown}{more}): the virtual lab's known instability (QEMU TCG, "
            f"nested SVM), not the patch; rerun.  On real hardware this stays a product "
            f"failure.  The crash lines are in the evidence (dom0-dmesg.txt, xl-dmesg.txt).")


def guest_emulation_crashes(guest) -> list[Dom0Crash | GuestTripleFault]:
    """Crashes of dom0 processes since ``guest`` was created, and triple
    faults of its domains, when its host is emulated; empty on real hardware
    or when they cannot be read (the failure then keeps its own class).
    (A triple fault logged before a check cleared ``xl dmesg`` is missed.)"""
    since = guest.dom0_uptime_at_create
    if not guest.host.spec.profile.emulated or since is None:
        return []
    found: list[Dom0Crash | GuestTripleFault] = []
    try:
        found += crashes_since(guest.host.ssh, since)
    except (XenhilError, ValueError, OSError):
        pass
    domids = guest.domids_seen
    if domids:
        try:
            xl_dmesg = guest.host.ssh.run(["xl", "dmesg"], timeout=60, check=True).stdout
            found += parse_triple_faults(xl_dmesg, domids)
        except (XenhilError, ValueError, OSError):
            pass
    return found


# A boot never asks for a shutdown: a reboot is how Xen ends a triple fault
# (kept by on_reboot="preserve"), a crash is a crash, and a guest kernel that
# halts with interrupts off (as every Linux guest did in its decompressor on
# QEMU 10.0 with nested paging, harness.lab.virtual.quirks) is powered off.
BOOT_ENDING_SHUTDOWNS = ("crash", "reboot", "poweroff")


def why_boot_ended(domid: int | None, xl_dmesg: str, listed, xl_log: str) -> str | None:
    """Why a booting guest's domain ended on its own, in Xen's or xl's words;
    None when it did not (a slow boot or a silent console: a retry would not
    help, and the failure keeps its own class).

    The one rule both the guest fixture (whether to boot again) and the
    stability benchmark (what to count as a crash) follow:
    ``xl_dmesg``: Xen's log; ``listed``: the domain as ``xl list`` shows it,
    None when it is gone; ``xl_log``: xl's own log of the guest, which says
    how a domain that is gone ended (a powered-off domain is destroyed by
    on_poweroff's default)."""
    faults = parse_triple_faults(xl_dmesg, [domid]) if domid is not None else []
    if faults:
        return faults[0].message
    if listed is not None:
        if listed.shutdown_reason in BOOT_ENDING_SHUTDOWNS:
            return f"domain {listed.domid} in state {listed.state} ({listed.shutdown_reason})"
        return None
    ended = [line.strip() for line in xl_log.splitlines() if "has shut down, reason code" in line]
    return ended[-1] if ended else None
