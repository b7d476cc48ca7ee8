"""dom0 process crashes (harness.xen.dom0_crashes) over dom0 kernel logs
recorded on the virtual lab, and the reclassification they drive."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from xenhil.harness.lab.profile import HostProfile
from xenhil.harness.xen.dom0_crashes import (Dom0Crash, emulation_note, guest_emulation_crashes,
                                             parse_crashes, parse_triple_faults, process_death_in_output)

RECORDED = Path(__file__).parent / "data" / "recorded"


def test_a_device_model_segfault_is_found_with_its_time_and_pid():
    crashes = parse_crashes((RECORDED / "dom0_dmesg_qemu_segfault_417_emulated.txt").read_text())
    assert [(c.process, c.pid, c.what, c.uptime) for c in crashes] == [
        ("xen-qemu-system", 633, "segfault at 0", 300.363933)]
    assert crashes[0].line.startswith("[  300.363933] xen-qemu-system[633]: segfault at 0 ip")


def test_segfaults_and_general_protection_faults_of_every_process_are_found():
    crashes = parse_crashes((RECORDED / "dom0_dmesg_xl_awk_crashes_417_emulated.txt").read_text())
    assert [(c.process, c.pid, c.what) for c in crashes] == [
        ("(udev-worker)", 554, "segfault at 18"),
        ("systemd-tmpfile", 1389, "general protection fault"),
        ("xl", 3619, "segfault at 8"),
        ("awk", 3623, "general protection fault"),
        ("xl", 3867, "segfault at 7fef88166328"),
    ]


def test_ordinary_kernel_lines_are_not_crashes():
    text = ("[   12.000001] xenbr0: port 4(vif2.0-emu) entered blocking state\n"
            "[   13.5] audit: type=1400 audit(0.0:2): apparmor=\"STATUS\" name=\"x[1]\"\n"
            "[   14.25] systemd[1]: Started session-1.scope.\n")
    assert parse_crashes(text) == []


TRIPLE_FAULT_XL_DMESG = RECORDED / "xl_dmesg_guest_triple_fault_417_emulated.txt"


def test_triple_faults_of_the_guests_domains_only():
    text = TRIPLE_FAULT_XL_DMESG.read_text()
    faults = parse_triple_faults(text, [1])
    assert [(f.domid, f.vcpu) for f in faults] == [(1, 0)]
    assert faults[0].line == "(XEN) d1v0 Triple fault - invoking HVM shutdown action 1"
    assert str(faults[0]) == "guest domain 1 vCPU 0 triple fault"
    assert parse_triple_faults(text, [2, 3]) == []


class RecordingSSH:
    """Answers `cat /proc/uptime`, `dmesg` and `xl dmesg` from recorded text."""

    def __init__(self, dmesg: str, xl_dmesg: str = ""):
        self.dmesg, self.xl_dmesg, self.commands = dmesg, xl_dmesg, []

    def run(self, command, timeout=None, check=False):
        self.commands.append(command)
        out = {("cat", "/proc/uptime"): "4000.00 3000.00\n", ("dmesg",): self.dmesg,
               ("xl", "dmesg"): self.xl_dmesg}[tuple(command)]
        return SimpleNamespace(stdout=out, stderr="", exit_status=0)


def fake_guest(emulated, since, domids=()):
    dmesg = (RECORDED / "dom0_dmesg_xl_awk_crashes_417_emulated.txt").read_text()
    host = SimpleNamespace(name="vhost1", ssh=RecordingSSH(dmesg, TRIPLE_FAULT_XL_DMESG.read_text()),
                           spec=SimpleNamespace(profile=HostProfile(emulated=emulated)))
    return SimpleNamespace(host=host, dom0_uptime_at_create=since, domids_seen=list(domids))


def test_only_crashes_since_the_guest_was_created_count_on_an_emulated_host():
    guest = fake_guest(True, 3000.0)
    assert [str(c) for c in guest_emulation_crashes(guest)] == [
        "xl[3619] segfault at 8 at 3254 s", "awk[3623] general protection fault at 3256 s",
        "xl[3867] segfault at 7fef88166328 at 3313 s"]


def test_a_triple_fault_of_one_of_the_guests_domains_counts_too():
    assert [str(c) for c in guest_emulation_crashes(fake_guest(True, 5000.0, domids=[1]))] == [
        "guest domain 1 vCPU 0 triple fault"]
    assert guest_emulation_crashes(fake_guest(True, 5000.0, domids=[4])) == []


def test_real_hardware_never_reclassifies():
    guest = fake_guest(False, 0.0)
    assert guest_emulation_crashes(guest) == []
    assert guest.host.ssh.commands == [], "no dmesg is read on a real host"


def test_a_guest_never_created_has_no_window():
    assert guest_emulation_crashes(fake_guest(True, None)) == []


def test_the_note_names_the_class_the_host_and_at_most_three_crashes():
    crashes = [Dom0Crash(float(i), "xl", 100 + i, "segfault at 8", "") for i in range(5)]
    note = emulation_note("vhost1", crashes)
    assert note.startswith("[infrastructure] the guest or dom0 processes crashed")
    assert "vhost1" in note and "xl[100]" in note and "xl[102]" in note and "xl[103]" not in note
    assert "2 more" in note and "real hardware this stays a product failure" in note


@pytest.mark.parametrize("output, expected", [
    # CI's smoke (stop 9): glibc's heap check first, then libxl naming its child
    ("Parsing config from /var/lib/xenhil/guests/smoke.cfg\ngot a tsc mode string: \"native\"\n"
     "malloc(): unsorted double linked list corrupted\nlibxl: error: libxl_exec.c:127:"
     "libxl_report_child_exitstatus: domain monitoring daemonizing child [461] died due to "
     "fatal signal Aborted\n", "malloc(): unsorted double linked list corrupted"),
    ("libxl: error: libxl_exec.c:127:libxl_report_child_exitstatus: domain monitoring "
     "daemonizing child [461] died due to fatal signal Segmentation fault\n",
     "libxl: error: libxl_exec.c:127:libxl_report_child_exitstatus: domain monitoring "
     "daemonizing child [461] died due to fatal signal Segmentation fault"),
    ("free(): invalid pointer\n", "free(): invalid pointer"),
    ("double free or corruption (out)\n", "double free or corruption (out)"),
    ("sh: line 1:   812 Segmentation fault      xl list\n",
     "sh: line 1:   812 Segmentation fault      xl list"),
    # xl refusing a config, a domain that is gone: no process died
    ("Parsing config from /g1.cfg\n/g1.cfg:3: config parsing error near `=': syntax error\n", None),
    ("libxl: error: libxl_domain.c:1523:libxl_domain_destroy: Domain 7:non-existant domain\n", None),
    ("", None),
])
def test_a_process_death_is_found_in_a_commands_output(output, expected):
    assert process_death_in_output(output) == expected


def test_a_triple_fault_of_one_of_two_guests_booting_at_once_is_told_apart():
    # Recorded by the stability benchmark: guests d1 and d2 booting at once,
    # d2 triple-faulted after an inl from 0xcfc (rdx in Xen's dump), d1 went on.
    text = (RECORDED / "xl_dmesg_triple_fault_read_pci_config_417_emulated.txt").read_text()
    assert [(f.domid, f.vcpu) for f in parse_triple_faults(text, [1, 2])] == [(2, 0)]
    assert parse_triple_faults(text, [1]) == []
    dump = text[text.index("d2v0 Triple fault"):]
    assert "rdx: 0000000000000cfc" in dump and "rax: 00000000ffffffff" in dump


def test_a_triple_fault_after_the_quirks_names_its_domain_and_the_eoi_site():
    # Recorded with every quirk of harness/lab/virtual/quirks.py applied:
    # two guests (d3, d4) booting at once, d3 triple-faulted after the wrmsr
    # to the x2APIC EOI register (rcx 0x80b).
    text = (RECORDED / "xl_dmesg_triple_fault_x2apic_eoi_417_emulated.txt").read_text()
    faults = parse_triple_faults(text, [3, 4])
    assert [(f.domid, f.vcpu) for f in faults] == [(3, 0)]
    assert parse_triple_faults(text, [4]) == []
    assert "rcx: 000000000000080b" in text.split("d3v0 Triple fault", 1)[1]


def test_a_triple_fault_with_the_hosts_state_in_the_guests_vmcb_is_told_apart():
    # d5 and d6 booting at once; d3's earlier crash is still in the ring.
    text = (RECORDED / "xl_dmesg_triple_fault_host_state_in_vmcb_417_emulated.txt").read_text()
    assert [(f.domid, f.vcpu) for f in parse_triple_faults(text, [5, 6])] == [(5, 0)]
    assert [(f.domid, f.vcpu) for f in parse_triple_faults(text, [3, 4])] == [(3, 0)]
    assert parse_triple_faults(text, [6]) == []

