"""The probe ioreq server in the checks: its PCI function joins the expected
topology, its class is owned by the probe, and its own counters judge the
I/O routed to it."""
import pytest

from xenhil.harness.checks.failure import CheckFailed
from xenhil.harness.checks.routing import (check_probe_io, check_server_ranges, class_owners,
                                           io_needs, needs_by_model, parse_sysfs_resource, probe_needs)
from xenhil.harness.checks.topology import PROBE_CLASS, expected_topology, with_probe
from xenhil.harness.probe_dm.companion import ProbeSettings
from xenhil.harness.probe_dm.host import ProbeCounters
from xenhil.harness.xen.splits import Split
from xenhil.harness.xen.xlconfig import HvmGuest, Vif

from tests.support.checks import assert_failure_message, data

GUEST = HvmGuest("xhguest", vifs=[Vif("nic1", mac="00:16:3e:5a:01:02")])
SINGLE = expected_topology(Split.single(), {"qemu": data("cmdline_qemu_xen_417.txt")}, GUEST)
SETTINGS = ProbeSettings()
TOPO = with_probe(SINGLE, SETTINGS)


def counters(port0=(0, 0), bar0=(0, 0), outside=0, invalidates=0) -> ProbeCounters:
    windows = {"port0": {"reads": port0[0], "writes": port0[1]},
               "bar0": {"reads": bar0[0], "writes": bar0[1]}}
    return ProbeCounters({"state": "enabled", "server_id": 1,
                          "counters": {"windows": windows, "outside": outside,
                                       "by_type": {"invalidate": invalidates}}}, age=0.1)


def test_probe_function_joins_the_topology_owned_by_the_probe():
    probe = TOPO.by_bdf()["00:05.0"]
    assert (probe.ids, probe.class_code, probe.device_class, probe.model) == \
        ("5853:c0de", 0xFF00, PROBE_CLASS, "probe")
    assert TOPO.models == ("0", "probe")
    assert [d.bdf for d in TOPO.devices] == sorted(d.bdf for d in TOPO.devices)
    assert len(TOPO.devices) == len(SINGLE.devices) + 1
    assert "xenhil probe function" in probe.describe()


def test_probe_on_a_qemu_bdf_is_refused_naming_both():
    with pytest.raises(CheckFailed) as info:
        with_probe(SINGLE, ProbeSettings(bdf="00:04.0"))
    assert_failure_message(info.value, "00:04.0: expected free for the probe (5853:c0de); "
                                       "seen taken by 8086:100e class 0200 (e1000 NIC, model 0)")
    assert "give the probe another bdf" in str(info.value)


def test_probe_class_is_owned_by_the_probe_and_needs_its_ports_bdf_and_bar():
    bars = {"00:05.0": parse_sysfs_resource(
        "0x00000000f0000000 0x00000000f0000fff 0x0000000000040200\n", "00:05.0")}
    classes = ["ui", "ide", PROBE_CLASS]
    owners = class_owners(Split.single(), TOPO, classes)
    assert owners == {"ui": "0", "ide": "0", PROBE_CLASS: "probe"}
    needs = probe_needs(io_needs(TOPO, bars, classes), SETTINGS)
    shown = sorted(str(r) for r in needs[PROBE_CLASS])
    assert any("port 0x6100-0x610f" in r for r in shown), shown
    assert any("memory 0xf0000000-0xf0000fff" in r for r in shown), shown
    assert any(r.kind == "pci" and r.lo == 0x28 for r in needs[PROBE_CLASS])
    # A dump where the probe (server 1) claims exactly that, and QEMU (server 0) the rest.
    servers = {0: {"port": [(0x60, 0x60), (0x64, 0x64), (0x1f0, 0x1f7), (0x3f6, 0x3f6),
                            (0x170, 0x177), (0x376, 0x376), (0x3c0, 0x3df), (0x10, 0x11)],
                   "pci": [(0, 0), (8, 8), (9, 9), (0xb, 0xb), (0x10, 0x10), (0x18, 0x18),
                           (0x20, 0x20)]},
               1: {"port": [(0x6100, 0x610F)], "memory": [(0xF0000000, 0xF0000FFF)],
                   "pci": [(0x28, 0x28)]}}
    probe_only = {PROBE_CLASS: needs[PROBE_CLASS]}
    check_server_ranges(servers, {0: "0", 1: "probe"}, needs_by_model(probe_only, owners), {})
    servers[0]["port"].append((0x6108, 0x610B))  # QEMU claiming a probe register
    with pytest.raises(CheckFailed, match=r"also claimed by server 0 \(0\): 0x6108-0x610b"):
        check_server_ranges(servers, {0: "0", 1: "probe"}, needs_by_model(probe_only, owners), {})


def test_probe_io_is_judged_by_its_own_counters():
    wanted = {"port0": (2, 1), "bar0": (1, 0)}
    check_probe_io(counters((5, 3), (2, 0)), counters((7, 4), (3, 0)), wanted, {})
    with pytest.raises(CheckFailed) as info:
        check_probe_io(counters((5, 3), (2, 0), outside=1), counters((6, 4), (2, 0), outside=3),
                       wanted, {"probe counters": "probe-counters.json"})
    assert_failure_message(info.value,
                           "probe window port0: expected >= 2 reads, >= 1 writes; seen 1 reads, 1 writes",
                           "probe window bar0: expected >= 1 reads, >= 0 writes; seen 0 reads, 0 writes",
                           "probe, outside its ranges: expected no request (Xen routes it only what it "
                           "claimed); seen 2 request(s)",
                           "evidence probe counters: probe-counters.json")


def test_companion_servers_join_the_trace_derived_map():
    from xenhil.harness.checks.pci import server_ids_by_model
    from xenhil.harness.xen.parsers.qemu_trace import parse_trace_log
    traces = {"0": parse_trace_log("xen_ioreq_server_create id: 0\n")}
    assert server_ids_by_model(traces, {}, {1: "probe"}) == {1: "probe", 0: "0"}
    with pytest.raises(CheckFailed, match="server id 0: expected created by one model"):
        server_ids_by_model(traces, {}, {0: "probe"})

