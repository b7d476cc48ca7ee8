"""Guest boots and wall time of ``-n 1`` and ``-n 2`` on one virtual host,
the same tests (issue 18, item 4, the one-host half).

    .venv/bin/python -m benchmarks.bench_one_host_workers --lab lab/virtual.yaml \\
        [--label NAME] [-- PYTEST SELECTION AND OPTIONS]

The lab must be up (``xenhil lab up --virtual 1``) and nobody else's run on
it.  Default selection: ``suites/pci`` on the splits ``single`` and
``single+probe`` with the host's own Xen (no provisioning, two guests).
Both runs use the same selection, one after the other, each its own run id,
artifacts and results store under artifacts/bench-one-host/<label>/
(``--folder`` names another place than artifacts/bench-one-host).

Figures, from what each run recorded:

- guest boots: the guest pool's boot records of every process
  (fixtures.guest.read_boot_records), with the retries after a crash;
- wall time of the whole pytest run (xdist's start-up included);
- ratio = wall(-n 2) / wall(-n 1), measured in this run;
- targets (issue 18): boots(-n 2) <= boots(-n 1) and ratio <= 1.05;
- correctness: both runs exit 0 with the same number of tests passed.

What to expect: one host serves one test at a time, so the second worker
waits for the host while the first runs a stretch of the tests; the figure
shows what a second worker costs (its start-up, the claims) and that it
boots no guest the first would not have booted.

Results: benchmarks/results/one_host_workers.json (one entry per label).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.bench_scheduling import run_main, versions
from xenhil.fixtures.guest import read_boot_records

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "one_host_workers.json"
DEFAULT_SELECTION = ["suites/pci", "--split", "single", "--split", "single+probe"]
TARGET_RATIO = 1.05
WORKERS = (1, 2)


def run_once(workers: int, lab: Path, selection: list[str], folder: Path, run_id: str,
             timeout: float) -> dict:
    """One pytest run of the selection with ``-n workers``, its output
    streamed (progress) and kept in ``folder/pytest-n<workers>.log``."""
    junit = folder / f"junit-n{workers}.xml"
    argv = [sys.executable, "-m", "pytest", *selection, "--lab", str(lab), "-n", str(workers),
            "--run-id", run_id, "--artifacts", str(folder / "artifacts"),
            "--results-db", f"sqlite://{folder / 'results.sqlite'}", f"--junitxml={junit}",
            "-p", "no:cacheprovider", "-q", "-rs"]
    log_path = folder / f"pytest-n{workers}.log"
    print(f"-n {workers}: {' '.join(argv[3:])}", flush=True)
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, env=dict(os.environ))
        # SIGTERM when the time is up: the plugin ends the run cleanly
        # (leases released, guests destroyed), and the output ends with it.
        watchdog = threading.Timer(timeout, proc.terminate)
        watchdog.start()
        try:
            for line in proc.stdout:
                log.write(line)
                print(f"  [{time.monotonic() - started:6.0f}s] {line.rstrip()}", flush=True)
            status = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=120)
    if time.monotonic() - started >= timeout:
        raise TimeoutError(f"-n {workers} took more than {timeout:.0f}s; its log: {log_path}")
    wall = time.monotonic() - started
    boots = read_boot_records(folder / "artifacts" / run_id)
    return {"workers": workers, "run_id": run_id, "exit_status": status,
            "wall_s": round(wall, 1), "tests": junit_counts(junit),
            "boots": len(boots["boots"]), "boot_retries": len(boots["boot_retries"]),
            "model_deaths": len(boots["model_deaths"]), "booted": boots["boots"],
            "log": str(log_path)}


def junit_counts(path: Path) -> dict[str, int]:
    """Tests passed, failed, errored and skipped, from pytest's JUnit XML."""
    if not path.is_file():
        return {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"]}


def analyse(one: dict, two: dict) -> dict:
    """The figures against the issue's targets."""
    ratio = two["wall_s"] / one["wall_s"] if one["wall_s"] else float("inf")
    correct = (one["exit_status"] == two["exit_status"] == 0
               and one["tests"]["passed"] == two["tests"]["passed"] > 0)
    meets_boots = two["boots"] <= one["boots"]
    return {"boots_n1": one["boots"], "boots_n2": two["boots"], "meets_boots": meets_boots,
            "wall_n1_s": one["wall_s"], "wall_n2_s": two["wall_s"], "ratio": round(ratio, 3),
            "target_ratio": TARGET_RATIO, "correct": correct,
            "meets_target": correct and meets_boots and ratio <= TARGET_RATIO}


def record(result: dict, output: Path) -> None:
    """Keep every label's entry in one file (earlier labels stay)."""
    entries = json.loads(output.read_text()) if output.is_file() else {}
    entries[result["label"]] = result
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(entries, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", type=Path, required=True, help="the virtual lab's inventory")
    parser.add_argument("--label", default=None, help="this run's name in the results file")
    parser.add_argument("--timeout", type=float, default=7200.0, help="per pytest run (s)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--folder", type=Path, default=ROOT / "artifacts" / "bench-one-host",
                        help="where each label's runs keep their artifacts and logs")
    parser.add_argument("selection", nargs="*", help="after --: the pytest selection "
                        f"(default: {' '.join(DEFAULT_SELECTION)})")
    args = parser.parse_args(argv)
    label = args.label or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = args.folder.resolve() / label
    folder.mkdir(parents=True, exist_ok=True)
    selection = args.selection or DEFAULT_SELECTION
    runs = [run_once(n, args.lab.resolve(), selection, folder, f"bench1h-{label}-n{n}", args.timeout)
            for n in WORKERS]
    analysis = analyse(*runs)
    result = {"label": label, "selection": selection, "lab": str(args.lab),
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "versions": versions(), "runs": runs, "analysis": analysis}
    record(result, args.output)
    a = analysis
    print(f"bench_one_host_workers {label}: {' '.join(selection)}")
    for run in runs:
        print(f"  -n {run['workers']}: exit {run['exit_status']}, {run['tests']}, "
              f"{run['boots']} boot(s) ({run['boot_retries']} retried), wall {run['wall_s']:.0f} s")
    print(f"  boots -n 2 <= -n 1: {'met' if a['meets_boots'] else 'MISSED'}; wall ratio "
          f"{a['ratio']:.3f} (target <= {TARGET_RATIO}); runs "
          f"{'correct' if a['correct'] else 'NOT correct'}; target "
          f"{'met' if a['meets_target'] else 'MISSED'}; written to {args.output}")
    return 0 if a["meets_target"] else 1


if __name__ == "__main__":
    run_main(main, "bench_one_host_workers")
