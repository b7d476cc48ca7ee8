"""Shared helpers of the check tests: the data folder and the assertion that
a CheckFailed message carries expected / seen / evidence."""
from __future__ import annotations

from pathlib import Path

from harness.checks.failure import CheckFailed
from harness.errors import PRODUCT

DATA = Path(__file__).resolve().parents[1] / "data" / "checks"


def data(name: str) -> str:
    return (DATA / name).read_text()


def assert_failure_message(exc: CheckFailed, *fragments: str) -> str:
    """The message of a check failure names what was expected, what was
    seen, where the evidence is, and contains every fragment."""
    text = str(exc)
    assert exc.failure_class == PRODUCT
    assert "\n  expected: " in text and "\n  seen: " in text, text
    assert "\n  evidence " in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    return text
