"""Ownership oracle: ioreq-server rangesets from `xl debug-keys q; xl dmesg`."""
from pathlib import Path

import pytest

from xenhil.harness.xen.parsers.errors import UnexpectedOutput
from xenhil.harness.xen.parsers.rangesets import (AmbiguousOwner, expand_pci, format_ranges, owner_of_bdf,
                                                  owner_of_mmio, owner_of_port, overlaps, owners,
                                                  parse_ioreq_rangesets, parse_range_list, sbdf_to_str,
                                                  str_to_sbdf)

DATA = Path(__file__).parent / "data" / "parsers"

# Recorded on real Xen 4.17 under QEMU TCG (docs/xen-ioreq-facts.md section 7).
REAL_PCI_LINE = "(XEN)     ioreq_server 0 pci { 0, 8-9, b, 10, 18 }"


def test_real_pci_rangeset_means_the_default_xenfv_devices():
    text = "(XEN) Rangesets belonging to domain 1:\n" + REAL_PCI_LINE + "\n"
    servers = parse_ioreq_rangesets(text)[1]
    assert servers[0]["pci"] == [(0, 0), (8, 9), (0xB, 0xB), (0x10, 0x10), (0x18, 0x18)]
    assert expand_pci(servers[0]["pci"]) == ["00:00.0", "00:01.0", "00:01.1", "00:01.3", "00:02.0", "00:03.0"]
    assert servers[0]["port"] == [] and servers[0]["memory"] == []


@pytest.mark.parametrize("text,sbdf", [("00:00.0", 0), ("00:01.0", 0x8), ("00:01.3", 0xB),
                                       ("00:03.0", 0x18), ("0000:00:04.0", 0x20), ("01:1f.7", 0x1FF),
                                       ("0001:00:00.0", 0x10000)])
def test_sbdf_round_trip(text, sbdf):
    assert str_to_sbdf(text) == sbdf
    assert str_to_sbdf(sbdf_to_str(sbdf)) == sbdf
    assert sbdf_to_str(sbdf, always_segment=True).count(":") == 2


@pytest.mark.parametrize("bad", ["00:20.0", "0:1", "00:01.8", "xx:01.0", ""])
def test_bad_bdf_is_rejected(bad):
    with pytest.raises(ValueError):
        str_to_sbdf(bad)


def test_two_server_dump_gives_each_server_its_ranges():
    result = parse_ioreq_rangesets((DATA / "xl_dmesg_q_two_servers.txt").read_text())
    assert list(result) == [2]           # dom0 has no ioreq server
    servers = result[2]
    assert sorted(servers) == [0, 1]
    assert servers[1] == {"pci": [(0x20, 0x20)], "memory": [(0xF2000000, 0xF201FFFF)],
                          "port": [(0xC000, 0xC03F)]}
    assert (0xCF8, 0xCFF) in servers[0]["port"]
    assert owner_of_port(servers, 0xCFC, 4) == 0
    assert owner_of_port(servers, 0xC010, 2) == 1
    assert owner_of_port(servers, 0x40) is None         # PIT: Xen-internal, nobody's
    assert owner_of_bdf(servers, "00:04.0") == 1
    assert owner_of_bdf(servers, "00:02.0") == 0
    assert owner_of_bdf(servers, "00:05.0") is None
    assert owner_of_mmio(servers, 0xF2000010, 4) == 1
    assert overlaps(servers) == []


def test_access_must_lie_entirely_inside_one_range():
    servers = {0: {"port": [(0xC000, 0xC03F)], "memory": [], "pci": []}}
    assert owners(servers, "port", 0xC03E, 2) == [0]
    assert owners(servers, "port", 0xC03F, 2) == []      # straddles the end


def test_timestamps_and_wrapped_lines_parse_like_the_plain_dump():
    wrapped = parse_ioreq_rangesets((DATA / "xl_dmesg_q_timestamps_wrapped.txt").read_text())[1][0]
    plain = parse_ioreq_rangesets((DATA / "xl_dmesg_q_two_servers.txt").read_text())[2][0]
    assert wrapped["port"] == plain["port"]              # "1f0-" + "1f7" and "c0" + "40-c04f" rejoined
    assert wrapped["pci"] == plain["pci"]
    assert wrapped["memory"] == [(0xF0000000, 0xF1FFFFFF), (0xF3000000, 0xF3000FFF)]


def test_overlap_between_servers_is_reported_and_makes_owner_ambiguous():
    text = ("(XEN) Rangesets belonging to domain 5:\n"
            "(XEN)     ioreq_server 1 port { 60-64 }\n"
            "(XEN)     ioreq_server 0 port { 0-1f, 60, 64 }\n")
    servers = parse_ioreq_rangesets(text)[5]
    found = overlaps(servers)
    assert [(o.kind, o.server_a, o.server_b, o.lo, o.hi) for o in found] == [
        ("port", 0, 1, 0x60, 0x60), ("port", 0, 1, 0x64, 0x64)]
    assert "claimed by servers 0 and 1" in str(found[0])
    assert owners(servers, "port", 0x60) == [0, 1]
    with pytest.raises(AmbiguousOwner, match=r"port 0x60 is claimed by ioreq servers \[0, 1\]"):
        owner_of_port(servers, 0x60)


def test_later_dump_of_a_domain_replaces_the_earlier_one():
    text = ("(XEN) Rangesets belonging to domain 1:\n(XEN)     ioreq_server 0 port { 10 }\n"
            "(XEN) Rangesets belonging to domain 1:\n(XEN)     ioreq_server 0 port { 20 }\n")
    assert parse_ioreq_rangesets(text) == {1: {0: {"port": [(0x20, 0x20)], "memory": [], "pci": []}}}


def test_rangeset_without_domain_header_names_the_fix():
    with pytest.raises(UnexpectedOutput, match="xl dmesg -c") as info:
        parse_ioreq_rangesets("(XEN)     ioreq_server 0 port { 10 }\n")
    assert info.value.line_no == 1


def test_unterminated_rangeset_is_an_error():
    with pytest.raises(UnexpectedOutput, match="no closing"):
        parse_ioreq_rangesets("(XEN) Rangesets belonging to domain 1:\n(XEN)     ioreq_server 0 port { 10,\n")


def test_rangeset_interrupted_by_other_text_is_an_error():
    text = ("(XEN) Rangesets belonging to domain 1:\n(XEN)     ioreq_server 0 port { 10,\n"
            "(XEN) (d1) guest says hello\n(XEN)  20 }\n")
    with pytest.raises(UnexpectedOutput, match="interrupted") as info:
        parse_ioreq_rangesets(text)
    assert info.value.line_no == 3


def test_bad_hex_in_rangeset_is_an_error():
    with pytest.raises(UnexpectedOutput, match="bad range 'zz'"):
        parse_ioreq_rangesets("(XEN) Rangesets belonging to domain 1:\n(XEN)     ioreq_server 0 pci { zz }\n")


def test_format_ranges_writes_xen_notation():
    assert format_ranges(parse_range_list(" 0, 8-9, b, 10, 18 ")) == "0, 8-9, b, 10, 18"
