"""PCI views, ownership and the platform device against tests/data/checks."""
import dataclasses

import pytest

from xenhil.harness.checks.failure import CheckFailed
from xenhil.harness.checks.pci import (check_pci_ownership, check_pci_views, check_platform_device,
                                       check_unowned_bdfs_read_ones, identify_platform_model,
                                       server_ids_by_model, unowned_bdfs_to_probe)
from xenhil.harness.checks.topology import expected_topology
from xenhil.harness.xen.parsers.lspci import PciDevice, parse_pci_listing
from xenhil.harness.xen.parsers.probe_output import PciConfigAccess, PciScan, PortRead, parse_single
from xenhil.harness.xen.parsers.qemu_trace import parse_trace_log, platform_log_messages
from xenhil.harness.xen.parsers.rangesets import parse_ioreq_rangesets
from xenhil.harness.xen.splits import Split, parse_split
from xenhil.harness.xen.xlconfig import HvmGuest, Vif

from tests.support.checks import DATA, assert_failure_message, data

GUEST = HvmGuest("xhguest", vifs=[Vif("nic1", mac="00:16:3e:5a:01:02")])
SINGLE = expected_topology(Split.single(), {"0": data("cmdline_qemu_xen_417.txt")}, GUEST)
QNET_QALL = parse_split(["name=qnet,vifs=nic1", "name=qall,ui,audio,ide,serial"])
SPLIT = expected_topology(QNET_QALL, {"qall": data("cmdline_split_qall.txt"),
                                      "qnet": data("cmdline_split_qnet.txt")}, GUEST)
EVIDENCE = {"lspci -n": str(DATA / "lspci_n_417.txt")}


def views():
    return {"lspci -n": parse_pci_listing(data("lspci_n_417.txt")),
            "sysfs": parse_pci_listing(data("sysfs_pci_417.txt")),
            "xhprobe pci-scan": list(parse_single(data("pci_scan_417.jsonl"), PciScan).devices)}


def traces():
    return {"qall": parse_trace_log(data("qemu-dm-qall.log")), "qnet": parse_trace_log(data("qemu-dm-qnet.log"))}


def test_all_three_views_match_the_expected_layout():
    check_pci_views(SINGLE, views(), EVIDENCE)


def test_missing_phantom_duplicate_and_wrong_ids_are_each_reported():
    v = views()
    lspci = [d for d in v["lspci -n"] if d.bdf != "00:03.0"]                     # VGA missing
    lspci.append(PciDevice("00:05.0", 0x8086, 0x100E, 0x0200))                   # phantom NIC
    lspci.append(v["lspci -n"][0])                                               # duplicate 00:00.0
    v["lspci -n"] = lspci
    v["sysfs"] = [dataclasses.replace(d, device=0x1111) if d.bdf == "00:03.0" else d for d in v["sysfs"]]
    with pytest.raises(CheckFailed) as info:
        check_pci_views(SINGLE, v, EVIDENCE)
    text = assert_failure_message(info.value, "4 differences",
                                  "lspci -n 00:03.0: expected 1013:00b8 class 0300 (Cirrus VGA, model 0); seen no device",
                                  "lspci -n 00:05.0: expected no device (no model emulates this BDF); seen phantom 8086:100e",
                                  "lspci -n 00:00.0: expected listed once; seen listed twice",
                                  "sysfs 00:03.0: expected 1013:00b8 class 0300 (Cirrus VGA, model 0); seen 1013:1111",
                                  "evidence lspci -n:")
    assert "xhprobe pci-scan" not in text.split("seen:")[1].split("how to fix")[0]


def test_unowned_bdfs_read_all_ones():
    bdfs = unowned_bdfs_to_probe(SINGLE)
    assert bdfs == ["00:05.0", "00:00.7", "00:1f.0"]
    reads = [PciConfigAccess("pci-read", b, 0, 2, 0xFFFF) for b in bdfs]
    check_unowned_bdfs_read_ones(SINGLE, reads, {"probe": "out.jsonl"})
    reads[1] = PciConfigAccess("pci-read", "00:00.7", 0, 2, 0x8086)
    with pytest.raises(CheckFailed) as info:
        check_unowned_bdfs_read_ones(SINGLE, reads, {"probe": "out.jsonl"})
    assert_failure_message(info.value, "config read 00:00.7 reg 0x0 width 2: expected 0xffff", "seen 0x8086")
    with pytest.raises(CheckFailed, match="at least one config read of an unowned BDF"):
        check_unowned_bdfs_read_ones(SINGLE, [PciConfigAccess("pci-read", "00:00.0", 0, 2, 0x8086)], {"p": "x"})


def test_server_ids_come_from_each_models_create_line():
    assert server_ids_by_model(traces(), {"logs": "x"}) == {0: "qall", 1: "qnet"}
    t = traces()
    t["qnet"] = parse_trace_log(data("qemu-dm-qnet.log").replace("create id: 1", "create id: 0"))
    with pytest.raises(CheckFailed) as info:
        server_ids_by_model(t, {"logs": "x"})
    assert_failure_message(info.value, "server id 0: expected created by one model; seen created by qall and qnet")
    t["qnet"] = []
    with pytest.raises(CheckFailed, match="model qnet: expected exactly one live"):
        server_ids_by_model(t, {"logs": "x"})


def test_real_single_model_rangeset_shows_each_bdf_owned_by_server_0():
    servers = parse_ioreq_rangesets(data("xl_dmesg_q_single.txt"))[5]
    check_pci_ownership(SINGLE, servers, {0: "0"}, {"rangesets": str(DATA / "xl_dmesg_q_single.txt")})


def test_split_ownership_by_model():
    servers = parse_ioreq_rangesets(data("xl_dmesg_q_qnet_qall.txt"))[7]
    sm = server_ids_by_model(traces(), {"logs": "x"})
    check_pci_ownership(SPLIT, servers, sm, {"rangesets": "xl_dmesg_q_qnet_qall.txt"})


def test_ownership_failures_name_the_bdf_and_the_servers():
    text = data("xl_dmesg_q_qnet_qall.txt").replace("ioreq_server 1 pci { 20 }", "ioreq_server 1 pci { 18, 28 }")
    servers = parse_ioreq_rangesets(text)[7]
    with pytest.raises(CheckFailed) as info:
        check_pci_ownership(SPLIT, servers, {0: "qall", 1: "qnet"}, {"rangesets": "dump.txt"})
    assert_failure_message(
        info.value,
        "00:03.0 (cirrus-vga): expected in the pci rangeset of server 0 (model qall) only; seen in the pci "
        "rangesets of ['0 (qall)', '1 (qnet)']",
        "00:04.0 (e1000): expected in the pci rangeset of server 1 (model qnet) only; seen in the pci rangesets of no server",
        "00:05.0: expected claimed by no server (no model emulates it); seen claimed by server 1 (qnet)",
        "evidence rangesets: dump.txt")
    with pytest.raises(CheckFailed, match="ioreq server 1: expected a server created by one of the models"):
        check_pci_ownership(SPLIT, parse_ioreq_rangesets(data("xl_dmesg_q_qnet_qall.txt"))[7], {0: "qall"},
                            {"rangesets": "dump.txt"})


def test_platform_device_answer_is_recorded_and_checked():
    servers = parse_ioreq_rangesets(data("xl_dmesg_q_qnet_qall.txt"))[7]
    logs = {m: platform_log_messages(ev) for m, ev in traces().items()}
    read = PortRead(0x10, 2, (0x49D2,))
    rec = identify_platform_model(read, servers, {0: "qall", 1: "qnet"}, logs, "xenhil-marker-7", {"e": "x"})
    assert rec.to_dict() == {"magic": "0x49d2", "answered": True, "model": "qall",
                             "by_rangesets": "qall", "by_log": "qall"}
    check_platform_device(rec, "qall", {"e": "x"})
    check_platform_device(rec, None, {"e": "x"})          # split with no known expectation: record only
    with pytest.raises(CheckFailed) as info:
        check_platform_device(rec, "qnet", {"e": "x"})
    assert_failure_message(info.value, "expected: model qnet emulates the platform device", "seen: model qall answers")
    nobody = identify_platform_model(PortRead(0x10, 2, (0xFFFF,)), None, None, None, None, {"e": "x"})
    with pytest.raises(CheckFailed) as info:
        check_platform_device(nobody, "0", {"e": "x"})
    assert_failure_message(info.value, "expected: inw(0x10) == 0x49d2", "seen: 0xffff (no server owns port 0x10)")
    check_platform_device(nobody, None, {"e": "x"}, present=False)


def test_platform_sources_that_disagree_fail():
    servers = parse_ioreq_rangesets(data("xl_dmesg_q_qnet_qall.txt"))[7]
    logs = {"qall": [], "qnet": ["xenhil-marker-7"]}
    with pytest.raises(CheckFailed) as info:
        identify_platform_model(PortRead(0x10, 2, (0x49D2,)), servers, {0: "qall", 1: "qnet"}, logs,
                                "xenhil-marker-7", {"e": "x"})
    assert_failure_message(info.value, "seen: port 0x10 owned by qall, marker logged by qnet")
