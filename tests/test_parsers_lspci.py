"""PCI listings from a guest, in every format the guest kit may produce."""
from pathlib import Path

import pytest

from xenhil.harness.xen.parsers.errors import UnexpectedOutput
from xenhil.harness.xen.parsers.lspci import PciDevice, by_bdf, parse_pci_listing

DATA = Path(__file__).parent / "data" / "parsers"

# docs/xen-ioreq-facts.md section 5: default xenfv layout with an e1000 NIC
EXPECTED = [("00:00.0", 0x8086, 0x1237, 0x0600), ("00:01.0", 0x8086, 0x7000, 0x0601),
            ("00:01.1", 0x8086, 0x7010, 0x0101), ("00:01.3", 0x8086, 0x7113, 0x0680),
            ("00:02.0", 0x5853, 0x0001, 0xFF80), ("00:03.0", 0x1013, 0x00B8, 0x0300),
            ("00:04.0", 0x8086, 0x100E, 0x0200)]


@pytest.mark.parametrize("name", ["lspci_n.txt", "lspci_nn.txt", "lspci_mn.txt", "busybox_lspci.txt",
                                  "busybox_lspci_m.txt", "sysfs_pci.txt"])
def test_every_format_gives_the_same_devices(name):
    devices = parse_pci_listing((DATA / name).read_text())
    assert [(d.bdf, d.vendor, d.device, d.class_code) for d in devices] == EXPECTED


def test_revision_and_prog_if_are_kept_where_printed():
    nn = by_bdf(parse_pci_listing((DATA / "lspci_nn.txt").read_text()))
    assert nn["00:00.0"].revision == 2 and nn["00:01.1"].prog_if == 0x80
    sysfs = by_bdf(parse_pci_listing((DATA / "sysfs_pci.txt").read_text()))
    assert sysfs["00:01.1"].prog_if == 0x80 and sysfs["00:01.1"].revision is None
    mn = by_bdf(parse_pci_listing((DATA / "lspci_mn.txt").read_text()))
    assert mn["00:04.0"].revision == 3 and mn["00:01.1"].prog_if == 0x80


def test_device_helpers():
    dev = PciDevice("00:02.0", 0x5853, 0x0001, 0xFF80)
    assert dev.sbdf == 0x10 and dev.ids == "5853:0001" and str(dev) == "00:02.0 ff80: 5853:0001"


def test_non_zero_segment_is_kept():
    [dev] = parse_pci_listing("0001:00:03.0 0300: 1234:1111\n")
    assert dev.bdf == "0001:00:03.0" and dev.sbdf == 0x10018


def test_plain_lspci_without_ids_asks_for_numeric_output():
    with pytest.raises(UnexpectedOutput, match="lspci -n") as info:
        parse_pci_listing("00:00.0 Host bridge: Intel Corporation 440FX - 82441FX PMC [Natoma] (rev 02)\n")
    assert info.value.line_no == 1


def test_garbage_line_names_its_number():
    with pytest.raises(UnexpectedOutput, match="PCI address") as info:
        parse_pci_listing("00:00.0 0600: 8086:1237\nsh: lspci: not found\n")
    assert info.value.line_no == 2


def test_lspci_verbose_detail_lines_are_skipped():
    text = "00:02.0 ff80: 5853:0001 (rev 01)\n\tSubsystem: 5853:0001\n\tFlags: fast devsel, IRQ 28\n"
    assert [d.bdf for d in parse_pci_listing(text)] == ["00:02.0"]
