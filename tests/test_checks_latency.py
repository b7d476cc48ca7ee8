"""Latency rows from xhprobe time-in results: the real probe (built, run in
--dry-run) for the output shape, and hand-made results of known values."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from xenhil.harness.checks.failure import CheckFailed
from xenhil.harness.checks.latency import (LatencyVerdicts, check_latency_rows, confirmed_latency_regressions,
                                           latency_rows, record_rows, time_in_command)
from xenhil.harness.errors import ConfigError
from xenhil.harness.probes import build_xhprobe
from xenhil.harness.results.latency import BASELINE_SERVER, percentile
from xenhil.harness.results.store import ResultsStore
from xenhil.harness.xen.parsers.probe_output import TimeIn, parse_single

from tests.support.checks import assert_failure_message
from tests.support.dry_run_guest import LocalDryRunGuest

HZ = 1e9   # 1 cycle = 1 ns: easy numbers


def timein(port, samples, last=0x60, width=1):
    s = sorted(samples)
    return TimeIn(port, width, len(s), HZ, s[0], int(percentile(s, 50)), int(percentile(s, 90)),
                  int(percentile(s, 99)), s[-1], sum(s) / len(s), last, "test", False, tuple(samples))


BASE = timein(0x40, [100] * 90 + [150] * 10, last=0x12)
COM1 = timein(0x3FD, [3000] * 50 + [4000] * 49 + [90000])
NIC = timein(0xC008, [5000] * 100, last=0x80, width=4)


def test_rows_have_percentiles_and_cost_above_the_baseline():
    rows = latency_rows({"qall": COM1, "qnet": NIC}, BASE)
    assert [r.server for r in rows] == [BASELINE_SERVER, "qall", "qnet"]
    base, qall, qnet = rows
    assert base.cost_ns is None and base.port == "0x40"
    assert qall.summary == {"n": 100, "p50_ns": 3000.0, "p90_ns": 4000.0, "p99_ns": 4000.0, "max_ns": 90000.0}
    assert qall.cost_ns == 2900.0 and qnet.cost_ns == 4900.0 and qall.port == "0x3fd"
    assert len(qall.samples) == 100
    check_latency_rows(rows, {"time-in": "x"})


def test_cost_at_or_below_baseline_or_all_ones_fails():
    unclaimed = timein(0x2F8, [100] * 100, last=0xFF)       # Xen answers: fast, all ones
    rows = latency_rows({"qserial": unclaimed}, BASE)
    with pytest.raises(CheckFailed) as info:
        check_latency_rows(rows, {"time-in qserial 0x2f8": "t.jsonl"})
    assert_failure_message(info.value,
                           "server qserial port 0x2f8: expected p50 above the Xen-internal baseline (the access leaves Xen); seen p50 100 ns, cost 0 ns",
                           "server qserial port 0x2f8: expected a value from the model; seen 0xff (all ones",
                           "evidence time-in qserial 0x2f8: t.jsonl")
    check_latency_rows(latency_rows({"q": timein(0x1F7, [900] * 10, last=0xFF)}, BASE), {"e": "x"},
                       check_values=False)


def test_rows_go_to_the_results_store(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    store.record_run("run1")
    record_rows(store, "run1", "vhost1", "qnet+qall", "xen-4.17", latency_rows({"qall": COM1}, BASE))
    got = {r["server"]: r for r in store.latency_rows("run1")}
    assert got["qall"]["p50_ns"] == 3000.0 and got["qall"]["port"] == "0x3fd"
    assert got[BASELINE_SERVER]["p50_ns"] == 100.0 and len(got["qall"]["samples"]) == 100
    store.close()


def test_summary_from_the_real_probe_without_raw_samples(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed: cannot build xhprobe")
    try:
        probe = build_xhprobe(tmp_path / "xhprobe")
    except ConfigError as exc:
        pytest.skip(f"xhprobe cannot be built here: {exc}")
    cmd = time_in_command(0x40, 50, raw=False, probe=str(probe))
    assert cmd == f"{probe} time-in 0x40 50 --width 1"
    out = subprocess.run(["sh", "-c", cmd.replace(" time-in", " --dry-run time-in")], check=True,
                         capture_output=True, text=True).stdout
    t = parse_single(out, TimeIn)
    rows = latency_rows({"qall": t}, t)
    assert rows[1].summary["n"] == 50 and rows[1].samples == []
    assert rows[1].summary["p50_ns"] == pytest.approx(t.p50_cycles * 1e9 / t.tsc_hz)
    assert rows[1].cost_ns == 0.0


def test_raw_samples_are_thinned_to_what_a_serial_console_carries(tmp_path):
    from xenhil.harness.checks.latency import CONSOLE_SAMPLES
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed: cannot build xhprobe")
    try:
        probe = build_xhprobe(tmp_path / "xhprobe")
    except ConfigError as exc:
        pytest.skip(f"xhprobe cannot be built here: {exc}")
    cmd = time_in_command(0x40, 5000, probe=str(probe))
    out = subprocess.run(["sh", "-c", cmd.replace(" time-in", " --dry-run time-in")], check=True,
                         capture_output=True, text=True).stdout
    samples = [line for line in out.splitlines() if '"op":"sample"' in line]
    assert len(samples) == CONSOLE_SAMPLES
    t = parse_single(out, TimeIn)
    assert t.n == 5000 and len(t.samples) == CONSOLE_SAMPLES  # the summary still covers all 5000


def test_one_time_in_reads_the_baseline_and_every_server_in_turn(tmp_path):
    from xenhil.harness.checks.latency import measure_latency
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed: cannot build xhprobe")
    probe = build_xhprobe(tmp_path / "xhprobe")
    guest = LocalDryRunGuest(probe, tmp_path / "guest")
    cmd = time_in_command([0x40, 0x64, 0x6100], 5000, probe=str(probe))
    assert cmd.startswith(f"{probe} time-in 0x40,0x64,0x6100 5000 --width 1 --raw | awk ")
    rows = measure_latency(guest, {"0": 0x64, "probe": 0x6100}, count=5000, probe=str(probe),
                           check=False)
    assert [(r.server, r.port, r.summary["n"]) for r in rows] == \
        [(BASELINE_SERVER, "0x40", 5000), ("0", "0x64", 5000), ("probe", "0x6100", 5000)]
    # about CONSOLE_SAMPLES of each port came back, in time order
    assert all(200 <= len(r.samples) <= 300 for r in rows)
    evidence = (tmp_path / "guest" / "latency" / "time-in-interleaved.jsonl").read_text()
    assert evidence.count('"op":"time-in"') == 3 and '"interleaved":3' in evidence
    with pytest.raises(CheckFailed, match="all ones: nobody claims the port"):
        measure_latency(guest, {"0": 0x64}, count=100, probe=str(probe))


# --- a regression must show twice ----------------------------------------------------

RECORDED = Path(__file__).parent / "data" / "recorded"


def recorded_rows(variant: str) -> list:
    def load(name: str) -> TimeIn:
        return parse_single((RECORDED / f"time_in_{name}_single{variant}_417_emulated.jsonl").read_text(),
                            TimeIn)
    return latency_rows({"0": load("qemu_0x64")}, load("pit_0x40"))


@pytest.fixture
def store_with_a_previous_run(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    store.record_run("before")
    record_rows(store, "before", "vhost1", "single", "debian-default-x", recorded_rows(""))
    store.record_run("now")
    yield store
    store.close()


def test_on_the_emulated_host_it_was_recorded_on_a_slow_window_is_no_regression(
        store_with_a_previous_run):
    """QEMU's cost +78 % with the baseline unmoved, recorded on the virtual
    lab: inside the emulated hosts' recorded spread, so no second measurement."""
    def measure_again():
        raise AssertionError("measured again without a regression")

    verdicts = confirmed_latency_regressions(store_with_a_previous_run, "now", "vhost1", "single",
                                             "debian-default-x", recorded_rows("_slow_window"),
                                             measure_again, emulated=True)
    assert verdicts == LatencyVerdicts([], [], [])


# Below, the same recorded rows judged as if real hardware had measured them
# (emulated=False, a +10 % floor): the slow window is then a regression, and
# what a second measurement makes of it is the subject.

def test_a_slow_window_the_second_measurement_does_not_show_is_not_a_regression(
        store_with_a_previous_run):
    store = store_with_a_previous_run
    measured_again = []

    def measure_again():
        measured_again.append(True)
        return recorded_rows(""), None    # the second measurement: back to normal

    verdicts = confirmed_latency_regressions(store, "now", "vhost1", "single", "debian-default-x",
                                             recorded_rows("_slow_window"), measure_again)
    assert measured_again == [True]
    assert verdicts.confirmed == []
    [first] = verdicts.first
    assert first.startswith("vhost1 split=single server=0 port 0x64: ") and "REGRESSION" in first
    assert verdicts.unconfirmed == [first]
    # The run keeps the second measurement: the next run compares with it.
    qemu = {r["server"]: r for r in store.latency_rows("now")}["0"]
    assert qemu["p50_ns"] == recorded_rows("")[1].summary["p50_ns"]


def test_a_regression_both_measurements_show_fails_with_both_figures(store_with_a_previous_run):
    verdicts = confirmed_latency_regressions(store_with_a_previous_run, "now", "vhost1", "single",
                                             "debian-default-x", recorded_rows("_slow_window"),
                                             lambda: (recorded_rows("_slow_window"), None))
    [text] = verdicts.confirmed
    assert verdicts.unconfirmed == []
    assert text.startswith("vhost1 split=single server=0 port 0x64: round-trip cost above baseline")
    assert text.count("REGRESSION") == 2 and "; first measurement: round-trip cost" in text
    assert text.endswith("(against 1 run(s) of build class debian, newest before)")


def test_the_run_keeps_the_emulator_wait_of_the_measurement_it_keeps(store_with_a_previous_run):
    """The store carries what the emulator got during the kept (second)
    measurement: a contended one is then never the history of later runs."""
    from xenhil.harness.lab.virtual.contention import CpuWait
    first, second = (CpuWait("vhost1", 4242, 30.0, waited, 1.2, 2) for waited in (0.9, 0.7))
    store = store_with_a_previous_run
    confirmed_latency_regressions(store, "now", "vhost1", "single", "debian-default-x",
                                  recorded_rows("_slow_window"),
                                  lambda: (recorded_rows("_slow_window"), second), wait=first)
    assert {r["emulator_cpu_wait"] for r in store.latency_rows("now")} == {0.7}


def test_no_regression_measures_once(store_with_a_previous_run):
    def measure_again():
        raise AssertionError("measured again without a regression")

    verdicts = confirmed_latency_regressions(store_with_a_previous_run, "now", "vhost1", "single",
                                             "debian-default-x", recorded_rows(""), measure_again)
    assert verdicts == LatencyVerdicts([], [], [])


# --- the rule over a recorded interleaved measurement --------------------------------

INTERLEAVED = RECORDED / "time_in_interleaved_pit_qemu_probe_single_probe_417_emulated.jsonl"


def interleaved_rows(probe_delay_ns: float = 0.0) -> list:
    """The recorded measurement's rows; ``probe_delay_ns`` adds that much to
    every probe sample (the minimal alteration the delay mutant makes)."""
    from xenhil.harness.xen.parsers.probe_output import parse_probe_output
    base, qemu, probe = parse_probe_output(INTERLEAVED.read_text())
    if probe_delay_ns:
        extra = round(probe_delay_ns * probe.tsc_hz / 1e9)
        samples = tuple(c + extra for c in probe.samples)
        ordered = sorted(samples)
        probe = TimeIn(probe.port, probe.width, probe.n, probe.tsc_hz, ordered[0],
                       probe.p50_cycles + extra, probe.p90_cycles + extra, probe.p99_cycles + extra,
                       probe.max_cycles + extra, probe.mean_cycles + extra, probe.last_value,
                       probe.tsc_hz_source, False, samples, probe.interleaved)
    return latency_rows({"0": qemu, "probe": probe}, base)


def test_the_recorded_interleaved_measurement_against_itself_is_no_regression(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    store.record_run("before")
    record_rows(store, "before", "vhost1", "single+probe", "tarball-x", interleaved_rows(),
                emulated=True)
    store.record_run("now")
    verdicts = confirmed_latency_regressions(store, "now", "vhost1", "single+probe", "tarball-x",
                                             interleaved_rows(), lambda: (interleaved_rows(), None),
                                             emulated=True)
    store.close()
    assert verdicts == LatencyVerdicts([], [], [])


def delay_mutant_us() -> int:
    from xenhil.harness.mutants.catalog import load_mutant_catalog
    [mutant] = load_mutant_catalog().chosen(["probe-delay"])
    return int(mutant.probe_fault.removeprefix("delay="))


def test_the_same_measurement_with_the_delay_mutants_delay_is_a_share_regression(tmp_path):
    """The delay mutant's fault (lab/mutants: 400 us), added to the recorded
    probe samples: the probe's cost grows by 30 %, far inside an emulated
    host's cost floor, and its share of QEMU's cost by as much, past the
    share floor."""
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    store.record_run("before")
    record_rows(store, "before", "vhost1", "single+probe", "tarball-x", interleaved_rows(),
                emulated=True)
    store.record_run("now")
    delayed = interleaved_rows(probe_delay_ns=delay_mutant_us() * 1000)
    verdicts = confirmed_latency_regressions(store, "now", "vhost1", "single+probe", "tarball-x",
                                             delayed, lambda: (delayed, None), emulated=True)
    store.close()
    [text] = verdicts.confirmed
    assert text.startswith("vhost1 split=single+probe server=probe port 0x6100: round-trip cost")
    second, first = text.split("; first measurement: ")
    for measurement in (second, first):
        cost, share = measurement.split("; share of the siblings' cost ")
        assert "no regression" in cost and "tolerance +100 %" in cost
        assert re.search(r"\(\+(29|30)\.\d %, tolerance \+15 %", share) and "REGRESSION" in share


def test_a_server_named_like_the_baseline_is_refused_before_measuring(tmp_path):
    from xenhil.harness.checks.latency import measure_latency
    from xenhil.harness.errors import TestBugError
    guest = LocalDryRunGuest(tmp_path / "no-probe-needed", tmp_path / "guest")
    with pytest.raises(TestBugError, match="a server named 'xen' would be taken for the "
                                           "Xen-internal baseline"):
        measure_latency(guest, {"xen": 0x64})
    assert not (tmp_path / "guest").exists()
