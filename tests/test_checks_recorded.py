"""The checks of harness/checks/ (not only the parsers) over outputs recorded
for real on the virtual lab (tests/data/recorded/README.md: Xen 4.17,
qemu-xen 7.2, the single split with an e1000): each passes on the recorded
text, and fails on a copy altered as little as a real fault would alter it
(one range moved to another server, one line more or less).

The expected side comes from the split and a QEMU command line of libxl
4.17's shape (tests/data/checks/cmdline_qemu_xen_417.txt: the guest kit's
devices, cirrus VGA and one e1000); the seen side is the recorded text.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from xenhil.harness.checks.failure import CheckFailed
from xenhil.harness.checks.mapcache import check_invalidates, check_no_invalidate_failure, count_invalidates
from xenhil.harness.checks.pci import check_pci_ownership, check_pci_views, server_ids_by_model
from xenhil.harness.checks.routing import (IoRange, check_io_routing, check_server_ranges, class_owners, io_needs,
                                           needs_by_model)
from xenhil.harness.checks.saverestore import check_same_ownership, check_same_pci, normalise_rangesets
from xenhil.harness.checks.topology import PLATFORM, expected_topology
from xenhil.harness.errors import ProductError
from xenhil.harness.xen.parsers.lspci import parse_pci_listing
from xenhil.harness.xen.parsers.qemu_trace import parse_trace_log
from xenhil.harness.xen.parsers.rangesets import parse_ioreq_rangesets
from xenhil.harness.xen.parsers.xl_info import parse_xl_info
from xenhil.harness.xen.splits import IDE, SERIAL, UI, Split
from xenhil.harness.xen.toolstack import require_hvm
from xenhil.harness.xen.xlconfig import HvmGuest, Vif

from tests.support.checks import assert_failure_message, data

RECORDED = Path(__file__).parent / "data" / "recorded"
DMESG_Q = "xl_dmesg_q_417_emulated.txt"
LSPCI_N = "guest_lspci_n_417_emulated.txt"
LSPCI_NN = "guest_lspci_nn_417_emulated.txt"
TRACE = "qemu-dm-g1_trace_417_emulated.log.gz"
DOMID = 1                                  # the recorded guest's domain

# The recorded server 0 lines, as xl debug-keys q printed them.
PCI_LINE = "ioreq_server 0 pci { 0, 8-9, b, 10, 18, 20 }"
PORT_LINE_START = "ioreq_server 0 port { 0-1f, 60, 64,"
MODEL = "0"                                # the single split's one model

GUEST = HvmGuest("smoke", vifs=[Vif("nic1", mac="00:16:3e:5a:01:02")])
TOPOLOGY = expected_topology(Split.single(), {MODEL: data("cmdline_qemu_xen_417.txt")}, GUEST)
CLASSES = [UI, IDE, SERIAL, PLATFORM, "nic:nic1"]


def _text(name: str) -> str:
    path = RECORDED / name
    return gzip.decompress(path.read_bytes()).decode() if name.endswith(".gz") else path.read_text()


def _evidence(*names: str) -> dict[str, str]:
    return {name: str(RECORDED / name) for name in names}


@pytest.fixture(scope="module")
def trace():
    return parse_trace_log(_text(TRACE), source=TRACE)


def _servers(text: str | None = None):
    return parse_ioreq_rangesets(text if text is not None else _text(DMESG_Q))[DOMID]


def _with_server_1(text: str, old: str, new: str, server_1: str) -> str:
    """The recorded dump with ``old`` (part of server 0's lines) replaced by
    ``new`` and a line of server 1 added: one range moved to another server."""
    assert old in text, old
    text = text.replace(old, new, 1)
    line = next(l for l in text.splitlines() if "ioreq_server 0 pci {" in l)
    prefix = line[:line.index("ioreq_server")]
    return text.replace(line, f"{line}\n{prefix}ioreq_server 1 {server_1}", 1)


# --- PCI: the guest's views and ownership -------------------------------------------------

def test_the_recorded_guest_sees_the_derived_topology():
    views = {"lspci -n": parse_pci_listing(_text(LSPCI_N), "lspci -n"),
             "lspci -nn": parse_pci_listing(_text(LSPCI_NN), "lspci -nn")}
    check_pci_views(TOPOLOGY, views, _evidence(LSPCI_N, LSPCI_NN))


def test_a_guest_view_without_its_nic_fails():
    text = "\n".join(l for l in _text(LSPCI_N).splitlines() if not l.startswith("00:04.0"))
    with pytest.raises(CheckFailed) as info:
        check_pci_views(TOPOLOGY, {"lspci -n": parse_pci_listing(text)}, _evidence(LSPCI_N))
    assert_failure_message(info.value, "lspci -n 00:04.0: expected 8086:100e class 0200", "seen no device")


def test_the_recorded_trace_names_the_one_server_of_the_one_model(trace):
    assert server_ids_by_model({MODEL: trace}, _evidence(TRACE)) == {0: MODEL}


def test_a_trace_with_a_second_live_server_fails(trace):
    extra = parse_trace_log("xen_ioreq_server_create id: 1\n", source="altered")
    with pytest.raises(CheckFailed) as info:
        server_ids_by_model({MODEL: [*trace, *extra]}, _evidence(TRACE))
    assert_failure_message(info.value, "model 0: expected exactly one live xen_ioreq_server_create",
                           "live server ids [0, 1]")


def test_the_recorded_rangesets_give_every_bdf_to_the_one_qemu(trace):
    models = server_ids_by_model({MODEL: trace}, _evidence(TRACE))
    check_pci_ownership(TOPOLOGY, _servers(), models, _evidence(DMESG_Q))


def test_the_nic_moved_to_another_server_fails():
    text = _with_server_1(_text(DMESG_Q), PCI_LINE, "ioreq_server 0 pci { 0, 8-9, b, 10, 18 }",
                          "pci { 20 }")
    with pytest.raises(CheckFailed) as info:
        check_pci_ownership(TOPOLOGY, _servers(text), {0: MODEL}, _evidence(DMESG_Q))
    assert_failure_message(
        info.value,
        "ioreq server 1: expected a server created by one of the models 0; seen no model's log created it",
        "00:04.0 (e1000): expected in the pci rangeset of server 0 (model 0) only; "
        "seen in the pci rangesets of ['1 (?)']")


# --- I/O routing and rangesets against what each device class needs -----------------------

def test_every_device_class_of_the_recorded_boot_reached_its_model(trace):
    needs = io_needs(TOPOLOGY, None, CLASSES)
    owners = class_owners(Split.single(), TOPOLOGY, CLASSES)
    counts = check_io_routing(needs, owners, {MODEL: trace}, _evidence(TRACE))
    assert all(counts[c][MODEL] > 0 for c in CLASSES), counts


def test_serial_io_in_another_models_log_fails(trace):
    """One COM1 access moved into a second model's log (the recorded trace is
    otherwise unchanged): the serial class reached a model that does not own it."""
    needs = io_needs(TOPOLOGY, None, CLASSES)
    owners = class_owners(Split.single(), TOPOLOGY, CLASSES)
    moved = next(e for e in trace if e.name == "handle_ioreq" and e.args.get("type") == 0
                 and 0x3F8 <= e["addr"] <= 0x3FF)
    rest = [e for e in trace if e is not moved]
    with pytest.raises(CheckFailed) as info:
        check_io_routing(needs, owners, {MODEL: rest, "qother": [moved]}, _evidence(TRACE))
    assert_failure_message(info.value, "serial I/O in model qother's log: expected no access (owner is 0); "
                                       "seen 1 accesses, first COM1 (port 0x3f8-0x3ff)")


def test_the_recorded_rangesets_cover_what_each_class_needs():
    needs = io_needs(TOPOLOGY, None, CLASSES)
    owners = class_owners(Split.single(), TOPOLOGY, CLASSES)
    check_server_ranges(_servers(), {0: MODEL}, needs_by_model(needs, owners), _evidence(DMESG_Q))


def test_com1_moved_to_another_server_fails():
    text = _with_server_1(_text(DMESG_Q), "3b0-3df, 3f1-3ff,", "3b0-3df, 3f1-3f7,", "port { 3f8-3ff }")
    needs = io_needs(TOPOLOGY, None, CLASSES)
    owners = class_owners(Split.single(), TOPOLOGY, CLASSES)
    with pytest.raises(CheckFailed) as info:
        check_server_ranges(_servers(text), {0: MODEL}, needs_by_model(needs, owners), _evidence(DMESG_Q))
    assert_failure_message(
        info.value,
        "COM1 (port 0x3f8-0x3ff): expected in server 0's port rangeset (model 0); seen not covered: 0x3f8-0x3ff",
        "COM1 (port 0x3f8-0x3ff): expected claimed by model 0 only; seen also claimed by server 1 "
        "(no model): 0x3f8-0x3ff")


# --- map cache ---------------------------------------------------------------------------

def test_the_recorded_boot_saw_invalidates_and_xen_reported_no_failed_one(trace):
    seen = count_invalidates(trace)
    assert seen == 20, "handle_ioreq type=8 lines of the recorded boot"
    check_invalidates({MODEL: seen}, 1, _evidence(TRACE))
    check_no_invalidate_failure(_text(DMESG_Q), _evidence(DMESG_Q))


def test_a_server_missing_one_invalidate_and_a_failed_invalidate_fail(trace):
    seen = count_invalidates(trace)
    with pytest.raises(CheckFailed) as info:   # a second model's copy of the log lost one
        check_invalidates({MODEL: seen, "qother": seen - 1}, 1, _evidence(TRACE))
    assert_failure_message(info.value, "all models: expected the same number of invalidates",
                           f"0={seen}, qother={seen - 1}")
    text = _text(DMESG_Q) + "(XEN) d1v0 Unsuccessful map-cache invalidate\n"
    with pytest.raises(CheckFailed) as info:
        check_no_invalidate_failure(text, _evidence(DMESG_Q))
    assert_failure_message(info.value, "seen: 1 line(s), first: (XEN) d1v0 Unsuccessful map-cache invalidate")


# --- save/restore: what must not change ------------------------------------------------------

def test_the_recorded_ownership_and_pci_compare_equal_to_themselves():
    before = normalise_rangesets(_servers(), {0: MODEL})
    check_same_ownership(before, normalise_rangesets(_servers(), {0: MODEL}), _evidence(DMESG_Q))
    # lspci -n and -nn of the same guest: the same devices, read twice
    check_same_pci(parse_pci_listing(_text(LSPCI_N)), parse_pci_listing(_text(LSPCI_NN)),
                   _evidence(LSPCI_N, LSPCI_NN))


def test_a_range_moved_across_a_restore_and_a_changed_device_fail():
    before = normalise_rangesets(_servers(), {0: MODEL})
    text = _with_server_1(_text(DMESG_Q), PCI_LINE, "ioreq_server 0 pci { 0, 8-9, b, 10, 18 }", "pci { 20 }")
    after = normalise_rangesets(_servers(text), {0: MODEL})
    with pytest.raises(CheckFailed) as info:
        check_same_ownership(before, after, _evidence(DMESG_Q))
    assert_failure_message(info.value, "model 0 pci: expected { 0, 8-9, b, 10, 18, 20 }",
                           "model server 1: expected a server before and after; seen only after")
    changed = _text(LSPCI_N).replace("8086:100e", "8086:100f")
    with pytest.raises(CheckFailed) as info:
        check_same_pci(parse_pci_listing(_text(LSPCI_N)), parse_pci_listing(changed), _evidence(LSPCI_N))
    assert_failure_message(info.value, "guest PCI topology unchanged by save/restore", "00:04.0")


# --- the host ----------------------------------------------------------------------------

def test_the_recorded_host_offers_hvm_and_one_without_it_fails():
    text = _text("xl_info_417_emulated.txt")
    require_hvm(parse_xl_info(text), "vhost1")
    altered = "\n".join(l.replace(" hvm", "") if l.startswith("virt_caps") else l for l in text.splitlines())
    with pytest.raises(ProductError, match="has no 'hvm'"):
        require_hvm(parse_xl_info(altered), "vhost1")


# --- real outputs of a good build and of a planted bug (lab/mutants) ------------------

RECORDED_DIR = Path(__file__).parent / "data" / "recorded"


def _dump_servers(name: str):
    [servers] = parse_ioreq_rangesets((RECORDED_DIR / name).read_text()).values()
    return servers


def test_a_real_double_claim_of_the_mutant_probe_fails_and_the_good_build_passes():
    """Real rangesets of the single+probe guest, recorded by one qualification
    (q20261201T182316-47d2): the reference build, and the probe mutant
    claim-qemu-port, whose probe (server 1) also claims the secondary IDE
    channel QEMU (server 0) owns.  The same check on both."""
    ide2 = IoRange("port", 0x170, 0x177, "IDE secondary command block", "recorded")
    needs = {"0": [ide2], "probe": [IoRange("port", 0x6100, 0x610F, "probe registers", "recorded")]}
    models = {0: "0", 1: "probe"}
    good = _dump_servers("xl_dmesg_q_single_probe_port_417_emulated.txt")
    check_server_ranges(good, models, needs, {"xl debug-keys q": "good"})
    bad = _dump_servers("xl_dmesg_q_single_probe_mutant_probe_claim_qemu_port_417_emulated.txt")
    with pytest.raises(CheckFailed) as info:
        check_server_ranges(bad, models, needs, {"xl debug-keys q": "mutant"})
    assert_failure_message(
        info.value,
        "IDE secondary command block (port 0x170-0x177): expected claimed by model 0 only; "
        "seen also claimed by server 1 (probe): 0x170-0x177",
        "port 0x170-0x177: expected claimed by one server; seen port 0x170-0x177 claimed by servers 0 and 1")


def _guest_ranges(name: str, domid: int):
    """The guest's servers in a recorded dump, keyed by model (server 0 is
    QEMU's "0", server 1 the probe: the order the guest's servers were made)."""
    servers = parse_ioreq_rangesets((RECORDED_DIR / name).read_text())[domid]
    return normalise_rangesets(servers, {0: "0", 1: "probe"})


def test_a_real_restore_that_lost_the_probes_ranges_fails_and_the_good_build_passes():
    """Real rangesets before `xl save` and after `xl restore` of the
    single+probe guest in one qualification: the reference build (domain 3,
    restored as 4; another guest, domain 2, runs beside it) and the probe
    mutant skip-reregister-after-restore (domain 9, restored as 10)."""
    check_same_ownership(_guest_ranges("xl_dmesg_q_before_save_single_probe_port_417_emulated.txt", 3),
                         _guest_ranges("xl_dmesg_q_after_restore_single_probe_port_417_emulated.txt", 4),
                         {"rangesets": "good"})
    with pytest.raises(CheckFailed) as info:
        check_same_ownership(
            _guest_ranges("xl_dmesg_q_before_save_single_probe_mutant_skip_reregister_417_emulated.txt", 9),
            _guest_ranges("xl_dmesg_q_after_restore_single_probe_mutant_skip_reregister_417_emulated.txt", 10),
            {"rangesets": "mutant"})
    assert_failure_message(info.value, "model probe memory: expected { f3071000-f3071fff }; seen {  }",
                           "model probe pci: expected { 28 }; seen {  }",
                           "model probe port: expected { 6100-610f }; seen {  }")
