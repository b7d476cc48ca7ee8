"""The parsers and checks over outputs recorded for real on the virtual lab
(tests/data/recorded/README.md says how each was made): what Xen 4.17 and
qemu-xen actually print, not what the formats say they print."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from xenhil.harness.xen.parsers.lspci import parse_pci_listing
from xenhil.harness.xen.parsers.qemu_trace import ioreq_server_ids, parse_trace_log
from xenhil.harness.xen.parsers.rangesets import expand_pci, overlaps, owner_of_port, parse_ioreq_rangesets
from xenhil.harness.xen.parsers.xl_info import parse_xl_info
from xenhil.harness.xen.savefile import CorruptSaveFile, parse_savefile_bytes

RECORDED = Path(__file__).parent / "data" / "recorded"

# docs/xen-ioreq-facts.md section 5: the default layout of an xl HVM guest with qemu-xen
DEFAULT_LAYOUT = {"00:00.0": (0x8086, 0x1237), "00:01.0": (0x8086, 0x7000),
                  "00:01.1": (0x8086, 0x7010), "00:01.3": (0x8086, 0x7113),
                  "00:02.0": (0x5853, 0x0001), "00:03.0": (0x1013, 0x00b8),
                  "00:04.0": (0x8086, 0x100e)}


def _text(name: str) -> str:
    path = RECORDED / name
    return gzip.decompress(path.read_bytes()).decode() if name.endswith(".gz") else path.read_text()


def test_xl_info_of_an_emulated_host_reports_hvm() -> None:
    info = parse_xl_info(_text("xl_info_417_emulated.txt"))
    assert info.xen_major_minor == (4, 17)
    assert info.hvm_capable
    assert "console=com1" in (info.xen_commandline or "")


@pytest.mark.parametrize("name", ["guest_lspci_n_417_emulated.txt", "guest_lspci_nn_417_emulated.txt"])
def test_guest_lspci_shows_the_default_layout(name: str) -> None:
    devices = parse_pci_listing(_text(name))
    assert {d.bdf: (d.vendor, d.device) for d in devices} == DEFAULT_LAYOUT


def test_single_qemu_owns_exactly_the_bdfs_the_guest_sees() -> None:
    domains = parse_ioreq_rangesets(_text("xl_dmesg_q_417_emulated.txt"))
    servers = domains[1]
    assert list(servers) == [0]                       # upstream: one server, id 0
    guest_bdfs = {d.bdf for d in parse_pci_listing(_text("guest_lspci_n_417_emulated.txt"))}
    assert set(expand_pci(servers[0]["pci"])) == guest_bdfs
    assert overlaps(servers) == []
    # IDE, the PS/2 controller and PCI config ports go to the one QEMU ...
    for port in (0x1f0, 0x60, 0x64, 0xcf8, 0xcfc):
        assert owner_of_port(servers, port) == 0, hex(port)
    # ... the PIT never leaves Xen (the latency baseline), nor the PM timer block's neighbour 0x40
    assert owner_of_port(servers, 0x40) is None


def test_trace_of_a_whole_boot_names_the_server_and_routes_pci_config_by_sbdf() -> None:
    events = parse_trace_log(_text("qemu-dm-g1_trace_417_emulated.log.gz"))
    assert ioreq_server_ids(events) == [0]
    config_accesses = [e for e in events if e.name == "handle_ioreq" and e.ioreq_type == "PCI_CONFIG"]
    assert config_accesses, "a booting guest enumerates PCI through config requests"
    seen_bdfs = {e.pci_sbdf_reg[0] for e in config_accesses}
    assert 0x8 in seen_bdfs                           # 00:01.0, the ISA bridge


def test_recorded_save_file_head_parses_up_to_where_it_was_cut() -> None:
    data = gzip.decompress((RECORDED / "xl_save_g1_417_emulated.head256k.gz").read_bytes())
    with pytest.raises(CorruptSaveFile) as err:
        parse_savefile_bytes(data, "xl_save_g1 (first 256 KiB)")
    # The header and config were read; the failure is the cut, at its offset.
    assert "offset" in str(err.value)
