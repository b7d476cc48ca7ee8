"""Which failure class an exception belongs to (harness.errors), including
exceptions the harness did not raise itself."""
from __future__ import annotations

from harness.errors import INFRASTRUCTURE, PRODUCT, TEST_BUG, XenhilError


def failure_class_of(exc: BaseException, phase: str) -> str:
    """``phase`` is pytest's: "setup" (fixtures: host and guest bring-up),
    "call" (the test body) or "teardown".

    - typed harness errors carry their own class;
    - a plain ``assert`` in a suite is a check on Xen/QEMU: product;
    - anything else while bringing up hosts or guests (setup): infrastructure;
    - anything else in the test body or teardown: a bug in the test or framework.
    """
    if isinstance(exc, XenhilError):
        return exc.failure_class
    if isinstance(exc, AssertionError):
        return PRODUCT
    if phase == "setup":
        return INFRASTRUCTURE
    return TEST_BUG
