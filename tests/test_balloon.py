"""When a guest's balloon counts as settled (harness/xen/balloon.py): the
rule that keeps `xl save` from starting while the guest still balloons.

The readings below are written by hand, shaped like the virtual lab's run of
2026-12-01 (a 256 MiB guest after `xl mem-set 200m`: xl list 242 MiB five
seconds later, 192 MiB at the end, xenstore memory/target 196608 KiB).  The
real-Xen side is tests/test_probe_dm_real.py::test_save_restore_keeps_both_servers,
which saves the guest while it balloons.
"""
from __future__ import annotations

import pytest

from xenhil.harness.errors import InfrastructureError
from xenhil.harness.xen.balloon import (STILL_S, BalloonReading, BalloonWatch,
                                        wait_balloon_settled)
from xenhil.harness.xen.parsers.xl_list import DomainEntry


def test_memory_at_its_target_is_settled_at_once():
    settled = BalloonWatch().add(0.0, BalloonReading(192, 192))
    assert settled is not None and settled.reached and settled.waited_s == 0.0


def test_memory_one_mib_off_its_target_counts_as_there():
    assert BalloonWatch().add(0.0, BalloonReading(193, 192)).reached


def test_memory_on_its_way_down_is_not_settled():
    watch = BalloonWatch()
    for at, memory in ((0.0, 242), (3.0, 236), (6.0, 230), (60.0, 200)):
        assert watch.add(at, BalloonReading(memory, 192)) is None


def test_memory_that_stops_short_of_its_target_settles_after_standing_still():
    watch = BalloonWatch()
    assert watch.add(0.0, BalloonReading(230, 192)) is None
    assert watch.add(3.0, BalloonReading(210, 192)) is None     # moving
    assert watch.add(3.0 + STILL_S - 1, BalloonReading(210, 192)) is None
    settled = watch.add(3.0 + STILL_S, BalloonReading(210, 192))
    assert settled is not None and not settled.reached
    assert (settled.memory_mib, settled.target_mib) == (210, 192)


def test_a_guest_without_a_target_settles_once_still():
    watch = BalloonWatch()
    assert watch.add(0.0, BalloonReading(256, None)) is None
    assert not watch.add(STILL_S, BalloonReading(256, None)).reached


class ReadingsToolstack:
    """Stands in for the host's toolstack: hands out recorded-by-hand
    (memory MiB, memory/target KiB) pairs, one per poll, and keeps the last."""

    def __init__(self, readings):
        self.readings = list(readings)
        self.paths = []

    def domain(self, name):
        memory, _ = self.readings[0]
        return None if memory is None else DomainEntry(name, 7, memory, 1, "-b----", 1.0)

    def xenstore_read(self, path):
        self.paths.append(path)
        _, target = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        return target


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_wait_polls_until_the_target_is_reached():
    xl = ReadingsToolstack([(242, "196608"), (230, "196608"), (214, "196608"), (192, "196608")])
    clock = Clock()
    settled = wait_balloon_settled(xl, "g", timeout=300, poll_s=3, clock=clock, sleep=clock.sleep)
    assert settled.reached and settled.memory_mib == 192 and settled.target_mib == 192
    assert settled.waited_s == 9.0
    assert xl.paths[0] == "/local/domain/7/memory/target"


def test_wait_gives_up_naming_memory_and_target_while_still_moving():
    readings = [(250 - i, "196608") for i in range(40)]
    clock = Clock()
    with pytest.raises(InfrastructureError, match=r"not settled after 60 s: 2\d\d MiB, target 192"):
        wait_balloon_settled(ReadingsToolstack(readings), "g", timeout=60, poll_s=3,
                             clock=clock, sleep=clock.sleep)


def test_a_guest_that_disappears_is_reported():
    clock = Clock()
    with pytest.raises(InfrastructureError, match="gone while waiting for its balloon"):
        wait_balloon_settled(ReadingsToolstack([(None, None)]), "g", timeout=60,
                             clock=clock, sleep=clock.sleep)


def test_a_target_xenstore_does_not_hold_is_none():
    clock = Clock()
    settled = wait_balloon_settled(ReadingsToolstack([(256, None)]), "g", timeout=60, poll_s=3,
                                   clock=clock, sleep=clock.sleep)
    assert settled.target_mib is None and not settled.reached and settled.waited_s >= STILL_S


def test_reaching_the_target_waits_out_a_pause_on_the_way():
    readings = [(230, "196608")] * 10 + [(192, "196608")]
    clock = Clock()
    settled = wait_balloon_settled(ReadingsToolstack(readings), "g", timeout=300, poll_s=3,
                                   reach_target=True, clock=clock, sleep=clock.sleep)
    assert settled.reached and settled.waited_s == 30.0 > STILL_S


def test_reaching_the_target_gives_up_at_the_timeout_when_stuck_short():
    clock = Clock()
    with pytest.raises(InfrastructureError, match="not settled after 60 s: 230 MiB, target 192"):
        wait_balloon_settled(ReadingsToolstack([(230, "196608")]), "g", timeout=60, poll_s=3,
                             reach_target=True, clock=clock, sleep=clock.sleep)
