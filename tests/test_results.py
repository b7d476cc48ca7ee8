"""Results history, verdicts, latency statistics, plots and the report."""
from __future__ import annotations

import random
import re
import struct
import zlib
from pathlib import Path

import pytest

from xenhil.harness.results.latency import (LatencyRule, build_class, find_latency_regressions,
                                            latency_regressions, latency_rule, mann_whitney_greater,
                                            subsample, summarize)
from xenhil.harness.results.plots import latency_distribution_png
from xenhil.harness.results.store import Outcome, ResultsStore
from xenhil.harness.results.verdicts import KnownIssue, load_known_issues, verdict
from xenhil.harness.errors import ConfigError
from tests.support.postgres import fresh_store_url, postgres_url  # noqa: F401

pytest_plugins = ["pytester"]


def _o(seq, build, outcome):
    return Outcome(seq, f"r{seq}", build, outcome, "", "")


@pytest.mark.parametrize("outcome,history,kind,text,blocking", [
    ("passed", [_o(1, "a", "failed")], "pass", "pass", False),
    ("failed", [], "baseline untested", "baseline untested", False),
    ("failed", [_o(2, "a", "passed"), _o(1, "a", "failed")], "regression", "regression vs run 2", True),
    ("broken", [_o(3, "a", "failed"), _o(2, "a", "passed")], "fails like", "fails like run 3", False),
    ("failed", [_o(2, "a", "failed"), _o(1, "a", "broken")], "never passed", "never passed", False),
    ("failed", [_o(4, "b", "failed"), _o(3, "b", "passed")], "flaky", "passed in run 3 (flaky)", False),
    ("failed", [_o(2, "a", "skipped")], "baseline untested", "baseline untested", False),
])
def test_verdicts_follow_osstest(outcome, history, kind, text, blocking) -> None:
    v = verdict("suites/pci/test_x.py::test_y", outcome, "b", history)
    assert (v.kind, v.text, v.blocking) == (kind, text, blocking)


def test_known_issue_is_not_a_regression(tmp_path: Path) -> None:
    path = tmp_path / "known.yaml"
    path.write_text("- {test: 'suites/pci/*', reason: 'hotplug unsupported', link: 'https://x/1'}\n")
    known = load_known_issues(path)
    v = verdict("suites/pci/test_x.py::test_y", "failed", "b", [_o(1, "a", "passed")], known)
    assert (v.kind, v.blocking, v.link) == ("known issue", False, "https://x/1")
    v2 = verdict("suites/ioroute/test_x.py::t", "failed", "b", [_o(1, "a", "passed")], known)
    assert v2.kind == "regression"


def test_known_issues_file_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "known.yaml"
    path.write_text("- {test: 'a', reason: 'r'}\n")
    with pytest.raises(ConfigError, match=r"entry 0: missing link"):
        load_known_issues(path)


def test_summary_percentiles() -> None:
    s = summarize(list(range(1, 101)))
    assert (s["n"], s["p50_ns"], s["p90_ns"], s["p99_ns"], s["max_ns"]) == (100, 50, 90, 99, 100)


def test_mann_whitney_detects_shift_and_not_noise() -> None:
    rng = random.Random(7)
    old = [rng.lognormvariate(8.0, 0.3) for _ in range(2000)]
    same = [rng.lognormvariate(8.0, 0.3) for _ in range(2000)]
    slower = [v * 1.2 for v in (rng.lognormvariate(8.0, 0.3) for _ in range(2000))]
    assert mann_whitney_greater(slower, old) < 1e-9
    assert mann_whitney_greater(same, old) > 0.01
    assert mann_whitney_greater(old, slower) > 0.99
    assert mann_whitney_greater([5.0] * 50, [5.0] * 50) == 1.0


# Hand-made latency runs (not recorded output): each server's samples are
# gaussian around its cost above a 1 us baseline, and a whole run can be
# slower by ``slow`` (the virtual lab's slow windows slow every dom0 server).
BASE_NS = 1000.0


def record_guest(store, run, costs, *, build="tarball-aaaa", slow=1.0, emulated=False,
                 split="single+probe", seed=None, fault=None, cpu_wait=None):
    rng = random.Random(seed if seed is not None else zlib.crc32(run.encode()))
    store.record_run(run, build=build, facts={"xenhil.probe_fault": fault} if fault else None)
    ports = {"xen": "0x40", "0": "0x64", "probe": "0x6100", "qall": "0x1f7"}
    for server, cost in {"xen": 0.0, **costs}.items():
        mean = BASE_NS + cost * slow
        samples = [rng.gauss(mean, mean * 0.05) for _ in range(250)]
        store.record_latency(run, "vhost1", split, build, server, ports[server],
                             summarize(samples), samples, emulated=emulated,
                             emulator_cpu_wait=cpu_wait)


@pytest.fixture
def store(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.sqlite'}")
    yield store
    store.close()


def regressed(store, run):
    return {(r.server, r.port) for r in find_latency_regressions(store, run)}


def test_on_real_hardware_a_cost_grows_ten_percent_before_it_counts(store) -> None:
    record_guest(store, "r1", {"0": 10000})
    record_guest(store, "r2", {"0": 10300})     # +3 %: significant, below the floor
    record_guest(store, "r3", {"0": 12360})     # +20 % on the history's median
    assert regressed(store, "r2") == set()
    [text] = latency_regressions(store, "r3")
    assert text.startswith("vhost1 split=single+probe server=0 port 0x64: round-trip cost above "
                           "baseline 12")
    assert "the median of 2 run(s)" in text and "tolerance +10 %: floor" in text
    assert "REGRESSION" in text and text.endswith("(against 2 run(s) of build class built, newest r2)")


def test_on_an_emulated_host_a_whole_run_slower_together_is_no_regression(store) -> None:
    """The virtual lab's slow windows: every dom0 server +60 % at once."""
    record_guest(store, "r1", {"0": 600_000, "probe": 870_000}, emulated=True)
    record_guest(store, "r2", {"0": 600_000, "probe": 870_000}, emulated=True, slow=1.6)
    assert regressed(store, "r2") == set()
    # The same growth on real hardware is two regressions.
    record_guest(store, "h1", {"0": 600_000, "probe": 870_000}, split="single")
    record_guest(store, "h2", {"0": 600_000, "probe": 870_000}, split="single", slow=1.6)
    assert regressed(store, "h2") == {("0", "0x64"), ("probe", "0x6100")}


def test_on_an_emulated_host_one_slowed_server_moves_its_share(store) -> None:
    """A delay on the probe alone (the delay mutant's fault), +200 us on a
    cost of 609 us, in a run that is also 30 % faster overall."""
    record_guest(store, "r1", {"0": 600_000, "probe": 870_000}, emulated=True)
    # 0.7 x 870 us + 200 us: 809 us, over QEMU's 0.7 x 600 us.
    record_guest(store, "r2", {"0": 600_000, "probe": (0.7 * 870_000 + 200_000) / 0.7},
                 emulated=True, slow=0.7)
    [text] = latency_regressions(store, "r2")
    assert text.startswith("vhost1 split=single+probe server=probe port 0x6100: round-trip cost "
                           "above baseline 8")    # 809 us, give or take the noise
    share = re.search(r"no regression; share of the siblings' cost (\S+) vs (\S+), the median of 1 "
                      r"run\(s\) \(\+(\S+) %, tolerance \+15 %: floor \(history of 1 run\(s\), "
                      r"spread needs 5\)\)", text)
    assert share, text
    assert float(share[1]) == pytest.approx(809 / 420, rel=0.03)
    assert float(share[2]) == pytest.approx(870 / 600, rel=0.03)
    assert 25 < float(share[3]) < 40
    assert text.count("REGRESSION") == 1


def test_one_server_alone_has_no_share_and_is_judged_by_its_cost(store) -> None:
    record_guest(store, "r1", {"qall": 600_000}, emulated=True, split="qnet+qall")
    record_guest(store, "r2", {"qall": 1_000_000}, emulated=True, split="qnet+qall")   # +67 %
    record_guest(store, "r3", {"qall": 2_000_000}, emulated=True, split="qnet+qall")   # +150 % on 800
    assert regressed(store, "r2") == set()
    [text] = latency_regressions(store, "r3")
    assert "share" not in text and "tolerance +100 %: floor" in text


def test_a_history_of_five_runs_sets_the_tolerance_from_its_spread(store) -> None:
    rule = LatencyRule()
    assert rule.tolerance(0.10, [1.0, 1.1]) == (0.10, "floor (history of 2 run(s), spread needs 5)")
    tolerance, source = rule.tolerance(0.10, [1.0, 1.0, 1.0, 1.0, 1.4])
    assert tolerance == pytest.approx(0.6) and source == "history spread 40 % x 1.5"
    assert rule.tolerance(0.10, [1.0, 1.01, 1.0, 0.99, 1.0])[0] == 0.10
    # Five real-hardware runs swinging +-20 %: +25 % is inside their spread.
    for i, cost in enumerate((10000, 12000, 8000, 10000, 10000)):
        record_guest(store, f"r{i}", {"0": cost}, seed=i)
    record_guest(store, "now", {"0": 12500}, seed=9)
    assert regressed(store, "now") == set()
    # Now six runs, up to +25 % from their median: the tolerance is 37.5 %.
    record_guest(store, "later", {"0": 14500}, seed=10)  # +45 %
    [text] = latency_regressions(store, "later")
    assert "the median of 6 run(s)" in text and "history spread 25 % x 1.5" in text


def test_history_is_the_same_build_class_and_never_a_mutant_run(store) -> None:
    record_guest(store, "debian", {"0": 5000}, build="debian-default-1111")
    record_guest(store, "port", {"0": 10000}, build="tarball-2222")
    record_guest(store, "mutant", {"0": 20000}, build="tarball-2222", fault="delay=200")
    record_guest(store, "port-again", {"0": 10100}, build="tarball-3333")
    assert regressed(store, "port-again") == set()        # not against Debian's 5 us nor the mutant
    record_guest(store, "debian-again", {"0": 10000}, build="debian-default-1111")
    [text] = latency_regressions(store, "debian-again")   # against Debian's own 5 us
    assert text.endswith("(against 1 run(s) of build class debian, newest debian)")
    record_guest(store, "port-slower", {"0": 12500}, build="tarball-4444")
    [text] = latency_regressions(store, "port-slower")
    assert "the median of 2 run(s)" in text
    assert text.endswith("newest port-again; build changed: tarball-3333 -> tarball-4444)")


def test_an_emulated_hosts_history_is_its_rows_measured_as_such(store) -> None:
    """Rows written before the store recorded the kind of host (they read
    emulated=0) were measured one port after another: not the history of an
    interleaved measurement on the virtual lab."""
    record_guest(store, "sequential", {"0": 500_000, "probe": 700_000}, emulated=False)
    record_guest(store, "interleaved", {"0": 1_050_000, "probe": 1_350_000}, emulated=True)
    assert regressed(store, "interleaved") == set()
    assert find_latency_regressions(store, "interleaved") == []
    record_guest(store, "next", {"0": 2_300_000, "probe": 2_950_000}, emulated=True)
    [qemu, probe] = latency_regressions(store, "next")
    assert "the median of 1 run(s)" in qemu and "newest interleaved" in probe


def test_a_run_measured_while_the_emulator_waited_for_cpus_is_never_history(store) -> None:
    """On the virtual lab a fast-layer run beside the catalog made qall's
    round trip 5x longer on an unchanged build (harness.lab.virtual.quirks).
    Kept as history, that run would widen the spread-based tolerance past
    +600 % for the next ten runs and hide a real regression."""
    for i in range(5):
        record_guest(store, f"r{i}", {"qall": 1_000_000}, emulated=True, split="qnet+qall",
                     cpu_wait=0.18, seed=i)
    record_guest(store, "busy", {"qall": 5_200_000}, emulated=True, split="qnet+qall", cpu_wait=0.87)
    [text] = latency_regressions(store, "busy")
    assert text.endswith("measured while the host's emulator waited 0.87 s per second for a CPU "
                         "(contended above 0.4): the machine's figure, kept out of the history)")
    record_guest(store, "next", {"qall": 2_300_000}, emulated=True, split="qnet+qall", cpu_wait=0.2)
    [text] = latency_regressions(store, "next")           # +130 %: past the +100 % floor
    assert "the median of 5 run(s)" in text and "newest r4" in text and "kept out" not in text
    # A run nobody watched (NULL) is history like any other.
    record_guest(store, "unwatched", {"qall": 1_000_000}, emulated=True, split="qnet+qall")
    record_guest(store, "after", {"qall": 1_000_000}, emulated=True, split="qnet+qall", cpu_wait=0.1)
    assert store.latency_history("after", "vhost1", "qnet+qall", "built", 10, emulated=True,
                                 cpu_wait_above=0.4)[0]["run_id"] == "unwatched"


def test_build_classes_and_rules() -> None:
    assert build_class("debian-default-76c521f334d5ae71") == "debian"
    assert {build_class(b) for b in ("tarball-4caec08fd7518aa5", "dist-1", "debs-2")} == {"built"}
    assert latency_rule(False) == LatencyRule()
    emulated = latency_rule(True)
    assert (emulated.cost_floor, emulated.share_floor) == (1.0, 0.15)


def test_subsample_is_bounded_and_keeps_time_order() -> None:
    values = list(range(100000))
    kept = subsample(values)
    assert len(kept) == 2000 and kept == sorted(kept) and kept[0] == 0 and kept[1] == 50
    assert subsample(values[:10]) == values[:10]


def test_latency_plot_is_a_png(tmp_path: Path) -> None:
    rng = random.Random(1)
    path = latency_distribution_png(
        {"xen (PIT)": [rng.gauss(300, 20) for _ in range(500)],
         "qemu": [rng.gauss(20000, 3000) for _ in range(500)]},
        tmp_path / "latency.png", "split=single on vh1")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (800, 450)


def test_store_history_and_latency(tmp_path: Path) -> None:
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.sqlite'}")
    store.record_run("A", build="b1")
    store.record_run("B", build="b2")
    store.record_outcome("A", "t", "passed")
    store.record_outcome("B", "t", "failed", "product", "h1", "single", "boom")
    assert [(h.run_id, h.outcome) for h in store.history("t", "B")] == [("A", "passed")]
    summary = {"n": 3, "p50_ns": 2, "p90_ns": 3, "p99_ns": 3, "max_ns": 3}
    store.record_latency("A", "h1", "single", "b1", "qemu", "0x10", summary, [1, 2, 3])
    [prev] = store.latency_history("B", "h1", "single", "built", 10)
    assert prev["rows"][0]["samples"] == [1, 2, 3] and prev["run_id"] == "A"
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def results_db(request, tmp_path: Path) -> str:
    """A new results store: a SQLite file, or a database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.sqlite'}"
    return fresh_store_url(request, tmp_path, "results")


def test_two_runs_give_a_regression_in_the_triage_summary(pytester: pytest.Pytester, monkeypatch,
                                                          tmp_path: Path, results_db: str) -> None:
    import socket

    from xenhil.harness.report import triage_summary
    db = results_db
    pytester.makepyfile(test_flip="""
        import os
        def test_flips():
            assert os.environ.get("BREAK") != "1", "ownership differs"
        def test_stable(): pass
    """)
    for name in ("baseline", "patched"):   # two Xen builds that differ in content
        (tmp_path / name / "boot").mkdir(parents=True)
        (tmp_path / name / "boot/xen-4.19.gz").write_text(name)
        (tmp_path / name / "usr/sbin").mkdir(parents=True)
        (tmp_path / name / "usr/sbin/xl").write_text("xl")
    pytester.runpytest(f"--results-db={db}", "--run-id=run-good",
                       f"--xen-build={tmp_path / 'baseline'}").assert_outcomes(passed=2)
    monkeypatch.setenv("BREAK", "1")
    pytester.runpytest(f"--results-db={db}", "--run-id=run-bad",
                       f"--xen-build={tmp_path / 'patched'}").assert_outcomes(passed=1, failed=1)
    store = ResultsStore(db)
    text = triage_summary(store, "run-bad")
    assert store.run("run-bad")["runner"] == socket.gethostname()
    store.close()
    blocking = text.split("are blocking (regressions):")[1].split("\n\n")[0]
    assert "test_flip.py::test_flips  [product]  regression vs run 1" in blocking
    assert "1 passed, 1 failed, 0 skipped" in text


def test_a_results_db_that_cannot_be_opened_is_one_usage_error(pytester: pytest.Pytester) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]      # nothing listens on it once closed
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest(f"--results-db=postgresql://ci@127.0.0.1:{port}/results")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.startswith("ERROR:")]
    assert len(errors) == 1 and "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert f"cannot connect to results store postgresql://ci@127.0.0.1:{port}/results" in errors[0]
    assert f"pg_isready -h 127.0.0.1 -p {port}" in errors[0]
