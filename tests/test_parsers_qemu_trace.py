"""QEMU log-backend trace lines of the Xen events."""
from pathlib import Path

import pytest

from xenhil.harness.xen.parsers.errors import UnexpectedOutput
from xenhil.harness.xen.parsers.qemu_trace import (IOREQ_TYPE_INVALIDATE, ioreq_server_ids, ioreqs_of_type,
                                                   mapped_pci_devices, parse_trace_line, parse_trace_log,
                                                   platform_log_messages)

DATA = Path(__file__).parent / "data" / "parsers"


@pytest.fixture(scope="module")
def events():
    return parse_trace_log((DATA / "qemu-dm-xhguest.log").read_text())


def test_non_trace_lines_are_skipped(events):
    assert all(e.name != "qemu" for e in events)
    assert events[0].name == "xen_ioreq_server_create" and events[0].line_no == 2


def test_server_ids_and_mapped_devices(events):
    assert ioreq_server_ids(events) == [0]
    # 00:04.0 was unmapped again (PV unplug)
    assert mapped_pci_devices(events) == ["00:00.0", "00:01.0", "00:01.1", "00:01.3", "00:02.0", "00:03.0"]


def test_pci_config_ioreq_carries_sbdf_in_the_high_bits(events):
    # Real line shape seen on Xen 4.17 (docs/xen-ioreq-facts.md section 7): port=0x800000060
    first = next(e for e in events if e.name == "handle_ioreq")
    assert first.ioreq_type == "PCI_CONFIG"
    assert first.pci_sbdf_reg == (0x8, 0x60)
    assert first["req"] == "0x7f3c5c001000" and first["size"] == 4
    cfg = next(e for e in events if e.name == "cpu_ioreq_config_read")
    assert (cfg["sbdf"], cfg["reg"], cfg["data"]) == (0x8, 96, 0x808080)


def test_range_events_and_platform_log(events):
    portio = [(e["start_addr"], e["end_addr"]) for e in events if e.name == "xen_map_portio_range"]
    assert portio == [(0, 0x1F), (0x60, 0x60), (0xCF8, 0xCFF)]
    state = next(e for e in events if e.name == "xen_ioreq_server_state")
    assert state.args == {"id": 0, "enable": 1}
    assert platform_log_messages(events) == ["hi from xhprobe"]


def test_timestamped_lines_and_invalidate(events):
    [inv] = ioreqs_of_type(events, IOREQ_TYPE_INVALIDATE)
    assert inv.pid == 12345 and inv.time == pytest.approx(1764088801.123456)
    assert inv.ioreq_type == "INVALIDATE"


def test_iso_timestamp_prefix():
    e = parse_trace_line("2026-11-25T16:40:01.500000Z xen_ioreq_server_create id: 3")
    assert e["id"] == 3 and e.time == pytest.approx(1795624801.5)


def test_known_event_with_wrong_format_raises():
    with pytest.raises(UnexpectedOutput, match="xen_map_pcidev does not match"):
        parse_trace_line("xen_map_pcidev id: 0 bdf: 0000:00:01.0", 7)


def test_unknown_names_are_not_events():
    assert parse_trace_line("VNC server running on 127.0.0.1:5900") is None
    assert parse_trace_line("xen_map_cache want 0x1000") is None


def test_remapped_buckets_in_order():
    """Two lines written by hand in QEMU 7.2's format (hw/i386/xen/trace-events)."""
    from xenhil.harness.xen.parsers.qemu_trace import remapped_buckets
    text = "7@1.000001:xen_remap_bucket index 0x9f\nxen_remap_bucket index 0x0\n"
    assert remapped_buckets(parse_trace_log(text)) == [0x9f, 0x0]
    with pytest.raises(UnexpectedOutput, match="xen_remap_bucket"):
        parse_trace_log("xen_remap_bucket 0x9f")
