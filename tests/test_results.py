"""Results history, verdicts, latency statistics, plots and the report."""
from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from harness.results.latency import (compare, latency_regressions, mann_whitney_greater, subsample,
                                     summarize)
from harness.results.plots import latency_distribution_png
from harness.results.store import Outcome, ResultsStore
from harness.results.verdicts import KnownIssue, load_known_issues, verdict
from harness.errors import ConfigError
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


def test_latency_regression_needs_threshold_and_significance() -> None:
    rng = random.Random(3)
    before = [rng.gauss(10000, 500) for _ in range(2000)]
    slower = [rng.gauss(12000, 500) for _ in range(2000)]     # +20 % cost
    tiny = [rng.gauss(10300, 500) for _ in range(2000)]       # +3 %: significant, below threshold
    prev = {**summarize(before), "samples": before}
    r = compare({**summarize(slower), "samples": slower}, prev, 1000, 1000)
    assert r.regression and "REGRESSION" in r.text
    r2 = compare({**summarize(tiny), "samples": tiny}, prev, 1000, 1000)
    assert not r2.regression and r2.p_value < 0.01
    r3 = compare({**summarize(slower), "samples": slower}, None, 1000, None)
    assert not r3.regression and "no previous run" in r3.text


def test_a_latency_regression_says_which_run_and_build_it_is_measured_against(tmp_path: Path) -> None:
    rng = random.Random(5)
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.sqlite'}")

    def record(run: str, build: str, qemu_mean: float) -> None:
        store.record_run(run, build=build)
        for server, port, mean in (("xen", "0x40", 1000.0), ("0", "0x64", qemu_mean)):
            samples = [rng.gauss(mean, 300) for _ in range(2000)]
            store.record_latency(run, "vhost1", "single", build, server, port, summarize(samples),
                                 samples)

    record("r1", "debian-default-aaaa", 10000)
    record("r2", "debian-default-aaaa", 10100)   # same build, +1 %: no regression
    record("r3", "debian-default-bbbb", 12000)   # Xen command line changed, +20 %
    assert latency_regressions(store, "r2") == []
    [text] = latency_regressions(store, "r3")
    store.close()
    assert text.startswith("vhost1 split=single server=0 port 0x64: round-trip cost above baseline")
    assert "REGRESSION" in text
    assert text.endswith("(against run r2; build changed: debian-default-aaaa -> debian-default-bbbb)")


def test_subsample_is_bounded_and_repeatable() -> None:
    values = list(range(100000))
    assert len(subsample(values)) == 2000
    assert subsample(values) == subsample(values)


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
    prev = store.previous_latency("B", "h1", "single", "qemu", "0x10")
    assert prev["samples"] == [1, 2, 3] and prev["run_id"] == "A"
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

    from harness.report import triage_summary
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
