"""Bisection of a patch series: which patch makes a chosen test fail?

Given a series whose base passes a test and whose whole fails it, the
prefixes of the series (its first k patches) are built with ``xenhil build``
(cached: a prefix built before answers in a second) and the test is run on
each as a user runs it (pytest, one split, one lab), until the first patch
whose prefix fails is found: ``1 + ceil(log2(N))`` builds for N patches at
most (the whole series first, to confirm it fails, then a binary search;
the base is taken as passing, as the caller said).

A prefix is **bad** when the test failed with the failure class asked for
(product, by default), **good** when it passed.  Anything else (a failure of
the lab, a skip, no outcome at all) says nothing about the patches: the
prefix is run again (``retries`` times), and when it still says nothing,
the bisection stops and blames no patch.  A prefix that does not build stops
it too (its patch breaks the build, not the test: a different question).
Outcomes and classes are read back from the results store the runs write
(by run id and node id), never from pytest's exit status or text, as
``xenhil qualify`` does (harness/mutants/qualify.py, whose build and run
steps this reuses).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from xenhil.harness.build.series import Patch
from xenhil.harness.errors import PRODUCT
from xenhil.harness.mutants.qualify import (Build, Run, pytest_command, read_outcomes, run_pytest,
                                            xenhil_build)

GOOD, BAD, SAYS_NOTHING = "good", "bad", "says nothing"


@dataclass
class Attempt:
    """One run of the test on one prefix."""

    run_id: str
    seconds: float
    outcome: str            # passed | failed | broken | skipped | no outcome
    failure_class: str
    message: str
    log: Path


@dataclass
class Step:
    """One prefix of the series, built and tested."""

    prefix: int                             # how many patches of the series it has
    build: Build | None = None
    attempts: list[Attempt] = field(default_factory=list)
    verdict: str = SAYS_NOTHING

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


@dataclass
class Outcome:
    """The bisection's answer: the first bad patch (1-based index into the
    series), or why there is none."""

    steps: list[Step]
    first_bad: int | None = None
    stopped: str | None = None              # why no patch is blamed

    @property
    def builds(self) -> int:
        return len(self.steps)


def max_builds(patches: int) -> int:
    """The most prefixes a bisection of ``patches`` patches builds."""
    return 1 + math.ceil(math.log2(patches))


def search(patches: int, judge: Callable[[int], str]) -> tuple[int | None, str | None]:
    """Binary search over prefixes 0..patches, prefix 0 (the base) taken as
    good: the first bad patch, or (None, why).  ``judge(k)`` tests prefix k
    once and says GOOD, BAD or SAYS_NOTHING (after its own retries)."""
    verdict = judge(patches)
    if verdict == GOOD:
        return None, (f"the whole series ({patches} patches) passes the test: "
                      "nothing to bisect (is the test or the split the right one?)")
    if verdict != BAD:
        return None, ("the run of the whole series says nothing about the patches "
                      "(see its attempts): no patch is blamed")
    good, bad = 0, patches
    while bad - good > 1:
        middle = (good + bad) // 2
        verdict = judge(middle)
        if verdict == BAD:
            bad = middle
        elif verdict == GOOD:
            good = middle
        else:
            return None, (f"the run of the first {middle} patches says nothing about them "
                          "(see its attempts): no patch is blamed")
    return bad, None


def prefix_series(patches: Sequence[Patch], count: int, folder: Path) -> Path | None:
    """A quilt folder with the first ``count`` patches (None for none: that
    half stays Debian's).  Written, not linked: the build manifest names
    files that stay as they were built."""
    if count == 0:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for number, patch in enumerate(patches[:count], 1):
        name = patch.name if patch.name.endswith(".patch") else f"{number:04d}-{patch.name}.patch"
        (folder / name).write_text(patch.text)
        lines.append(name + (f" -p{patch.strip}" if patch.strip != 1 else ""))
    (folder / "series").write_text("\n".join(lines) + "\n")
    return folder


@dataclass
class Bisection:
    """A bisection of ``patches`` (the ``half`` of the build it patches,
    "xen" or "qemu"; the other half's series, if any, applied whole to
    every prefix) against one test on one split."""

    patches: list[Patch]
    half: str
    other_series: str | None              # applied whole (any form xenhil build takes)
    test: str                              # suites/...py::test_name
    split: str
    lab: str
    folder: Path                           # the bisection's own folder (builds, logs, store)
    root: Path                             # pytest's rootdir
    bisection_id: str
    failure_class: str = PRODUCT
    retries: int = 1
    extra: list[str] = field(default_factory=list)
    jobs: int | None = None
    say: Callable[[str], None] = print
    build: Callable[..., Build] = xenhil_build
    steps: dict[int, Step] = field(default_factory=dict)

    @property
    def node_id(self) -> str:
        return f"{self.test}[split={self.split}]"

    @property
    def store_url(self) -> str:
        """Its own results store: bisection runs are no other run's history."""
        return f"sqlite://{self.folder.resolve() / 'results.sqlite'}"

    def patch_name(self, index: int) -> str:
        return self.patches[index - 1].name

    def _build(self, prefix: int) -> Build:
        series = prefix_series(self.patches, prefix, self.folder / "series" / f"prefix-{prefix}")
        xen, qemu = (series, self.other_series) if self.half == "xen" else (self.other_series, series)
        if xen is None and qemu is None:
            return Build(None, key="debian")        # the hosts' own Debian Xen and QEMU
        return self.build(xen, qemu, self.folder / f"build-prefix-{prefix}.log", self.jobs)

    def _run(self, step: Step, attempt: int) -> Attempt:
        run_id = f"{self.bisection_id}-p{step.prefix}-a{attempt}"
        run = Run(f"prefix-{step.prefix}", None, [(self.test, self.split, self.node_id)],
                  build=step.build, run_id=run_id)
        log = self.folder / f"{run_id}.log"
        command = pytest_command(run, lab=self.lab, artifacts=self.folder / "artifacts",
                                 root=self.root, results_db=self.store_url, extra=self.extra)
        run_pytest(run, command, self.root, log)
        read_outcomes(self.store_url, run)
        row = run.outcomes.get(self.node_id) or {}
        return Attempt(run_id, run.seconds, row.get("outcome", "no outcome"),
                       row.get("failure_class", ""), (row.get("message") or "").strip(), log)

    def _judge_attempt(self, attempt: Attempt) -> str:
        if attempt.outcome == "passed":
            return GOOD
        if attempt.outcome in ("failed", "broken") and attempt.failure_class == self.failure_class:
            return BAD
        return SAYS_NOTHING

    def judge(self, prefix: int) -> str:
        step = self.steps[prefix] = Step(prefix)
        added = f"up to {self.patch_name(prefix)}" if prefix else "none"
        self.say(f"prefix {prefix}/{len(self.patches)} (patches: {added}): building")
        step.build = self._build(prefix)
        if step.build.error:
            self.say(f"  does not build: {step.build.error}")
            return SAYS_NOTHING
        self.say(f"  build {step.build.key}: {'cached' if step.build.cached else 'built'} "
                 f"in {step.build.seconds:.0f} s")
        for attempt in range(1, self.retries + 2):
            tried = self._run(step, attempt)
            step.attempts.append(tried)
            step.verdict = self._judge_attempt(tried)
            said = f"{tried.outcome}" + (f" ({tried.failure_class})" if tried.failure_class else "")
            self.say(f"  run {tried.run_id}: {said} in {tried.seconds:.0f} s -> {step.verdict}")
            if step.verdict != SAYS_NOTHING:
                break
        return step.verdict

    def execute(self) -> Outcome:
        self.folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        first_bad, stopped = search(len(self.patches), self.judge)
        steps = list(self.steps.values())
        broken = next((s for s in steps if s.build is not None and s.build.error), None)
        if stopped is not None and broken is not None:
            stopped = (f"the first {broken.prefix} patches do not build ({broken.build.error}): "
                       "a patch breaks the build, not the test; no patch is blamed")
        self.say(f"bisection ended after {(time.monotonic() - started) / 60:.1f} min")
        return Outcome(steps, first_bad, stopped)


def report(bisection: Bisection, outcome: Outcome) -> str:
    """What a reviewer reads: the steps, then the patch blamed with its
    evidence, or why none is."""
    lines = [f"{'prefix':>6}  {'last patch':<48}  {'build':<22}  {'runs':<24}  verdict"]
    for step in sorted(outcome.steps, key=lambda s: s.prefix):
        runs = ", ".join(a.outcome + (f"/{a.failure_class}" if a.failure_class else "")
                         for a in step.attempts) or "-"
        build = "not built" if step.build is not None and step.build.error else \
            (step.build.key if step.build is not None else "-")
        last = bisection.patch_name(step.prefix) if step.prefix else "(base)"
        lines.append(f"{step.prefix:>6}  {last[:48]:<48}  {build[:22]:<22}  {runs[:24]:<24}  "
                     f"{step.verdict}")
    lines.append("")
    lines.append(f"{outcome.builds} build(s) for {len(bisection.patches)} patches "
                 f"(at most {max_builds(len(bisection.patches))})")
    if outcome.first_bad is None:
        lines.append(f"no patch blamed: {outcome.stopped}")
        return "\n".join(lines)
    bad = bisection.steps[outcome.first_bad].last
    good = bisection.steps.get(outcome.first_bad - 1)
    patch = bisection.patches[outcome.first_bad - 1]
    lines.append(f"first bad patch: {outcome.first_bad} of {len(bisection.patches)}, "
                 f"{patch.name}: {patch.subject}")
    if bad is not None:
        lines.append(f"  {bisection.node_id} fails with it ({bad.outcome}, {bad.failure_class}): "
                     f"{bad.message.splitlines()[0] if bad.message else '(no message)'}")
        lines.append(f"  evidence: run {bad.run_id}, log {bad.log}, Allure results "
                     f"{bisection.folder / 'artifacts' / bad.run_id / 'allure-results'}")
    if good is not None and good.last is not None:
        lines.append(f"  and passes without it: run {good.last.run_id}")
    elif outcome.first_bad == 1:
        lines.append("  and the base passes (taken as given: the base is not rebuilt)")
    return "\n".join(lines)


__all__ = ["Bisection", "Outcome", "Step", "Attempt", "search", "prefix_series", "max_builds",
           "report", "GOOD", "BAD", "SAYS_NOTHING"]
