"""PCI enumeration: the guest sees exactly the devices its split's models
emulate, each BDF is owned by the right ioreq server, and the Xen platform
device answers from the expected model."""
from xenhil.harness.checks.failure import save_evidence
from xenhil.harness.checks.observe import observe_rangesets, observe_servers
from xenhil.harness.checks.pci import (check_pci_ownership, check_pci_views, check_platform_device,
                                       check_unowned_bdfs_read_ones, gather_pci_views, identify_platform_model,
                                       probe_unowned_bdfs)
from xenhil.harness.xen.parsers.probe_output import PortRead, parse_single


def test_guest_sees_exactly_the_expected_devices(guest, topology):
    views, evidence = gather_pci_views(guest)
    check_pci_views(topology, views, evidence)


def test_bdfs_no_model_owns_read_all_ones(guest, topology):
    reads, output = probe_unowned_bdfs(guest, topology)
    evidence = {"xhprobe pci-read": save_evidence(guest.artifacts_dir / "pci", "unowned.txt", output)}
    check_unowned_bdfs_read_ones(topology, reads, evidence)


def test_each_bdf_is_in_its_models_pci_rangeset(guest, topology, model_logs):
    server_map, ranges = observe_servers(guest, model_logs), observe_rangesets(guest)
    check_pci_ownership(topology, ranges.servers, server_map.models, {**server_map.evidence, **ranges.evidence})


def test_xen_platform_device_answers_from_the_expected_model(guest, topology, model_logs):
    magic = parse_single(guest.run("xhprobe inw 0x10"), PortRead)
    server_map, ranges = observe_servers(guest, model_logs), observe_rangesets(guest)
    evidence = {**server_map.evidence, **ranges.evidence}
    record = identify_platform_model(magic, ranges.servers, server_map.models, None, None, evidence)
    check_platform_device(record, topology.platform_model, evidence)
