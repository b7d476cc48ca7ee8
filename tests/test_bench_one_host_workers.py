"""The one-host benchmark (benchmarks/bench_one_host_workers.py): a small
real run (-n 1 then -n 2, real pytest-xdist, the real guest pool and lease
store) on one real sshd host with stand-in guests whose boot is a sleep
there (tests/support/standin_guest.py), its figures checked against what
the stand-in recorded; and its verdicts on runs that miss each target."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_one_host_workers import TARGET_RATIO, analyse
from tests.support.child_env import child_env
from tests.support.sshd import running_sshd
from tests.support.standin_guest import CONFTEST, USES_SUITE, sshd_inventory

ROOT = Path(__file__).resolve().parent.parent


def test_a_small_run_counts_the_boots_each_run_made_and_keeps_earlier_labels(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_suite.py").write_text(USES_SUITE)
    (suite / "conftest.py").write_text(CONFTEST)
    output = tmp_path / "one_host_workers.json"
    output.write_text(json.dumps({"earlier": {"label": "earlier"}}))
    with running_sshd(tmp_path / "sshd", address=f"127.0.3.{random.randint(10, 250)}") as server:
        lab = sshd_inventory(tmp_path / "lab.yaml", server)
        env = {"XH_GUESTS": str(tmp_path / "guests"), "XH_BOOT_S": "0.5",
               "XH_BOOTS": str(tmp_path / "boots.jsonl"),
               "XH_DESTROYED": str(tmp_path / "destroyed.jsonl"),
               "XH_USES": str(tmp_path / "uses.jsonl"), "XH_TESTS": "3", "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_one_host_workers", "--lab", str(lab),
             "--label", "small", "--output", str(output), "--folder", str(tmp_path / "runs"),
             "--", str(suite), "--split", "single", "--split", "qnet+qall"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
            env=child_env(**env))
    entries = json.loads(output.read_text())
    assert set(entries) == {"earlier", "small"}, done.stdout + done.stderr
    result = entries["small"]
    a = result["analysis"]
    assert done.returncode == (0 if a["meets_target"] else 1), done.stdout + done.stderr
    assert a["correct"], result["runs"]
    one, two = result["runs"]
    assert (one["workers"], two["workers"]) == (1, 2)
    assert one["tests"] == two["tests"] == {"passed": 6, "failed": 0, "errors": 0, "skipped": 0}
    # Two splits: -n 1 boots two guests; -n 2 on the one host no more.  The
    # figures are the pool's own records, checked against the stand-in's.
    recorded = [json.loads(line) for line in (tmp_path / "boots.jsonl").read_text().splitlines()]
    assert one["boots"] == 2 and two["boots"] <= 2, result["runs"]
    assert one["boots"] + two["boots"] == len(recorded)
    assert a["ratio"] == pytest.approx(two["wall_s"] / one["wall_s"], abs=1e-3)
    assert f"wall ratio {a['ratio']:.3f}" in done.stdout


def _run(workers: int, wall: float, boots: int, status: int = 0, passed: int = 6) -> dict:
    return {"workers": workers, "wall_s": wall, "boots": boots, "exit_status": status,
            "tests": {"passed": passed, "failed": 0, "errors": 0, "skipped": 0}}


@pytest.mark.parametrize("two, verdict", [
    (_run(2, 100 * TARGET_RATIO, 2), {"meets_target": True}),
    (_run(2, 100 * TARGET_RATIO + 1, 2), {"meets_target": False, "correct": True}),
    (_run(2, 90.0, 3), {"meets_target": False, "meets_boots": False}),
    (_run(2, 90.0, 2, status=1), {"meets_target": False, "correct": False}),
    (_run(2, 90.0, 2, passed=5), {"meets_target": False, "correct": False}),
])
def test_the_verdict_misses_on_time_on_boots_and_on_a_run_that_was_not_the_same(two, verdict):
    a = analyse(_run(1, 100.0, 2), two)
    assert {key: a[key] for key in verdict} == verdict
