"""Shared helpers of the check tests: the data folder and the assertion that
a CheckFailed message carries expected / seen / evidence."""
from __future__ import annotations

from pathlib import Path

from xenhil.harness.checks.failure import CheckFailed
from xenhil.harness.errors import PRODUCT

DATA = Path(__file__).resolve().parents[1] / "data" / "checks"


def data(name: str) -> str:
    return (DATA / name).read_text()


#: Real outputs recorded on the virtual lab (README.md there says how).
RECORDED = Path(__file__).resolve().parents[1] / "data" / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def recorded_port_cmdlines() -> list[list[str]]:
    """The two QEMUs of a qnet+qall guest on the virtual lab with our port of
    the series (/proc/PID/cmdline, one argument a line, '----' between)."""
    text = recorded("qemu_cmdlines_qnet_qall_port_417_emulated.txt")
    return [[a for a in block.splitlines() if a] for block in text.split("----\n") if block.strip()]


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
