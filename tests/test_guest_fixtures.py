"""Split parametrisation, ordering and capability-skip counting, through pytest."""
from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_split_ids_come_from_the_catalog(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(split): pass")
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_x[[]split=single[]]*", "*test_x[[]split=qnet+qall[]]*",
                                 "*test_x[[]split=qserial+qnet+qall[]]*"])


def test_split_option_selects_and_rejects_unknown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(split): pass")
    result = pytester.runpytest("--collect-only", "-q", "--split", "single")
    result.stdout.fnmatch_lines(["*test_x[[]split=single[]]*", "1 test collected*"])
    # Refused at start-up, before any test is collected or any host touched:
    # one usage error naming the option, the bad id and the known ids.
    bad = pytester.runpytest("--collect-only", "-q", "--split", "single", "--split", "qnett+qall")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["ERROR: --split 'qnett+qall': not a split of the catalog "
                              "*splits.yaml; how to fix: give a catalog id: single, qnet+qall, *"])
    assert "Traceback" not in bad.stderr.str() and "collected" not in bad.stdout.str()


def test_an_unknown_split_is_refused_even_where_no_test_takes_a_split(pytester: pytest.Pytester):
    """A run of tests without the ``split`` fixture used to ignore --split
    nosuch: the typo went unseen (issue #15)."""
    pytester.makepyfile("def test_x(): pass")
    bad = pytester.runpytest("-q", "--split", "nosuch", "--split", "other")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["ERROR: --split 'nosuch', 'other': not splits of the catalog*"])


def test_disruptive_tests_run_last(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.disruptive
        def test_a_saverestore(): pass
        def test_b_pci(): pass
        def test_c_routing(): pass
    """)
    result = pytester.runpytest("-v")
    names = [l.split("::")[1].split()[0] for l in result.outlines if "PASSED" in l]
    assert names == ["test_b_pci", "test_c_routing", "test_a_saverestore"]


def test_bad_xen_build_is_a_usage_error_before_any_host(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--xen-build", "/nonexistent/dist")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--xen-build /nonexistent/dist: no such file or folder*"])


def test_capability_skips_are_counted(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.parametrize("s", ["qnet+qall", "qide+qall"])
        def test_x(s):
            pytest.skip(f"capability: split {s} needs device_models, which vh1's Xen (x) does not have")
    """)
    result = pytester.runpytest("-rs")
    result.stdout.fnmatch_lines(["*xenhil capability skips*",
                                 "2 test(s) skipped: split needs device_models"])


# --- boot crashes: recognised from Xen's own log ------------------------------

class _DomainListFake:
    """Stands in for Toolstack.domain(): the state of a domain xl lists."""

    def __init__(self, entry):
        self.entry = entry

    def domain(self, name):
        return self.entry


class _GuestFake:
    def __init__(self, domid, entry=None):
        self.name, self.domid, self.xl = "g1", domid, _DomainListFake(entry)


def test_boot_crash_is_recognised_from_a_real_triple_fault_log(tmp_path):
    from pathlib import Path

    from xenhil.fixtures.guest import crashed_during_boot
    recorded = Path(__file__).parent / "data" / "recorded" / "xl_dmesg_guest_triple_fault_417_emulated.txt"
    evidence = {"xl-dmesg.txt": str(recorded)}
    assert crashed_during_boot(_GuestFake(1), evidence) == \
        "Triple fault - invoking HVM shutdown action 1"
    # Another domain's crash in the same log is not this guest's.
    assert crashed_during_boot(_GuestFake(2), evidence) is None


def test_boot_crash_is_recognised_from_the_crashed_state_and_not_from_a_timeout():
    from xenhil.fixtures.guest import crashed_during_boot
    from xenhil.harness.xen.parsers.xl_list import parse_xl_list
    listing = ("Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
               "Domain-0                                     0  1024     2     r-----     120.1\n"
               "g1                                           3   256     1     ---sc-       9.0\n")
    crashed = parse_xl_list(listing)[1]
    assert crashed_during_boot(_GuestFake(3, crashed), {}) == "domain 3 in state ---sc- (crash)"
    rebooted = parse_xl_list(listing.replace("---sc-", "---sr-"))[1]
    assert crashed_during_boot(_GuestFake(3, rebooted), {}) == "domain 3 in state ---sr- (reboot)"
    running = parse_xl_list(listing.replace("---sc-", "-b----"))[1]
    assert crashed_during_boot(_GuestFake(3, running), {}) is None  # a slow boot: no retry


def test_a_guest_that_powered_off_while_booting_is_a_crash_listed_or_gone(tmp_path):
    """QEMU 10's nested paging powered off every guest in its decompressor
    (recorded below): the boot retry and the stability benchmark must both
    see that as the guest's domain ending, whether xl still lists it
    (on_poweroff=preserve) or it is gone (the default destroys it)."""
    from pathlib import Path

    from xenhil.fixtures.guest import crashed_during_boot
    from xenhil.harness.xen.parsers.xl_list import parse_xl_list
    listing = ("Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
               "Domain-0                                     0  1024     2     r-----     120.1\n"
               "g1                                          11   256     1     ---s--       9.0\n")
    powered_off = parse_xl_list(listing)[1]
    assert crashed_during_boot(_GuestFake(11, powered_off), {}) == "domain 11 in state ---s-- (poweroff)"

    recorded = (Path(__file__).parent / "data" / "recorded"
                / "xl_guest_poweroff_hap_qemu10_417_emulated.txt").read_text()
    # The recording's last section is xl's log of the guest's last boot.
    xl_log = recorded.split("== /var/log/xen/xl-dbg1.log\n", 1)[1].split("\n== ", 1)[0]
    saved = tmp_path / "xl-g1.log"
    saved.write_text(xl_log)
    gone = _GuestFake(11, None)
    assert crashed_during_boot(gone, {"xen-logs/xl-g1.log": str(saved)}) == \
        "Domain 11 has shut down, reason code 0 0x0"
    # Gone without a word in xl's log (destroyed by someone): no retry.
    saved.write_text("Waiting for domain g1 (domid 11) to die [pid 3405]\n")
    assert crashed_during_boot(gone, {"xen-logs/xl-g1.log": str(saved)}) is None
