from xenhil.harness.checks.failure import CheckFailed, Mismatch, NO_EVIDENCE, fail_if, save_evidence
from xenhil.harness.errors import ProductError

import pytest

from tests.support.checks import assert_failure_message


def test_message_has_expected_seen_evidence_and_every_mismatch(tmp_path):
    path = save_evidence(tmp_path, "lspci.txt", "00:00.0 0600: 8086:1237\n")
    with pytest.raises(CheckFailed) as info:
        fail_if([Mismatch("00:03.0", "1013:00b8", "no device"), Mismatch("00:05.0", "no device", "8086:100e")],
                "guest PCI topology", expected="exactly the layout", evidence={"lspci -n": path})
    exc = info.value
    assert isinstance(exc, ProductError) and isinstance(exc, AssertionError)
    text = assert_failure_message(exc, "expected: exactly the layout", "2 differences",
                                  "00:03.0: expected 1013:00b8; seen no device", f"evidence lspci -n: {path}")
    assert text.startswith("[product] check failed: guest PCI topology")
    assert exc.check == "guest PCI topology" and len(exc.mismatches) == 2


def test_no_mismatch_no_failure():
    fail_if([], "anything", expected="x", evidence={"e": "f"})


def test_missing_evidence_is_said_in_the_message():
    exc = CheckFailed("c", expected="a", seen="b", evidence={})
    assert NO_EVIDENCE in str(exc)


def test_long_lists_are_cut_with_a_count():
    exc = CheckFailed("c", expected="a", seen="b", evidence={"e": "f"},
                      mismatches=[Mismatch(str(i), "x", "y") for i in range(50)])
    assert "... and 10 more" in str(exc) and "- 39: expected x" in str(exc)
