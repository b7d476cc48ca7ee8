"""Verdicts against earlier runs, as OSSTest gives them in its flight mails.

For a failed test, in this order:
- ``known issue``: listed in the known-issues file (with its link): not a regression.
- ``passed in run N (flaky)``: an earlier run of the *same build* passed it.
- ``baseline untested``: no earlier result at all.
- ``regression vs run N``: the newest earlier result (another build) passed.  Blocking.
- ``never passed``: no earlier run ever passed it.
- ``fails like run N``: the newest earlier result failed too.
A passed test gets ``pass``.  Only regressions block the patch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from xenhil.harness.errors import ConfigError
from xenhil.harness.results.store import Outcome

FAILED = ("failed", "broken")


@dataclass(frozen=True)
class Verdict:
    kind: str          # pass | known issue | flaky | baseline untested | regression | never passed | fails like
    text: str
    blocking: bool
    link: str = ""


@dataclass(frozen=True)
class KnownIssue:
    test: str          # node id, or a prefix ending in "*"
    reason: str
    link: str

    def covers(self, test: str) -> bool:
        if self.test.endswith("*"):
            return test.startswith(self.test[:-1])
        return test == self.test


def load_known_issues(path: Path | None) -> list[KnownIssue]:
    """``known-issues.yaml``: a list of {test, reason, link}."""
    if path is None or not path.exists():
        return []
    from xenhil.harness.safeio import read_text
    text = read_text(path, "known issues file", fix="pass --known-issues a YAML list of "
                     "{test, reason, link}")
    from xenhil.harness import safeyaml
    data = safeyaml.load(text, f"known issues file {path}",
                         fix="fix the YAML at that line: a flat list of {test, reason, link}") or []
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of {{test, reason, link}} entries",
                          help="write e.g. `- {test: 'suites/pci/test_x.py::test_y', reason: ..., link: ...}`")
    issues = []
    for index, entry in enumerate(data):
        missing = [k for k in ("test", "reason", "link") if not isinstance(entry, dict) or not entry.get(k)]
        if missing:
            raise ConfigError(f"{path}: entry {index}: missing {', '.join(missing)}",
                              help="each known issue needs test, reason and link")
        issues.append(KnownIssue(str(entry["test"]), str(entry["reason"]), str(entry["link"])))
    return issues


def verdict(test: str, outcome: str, build: str, history: list[Outcome],
            known: list[KnownIssue] = ()) -> Verdict:
    """``history``: earlier outcomes of this test, newest first."""
    if outcome not in FAILED:
        return Verdict("pass", "pass", False)
    for issue in known:
        if issue.covers(test):
            return Verdict("known issue", f"known issue: {issue.reason}", False, issue.link)
    for earlier in history:
        if earlier.build == build and earlier.outcome == "passed":
            return Verdict("flaky", f"passed in run {earlier.run_seq} (flaky)", False)
    judged = [h for h in history if h.outcome in FAILED + ("passed",)]
    if not judged:
        return Verdict("baseline untested", "baseline untested", False)
    newest = judged[0]
    if newest.outcome == "passed":
        return Verdict("regression", f"regression vs run {newest.run_seq}", True)
    if not any(h.outcome == "passed" for h in judged):
        return Verdict("never passed", "never passed", False)
    return Verdict("fails like", f"fails like run {newest.run_seq}", False)
