"""One night: every build of the configuration run against the lab, one
after the other, each rendered with its Allure history and triage summary
and scanned for the lab's secrets; then the night's summary, and the
nights beyond ``keep`` pruned.

Each build is a pytest run of its own (``python -m pytest``, the same
command a developer types, so a night runs exactly what the suites run by
hand) and its report is ``xenhil report --history ... --scan-secrets``, the
command every run's report comes from.  Both write through to this
process's output (each line led by the build's name: the progress a
journal shows) and to logs kept in the build's folder.  A build given as
patches (``xen_series``, ``qemu_series``) is built first with ``xenhil
build`` (cached: the same patches answer in seconds); one that does not
build fails without being tested.

SIGTERM (systemd stopping the service, a time limit) is passed on to the
running pytest, which stops like Ctrl-C (guests destroyed, leases
released); the report of what it ran is still made, the builds after it
are not run, and the night ends with 130.  Ctrl-C at a terminal reaches
pytest from the terminal itself.
"""
from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from xenhil.harness.errors import ConfigError
from xenhil.harness.nightly import folders
from xenhil.harness.nightly.config import Build, NightlyConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent

#: pytest's exit statuses, as a night's summary says them.
PYTEST_EXITS = {0: "passed", 1: "tests failed", 2: "interrupted", 3: "pytest internal error",
                4: "pytest usage error", 5: "no tests collected"}

EXIT_ALL_PASSED, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class BuildOutcome:
    name: str
    run_id: str
    status: str = "not run"          # passed, failed, not run
    reason: str = ""
    pytest_exit: int | None = None
    report_exit: int | None = None
    report: str | None = None        # index.html, relative to the night's folder
    counts: str = ""                 # the triage summary's "N passed, M failed, K skipped"
    history_runs: int = 0            # earlier runs in the trend of its report
    seconds: float = 0.0


@dataclass
class _Stop:
    """A stop asked for by a signal, and the child to pass SIGTERM on to."""

    asked: str | None = None
    child: subprocess.Popen | None = field(default=None, repr=False)

    def on_signal(self, signum: int, _frame) -> None:
        self.asked = signal.Signals(signum).name
        if signum == signal.SIGTERM and self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)


def check_before_running(config: NightlyConfig) -> None:
    """What must hold before the night touches anything: the inventory
    reads, each of its secrets resolves here (the secret scan of every
    report needs them: found missing after hours of tests, it would fail
    every build), and the Allure command line is installed."""
    from xenhil.harness.lab.credentials import register_inventory_secrets
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.report import find_allure

    inventory = load_inventory(config.lab)
    unresolved = register_inventory_secrets(inventory, (config.lab_db, config.results_db))
    if unresolved:
        raise ConfigError(f"lab {config.lab}: a secret the reports are scanned for cannot be "
                          f"read here: {unresolved[0]}",
                          help="make every credential of the inventory readable by the user "
                               "running xenhil nightly (EnvironmentFile= of the service for "
                               "{env: NAME})")
    find_allure()


def run_night(config: NightlyConfig, say: Callable[[str], None]) -> int:
    """The night; its exit status: 0 every build passed, 1 one failed (its
    tests, its report or its secret scan), 130 stopped by a signal."""
    check_before_running(config)
    night = folders.Night(config.reports)
    started = time.monotonic()
    outcomes = [BuildOutcome(b.name, f"{night.id}-{b.name}") for b in config.builds]
    say(f"night {night.id}: {len(config.builds)} build(s) against {config.lab}, "
        f"folder {night.path}")
    stop = _Stop()
    previous = {s: signal.signal(s, stop.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for number, (build, outcome) in enumerate(zip(config.builds, outcomes), 1):
            if stop.asked:
                outcome.reason = f"the night was stopped ({stop.asked}) before it"
                continue
            say(f"[{number}/{len(config.builds)}] {build.name}: running the suites")
            _run_build(config, night, build, outcome, stop, say)
            say(f"[{number}/{len(config.builds)}] {build.name}: {outcome.status}"
                + (f" ({outcome.reason})" if outcome.reason else "")
                + (f"; {outcome.counts}" if outcome.counts else "")
                + f"; {_duration(outcome.seconds)}")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        summary = _summary(config, night, outcomes, stop.asked, time.monotonic() - started)
        (night.path / "summary.txt").write_text(summary)
        folders.write_json(night.path / "night.json", {
            "night": night.id, "runner": folders.runner_name(), "config": str(config.path),
            "state": f"stopped by {stop.asked}" if stop.asked else "complete",
            "seconds": round(time.monotonic() - started, 1),
            "builds": [asdict(o) for o in outcomes]})
        with folders.report_lock(config.reports, f"night {night.id} (pid {os.getpid()}), "
                                 "pruning", say):
            folders.set_latest(config.reports, night.id)
            for name in folders.prune(config.reports, config.keep, night.id):
                say(f"pruned night {name} (keep: {config.keep})")
        night.close()
    say(summary.rstrip("\n"))
    if stop.asked:
        return EXIT_INTERRUPTED
    return EXIT_ALL_PASSED if all(o.status == "passed" for o in outcomes) else EXIT_SOME_FAILED


def _run_build(config: NightlyConfig, night: folders.Night, build: Build, outcome: BuildOutcome,
               stop: _Stop, say: Callable[[str], None]) -> None:
    folder = night.build_folder(build.name)
    results = folder / "allure-results"
    begun = time.monotonic()
    xen_build = build.xen_build
    if build.built_here:
        say(f"{build.name}: building its series (xenhil build, cached)")
        xen_build = folder / "xen-build"        # a symlink to the cached dist tree
        built = _tee(_build_argv(build, xen_build), folder / "build.log", build.name, stop)
        if built != 0:
            outcome.status, outcome.seconds = "failed", time.monotonic() - begun
            outcome.reason = f"xenhil build exit {built}: not tested (see build.log)"
            return
    outcome.pytest_exit = _tee(_pytest_argv(config, night, build, xen_build, outcome.run_id,
                                            results), folder / "pytest.log", build.name, stop)
    failures = [] if outcome.pytest_exit == 0 else [
        PYTEST_EXITS.get(outcome.pytest_exit, f"pytest exit {outcome.pytest_exit}")]
    if not any(results.glob("*-result.json")):
        failures.append("no report: the run wrote no results (see pytest.log)")
    else:
        say(f"{build.name}: rendering the report with its history, scanning it for secrets")
        history = folder / "history.jsonl"
        with folders.report_lock(config.reports, f"night {night.id} (pid {os.getpid()}), "
                                 f"report of {build.name}", say):
            outcome.history_runs = folders.take_history(config.reports, build.name, history)
            outcome.report_exit, leaked = _report(config, night, build, outcome.run_id, folder,
                                                  history, stop)
            # Allure appends to the history as it generates: only a report
            # it finished hands its history on.
            if (folder / "report" / "index.html").is_file() and history.is_file():
                folders.publish_history(config.reports, build.name, history)
                outcome.report = str(Path(build.name) / "report" / "index.html")
        if leaked:
            failures.append("a lab secret reached the report (report.log names where)")
        elif outcome.report_exit != 0:
            failures.append(f"xenhil report exit {outcome.report_exit} (see report.log)")
        outcome.counts = _counts(folder / "report" / "triage.txt")
    outcome.status = "failed" if failures else "passed"
    outcome.reason = "; ".join(failures)
    outcome.seconds = time.monotonic() - begun


def _build_argv(build: Build, output: Path) -> list[str]:
    argv = [sys.executable, "-m", "xenhil.harness.cli.main", "build", "-o", str(output)]
    if build.xen_series is not None:
        argv += ["--xen-series", build.xen_series]
    if build.qemu_series is not None:
        argv += ["--qemu-series", build.qemu_series]
    return argv


def _pytest_argv(config: NightlyConfig, night: folders.Night, build: Build,
                 xen_build: Path | None, run_id: str, results: Path) -> list[str]:
    argv = [sys.executable, "-m", "pytest", *map(str, config.suites), "--lab", str(config.lab),
            "--results-db", config.results_db, "--alluredir", str(results),
            "--artifacts", str(night.path / "artifacts"), "--run-id", run_id,
            "-p", "no:cacheprovider"]
    if config.lab_db:
        argv += ["--lab-db", config.lab_db]
    if xen_build is not None:
        argv += ["--xen-build", str(xen_build)]
    if build.series is not None:
        argv += ["--series", build.series]
    if config.workers > 1:
        argv += ["-n", str(config.workers)]
    return argv + list(config.pytest_args) + list(build.pytest_args)


def _report(config: NightlyConfig, night: folders.Night, build: Build, run_id: str,
            folder: Path, history: Path, stop: _Stop) -> tuple[int, bool]:
    """``xenhil report`` of the build's run: (its exit status, whether its
    secret scan found a leak)."""
    argv = [sys.executable, "-m", "xenhil.harness.cli.main", "report", str(folder / "allure-results"),
            "-o", str(folder / "report"), "--results-db", config.results_db, "--run", run_id,
            "--history", str(history), "--title", f"{build.name} {night.id}",
            "--scan-secrets", str(config.lab), "--scan-also", str(folder / "pytest.log")]
    artifacts = night.path / "artifacts" / run_id
    if artifacts.is_dir():
        argv += ["--scan-also", str(artifacts)]
    if config.known_issues is not None:
        argv += ["--known-issues", str(config.known_issues)]
    log = folder / "report.log"
    status = _tee(argv, log, build.name, stop)
    return status, "SECRET LEAK" in log.read_text(errors="replace")


def _tee(argv: list[str], log: Path, build: str, stop: _Stop) -> int:
    """``argv`` run from the checkout, its output kept in ``log`` and
    shown line by line led by the build's name; its exit status."""
    from xenhil.harness.secrets import scrub
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER",)}
    with open(log, "w", encoding="utf-8", errors="replace") as out:
        proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
        stop.child = proc
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                # Masked here too (the lab's secrets are registered in this
                # process): the log and the journal are read by more people
                # than the lab's admins.
                line = scrub(line)
                out.write(line)
                out.flush()
                print(f"[{build}] {line}", end="", flush=True)
            return proc.wait()
        finally:
            stop.child = None
            if proc.poll() is None:      # this process is being torn down: do not leave it
                proc.terminate()
                proc.wait()


def _counts(triage: Path) -> str:
    """The "N passed, M failed, K skipped" line of a triage summary."""
    if not triage.is_file():
        return ""
    lines = triage.read_text(errors="replace").splitlines()
    return next((line for line in lines[:4] if " passed, " in line), "")


def _summary(config: NightlyConfig, night: folders.Night, outcomes: list[BuildOutcome],
             stopped: str | None, seconds: float) -> str:
    failed = [o for o in outcomes if o.status != "passed"]
    ended = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"xenhil nightly {night.id}: {len(outcomes)} build(s), "
             f"{len(outcomes) - len(failed)} passed, {len(failed)} not passed; "
             f"ended {ended} after {_duration(seconds)}"
             + (f"; stopped by {stopped}" if stopped else ""),
             f"lab {config.lab}, results store {config.results_db}", ""]
    width = max(len(o.name) for o in outcomes)
    for o in outcomes:
        lines.append(f"  {o.name:<{width}}  {o.status.upper() if o.status != 'passed' else o.status}"
                     + (f"  {o.counts}" if o.counts else "")
                     + (f"  ({o.reason})" if o.reason else ""))
        if o.report:
            lines.append(f"  {'':<{width}}  report {night.path / o.report} "
                         f"(trend: this run and {o.history_runs} before it)")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600
            else f"{seconds // 60}m{seconds % 60:02d}s")


__all__ = ["run_night", "check_before_running", "BuildOutcome", "PYTEST_EXITS"]
