"""Map-cache invalidate counting, xl dmesg failures, and the data pattern
(its shell commands run for real in busybox sh)."""
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from xenhil.harness.checks.failure import CheckFailed
from xenhil.harness.checks.mapcache import (DataPattern, check_invalidates, check_no_invalidate_failure,
                                            check_pattern_intact, count_invalidates, parse_sha256sum)
from xenhil.harness.xen.parsers.qemu_trace import parse_trace_log

from tests.support.checks import DATA, assert_failure_message, data

BUSYBOX = shutil.which("busybox")


def test_invalidates_are_counted_per_model_from_handle_ioreq_type_8():
    counts = {"qall": count_invalidates(parse_trace_log(data("qemu-dm-qall.log"))),
              "qnet": count_invalidates(parse_trace_log(data("qemu-dm-qnet.log")))}
    assert counts == {"qall": 2, "qnet": 2}
    check_invalidates(counts, 2, {"traces": str(DATA)})
    # the real single-model log of the parsers: one invalidate (with a timestamp prefix)
    assert count_invalidates(parse_trace_log((DATA.parent / "parsers" / "qemu-dm-xhguest.log").read_text())) == 1


def test_a_model_missing_invalidates_fails():
    with pytest.raises(CheckFailed) as info:
        check_invalidates({"qall": 2, "qnet": 0}, 2, {"trace of model qnet": "qnet.log"})
    assert_failure_message(info.value, "model qnet: expected >= 2 invalidate(s) (one per event at least); seen 0",
                           "all models: expected the same number of invalidates (each is broadcast); seen qall=2, qnet=0",
                           "evidence trace of model qnet: qnet.log")
    with pytest.raises(CheckFailed, match="at least one memory-removal event"):
        check_invalidates({"qall": 1}, 0, {"e": "x"})


def test_unsuccessful_invalidate_in_dmesg_fails():
    check_no_invalidate_failure(data("xl_dmesg_clean.txt"), {"xl dmesg": "clean"})
    with pytest.raises(CheckFailed) as info:
        check_no_invalidate_failure(data("xl_dmesg_invalidate_failure.txt"), {"xl dmesg": "dmesg.txt"})
    assert_failure_message(info.value, "expected: no 'Unsuccessful map-cache invalidate' in xl dmesg",
                           "seen: 1 line(s), first: (XEN) [  812.345678] d7v0 Unsuccessful", "evidence xl dmesg: dmesg.txt")


def test_pattern_checksum_is_known_in_advance():
    p = DataPattern("seed1", lines=3)
    assert p.content() == b"xenhil seed1 1\nxenhil seed1 2\nxenhil seed1 3\n"
    assert p.sha256 == hashlib.sha256(p.content()).hexdigest() and p.size == 45
    with pytest.raises(ValueError):
        DataPattern("bad seed")


@pytest.mark.skipif(BUSYBOX is None, reason="busybox (the guest's shell) is not installed")
def test_pattern_commands_work_in_busybox_sh(tmp_path):
    p = DataPattern("mc42", lines=3000)
    target = str(tmp_path / "pattern file")          # a blank, to prove the quoting
    subprocess.run([BUSYBOX, "sh", "-c", p.write_command(target)], check=True)
    assert (tmp_path / "pattern file").read_bytes() == p.content()
    out = subprocess.run([BUSYBOX, "sh", "-c", p.readback_command(target)], check=True,
                         capture_output=True, text=True).stdout
    check_pattern_intact(p, out, target, {"readback": out})
    with open(target, "r+b") as f:                   # one flipped byte
        f.seek(1000)
        f.write(b"X")
    out = subprocess.run([BUSYBOX, "sh", "-c", p.readback_command(target)], check=True,
                         capture_output=True, text=True).stdout
    with pytest.raises(CheckFailed) as info:
        check_pattern_intact(p, out, target, {"readback": "readback.txt"})
    assert_failure_message(info.value, f"expected: sha256 {p.sha256} of {p.size} bytes (pattern seed mc42)",
                           f"seen: sha256 {parse_sha256sum(out)}", "evidence readback: readback.txt")


def test_readback_without_a_checksum_fails():
    with pytest.raises(CheckFailed, match="no checksum in output"):
        check_pattern_intact(DataPattern("x"), "sha256sum: /dev/sdb: No such device", "/dev/sdb", {"r": "x"})


def test_invalidate_counts_are_compared_once_they_stop_moving():
    """Counts read while servers still take buffered invalidates from their
    rings differ for a moment (today's main job: QEMU 4653, probe 4737);
    settled() reads until two readings agree.  A server that lost
    invalidates keeps its lower count, and check_invalidates still fails.
    (Readings written by hand, shaped as the main job's.)"""
    from xenhil.harness.checks.failure import CheckFailed
    from xenhil.harness.checks.mapcache import check_invalidates, settled

    def reader(readings):
        it = iter(readings)
        return lambda: (next(it), "trace")

    on_the_way = reader([{"0": 4653, "probe": 4737}, {"0": 4737, "probe": 4737},
                         {"0": 4737, "probe": 4737}])
    counts, _ = settled(on_the_way, timeout=60, poll=5, sleep=lambda s: None)
    assert counts == {"0": 4737, "probe": 4737}
    check_invalidates(counts, 2, {})

    lost = reader([{"0": 4653, "probe": 4737}] * 20)
    counts, _ = settled(lost, timeout=60, poll=5, sleep=lambda s: None)
    assert counts == {"0": 4653, "probe": 4737}
    with pytest.raises(CheckFailed, match="the same number of invalidates"):
        check_invalidates(counts, 2, {})

    slept = []
    moving = iter(range(100))
    settled(lambda: ({"0": next(moving)}, "t"), timeout=30, poll=5, sleep=slept.append)
    assert sum(slept) == 30, "a count that never settles is read for the timeout, no longer"


# Trace lines written by hand in QEMU 7.2's log-backend shape (pid@sec.usec:),
# a model's map-cache misses around invalidates.
def _remap(index: int) -> str:
    return f"4242@1764600000.000001:xen_remap_bucket index {index:#x}"


_INVALIDATE = "4242@1764600000.000002:handle_ioreq I/O=0x55d0 type=8 dir=1 df=0 ptr=0 port=0x0 data=0x0 count=1 size=4"
_DMA_EARLIER = "\n".join(_remap(i) for i in (0x0, 0x1, 0x9f, 0xe))


def _remaps(window_lines):
    from xenhil.harness.checks.mapcache import Remaps
    return Remaps.around_last_invalidate(parse_trace_log(_DMA_EARLIER), parse_trace_log("\n".join(window_lines)))


def test_a_model_that_maps_a_known_bucket_again_after_its_last_invalidate_emptied_its_cache():
    from xenhil.harness.checks.mapcache import check_map_caches_emptied
    r = _remaps([_INVALIDATE, _remap(0x20), _INVALIDATE, _remap(0x9f), _remap(0x40)])
    assert r.before == {0x0, 0x1, 0x9f, 0xe, 0x20} and r.after == (0x9f, 0x40) and r.invalidated
    check_map_caches_emptied({"qnet": r}, {"trace of model qnet": "trace-qnet.log"})


def test_a_model_that_traces_the_invalidate_but_keeps_its_mappings_fails():
    """The mutant qemu-invalidate-ignored: after its last invalidate the model
    maps only buckets it never had (a kept bucket is a hit, not traced)."""
    from xenhil.harness.checks.mapcache import check_map_caches_emptied
    kept = _remaps([_INVALIDATE, _INVALIDATE, _remap(0x41)])
    with pytest.raises(CheckFailed) as info:
        check_map_caches_emptied({"qall": _remaps([_INVALIDATE, _remap(0x1)]), "qnet": kept},
                                 {"trace of model qnet": "trace-qnet.log"})
    text = assert_failure_message(
        info.value, "model qnet: expected a bucket it had mapped before its last invalidate mapped again after it",
        "seen 1 bucket(s) mapped after it (0x41), none of the 4 mapped before: its map cache kept them",
        "evidence trace of model qnet: trace-qnet.log")
    assert "model qall" not in text
    # no DMA after the invalidate at all is the same verdict
    with pytest.raises(CheckFailed, match=r"0 bucket\(s\) mapped after it \(none\)"):
        check_map_caches_emptied({"qnet": _remaps([_INVALIDATE])}, {"e": "x"})


def test_a_dma_model_with_no_map_cache_miss_before_its_invalidate_fails():
    from xenhil.harness.checks.mapcache import Remaps, check_map_caches_emptied
    r = Remaps.around_last_invalidate([], parse_trace_log("\n".join([_INVALIDATE, _remap(0x1)])))
    with pytest.raises(CheckFailed, match="is the trace event enabled"):
        check_map_caches_emptied({"qide": r}, {"e": "x"})


def test_a_model_without_invalidates_is_left_to_the_count_check():
    from xenhil.harness.checks.mapcache import check_map_caches_emptied
    r = _remaps([_remap(0x1)])
    assert not r.invalidated and r.after == () and 0x1 in r.before
    check_map_caches_emptied({"qnet": r}, {"e": "x"})


def test_only_models_owning_a_disk_or_a_nic_are_dma_models():
    from xenhil.harness.checks.mapcache import dma_models
    owners = {"ui": "qui", "audio": "qaudio", "ide": "qide", "serial": "qserial", "nic:nic1": "qnet"}
    assert dma_models(owners) == {"qide", "qnet"}
    assert dma_models({"ui": "0", "ide": "0", "serial": "0", "nic:nic1": "0"}) == {"0"}
    assert dma_models({"ui": "qall", "serial": "qall", "ide": None}) == set()


def test_the_nic_workload_pings_dom0_across_the_isolated_bridge_only():
    """Guest traffic stays on the lab host: dom0's xenbr0 address, which the
    dom0 image's network unit gives it."""
    from xenhil.harness.lab.virtual.guestkit import DOM0_BRIDGE_ADDRESS, NIC_TRAFFIC_COMMAND
    unit = (Path(__file__).resolve().parents[1] / "lab/virtual/dom0/overlay/etc/systemd/network"
            / "30-xenbr0.network").read_text()
    assert f"Address={DOM0_BRIDGE_ADDRESS}/24" in unit
    assert f"ping -c 3 -W 1 {DOM0_BRIDGE_ADDRESS} " in NIC_TRAFFIC_COMMAND


def _recorded_trace(name: str):
    import gzip
    path = Path(__file__).parent / "data" / "recorded" / name
    return parse_trace_log(gzip.decompress(path.read_bytes()).decode(), source=name)


def test_real_traces_of_a_map_cache_cycle_pass_on_the_good_build_and_fail_on_the_mutant():
    """qnet's trace from its first mem-set on, recorded on the lab
    (2026-12-01, our port, qnet+qall): the reference build, where qnet maps
    its rings' buckets 0x3d and 0x3e again after its last of 7 810
    invalidates, and the mutant qemu-invalidate-ignored, which maps nothing
    after its last one.  (The mutant run's misses from before the window
    were not saved then; its window alone has none.)"""
    from xenhil.harness.checks.mapcache import Remaps, check_map_caches_emptied
    good = Remaps.around_last_invalidate(
        [], _recorded_trace("qemu-dm_qnet_mapcache_cycle_qnet_qall_port_417_emulated.log.gz"))
    assert good.invalidated and {0x3D, 0x3E} <= good.before and set(good.after) == {0x3D, 0x3E}
    check_map_caches_emptied({"qnet": good}, {"trace": "good"})
    bad = Remaps.around_last_invalidate(
        [], _recorded_trace("qemu-dm_qnet_mapcache_cycle_qnet_qall_mutant_invalidate_ignored_417_emulated.log.gz"))
    assert bad.invalidated and bad.after == ()
    with pytest.raises(CheckFailed, match="model qnet"):
        check_map_caches_emptied({"qnet": bad}, {"trace": "mutant"})
