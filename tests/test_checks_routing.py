"""Per-class I/O routing and rangesets against device needs."""
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from xenhil.harness.checks.failure import CheckFailed
from xenhil.harness.guest import Guest
from xenhil.harness.checks.routing import (DEVICE_PORTS, IoRange, check_io_routing, check_server_ranges,
                                           class_owners, io_accesses, io_needs, needs_by_model,
                                           parse_sysfs_resource, read_bars)
from xenhil.harness.checks.topology import PLATFORM, expected_topology
from xenhil.harness.xen.parsers.errors import UnexpectedOutput
from xenhil.harness.xen.parsers.qemu_trace import parse_trace_log
from xenhil.harness.xen.parsers.rangesets import parse_ioreq_rangesets
from xenhil.harness.xen.splits import parse_split
from xenhil.harness.xen.xlconfig import HvmGuest, Vif

from tests.support.checks import assert_failure_message, data

GUEST = HvmGuest("xhguest", vifs=[Vif("nic1", mac="00:16:3e:5a:01:02")])
SPLIT = parse_split(["name=qnet,vifs=nic1", "name=qall,ui,audio,ide,serial"])
TOPO = expected_topology(SPLIT, {"qall": data("cmdline_split_qall.txt"),
                                 "qnet": data("cmdline_split_qnet.txt")}, GUEST)
BARS = {"00:04.0": parse_sysfs_resource(data("sysfs_resource_e1000.txt"), "00:04.0")}
CLASSES = ["ui", "ide", "serial", "platform", "nic:nic1"]
OWNERS = class_owners(SPLIT, TOPO, CLASSES)
NEEDS = io_needs(TOPO, BARS, CLASSES)
EVIDENCE = {"trace qall": "qemu-dm-qall.log", "trace qnet": "qemu-dm-qnet.log"}


def traces(qall=None, qnet=None):
    return {"qall": parse_trace_log(qall or data("qemu-dm-qall.log")),
            "qnet": parse_trace_log(qnet or data("qemu-dm-qnet.log"))}


def test_every_fixed_range_names_its_source():
    assert all(r.source and r.kind == "port" for ranges in DEVICE_PORTS.values() for r in ranges)
    assert {(r.lo, r.hi) for r in DEVICE_PORTS["ide"]} >= {(0x1F0, 0x1F7), (0x3F6, 0x3F6)}
    assert (0x3F8, 0x3FF) in {(r.lo, r.hi) for r in DEVICE_PORTS["serial"]}


def test_sysfs_bars_skip_empty_lines_and_the_rom():
    assert [(r.kind, hex(r.lo), hex(r.hi)) for r in BARS["00:04.0"]] == [
        ("memory", "0xf2000000", "0xf201ffff"), ("port", "0xc000", "0xc03f")]
    with pytest.raises(UnexpectedOutput):
        parse_sysfs_resource("0x1 0x2\n", "00:04.0")


def test_needs_of_the_nic_are_its_bdf_and_bars():
    assert [str(r) for r in NEEDS["nic:nic1"]] == [
        "e1000 config space (PCI 00:04.0)", "00:04.0 BAR0 (memory 0xf2000000-0xf201ffff)",
        "00:04.0 BAR4 (port 0xc000-0xc03f)"]
    assert OWNERS == {"ui": "qall", "ide": "qall", "serial": "qall", "platform": "qall", "nic:nic1": "qnet"}


def test_accesses_prefer_handle_ioreq_lines():
    acc = io_accesses(parse_trace_log(data("qemu-dm-qnet.log")))
    assert [(a.kind, hex(a.addr)) for a in acc] == [("pci", "0x20"), ("memory", "0xf2000008"), ("port", "0xc000")]
    only_cpu = io_accesses(parse_trace_log("cpu_ioreq_config_read I/O=0x1 sbdf=0x20 reg=0 size=4 data=0x0\n"
                                           "cpu_ioreq_pio I/O=0x1 pio dir=1 df=0 ptr=0 port=0x3f8 data=0x0 count=1 size=1"))
    assert [(a.kind, a.addr) for a in only_cpu] == [("pci", 0x20), ("port", 0x3F8)]


def test_each_class_reaches_its_owner_only():
    counts = check_io_routing(NEEDS, OWNERS, traces(), EVIDENCE)
    assert counts["nic:nic1"] == {"qall": 0, "qnet": 3}
    assert counts["serial"]["qall"] == 1 and counts["ide"]["qall"] == 1


def test_io_in_the_wrong_model_and_missing_io_fail():
    qnet = data("qemu-dm-qnet.log") + ("handle_ioreq I/O=0x1 type=0 dir=0 df=0 ptr=0 port=0x3f8 data=0x41 "
                                       "count=1 size=1\n")
    qall = data("qemu-dm-qall.log").replace("port=0x1f7", "port=0x2f7")
    with pytest.raises(CheckFailed) as info:
        check_io_routing(NEEDS, OWNERS, traces(qall, qnet), EVIDENCE)
    assert_failure_message(
        info.value,
        "serial I/O in model qnet's log: expected no access (owner is qall); seen 1 accesses, first COM1 (port 0x3f8-0x3ff) at log line 12",
        "ide I/O: expected accesses to IDE primary command block",
        "evidence trace qnet: qemu-dm-qnet.log")
    # activity may be required of some classes only
    check_io_routing(NEEDS, OWNERS, traces(qall), EVIDENCE, require_activity=["serial", "nic:nic1"])


def test_rangesets_cover_each_models_needs():
    servers = parse_ioreq_rangesets(data("xl_dmesg_q_qnet_qall.txt"))[7]
    check_server_ranges(servers, {0: "qall", 1: "qnet"}, needs_by_model(NEEDS, OWNERS), {"rangesets": "dump"})


def test_uncovered_need_and_double_claim_fail():
    text = data("xl_dmesg_q_qnet_qall.txt").replace("ioreq_server 1 port { c000-c03f }",
                                                    "ioreq_server 1 port { 3f8-3ff, c000-c01f }")
    servers = parse_ioreq_rangesets(text)[7]
    with pytest.raises(CheckFailed) as info:
        check_server_ranges(servers, {0: "qall", 1: "qnet"}, needs_by_model(NEEDS, OWNERS), {"rangesets": "dump"})
    assert_failure_message(
        info.value,
        "00:04.0 BAR4 (port 0xc000-0xc03f): expected in server 1's port rangeset (model qnet); seen not covered: 0xc020-0xc03f",
        "COM1 (port 0x3f8-0x3ff): expected claimed by model qall only; seen also claimed by server 1 (qnet): 0x3f8-0x3ff",
        "port 0x3f8-0x3ff claimed by servers 0 and 1",
        "evidence rangesets: dump")


def test_model_without_server_fails():
    servers = parse_ioreq_rangesets(data("xl_dmesg_q_qnet_qall.txt"))[7]
    with pytest.raises(CheckFailed, match="model qnet: expected an ioreq server"):
        check_server_ranges(servers, {0: "qall"}, needs_by_model(NEEDS, OWNERS), {"rangesets": "dump"})


def test_platform_class_is_owned_by_the_topologys_platform_model():
    assert class_owners(SPLIT, TOPO, [PLATFORM]) == {PLATFORM: "qall"}
    assert isinstance(NEEDS[PLATFORM][0], IoRange) and NEEDS[PLATFORM][0].lo == 0x10


def test_vga_bar0_need_not_be_claimed_in_full():
    """Real Xen 4.17 + qemu-xen: QEMU claims only the VRAM window and the
    blitter MMIO inside the cirrus BAR0; its other BARs and the NIC's must
    still be covered in full."""
    from xenhil.harness.checks.routing import IoRange
    vga = next(d for d in TOPO.devices if d.qemu_type == "cirrus-vga")
    nic = next(d for d in TOPO.devices if d.device_class.startswith("nic:"))
    bars = {vga.bdf: [IoRange("memory", 0xf0000000, 0xf1ffffff, f"{vga.bdf} BAR0", "sysfs"),
                      IoRange("memory", 0xf3050000, 0xf3050fff, f"{vga.bdf} BAR1", "sysfs")],
            nic.bdf: [IoRange("memory", 0xf3020000, 0xf303ffff, f"{nic.bdf} BAR0", "sysfs")]}
    needs = io_needs(TOPO, bars, CLASSES)
    ui = [r.what for r in needs["ui"]]
    assert f"{vga.bdf} BAR0" not in ui and f"{vga.bdf} BAR1" in ui
    assert f"{nic.bdf} BAR0" in [r.what for r in needs[nic.device_class]]


RECORDED_RESOURCE = (Path(__file__).parent / "data" / "recorded"
                     / "guest_sysfs_resource_e1000_qnet_qall_port_417_emulated.txt").read_text()


class _ConsoleGuest(Guest):
    """A Guest whose console commands answer from a recorded sysfs file
    (`head -n N FILE` applied to it) and are counted: no host behind it."""

    def __init__(self, domid: int):
        self.domid, self._observed, self.commands = domid, {}, []

    def run(self, command: str, timeout: float = 120.0, check: bool = True) -> str:
        self.commands.append(command)
        words = shlex.split(command)
        assert words[:2] == ["head", "-n"], command
        return "".join(RECORDED_RESOURCE.splitlines(keepends=True)[:int(words[2])])


def test_bars_are_read_once_per_guest_domain_and_only_their_lines():
    """The BARs are what the full file gives; a second test on the same
    domain reads nothing; a restored guest (a new domain) is read again."""
    topo = expected_topology(SPLIT, {"qall": data("cmdline_split_qall.txt"),
                                     "qnet": data("cmdline_split_qnet.txt")}, GUEST)
    guest = _ConsoleGuest(domid=7)
    first = read_bars(guest, topo)
    reads = len(guest.commands)
    assert reads == len(topo.devices)
    assert all(c.startswith("head -n 6 ") for c in guest.commands)
    full = parse_sysfs_resource(RECORDED_RESOURCE, "00:04.0")
    assert first["00:04.0"] == [replace(r, source=first["00:04.0"][0].source) for r in full]
    assert read_bars(guest, topo) == first and len(guest.commands) == reads
    guest.domid = 8
    read_bars(guest, topo)
    assert len(guest.commands) == 2 * reads
