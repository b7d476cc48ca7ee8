"""Allure categories: one per failure class, so a reviewer sees at a glance
whether the patch or the lab failed, and one for the tests an interrupted
run never gave a verdict (harness.results.not_run).

Allure matches categories on the status message; every harness error's
message starts with "[<class>]" (harness.errors.XenhilError.__str__), and the
pytest plugin prefixes unclassified failures the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

from xenhil.harness.errors import INFRASTRUCTURE, PRODUCT, TEST_BUG

# [\s\S]* rather than .* with flags: the pattern must full-match multi-line
# messages both in Allure 2 (Java) and Allure 3 (JavaScript).
CATEGORIES = [
    {"name": "Infrastructure: the lab failed, not the patch (rerun)",
     "matchedStatuses": ["broken", "failed"],
     "messageRegex": rf"[\s\S]*\[{INFRASTRUCTURE}\][\s\S]*"},
    {"name": "Product: Xen/QEMU behaved wrongly (blame the patch)",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": rf"[\s\S]*\[{PRODUCT}\][\s\S]*"},
    {"name": "Test bug: the framework, a suite or its input is wrong",
     "matchedStatuses": ["broken", "failed"],
     "messageRegex": rf"[\s\S]*\[{TEST_BUG}\][\s\S]*"},
    # Tests the run never gave a verdict (harness.results.not_run): skipped,
    # with the marker, so they are neither failures nor ordinary skips.
    {"name": "Not run: the run stopped before these tests gave a verdict (rerun them)",
     "matchedStatuses": ["skipped"],
     "messageRegex": r"[\s\S]*\[not-run\][\s\S]*"},
]


def write_categories(results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "categories.json"
    _replace(path, json.dumps(CATEGORIES, indent=2))
    return path


def _replace(path: Path, text: str) -> None:
    """Written whole or not at all: the run writes these files at its start
    and again at its end, and a report may read them at any time."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_environment(results_dir: Path, facts: dict[str, str]) -> Path:
    """Allure's environment.properties (key=value, one per line), scrubbed of
    the registered secrets (harness.secrets): it is written at the run's
    start, long before the final scrub of its files."""
    from xenhil.harness.secrets import scrub
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "environment.properties"
    lines = [f"{key}={str(value).replace(chr(10), ' ')}" for key, value in sorted(facts.items())]
    _replace(path, scrub("\n".join(lines) + "\n"))
    return path
