"""Did the machine that emulates a virtual host give it its CPUs?

A virtual host is a QEMU process on the machine that runs the tests, its
vCPUs threads of that process.  When other work on that machine takes the
CPUs, those threads wait in the kernel's run queue (``schedstat``'s run
delay, per thread), and every ioreq round trip through dom0 waits with
them: on 2026-12-02 a fast-layer run beside the catalog made the qall
model's round trip on qnet+qall 5.2 ms against 1.0 ms the run before, twice
in a row, on an unchanged build, while the Xen-internal baseline moved by a
third (harness.lab.virtual.quirks has the figures).  A latency verdict
measured so says nothing about the product.

:class:`EmulatorCpuWatch` reads the emulator's run delay and every other
process's CPU time before and after a measurement; :class:`CpuWait` is what
it saw, with the busiest other processes named, the evidence a latency
failure is refiled as infrastructure with (harness.checks.latency).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xenhil.harness.lab.virtual.quirks import EMULATOR_CPU_WAIT_CONTENDED

#: Other processes named in the evidence (the busiest first).
BUSIEST_SHOWN = 5
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class BusyProcess:
    command: str
    pid: int
    cpus: float                       # CPUs used on average over the watch (1.0: one core)


@dataclass(frozen=True)
class CpuWait:
    """What the emulator of ``host`` (QEMU pid ``pid``) got from its machine
    over ``seconds`` of wall time."""

    host: str
    pid: int
    seconds: float
    waited: float                     # seconds its threads waited for a CPU, per second
    ran: float                        # CPUs its threads used, on average
    cpus: int                         # CPUs of the machine
    busiest: list[BusyProcess] = field(default_factory=list)

    @property
    def contended(self) -> bool:
        return self.waited > EMULATOR_CPU_WAIT_CONTENDED

    def to_dict(self) -> dict:
        return {**asdict(self), "contended": self.contended,
                "contended_above": EMULATOR_CPU_WAIT_CONTENDED}

    def __str__(self) -> str:
        others = ", ".join(f"{p.command} pid {p.pid} {p.cpus:.2f} CPU" for p in self.busiest) or "none seen"
        return (f"{self.host}'s emulator (QEMU pid {self.pid}) waited {self.waited:.2f} s per second "
                f"for a CPU over {self.seconds:.0f} s (contended above {EMULATOR_CPU_WAIT_CONTENDED:g}; "
                f"it ran on {self.ran:.2f} of this machine's {self.cpus} CPUs); busiest other "
                f"processes here: {others}")


def _threads_schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns waiting in a run queue) summed over every thread of
    ``pid`` (schedstat's first two fields); threads that ended take theirs
    with them."""
    ran = waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu, in_queue = (task / "schedstat").read_text().split()[:2]
            ran, waited = ran + int(on_cpu), waited + int(in_queue)
        except (OSError, ValueError):
            continue
    return ran, waited


def _process_cpu_ticks() -> dict[tuple[int, str], tuple[str, int]]:
    """(pid, start time) -> (command, CPU ticks including reaped children's),
    for every process readable now.  The start time keeps a reused pid apart;
    the children's ticks count the short-lived commands a busy parent ran."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        command = text[text.find("(") + 1:text.rfind(")")]
        fields = text[text.rfind(")") + 2:].split()
        try:
            ticks = sum(int(v) for v in fields[11:15])     # utime stime cutime cstime
            out[(int(entry.name), fields[19])] = (command, ticks)
        except (IndexError, ValueError):
            continue
    return out


class EmulatorCpuWatch:
    """Watch the emulator ``pid`` of ``host`` from :meth:`start` to :meth:`stop`."""

    def __init__(self, host: str, pid: int):
        self.host, self.pid = host, pid
        self._started = None

    def start(self) -> "EmulatorCpuWatch":
        self._started = (time.monotonic(), *_threads_schedstat(self.pid), _process_cpu_ticks())
        return self

    def stop(self) -> CpuWait | None:
        """What the emulator got since :meth:`start`; None when it is gone."""
        if self._started is None:
            raise RuntimeError("stop() before start()")
        began, ran0, waited0, ticks0 = self._started
        try:
            ran1, waited1 = _threads_schedstat(self.pid)
        except OSError:
            return None
        ticks1 = _process_cpu_ticks()
        seconds = max(time.monotonic() - began, 1e-6)
        me = os.getpid()
        busy = []
        for key, (command, ticks) in ticks1.items():
            if key[0] in (self.pid, me):
                continue
            used = ticks - ticks0.get(key, (command, 0))[1]
            if used > 0:
                busy.append(BusyProcess(command, key[0], used / _TICK / seconds))
        busy.sort(key=lambda p: p.cpus, reverse=True)
        return CpuWait(self.host, self.pid, seconds, (waited1 - waited0) / 1e9 / seconds,
                       (ran1 - ran0) / 1e9 / seconds, os.cpu_count() or 1, busy[:BUSIEST_SHOWN])


def watch_emulator(host) -> EmulatorCpuWatch | None:
    """A watch of ``host``'s emulator when it is an emulated host whose QEMU
    runs on this machine (the virtual lab); None for any other host."""
    if not host.spec.profile.emulated:
        return None
    from xenhil.harness.lab.virtual.launcher import find_emulator
    pid = find_emulator(host.name, host.spec.address)
    return EmulatorCpuWatch(host.name, pid) if pid is not None else None


__all__ = ["CpuWait", "BusyProcess", "EmulatorCpuWatch", "watch_emulator", "BUSIEST_SHOWN"]
