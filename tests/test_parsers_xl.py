"""`xl info`, `xl list`, `xl list -l`."""
from pathlib import Path

import pytest

from xenhil.harness.xen.parsers.errors import UnexpectedOutput
from xenhil.harness.xen.parsers.xl_info import parse_xl_info
from xenhil.harness.xen.parsers.xl_list import domain_by_name, parse_xl_list, parse_xl_list_long

DATA = Path(__file__).parent / "data" / "parsers"


def test_xl_info_fields():
    info = parse_xl_info((DATA / "xl_info.txt").read_text())
    assert info.xen_version == "4.17.5" and info.xen_major_minor == (4, 17)
    assert info.virt_caps == {"pv", "hvm", "hap", "shadow", "gnttab-v1", "gnttab-v2"}
    assert info.hvm_capable
    assert info.xen_changeset == ""
    assert info.xen_commandline.endswith("loglvl=all guest_loglvl=all noreboot")
    assert info["hw_caps"].count(":") == 7           # a colon inside a value stays in it
    assert info["version"] == "#1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 (2024-11-01)"


def test_xl_info_n_tables_and_empty_caps():
    info = parse_xl_info((DATA / "xl_info_n.txt").read_text())
    assert info.virt_caps == frozenset() and not info.hvm_capable
    assert info.tables["cpu_topology"] == ["cpu:    core    socket     node", "  0:       0        0        0",
                                           "  1:       1        0        0"]
    assert "device topology" in info.fields and len(info.tables["numa_info"]) == 2
    assert info.xen_version == "4.17.5"


def test_xl_info_version_from_parts():
    info = parse_xl_info("xen_major              : 4\nxen_minor              : 19\nxen_extra              : -rc\n")
    assert info.xen_version == "4.19-rc"


def test_xl_info_rejects_other_text():
    with pytest.raises(UnexpectedOutput, match="key<spaces>: value") as info:
        parse_xl_info("xl: command not found\n")
    assert info.value.line_no == 1
    with pytest.raises(UnexpectedOutput, match="empty"):
        parse_xl_info("\n")


def test_xl_list_table():
    entries = parse_xl_list((DATA / "xl_list.txt").read_text())
    assert [(e.name, e.domid, e.mem_mib, e.vcpus) for e in entries] == [
        ("Domain-0", 0, 1024, 2), ("xhguest", 3, 256, 1), ("xhguest paused", 4, 256, 2)]
    assert entries[0].flags == {"running"} and entries[1].flags == {"blocked"}
    assert entries[2].flags == {"paused"} and entries[0].time_s == pytest.approx(45.3)


def test_xl_list_shutdown_reasons_and_nameless_dying_domains():
    """Rows printed for real on the virtual lab while `xl save` tore a guest
    down (--pssd) and while a rebooted guest was reaped (--psrd): the fifth
    state character is the shutdown reason, not a flag."""
    header = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    saving = parse_xl_list(header +
                           "Domain-0                                     0  1024     2     r-----    1406.8\n"
                           "(null)                                       9     0     1     --pssd      21.2\n")
    assert (saving[1].name, saving[1].domid, saving[1].mem_mib) == ("(null)", 9, 0)
    assert saving[1].flags == {"paused", "shutdown", "dying"}
    assert saving[1].shutdown_reason == "suspend"
    assert saving[0].shutdown_reason is None
    rebooted = parse_xl_list(header + "(null)                                       2     0     1     --psrd      33.9\n")
    assert rebooted[0].shutdown_reason == "reboot" and "crashed" not in rebooted[0].flags
    crashed = parse_xl_list(header + "g1                                           3   256     1     ---sc-       9.0\n")
    assert crashed[0].flags == {"shutdown", "crashed"} and crashed[0].shutdown_reason == "crash"
    powered_off = parse_xl_list(header + "g1                                           3   256     1     ---s--       9.0\n")
    assert powered_off[0].shutdown_reason == "poweroff"
    with pytest.raises(UnexpectedOutput, match="NAME ID MEM"):
        parse_xl_list(header + "g1                                           3   256     1     ---sx-       9.0\n")


def test_xl_list_without_header_is_rejected():
    with pytest.raises(UnexpectedOutput, match="header"):
        parse_xl_list("Domain-0  0  1024  2  r-----  45.3\n")
    with pytest.raises(UnexpectedOutput, match="NAME ID MEM") as info:
        parse_xl_list("Name   ID   Mem VCPUs\tState\tTime(s)\nlibxl: error: cannot get domain list\n")
    assert info.value.line_no == 2


def test_xl_list_long_json():
    entries = parse_xl_list_long((DATA / "xl_list_l.json").read_text())
    entry = domain_by_name(entries, "xhguest")
    assert entry["domid"] == 3 and entry["config"]["b_info"]["type.hvm"]["tsc_mode"] == "native"
    assert domain_by_name(entries, "nope") is None
    with pytest.raises(UnexpectedOutput, match="not JSON"):
        parse_xl_list_long("(domain (domid 3))")
