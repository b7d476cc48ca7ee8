"""Waiting for a guest's balloon driver to finish what ``xl mem-set`` asked.

``xl mem-set`` only writes the domain's new target (xenstore
``memory/target``, KiB); the guest's balloon driver then hands pages back (or
takes them) in its own time: well under a second on a real host, tens of
seconds on an emulated one, where every chunk of 2 MiB given back costs
hypercalls, shadow page-table updates and a map-cache invalidate round trip
to each device model (virtual lab, 2026-12-01: 256 -> 200 MiB took more than
30 s).

Why it matters beyond ballooning: a Linux guest cannot be suspended while
its balloon driver works.  Its ``xen-balloon`` kernel thread only reaches a
freezer point when it has nothing left to do, so the guest's suspend (the
first half of ``xl save``) fails to freeze it for 20 s, gives up and runs on,
and libxl reports "guest did not suspend, timed out" after 60 s.  Recorded
in the guest's kernel log (virtual lab, `xl save` 5 s after `xl mem-set
200m`, 2 runs of 2): "Freezing of tasks failed after 20.881 seconds (1 tasks
refusing to freeze, wq_busy=0): task:xen-balloon state:R ... balloon_thread",
then "do_suspend: freeze kernel threads failed -16".  CI lost a real-Xen test
to it.  So :meth:`Guest.save <xenhil.harness.guest.Guest.save>` waits here
first.

The rule (:class:`BalloonWatch`): settled when the domain's memory (``xl
list``) is within :data:`TOLERANCE_MIB` of its target, or has not moved for
:data:`STILL_S` (a driver that cannot reach its target sleeps between tries,
and a sleeping driver freezes).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from xenhil.harness.errors import InfrastructureError

#: xl list rounds to MiB; the last half chunk is given back in well under
#: the guest's 20 s freezing time.
TOLERANCE_MIB = 1
#: Unchanged memory for this long: the driver is not working (it sleeps
#: between attempts it cannot complete), so the guest can be suspended.
STILL_S = 15.0
POLL_S = 3.0


@dataclass(frozen=True)
class BalloonReading:
    """One look at the domain: its memory (``xl list``, MiB) and its balloon
    target (xenstore ``memory/target``, in MiB; None when the guest has none)."""

    memory_mib: int
    target_mib: int | None


@dataclass(frozen=True)
class BalloonSettled:
    """Where the balloon stopped: at its target (``reached``) or short of it."""

    memory_mib: int
    target_mib: int | None
    reached: bool
    waited_s: float


class BalloonWatch:
    """Decides from successive readings whether the balloon has settled."""

    def __init__(self, still_s: float = STILL_S, tolerance_mib: int = TOLERANCE_MIB):
        self.still_s = still_s
        self.tolerance_mib = tolerance_mib
        self.first_at: float | None = None
        self.moved_at: float | None = None
        self.last: BalloonReading | None = None

    def add(self, at: float, reading: BalloonReading) -> BalloonSettled | None:
        """The reading taken at monotonic time ``at``; a verdict once settled."""
        if self.first_at is None:
            self.first_at = self.moved_at = at
        elif reading.memory_mib != self.last.memory_mib:
            self.moved_at = at
        self.last = reading
        waited = at - self.first_at
        if (reading.target_mib is not None
                and abs(reading.memory_mib - reading.target_mib) <= self.tolerance_mib):
            return BalloonSettled(reading.memory_mib, reading.target_mib, True, waited)
        if at - self.moved_at >= self.still_s:
            return BalloonSettled(reading.memory_mib, reading.target_mib, False, waited)
        return None


def read_balloon(xl, name: str) -> BalloonReading:
    """The domain ``name``'s memory and balloon target, through ``xl`` (a
    :class:`~xenhil.harness.xen.toolstack.Toolstack`)."""
    entry = xl.domain(name)
    if entry is None:
        raise InfrastructureError(f"guest {name} is gone while waiting for its balloon driver",
                                  help="read the guest console transcript and `xl dmesg`")
    target_kib = xl.xenstore_read(f"/local/domain/{entry.domid}/memory/target")
    target = int(target_kib) // 1024 if target_kib and target_kib.isdigit() else None
    return BalloonReading(entry.mem_mib, target)


def wait_balloon_settled(xl, name: str, timeout: float, *, reach_target: bool = False,
                         poll_s: float = POLL_S, clock: Callable[[], float] = time.monotonic,
                         sleep: Callable[[float], None] = time.sleep) -> BalloonSettled:
    """Poll the domain ``name`` until its balloon settles (:class:`BalloonWatch`);
    with ``reach_target``, only reaching the target counts (a pause on the
    way is waited out).

    Raises :class:`InfrastructureError` when it has not settled after
    ``timeout`` seconds, naming its memory and target."""
    watch = BalloonWatch(still_s=math.inf) if reach_target else BalloonWatch()
    start = clock()
    while True:
        now = clock()
        settled = watch.add(now, read_balloon(xl, name))
        if settled is not None:
            return settled
        if now - start >= timeout:
            last = watch.last
            raise InfrastructureError(
                f"guest {name}'s balloon driver had not settled after {timeout:.0f} s: "
                f"{last.memory_mib} MiB, target {last.target_mib} MiB",
                help="a guest ballooning this slowly is starved of CPU: check the host's load "
                     "and the guest console transcript")
        sleep(poll_s)
