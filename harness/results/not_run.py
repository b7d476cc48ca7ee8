"""Tests a run collected but never gave a verdict: "not run".

A run stopped before its end (SIGTERM, Ctrl-C, ``-x``, a killed process)
leaves tests without a result.  They are listed, not lost:

- in the results store, as outcome ``not run``: every collected test is
  recorded so when collection ends and its real outcome replaces the row,
  so even a run killed with SIGKILL leaves the list (fixtures.reporting);
- in the Allure results, as a result of status ``skipped`` whose message
  starts with :data:`MARKER` and carries the tag ``not-run``; the Allure
  category :data:`NOT_RUN_CATEGORY` (harness.results.categories) collects
  them.  The placeholder of a test is written when collection ends and
  removed when the test starts; a test interrupted while it ran gets the
  same status and marker on its own result (fixtures.reporting).

Why ``skipped`` and not ``broken`` or ``unknown``: a test that never ran
says nothing about the patch or the lab, so it must not land among the
failures (nor count as one in `xenhil report`'s verdicts), and Allure draws
skipped tests apart from passed and failed ones; ``unknown`` is shown by
neither Allure's trend nor its default filters.  The marker separates them
from ordinary skips (a capability the host lacks) in the Categories page.

No pytest import here.
"""
from __future__ import annotations

import json
import socket
import time
import uuid as uuidlib
from pathlib import Path

from allure_commons.utils import md5, platform_label

#: Starts the Allure message of a not-run result (the category matches it).
MARKER = "[not-run]"
#: The results store's outcome of a test that never gave a verdict.
OUTCOME = "not run"
TAG = "not-run"


def message(phrase: str | None, started: bool) -> str:
    """The store's message for a not-run test: ``phrase`` says how the run
    ended ("interrupted by SIGTERM"); None while it has not ended (what a
    run killed outright leaves)."""
    how = phrase or "the run ended"
    return f"not run: {how} " + ("while it ran (no verdict)" if started else "before it started")


def allure_message(text: str) -> str:
    return f"{MARKER} {text}"


def _nodeid_parts(nodeid: str) -> tuple[str, str, list[str], str]:
    """(parent package, module, classes, test name) as allure-pytest names them."""
    filepath, *rest = nodeid.split("::")
    *classes, name = rest or [""]
    *dirs, filename = filepath.split("/")
    return ".".join(dirs), filename.rsplit(".", 1)[0], classes, name


def allure_result(nodeid: str, text: str, labels: dict[str, str] | None = None) -> dict:
    """An Allure result for a test that did not run, placed where
    allure-pytest puts the test's own result (same suites, full name)."""
    parent, module, classes, name = _nodeid_parts(nodeid)
    package = ".".join(p for p in (parent, module) if p)
    function = name.split("[", 1)[0]
    full_name = f"{package}{'.' + '.'.join(classes) if classes else ''}#{function}"
    params = name[len(function):]
    now = int(time.time() * 1000)
    all_labels = [("parentSuite", parent), ("suite", module), ("subSuite", " > ".join(classes)),
                  ("host", socket.gethostname()), ("framework", "pytest"),
                  ("language", platform_label()), ("package", package), ("tag", TAG),
                  *(labels or {}).items()]
    return {
        "uuid": str(uuidlib.uuid4()),
        # allure-pytest's ids: md5 of the full name (and of the parameters'
        # values, which only the worker knows: the test id's stands in).
        "historyId": md5(full_name, params) if params else md5(full_name),
        "testCaseId": md5(full_name),
        "fullName": full_name,
        "name": name,
        "status": "skipped",
        "statusDetails": {"message": allure_message(text)},
        "stage": "finished",
        "start": now,
        "stop": now,
        "labels": [{"name": k, "value": v} for k, v in all_labels if v],
        # Allure tells results apart by full name and parameters (the same
        # ones are retries of one test): the test id's parameter part stands
        # in for the values, which only the process that collected it knows.
        "parameters": [{"name": "id", "value": params[1:-1]}] if params else [],
        "titlePath": [*nodeid.split("::")[0].split("/"), *classes],
    }


def write_placeholder(results_dir: Path, nodeid: str, text: str,
                      labels: dict[str, str] | None = None, path: Path | None = None) -> Path:
    """Write (or, given ``path``, rewrite) a test's not-run result."""
    result = allure_result(nodeid, text, labels)
    if path is not None:
        result["uuid"] = path.name.removesuffix("-result.json")
    else:
        path = Path(results_dir) / f"{result['uuid']}-result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    from xenhil.harness.secrets import scrub
    tmp.write_text(scrub(json.dumps(result)))
    tmp.replace(path)        # a report read meanwhile sees the old file or the new one
    return path
