"""Render a run's Allure results to HTML and write the triage summary.

The HTML comes from the Allure command line of the npm registry (package
``allure``, installed into node_modules/ by scripts/setup), with its
Allure-2-style plugin, which has the Categories page the failure classes
feed.  The plain-text summary reads like OSSTest's flight mail: blocking
regressions first, then non-blocking failures, broken hosts and latency
regressions.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

from xenhil.harness.errors import ConfigError, InfrastructureError
from xenhil.harness.results.latency import latency_regressions
from xenhil.harness.results.store import ResultsStore, planted_fault
from xenhil.harness.results.verdicts import KnownIssue, verdict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

ALLURE_CONFIG = """export default {
  name: %(name)s,%(history)s
  plugins: { allure2: { options: { reportName: %(name)s, singleFile: false } } },
};
"""

#: Runs an Allure history file keeps (``render_html(history=...)``): the
#: trend graphs draw the last 20, a test's own history page lists up to this many.
HISTORY_LIMIT = 100


def find_allure() -> str:
    candidates = [os.environ.get("XENHIL_ALLURE"), str(PROJECT_ROOT / "node_modules/.bin/allure"),
                  shutil.which("allure")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError("the Allure command line is not installed",
                      help="run scripts/setup (npm install puts it in node_modules/.bin/allure) "
                           "or set XENHIL_ALLURE to its path")


def check_report_folder(out_dir: Path, option: str = "-o/--output") -> None:
    """The report goes to ``out_dir`` as a whole, replacing an earlier
    report there: a folder that holds something else is refused, untouched."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{option} {out_dir}: is a file, not a folder", help="give a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "index.html").is_file():
        raise ConfigError(f"{option} {out_dir}: holds files but no report (no index.html); "
                          "the report replaces its folder as a whole",
                          help="give a new folder or an earlier report's, e.g. -o allure-report")


def render_html(results_dir: Path, out_dir: Path, name: str = "xenhil",
                history: Path | None = None) -> Path:
    """``history``: Allure's history file (JSON lines, one per earlier run):
    read for the trend graphs and each test's history, and this run
    appended to it.  Allure 3 keeps its history there, not in the
    ``history/`` folder Allure 2 copied from report to results.

    The report is generated into a new folder beside ``out_dir`` and then
    takes its place: Allure 3 (3.18) given a folder that already holds a
    report writes the new one into its ``allure2/`` subfolder and leaves the
    old ``index.html`` at the top, so a report folder used again (the main
    job's) went on showing its first run."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    if not results_dir.is_dir() or not any(results_dir.glob("*-result.json")):
        raise ConfigError(f"{results_dir}: no Allure results here",
                          help="run pytest with --alluredir=DIR first and pass that DIR")
    check_report_folder(out_dir)
    allure = find_allure()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Beside out_dir, so that taking its place is a rename on one file system.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
    try:
        fresh = staging / "report"          # a folder Allure makes itself
        _generate(allure, results_dir, fresh, name, history)
        _replace(out_dir, fresh)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / "index.html"


def _replace(out_dir: Path, fresh: Path) -> None:
    """``fresh`` becomes ``out_dir``; the earlier report is removed after."""
    if not out_dir.exists():
        fresh.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    out_dir.rename(old)
    fresh.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _generate(allure: str, results_dir: Path, out_dir: Path, name: str,
              history: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="xenhil-allure-") as tmp:
        config = Path(tmp) / "allurerc.mjs"
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        kept = ("" if history is None else
                f"\n  historyPath: {json.dumps(str(Path(history).resolve()))},"
                f"\n  historyLimit: {HISTORY_LIMIT},")
        config.write_text(ALLURE_CONFIG % {"name": quoted, "history": kept})
        # Without ALLURE_NO_ANALYTICS the page loads Google Tag Manager
        # whenever someone opens the report: no third-party calls from a lab report.
        proc = subprocess.run([allure, "generate", str(results_dir.resolve()), "-o",
                               str(out_dir.resolve()), "-c", str(config)],
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "ALLURE_NO_ANALYTICS": "true"})
    if proc.returncode != 0 or not (out_dir / "index.html").exists():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise InfrastructureError(f"allure generate failed (exit {proc.returncode}):\n{tail}",
                                  help="check node and the allure package (scripts/setup)")


def _environment_value(results_dir: Path, key: str) -> str | None:
    from xenhil.harness.safeio import read_text
    env = Path(results_dir) / "environment.properties"
    if env.exists():
        text = read_text(env, "environment.properties", limit=1 << 20,
                         fix="pass a results folder written by pytest --alluredir")
        for line in text.splitlines():
            if line.startswith(f"{key}="):
                return line.split("=", 1)[1].strip()
    return None


def run_id_of(results_dir: Path) -> str | None:
    return _environment_value(results_dir, "xenhil.run_id")


def run_state_of(results_dir: Path) -> str | None:
    """How the run ended ("complete", "interrupted by SIGTERM: 5 of 12 tests
    not run", "running ..." for one killed outright); None for results of a
    xenhil older than the interrupted-run handling."""
    return _environment_value(results_dir, "xenhil.run_state")


def triage_summary(store: ResultsStore, run_id: str, known: list[KnownIssue] = (),
                   run_state: str | None = None) -> str:
    """``run_state``: the run's xenhil.run_state (:func:`run_state_of`),
    shown under the title when the run did not complete."""
    from xenhil.harness.results.not_run import OUTCOME as NOT_RUN
    run = store.run(run_id)
    blocking, nonblocking, passed, skipped = [], [], 0, 0
    not_run: list[str] = []
    broken_hosts: dict[str, list[str]] = defaultdict(list)
    for row in store.outcomes(run_id):
        if row["outcome"] == "passed":
            passed += 1
            continue
        if row["outcome"] == "skipped":
            skipped += 1
            continue
        if row["outcome"] == NOT_RUN:
            # No verdict: neither a failure nor a regression; rerun it.
            why = row["message"].removeprefix("not run: ")
            not_run.append(f"  {row['test']}" + (f"  {why}" if why else ""))
            continue
        v = verdict(row["test"], row["outcome"], run["build"],
                    store.history(row["test"], run_id), known)
        cls = row["failure_class"] or "unclassified"
        line = f"  {row['test']}  [{cls}]  {v.text}" + (f"  {v.link}" if v.link else "")
        if row["message"]:
            line += f"\n      {row['message'][:200]}"
        # A lab failure never blocks a patch: it says nothing about the patch.
        if v.blocking and cls != "infrastructure":
            blocking.append(line)
        else:
            nonblocking.append(line)
        if cls == "infrastructure" and row["host"]:
            broken_hosts[row["host"]].append(row["test"])
    latency_lines = [f"  {text}" for text in latency_regressions(store, run_id)]
    out = [f"xenhil run {run_id} (build {run['build'] or '?'}"
           + (f", series {run['series']}" if run["series"] else "") + ")"]
    fault = planted_fault(run.get("facts"))
    if fault:
        out.append(f"MUTANT RUN: probe fault {fault} planted on purpose (lab/mutants): its "
                   "failures are what a qualification expects, not the build's")
    if run_state and run_state != "complete":
        out.append(f"run state: {run_state}")
    out += [f"{passed} passed, {len(blocking) + len(nonblocking)} failed, {skipped} skipped"
            + (f", {len(not_run)} not run" if not_run else ""), ""]
    sections = [
        ("Tests which did not succeed and are blocking (regressions)", blocking),
        ("Tests which did not succeed, but are not blocking", nonblocking),
        ("Tests which did not run (the run stopped before their verdict: rerun them)", not_run),
        ("Broken hosts (infrastructure failures)",
         [f"  {h}: {len(t)} test(s), first {t[0]}" for h, t in sorted(broken_hosts.items())]),
        ("Latency regressions", latency_lines),
    ]
    sections.append(("Warnings (counted, not failures)", _warning_lines(store.warnings(run_id))))
    for title, lines in sections:
        out.append(f"{title}:")
        out.extend(lines or ["  none"])
        out.append("")
    return "\n".join(out)


def _warning_lines(rows: list[dict], examples: int = 3) -> list[str]:
    """Counted warnings by kind (a device model that died between tests, a
    guest booted again, ...), each with its first few occurrences."""
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    lines = []
    for kind, items in sorted(by_kind.items()):
        lines.append(f"  {kind}: {len(items)}")
        for row in items[:examples]:
            lines.append(f"      {row['test'] or '(no test)'}: {row['message'][:200]}")
    return lines
