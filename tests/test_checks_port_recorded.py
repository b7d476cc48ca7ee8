"""The checks on real output of our port of the series (lab/series/device-models):
the cover letter's split qnet+qall booted on the virtual lab, 2026-11-30
(tests/data/recorded/README.md lists the files).  Each check passes on the
recording and fails on a minimally altered copy.
"""
from __future__ import annotations

import pytest

from xenhil.harness.checks.failure import CheckFailed
from xenhil.harness.checks.pci import check_pci_ownership, check_pci_views
from xenhil.harness.checks.routing import (check_server_ranges, class_owners, io_needs, needs_by_model,
                                           parse_sysfs_resource)
from xenhil.harness.checks.topology import expected_topology, identify_models
from xenhil.harness.xen.parsers.lspci import parse_pci_listing
from xenhil.harness.xen.parsers.rangesets import parse_ioreq_rangesets
from xenhil.harness.xen.splits import parse_split
from xenhil.harness.xen.xlconfig import HvmGuest, Vif
from tests.support.checks import recorded, recorded_port_cmdlines

SPLIT = parse_split(["name=qnet,vifs=nic1", "name=qall,ui,audio,ide,serial"])
GUEST = HvmGuest("xh-qnet-qall", vifs=[Vif("nic1")])
CLASSES = ["ui", "ide", "serial", "platform", "nic:nic1"]
#: Server ids in the recorded domain: the port starts the models in list
#: order, so qnet (index 0) created server 0 (the suites read it from each
#: model's xen_ioreq_server_create trace: harness.checks.pci.server_ids_by_model).
SERVER_MODELS = {0: "qnet", 1: "qall"}


def topology():
    return expected_topology(SPLIT, identify_models(recorded_port_cmdlines(), SPLIT), GUEST)


def servers(dump: str | None = None):
    return parse_ioreq_rangesets(dump or recorded("xl_dmesg_q_qnet_qall_port_417_emulated.txt"))[1]


def needs():
    topo = topology()
    bars = {"00:04.0": parse_sysfs_resource(
        recorded("guest_sysfs_resource_e1000_qnet_qall_port_417_emulated.txt"), "00:04.0")}
    return needs_by_model(io_needs(topo, bars, CLASSES), class_owners(SPLIT, topo, CLASSES))


def test_the_guest_sees_the_devices_the_two_command_lines_give():
    topo = topology()
    assert {d.bdf: d.model for d in topo.devices}["00:04.0"] == "qnet"
    assert topo.platform_model == "qall"
    seen = parse_pci_listing(recorded("guest_lspci_n_qnet_qall_port_417_emulated.txt"), "lspci -n")
    check_pci_views(topo, {"lspci -n": seen}, {"lspci": "recorded"})
    without_nic = [d for d in seen if d.bdf != "00:04.0"]
    with pytest.raises(CheckFailed, match="00:04.0"):
        check_pci_views(topo, {"lspci -n": without_nic}, {"lspci": "altered"})


def test_each_model_owns_exactly_its_pci_functions():
    check_pci_ownership(topology(), servers(), SERVER_MODELS, {"rangesets": "recorded"})
    stolen = recorded("xl_dmesg_q_qnet_qall_port_417_emulated.txt").replace(
        "ioreq_server 1 pci { 0, 8-9, b, 10, 18 }", "ioreq_server 1 pci { 0, 8-9, b, 10, 18, 20 }")
    with pytest.raises(CheckFailed, match="00:04.0"):
        check_pci_ownership(topology(), servers(stolen), SERVER_MODELS, {"rangesets": "altered"})


def test_the_nics_ports_and_memory_are_qnets_alone():
    check_server_ranges(servers(), SERVER_MODELS, needs(), {"rangesets": "recorded"})
    double = recorded("xl_dmesg_q_qnet_qall_port_417_emulated.txt").replace(
        "c000-c0ff, c140-c14f }", "c000-c0ff, c100-c14f }")
    assert double != recorded("xl_dmesg_q_qnet_qall_port_417_emulated.txt")
    with pytest.raises(CheckFailed, match="0xc100-0xc13f"):
        check_server_ranges(servers(double), SERVER_MODELS, needs(), {"rangesets": "altered"})
