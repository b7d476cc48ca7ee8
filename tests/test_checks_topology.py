"""expected_topology() from device-model command lines (tests/data/checks:
written from libxl_dm.c's argument formats, see README.md there)."""
import pytest

from xenhil.harness.checks.failure import CheckFailed
from xenhil.harness.checks.topology import (TopologyInputError, argv_of, expected_topology,
                                            identify_models)
from xenhil.harness.xen.splits import Split, parse_split
from xenhil.harness.xen.xlconfig import HvmGuest, Vif

from tests.support.checks import assert_failure_message, data, recorded_port_cmdlines

GUEST = HvmGuest("xhguest", vifs=[Vif("nic1", mac="00:16:3e:5a:01:02")])
QNET_QALL = parse_split(["name=qnet,vifs=nic1", "name=qall,ui,audio,ide,serial"])


def layout(topology):
    return [(d.bdf, d.ids, f"{d.class_code:04x}", d.device_class, d.model) for d in topology.devices]


def test_xen_417_single_model_gives_the_xenfv_layout():
    t = expected_topology(Split.single(), {"qemu": data("cmdline_qemu_xen_417.txt")}, GUEST)
    assert layout(t) == [
        ("00:00.0", "8086:1237", "0600", "ui", "0"),
        ("00:01.0", "8086:7000", "0601", "ui", "0"),
        ("00:01.1", "8086:7010", "0101", "ide", "0"),
        ("00:01.3", "8086:7113", "0680", "ui", "0"),
        ("00:02.0", "5853:0001", "ff80", "platform", "0"),
        ("00:03.0", "1013:00b8", "0300", "ui", "0"),
        ("00:04.0", "8086:100e", "0200", "nic:nic1", "0"),
    ]
    assert t.platform_model == "0" and t.notes == ()


def test_legacy_vga_option_puts_vga_before_the_platform_device():
    t = expected_topology(Split.single(), {"0": data("cmdline_old_legacy_vga.txt")}, GUEST)
    got = {d.bdf: d.qemu_type for d in t.devices}
    assert got["00:02.0"] == "cirrus-vga" and got["00:03.0"] == "xen-platform"
    assert got["00:04.0"] == "rtl8139"


def test_options_change_the_layout():
    base = argv_of(data("cmdline_qemu_xen_417.txt"))
    usb_no_acpi = base + ["-usb", "-no-acpi", "-device", "VGA,addr=0x6"]
    usb_no_acpi.remove("cirrus-vga,vgamem_mb=8")
    usb_no_acpi.remove("-device")                    # the first -device, cirrus's
    t = expected_topology(Split.single(), {"0": usb_no_acpi}, GUEST)
    got = {d.bdf: d.qemu_type for d in t.devices}
    assert got == {"00:00.0": "i440FX", "00:01.0": "PIIX3", "00:01.1": "piix3-ide",
                   "00:01.2": "piix3-usb-uhci", "00:02.0": "xen-platform", "00:03.0": "e1000",
                   "00:06.0": "VGA"}
    pc = [a.replace("xenfv,", "pc,accel=xen,") for a in base]
    assert "xen-platform" not in {d.qemu_type for d in expected_topology(Split.single(), {"0": pc}, GUEST).devices}


def test_split_attributes_each_device_to_its_model():
    t = expected_topology(QNET_QALL, {"qall": data("cmdline_split_qall.txt"),
                                      "qnet": data("cmdline_split_qnet.txt")}, GUEST)
    assert [(d.bdf, d.model) for d in t.devices] == [
        ("00:00.0", "qall"), ("00:01.0", "qall"), ("00:01.1", "qall"), ("00:01.3", "qall"),
        ("00:02.0", "qall"), ("00:03.0", "qall"), ("00:04.0", "qnet")]
    # the platform device follows the owner the caller names
    t2 = expected_topology(QNET_QALL, {"qall": data("cmdline_split_qall.txt"),
                                       "qnet": data("cmdline_split_qnet.txt")}, GUEST, platform_owner="qnet")
    assert t2.owner_of("00:02.0") == "qnet"


def test_two_models_placing_devices_on_one_bdf_fail_with_both_named():
    qnet = data("cmdline_split_qnet.txt").replace(",addr=0x4", "")   # auto slot: 03.0, VGA's
    with pytest.raises(CheckFailed) as info:
        expected_topology(QNET_QALL, {"qall": data("cmdline_split_qall.txt"), "qnet": qnet}, GUEST)
    assert_failure_message(info.value, "00:03.0: expected one device per BDF across all models",
                           "Cirrus VGA", "e1000 NIC", "evidence command line of model qnet")


def test_device_on_the_wrong_models_command_line_fails():
    qall = data("cmdline_split_qall.txt").replace("-net none", "-device e1000,id=nic0,mac=00:16:3e:5a:01:02")
    with pytest.raises(CheckFailed) as info:
        expected_topology(QNET_QALL, {"qall": qall, "qnet": data("cmdline_split_qnet.txt")}, GUEST)
    assert_failure_message(info.value, "only on the command line of qnet", "seen on the command line of model qall")


def test_vif_no_model_creates_fails():
    qnet = data("cmdline_split_qnet.txt").replace("-device e1000,id=nic0,netdev=net0,mac=00:16:3e:5a:01:02,addr=0x4", "")
    with pytest.raises(CheckFailed) as info:
        expected_topology(QNET_QALL, {"qall": data("cmdline_split_qall.txt"), "qnet": qnet}, GUEST)
    assert_failure_message(info.value, "NIC nic1: expected a e1000 -device on the command line of model qnet")


@pytest.mark.parametrize("change, words", [
    (lambda a: a + ["-device", "frobnicator"], "unknown device type"),
    (lambda a: [x.replace("xenfv,", "q35,") for x in a], "not an i440FX machine"),
    (lambda a: a + ["-device", "VGA,addr=0x3"], "both at 00:03.0"),
    (lambda a: a + ["-device", "VGA,addr=zz"], "bad PCI addr"),
])
def test_command_lines_it_cannot_read_are_test_bugs(change, words):
    with pytest.raises(TopologyInputError, match=words):
        expected_topology(Split.single(), {"0": change(argv_of(data("cmdline_qemu_xen_417.txt")))}, GUEST)


def test_command_lines_must_match_the_models():
    with pytest.raises(TopologyInputError, match="has models"):
        expected_topology(QNET_QALL, {"qall": data("cmdline_split_qall.txt")}, GUEST)


def test_identify_models_by_their_dm_id_in_real_command_lines():
    cmds = recorded_port_cmdlines()
    # Both carry both model names (the guest is called xh-qnet-qall): the
    # names cannot tell them apart, the port's dm-id does.
    assert all(any("qnet" in a for a in argv) and any("qall" in a for a in argv) for argv in cmds)
    models = identify_models(cmds, QNET_QALL)
    assert sorted(models) == ["qall", "qnet"]
    assert any(a.startswith("e1000,") for a in models["qnet"])
    assert "-serial" in models["qall"] and "-serial" not in models["qnet"]
    with pytest.raises(CheckFailed) as info:
        identify_models(cmds[:1], QNET_QALL)
    assert_failure_message(info.value, "expected: one QEMU for each of ['qnet', 'qall']")
    with pytest.raises(CheckFailed):
        identify_models(cmds, Split.single())
    unsplit = [[a for a in argv if "dm-id" not in a] for argv in cmds]
    with pytest.raises(CheckFailed) as info:
        identify_models(unsplit, QNET_QALL)
    assert_failure_message(info.value, "dm-id=0..1")

