"""Which failure class an exception belongs to (harness.errors), including
exceptions the harness did not raise itself."""
from __future__ import annotations

from xenhil.harness.budgets import pytest_timeout_limit
from xenhil.harness.errors import INFRASTRUCTURE, PRODUCT, TEST_BUG, XenhilError


def failure_class_of(exc: BaseException, phase: str) -> str:
    """``phase`` is pytest's: "setup" (fixtures: host and guest bring-up),
    "call" (the test body) or "teardown".

    - typed harness errors carry their own class;
    - the test's whole time limit (pytest-timeout) running out: infrastructure,
      in any phase: every wait has its own budget (harness/budgets.py), so the
      lab hung or was too slow (the plugin raises it as TestTimeLimitExceeded,
      naming the stage; this covers the failure when it comes untranslated);
    - a plain ``assert`` in a suite is a check on Xen/QEMU: product;
    - anything else while bringing up hosts or guests (setup): infrastructure;
    - anything else in the test body or teardown: a bug in the test or framework.
    """
    if isinstance(exc, XenhilError):
        return exc.failure_class
    if pytest_timeout_limit(exc) is not None:
        return INFRASTRUCTURE
    if isinstance(exc, AssertionError):
        return PRODUCT
    if phase == "setup":
        return INFRASTRUCTURE
    return TEST_BUG
