"""The guest-affinity benchmark (benchmarks/bench_guest_affinity.py): a small
real run on two real sshd hosts (its figures and verdicts are what the
recorded data says), and its analysis on records that miss each target."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_guest_affinity import TARGET_RATIO, analyse

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    tmp = tmp_path_factory.mktemp("bench-guest-affinity")
    output = tmp / "guest_affinity.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_guest_affinity", "--hosts", "2", "--workers", "2",
         "--splits", "2", "--tests-per-split", "3", "--hold", "0.5", "--boot", "0.5",
         "--output", str(output), "--workdir", str(tmp / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert output.exists(), done.stdout + done.stderr
    return done, json.loads(output.read_text())


def test_a_small_run_boots_one_guest_per_split_and_host_at_most_and_cleans_up(small_run) -> None:
    done, result = small_run
    a = result["analysis"]
    assert done.returncode == (0 if a["meets_target"] else 1), done.stdout + done.stderr
    assert a["correct"], a["correctness"]
    # 2 hosts, 2 splits, the tests ordered by split: each worker starts on
    # its own host with its split's guest; at most one changes split.
    assert 2 <= a["boots"] <= 3 and a["meets_boots"] and a["boots_target"] == 4
    assert sum(v["boots"] for v in a["per_host"].values()) == a["boots"] == len(result["boots"])
    assert sum(a["tests_per_worker"].values()) == 6
    assert a["correctness"]["not_destroyed"] == [] and a["correctness"]["left_in_store"] == []
    # The reference is the run's own: the recorded test bodies and boots.
    bodies = sum(r["body_s"] for r in result["records"])
    assert a["test_time_s"] == pytest.approx(bodies, abs=0.01)
    assert 0.5 <= a["one_boot_s"] < 5
    assert a["ratio"] == pytest.approx(a["wall_s"] / a["reference_s"], rel=0.01)
    assert "guest boots" in done.stdout and "ratio" in done.stdout


def _record(test: str, worker: str, pid: int, host: str, guest: str, at: float) -> dict:
    return {"test": test, "worker": worker, "pid": pid, "host": host, "guest": guest,
            "requested": at, "released": at + 10, "body_s": 10.0}


def test_the_analysis_misses_a_target_the_records_miss() -> None:
    boots = [{"guest": f"g{i}", "host": "h1", "pid": 1, "started": 0.0, "ended": 5.0}
             for i in range(4)]
    records = [_record(f"t{i}", "gw0", 1, "h1", "g0", 100.0 + 10 * i) for i in range(4)]
    common = dict(hosts=["h1"], splits=["single", "qnet+qall"], tests=4, launched=95.0,
                  pytest_rc=0)
    # 4 boots for 2 splits on 1 host: more than splits + hosts (3).
    a = analyse(records, boots, [{"guest": b["guest"]} for b in boots], [], wall_s=46.0, **common)
    assert (a["boots"], a["boots_target"], a["meets_boots"]) == (4, 3, False)
    assert a["reference_s"] == 45.0 and a["meets_ratio"] and not a["meets_target"]
    # Too slow: wall above 1.1 x (40 s / 1 host + 5 s).
    a = analyse(records, boots[:2], [{"guest": "g0"}, {"guest": "g1"}], [], wall_s=50.0, **common)
    assert a["meets_boots"] and a["ratio"] > TARGET_RATIO and not a["meets_target"]
    # A guest not destroyed, or one left in the store, is a wrong run.
    a = analyse(records, boots[:2], [{"guest": "g0"}], ["g1 on h1 (ready)"], wall_s=46.0, **common)
    assert not a["correct"] and a["correctness"]["not_destroyed"] == ["g1"]
