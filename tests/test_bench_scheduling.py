"""The scheduling benchmark (benchmarks/bench_scheduling.py): a small real run
(2 real sshd hosts, pytest -n 2 through the plugin's host fixture) writes
figures that follow from its recorded per-test data and stops what it
started; and the verdicts come from the data, so a planted unfair split, a
starved claim, two tests on one host at once or an SSH command answered by
the wrong host each fail it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.bench_scheduling import TARGET_RATIO, analyse, free_seconds

ROOT = Path(__file__).resolve().parent.parent
HOSTS = {"h1": "127.0.0.201", "h2": "127.0.0.202"}


def _processes_in(workdir: Path) -> list[str]:
    """Processes whose command line names ``workdir`` (sshd, pytest) or that
    run in it (xdist workers, whose command line names nothing)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if str(workdir) in cmdline or cwd.startswith(str(workdir)):
            found.append(f"{entry}: {cmdline} (in {cwd})")
    return found


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    tmp = tmp_path_factory.mktemp("bench-scheduling")
    output, workdir = tmp / "scheduling.json", tmp / "work"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scheduling", "--hosts", "2", "--workers", "2",
         "--tests", "4", "--hold", "1", "--baseline-runs", "1", "--output", str(output),
         "--workdir", str(workdir)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert output.exists(), done.stdout + done.stderr
    return done, json.loads(output.read_text()), workdir


def test_a_small_run_writes_every_figure(small_run) -> None:
    done, result, _ = small_run
    analysis = result["analysis"]
    # 2 s of holding against pytest-xdist's start-up: the ratio target is
    # missed at this size, and the exit status says so.
    assert done.returncode == (0 if analysis["meets_target"] else 1), done.stdout + done.stderr
    assert result["parameters"] == {"hosts": 2, "workers": 2, "tests": 4, "hold_s": 1.0,
                                    "warm_up": True}
    assert analysis["correct"], analysis["correctness"]
    assert analysis["fair"], analysis["fairness"]
    assert analysis["target_ratio"] == TARGET_RATIO
    for key in ("wall_s", "reference", "ratio", "meets_ratio", "phases", "fairness",
                "per_host", "per_worker", "xdist_baseline", "tests_span_ratio"):
        assert key in analysis, key
    assert len(analysis["xdist_baseline"]["runs_s"]) == 1
    assert "ratio" in done.stdout and "starving workers" in done.stdout


def test_the_figures_follow_from_the_recorded_tests(small_run) -> None:
    _, result, _ = small_run
    analysis, records = result["analysis"], result["records"]
    assert len(records) == 4
    for record in records:
        assert record["worker"] in ("gw0", "gw1")
        assert record["host"] in ("sched1", "sched2") and record["leased"] == record["host"]
        assert record["server"] == analysis["per_host"][record["host"]]["address"]
        assert 1.0 <= record["hold_s"] < 1.5
        assert record["claim_started"] <= record["granted"] <= record["ready"] <= record["released"]
    own = {}
    for record in records:
        own[record["host"]] = own.get(record["host"], 0.0) + record["hold_s"] + record["ssh_s"]
    slowest = max(own, key=own.get)
    # Both hosts hold two 1 s tests: a near tie (within the records' 1 ms
    # rounding) may name either host as the slowest.
    assert own[analysis["reference"]["host"]] == pytest.approx(own[slowest], abs=0.002)
    assert analysis["reference"]["own_s"] == pytest.approx(own[slowest], abs=0.002)
    assert analysis["ratio"] == pytest.approx(analysis["wall_s"] / own[slowest], rel=1e-3)
    assert analysis["meets_ratio"] == (analysis["ratio"] <= TARGET_RATIO)
    for worker in ("gw0", "gw1"):
        mine = [r for r in records if r["worker"] == worker]
        assert analysis["per_worker"][worker]["tests"] == len(mine)
        assert analysis["per_worker"][worker]["longest_wait_s"] == pytest.approx(
            max(r["granted"] - r["claim_started"] for r in mine), abs=0.002)
    counts = [w["tests"] for w in analysis["per_worker"].values()]
    assert analysis["fairness"]["max_tests_per_worker"] == max(counts)
    assert analysis["fairness"]["min_tests_per_worker"] == min(counts)


def test_every_sshd_and_pytest_process_is_stopped(small_run) -> None:
    _, _, workdir = small_run
    assert (workdir / "sshd0" / "sshd_config").exists()
    assert _processes_in(workdir) == []


def _as_started_from_a_terminal() -> None:
    # A runner started without job control ignores SIGINT, and the child would
    # inherit that: start the benchmark the way a terminal does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_every_sshd_and_the_pytest_run(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_scheduling", "--hosts", "2", "--workers", "2",
         "--tests", "4", "--hold", "5", "--baseline-runs", "0", "--no-warm-up",
         "--output", str(tmp_path / "scheduling.json"), "--workdir", str(workdir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, preexec_fn=_as_started_from_a_terminal)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("running pytest"):
                break
        assert seen and seen[-1].startswith("running pytest"), "".join(seen)
        deadline = time.monotonic() + 60
        while not [p for p in _processes_in(workdir) if "exec(eval(" in p]:   # an xdist worker
            assert time.monotonic() < deadline, "no xdist worker started"
            time.sleep(0.2)
        time.sleep(1.0)                   # workers holding hosts, or about to
        os.kill(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert _processes_in(workdir) == []
    assert not (tmp_path / "scheduling.json").exists()


# --- the verdicts, from planted data ----------------------------------------------

def _record(worker: str, host: str, start: float, wait: float = 0.01, hold: float = 1.0,
            ssh: float = 0.01, server: str | None = None) -> dict:
    granted = start + wait
    return {"test": f"t[{worker}-{start}]", "worker": worker, "requested": start,
            "claim_started": start, "granted": granted, "leased": host, "host": host,
            "ready": granted + 0.01, "ssh_s": ssh, "hold_s": hold,
            "server": HOSTS[host] if server is None else server,
            "body_end": granted + 0.01 + ssh + hold, "released": granted + 0.02 + ssh + hold}


def _analyse(records: list[dict], wall: float, workers=("gw0", "gw1"), hold: float = 1.0,
             hosts=HOSTS, **kw) -> dict:
    return analyse(records, hosts=dict(hosts), workers=list(workers), tests=len(records),
                   hold=hold, wall_s=wall, launched=-1.0, ended=wall, pytest_rc=0, **kw)


def _even(n_each: int = 3) -> list[dict]:
    records = []
    for i in range(n_each):
        records.append(_record("gw0", "h1", start=i * 1.1))
        records.append(_record("gw1", "h2", start=i * 1.1))
    return records


def test_an_even_split_on_time_meets_the_target() -> None:
    records = _even()
    own = 3 * (1.0 + 0.01)
    result = _analyse(records, wall=own * 1.05, xdist_baselines_s=[0.5, 0.7])
    assert result["reference"]["own_s"] == pytest.approx(own)
    assert result["ratio"] == pytest.approx(1.05)
    assert result["meets_ratio"] and result["fair"] and result["correct"]
    assert result["meets_target"]
    assert result["fairness"]["max_tests_per_worker"] == result["fairness"]["min_tests_per_worker"] == 3
    assert result["xdist_baseline"]["mean_s"] == pytest.approx(0.6)
    assert result["xdist_baseline"]["overhead_beyond_xdist_s"] == pytest.approx(
        own * 0.05 - 0.6, abs=0.002)


def test_a_slow_run_misses_the_ratio() -> None:
    result = _analyse(_even(), wall=3 * 1.01 * 1.3)
    assert result["ratio"] == pytest.approx(1.3)
    assert not result["meets_ratio"] and result["fair"] and not result["meets_target"]


def test_the_reference_is_the_busiest_host() -> None:
    records = _even() + [_record("gw0", "h1", start=5.0, hold=2.0)]
    result = _analyse(records, wall=6.0)
    assert result["reference"]["host"] == "h1"
    assert result["reference"]["own_s"] == pytest.approx(3 * 1.01 + 2.01)
    assert result["per_host"]["h1"]["tests"] == 4 and result["per_host"]["h2"]["tests"] == 3


def test_a_planted_unfair_split_fails() -> None:
    """gw1 never ran a test: gw0 did all six, on both hosts."""
    records = [_record("gw0", "h1" if i % 2 else "h2", start=i * 1.1) for i in range(6)]
    result = _analyse(records, wall=6.0)
    assert result["per_worker"]["gw1"]["tests"] == 0
    assert result["fairness"]["min_tests_per_worker"] == 0
    assert result["fairness"]["max_tests_per_worker"] == 6
    assert [s["worker"] for s in result["fairness"]["starving"]] == ["gw1"]
    assert not result["fair"] and not result["meets_target"]


def test_a_long_wait_while_a_host_was_free_starves() -> None:
    """gw1 waited 4 holds for a host while h2 sat idle the whole time."""
    records = [_record("gw0", "h1", start=i * 1.1) for i in range(4)]
    records.append(_record("gw1", "h2", start=0.0, wait=4.0))
    result = _analyse(records, wall=6.0)
    assert result["per_worker"]["gw1"]["longest_wait_s"] == pytest.approx(4.0)
    starving = result["fairness"]["starving"]
    assert len(starving) == 1 and starving[0]["worker"] == "gw1"
    assert "waited 4.00s" in starving[0]["why"]
    assert not result["fair"] and not result["meets_target"]


def test_a_long_wait_while_every_host_was_busy_is_not_starving() -> None:
    """One host, two workers: gw1 waits its turn behind gw0's tests (FIFO), as it must."""
    one_host = {"h1": HOSTS["h1"]}
    records = [_record("gw0", "h1", start=0.0), _record("gw0", "h1", start=1.05),
               _record("gw0", "h1", start=2.1)]
    records.append(_record("gw1", "h1", start=0.0, wait=3.2))
    result = _analyse(records, wall=5.0, hosts=one_host)
    assert result["per_worker"]["gw1"]["longest_wait_s"] == pytest.approx(3.2)
    assert result["fairness"]["starving"] == [] and result["fair"]


def test_two_tests_on_one_host_at_once_and_a_wrong_host_are_wrong() -> None:
    records = _even()
    records.append(_record("gw1", "h1", start=0.5))                        # overlaps gw0 on h1
    records.append(_record("gw0", "h2", start=9.0, server="127.0.0.99"))   # answered elsewhere
    result = _analyse(records, wall=12.0)
    assert result["correctness"]["overlaps"] and result["correctness"]["wrong_host"]
    assert "127.0.0.99" in result["correctness"]["wrong_host"][0]
    assert not result["correct"] and not result["meets_target"]


def test_missing_records_or_a_failed_run_are_wrong() -> None:
    records = _even()
    incomplete = records[:-1] + [{k: v for k, v in records[-1].items() if k != "hold_s"}]
    assert not analyse(incomplete, hosts=HOSTS, workers=["gw0", "gw1"], tests=6, hold=1.0,
                       wall_s=4.0, launched=0.0, ended=4.0, pytest_rc=0)["correct"]
    assert not analyse(records, hosts=HOSTS, workers=["gw0", "gw1"], tests=6, hold=1.0,
                       wall_s=4.0, launched=0.0, ended=4.0, pytest_rc=1)["correct"]


def test_free_seconds_counts_time_with_a_host_idle() -> None:
    held = [(0.0, 2.0), (1.0, 3.0)]
    assert free_seconds(0.0, 4.0, held, n_hosts=2) == pytest.approx(3.0)   # both held 1..2
    assert free_seconds(0.0, 4.0, held, n_hosts=1) == pytest.approx(1.0)   # idle 3..4
    assert free_seconds(2.0, 2.0, held, n_hosts=1) == 0.0
