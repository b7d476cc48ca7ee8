"""Qualify the suites against the mutant catalog: build each mutant (the
build cache answers what was built before), run the tests that must catch
it, run the unmutated build on the same tests in the same qualification,
and judge from the results the runs wrote.

One qualification is a list of pytest runs, each a subprocess with its own
run id, in this order: the unmutated build first (it is also the history
the latency mutant is compared with), then each mutant.  A run's outcomes
and failure classes are read back from the results store the xenhil plugin
writes (``outcomes`` table, by run id and pytest node id), never from
pytest's exit status or text.

Verdicts, per mutant: **caught** when every test it names failed on every
split it names with the failure class it names; **wrong class** when they
failed, but one with another class; **escaped** when one passed; **not
run** when one has no outcome (skipped, not collected, the run stopped) or
the mutant did not build.  The unmutated build is **green** when every one
of those tests passed.  The qualification passes when every mutant is
caught and the unmutated build is green.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from xenhil.harness.errors import ConfigError
from xenhil.harness.mutants.catalog import Mutant, MutantCatalog

#: The name of the unmutated run in run ids and tables.
UNMUTATED = "unmutated"

CAUGHT, WRONG_CLASS, ESCAPED, NOT_RUN, GREEN, RED = (
    "caught", "wrong class", "escaped", "not run", "green", "red")


@dataclass(frozen=True)
class Build:
    """What a run installs: ``dist`` for --xen-build (None: the hosts'
    Debian Xen), and how the build went."""

    dist: str | None
    key: str = ""
    cached: bool = False
    seconds: float = 0.0
    error: str | None = None          # the build failed: why (one line)


@dataclass
class Run:
    """One pytest run of the qualification."""

    name: str                         # UNMUTATED or the mutant's id
    mutant: Mutant | None
    expected: list[tuple[str, str, str]]   # (test, split, node id)
    build: Build | None = None
    run_id: str = ""
    seconds: float = 0.0
    exit_status: int | None = None
    outcomes: dict[str, dict] = field(default_factory=dict)   # node id -> outcomes row

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(split for _, split, _ in self.expected))

    @property
    def node_ids(self) -> list[str]:
        return list(dict.fromkeys(node for _, _, node in self.expected))


def plan(mutants: Sequence[Mutant], repeat: int = 1) -> list[Run]:
    """The unmutated run (every test x split any mutant names), then
    ``repeat`` runs per mutant: the probe faults first, which run on the
    unmutated build too (a host provisions a build once, not again for
    each), then the patch mutants, in the catalog's order.  A mutant's
    runs follow each other, named ``<id>.1``, ``<id>.2``... when repeated
    (each its own run id, so each is judged on its own)."""
    union = list(dict.fromkeys(e for m in mutants for e in m.expected()))
    ordered = sorted(mutants, key=lambda m: m.patch is not None)
    names = lambda m: [m.id] if repeat == 1 else [f"{m.id}.{i}" for i in range(1, repeat + 1)]
    return [Run(UNMUTATED, None, union)] + [Run(name, m, m.expected()) for m in ordered
                                            for name in names(m)]


# --------------------------------------------------------------------------
# Builds
# --------------------------------------------------------------------------

def mutant_series(catalog: MutantCatalog, mutant: Mutant, folder: Path) -> dict[str, Path | None]:
    """The series folders of a patch mutant under ``folder``: each half the
    reference's, and the mutant's half with its patch appended to the
    quilt ``series`` file.  Copied (not linked) so the build manifest names
    files that stay as they were built."""
    out: dict[str, Path | None] = {}
    for half, reference in (("xen", catalog.xen_series), ("qemu", catalog.qemu_series)):
        if reference is None:
            out[half] = None
            continue
        target = folder / half
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(reference, target)
        if half == mutant.half:
            shutil.copy2(mutant.patch, target / mutant.patch.name)
            series = (target / "series").read_text()
            (target / "series").write_text(series + ("" if series.endswith("\n") or not series else "\n")
                                           + f"# the mutant {mutant.id} (lab/mutants)\n"
                                           + mutant.patch.name + "\n")
        out[half] = target
    return out


def xenhil_build(xen_series: Path | None, qemu_series: Path | None, log: Path,
                 jobs: int | None = None) -> Build:
    """`xenhil build` of the series (cached builds answer in a second), as
    a user runs it, niced: the machine may be running the virtual lab."""
    command = ["nice", "-n", "19", sys.executable, "-m", "xenhil.harness.cli.main", "build", "--json"]
    if xen_series is not None:
        command += ["--xen-series", str(xen_series)]
    if qemu_series is not None:
        command += ["--qemu-series", str(qemu_series)]
    if jobs:
        command += ["-j", str(jobs)]
    started = time.monotonic()
    with open(log, "w") as err:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True,
                                cwd=Path(__file__).resolve().parents[2])
    seconds = time.monotonic() - started
    if result.returncode != 0:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        return Build(None, seconds=seconds,
                     error=f"xenhil build exited {result.returncode}: "
                           f"{lines[-1] if lines else 'no output'} (log {log})")
    data = json.loads(result.stdout)
    return Build(data["dist"], data["key"], bool(data.get("cached")), seconds)


# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------

def pytest_command(run: Run, *, lab: str, artifacts: Path, root: Path, results_db: str | None,
                   extra: Sequence[str] = ()) -> list[str]:
    command = [sys.executable, "-m", "pytest", *run.node_ids, "--rootdir", str(root),
               "--lab", lab, "--artifacts", str(artifacts), "--run-id", run.run_id,
               "--alluredir", str(artifacts / run.run_id / "allure-results"),
               "-p", "no:cacheprovider", "-q"]
    for split in run.splits:
        command += ["--split", split]
    if run.build is not None and run.build.dist:
        command += ["--xen-build", run.build.dist]
    if run.mutant is not None and run.mutant.probe_fault:
        command += ["--probe-fault", run.mutant.probe_fault]
    if results_db:
        command += ["--results-db", results_db]
    return command + list(extra)


def run_pytest(run: Run, command: list[str], cwd: Path, log: Path) -> None:
    """Run it to its end (its own guests are destroyed by its own end);
    its output goes to ``log``."""
    started = time.monotonic()
    with open(log, "w") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        run.exit_status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd).returncode
    run.seconds = time.monotonic() - started


def read_outcomes(results_db: str, run: Run) -> None:
    from xenhil.harness.results.store import ResultsStore
    try:
        store = ResultsStore(results_db, create=False)
    except ConfigError:
        return      # the run wrote nothing (refused at start-up): every test is "not run"
    try:
        run.outcomes = {row["test"]: row for row in store.outcomes(run.run_id)}
    finally:
        store.close()


# --------------------------------------------------------------------------
# Verdicts and the table
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    run: str
    what: str
    split: str
    test: str
    outcome: str
    failure_class: str
    verdict: str
    seconds: str


def _test_verdict(run: Run, node: str) -> tuple[str, str, str]:
    """(outcome, class, verdict) of one expected test of a run."""
    if run.build is not None and run.build.error:
        return "not built", "", NOT_RUN
    row = run.outcomes.get(node)
    outcome = row["outcome"] if row else "no outcome"
    klass = row["failure_class"] if row else ""
    if run.mutant is None:
        return outcome, klass, GREEN if outcome == "passed" else RED
    if outcome in ("failed", "broken"):
        return outcome, klass, CAUGHT if klass == run.mutant.failure_class else WRONG_CLASS
    return outcome, klass, ESCAPED if outcome == "passed" else NOT_RUN


def verdict(run: Run) -> str:
    """The run's verdict: the worst of its tests' (see the module's doc)."""
    found = {_test_verdict(run, node)[2] for node in run.node_ids}
    for worst in (RED, NOT_RUN, ESCAPED, WRONG_CLASS):
        if worst in found:
            return worst
    return GREEN if run.mutant is None else CAUGHT


def rows(runs: Sequence[Run]) -> list[Row]:
    out = []
    shown: set[int] = set()           # a build's time once, not on every run of a repeated mutant
    for run in runs:
        what = run.mutant.what if run.mutant is not None else "reference series"
        first = run.build is not None and id(run.build) not in shown
        seconds = f"{run.seconds:.0f} s" + (f" (+build {run.build.seconds:.0f} s)"
                                            if first and run.build.seconds >= 1 else "")
        if run.build is not None:
            shown.add(id(run.build))
        for i, (test, split, node) in enumerate(run.expected):
            outcome, klass, judged = _test_verdict(run, node)
            out.append(Row(run.name if i == 0 else "", what if i == 0 else "", split,
                           test.split("/")[-1], outcome, klass or "-", judged, seconds if i == 0 else ""))
    return out


HEADERS = ("mutant", "planted", "split", "caught by", "outcome", "class", "verdict", "time")


def table(runs: Sequence[Run]) -> str:
    """The table (plain text: it goes to CI logs and closing notes)."""
    body = [tuple(r.__dict__.values()) for r in rows(runs)]
    widths = [max(len(h), *(len(str(b[i])) for b in body)) if body else len(h)
              for i, h in enumerate(HEADERS)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(HEADERS), line("-" * w for w in widths), *map(line, body)])


def passed(runs: Sequence[Run]) -> bool:
    return all(verdict(r) == (GREEN if r.mutant is None else CAUGHT) for r in runs)


def summary(runs: Sequence[Run], wall: float) -> str:
    mutants = [r for r in runs if r.mutant is not None]
    caught = sum(verdict(r) == CAUGHT for r in mutants)
    clean = next((verdict(r) for r in runs if r.mutant is None), NOT_RUN)
    distinct = len({r.mutant.id for r in mutants})
    what = "mutants" if distinct == len(mutants) else f"mutant runs ({distinct} mutant(s), repeated)"
    return (f"{caught} of {len(mutants)} {what} caught; unmutated build {clean}; "
            f"wall time {wall / 60:.1f} min")


# --------------------------------------------------------------------------
# The qualification
# --------------------------------------------------------------------------

@dataclass
class Qualification:
    catalog: MutantCatalog
    mutants: list[Mutant]
    lab: str
    artifacts: Path                   # --artifacts of the runs (the store's default folder)
    root: Path                        # the folder the tests' ids are relative to
    results_db: str | None = None
    extra: list[str] = field(default_factory=list)    # more pytest arguments
    qualification_id: str = ""
    jobs: int | None = None
    repeat: int = 1                   # runs of each mutant
    say: Callable[[str], None] = print
    build: Callable[..., Build] = xenhil_build

    @property
    def folder(self) -> Path:
        return self.artifacts / self.qualification_id

    @property
    def store_url(self) -> str:
        """The runs' results store: the qualification's own by default, so
        that its mutant runs never become the history (verdicts, latency)
        of the lab's other runs, and the latency mutant is compared with
        this qualification's unmutated run only."""
        return self.results_db or f"sqlite://{self.folder.resolve() / 'results.sqlite'}"

    def builds(self, runs: list[Run]) -> None:
        """Each run's build: the reference for the unmutated run and the
        probe faults, the reference plus its patch for a patch mutant."""
        reference = None
        if self.catalog.xen_series or self.catalog.qemu_series:
            self.say("build: the reference series")
            reference = self.build(self.catalog.xen_series, self.catalog.qemu_series,
                                   self.folder / "build-reference.log", self.jobs)
        built: dict[str, Build] = {}      # a repeated mutant is built once
        for run in runs:
            if run.mutant is None or run.mutant.patch is None:
                run.build = reference
                continue
            if run.mutant.id not in built:
                self.say(f"build: {run.mutant.id}")
                series = mutant_series(self.catalog, run.mutant, self.folder / "series" / run.mutant.id)
                built[run.mutant.id] = self.build(series["xen"], series["qemu"],
                                                  self.folder / f"build-{run.mutant.id}.log", self.jobs)
            run.build = built[run.mutant.id]

    def execute(self) -> list[Run]:
        self.folder.mkdir(parents=True, exist_ok=True)
        runs = plan(self.mutants, self.repeat)
        self.builds(runs)
        for run in runs:
            run.run_id = f"{self.qualification_id}-{run.name}"
            if run.build is not None and run.build.error:
                self.say(f"{run.name}: not built: {run.build.error}")
                continue
            command = pytest_command(run, lab=self.lab, artifacts=self.artifacts, root=self.root,
                                     results_db=self.store_url, extra=self.extra)
            self.say(f"run: {run.name} ({len(run.node_ids)} test(s) on {', '.join(run.splits)}), "
                     f"log {self.folder / (run.name + '.log')}")
            run_pytest(run, command, self.root, self.folder / f"{run.name}.log")
            read_outcomes(self.store_url, run)
            self.say(f"  {run.name}: {verdict(run)} in {run.seconds:.0f} s")
        return runs


__all__ = ["Qualification", "Build", "Run", "plan", "mutant_series", "xenhil_build", "pytest_command",
           "verdict", "rows", "table", "passed", "summary", "UNMUTATED", "CAUGHT", "ESCAPED",
           "WRONG_CLASS", "NOT_RUN", "GREEN", "RED"]
