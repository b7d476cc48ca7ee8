"""The one failure every check raises: ``CheckFailed``.

Its message always has three parts, so a patch reviewer can judge it
without rerunning anything:

- ``expected``: what Xen/QEMU should have done (derived from the split, the
  device-model command lines, docs/xen-ioreq-facts.md);
- ``seen``: what the guest/host showed;
- ``evidence``: where the raw input of the check is (saved files, log paths,
  or a short quote when no file exists).

A check that finds several problems raises one ``CheckFailed`` listing every
``Mismatch`` (each with its own expected/seen), not only the first.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NoReturn, Sequence

from xenhil.harness.errors import ProductError

log = logging.getLogger("xenhil.checks")

#: name -> path of a saved file (preferred) or a short quote of the evidence
Evidence = Mapping[str, str]

NO_EVIDENCE = "none given by the caller (a xenhil bug: every check must name its evidence)"
MAX_LISTED = 40     # mismatches listed in the message; the rest are counted


@dataclass(frozen=True)
class Mismatch:
    """One difference: ``what`` (a BDF, a port, a model) expected X, seen Y."""

    what: str
    expected: str
    seen: str

    def render(self) -> str:
        return f"{self.what}: expected {self.expected}; seen {self.seen}"


class CheckFailed(ProductError):
    """A check of Xen/QEMU behaviour failed (failure class ``product``)."""

    help = ("Xen or QEMU behaved differently than the split and the device-model command "
            "lines say: compare expected/seen, then open the evidence files.")

    def __init__(self, check: str, *, expected: str, seen: str, evidence: Evidence,
                 mismatches: Sequence[Mismatch] = (), help: str | None = None):
        self.check, self.expected, self.seen = check, expected, seen
        self.mismatches: list[Mismatch] = list(mismatches)
        evidence = {k: str(v) for k, v in (evidence or {}).items()}
        if not evidence:
            log.warning("check %r failed without evidence", check)
            evidence = {"evidence": NO_EVIDENCE}
        lines = [f"check failed: {check}", f"  expected: {expected}", f"  seen: {seen}"]
        for m in self.mismatches[:MAX_LISTED]:
            lines.append(f"  - {m.render()}")
        if len(self.mismatches) > MAX_LISTED:
            lines.append(f"  - ... and {len(self.mismatches) - MAX_LISTED} more")
        super().__init__("\n".join(lines), help=help, evidence=evidence)


def fail(check: str, *, expected: str, seen: str, evidence: Evidence,
         mismatches: Sequence[Mismatch] = (), help: str | None = None) -> NoReturn:
    raise CheckFailed(check, expected=expected, seen=seen, evidence=evidence,
                      mismatches=mismatches, help=help)


def fail_if(mismatches: Sequence[Mismatch], check: str, *, expected: str, evidence: Evidence,
            help: str | None = None) -> None:
    """Raise CheckFailed when ``mismatches`` is not empty; ``seen`` summarises them."""
    if mismatches:
        n = len(mismatches)
        fail(check, expected=expected, seen=f"{n} difference{'s' if n != 1 else ''} (listed below)",
             evidence=evidence, mismatches=mismatches, help=help)


def save_evidence(directory: str | Path, name: str, text: str | bytes) -> str:
    """Write raw check input to ``directory/name``; return the path (for Evidence)."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def quote(text: str, limit: int = 300) -> str:
    """A short quote of evidence text, for when no file holds it."""
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
