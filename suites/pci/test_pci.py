"""PCI enumeration: the guest sees exactly the devices its split's models
emulate, each BDF is owned by the right ioreq server, and the Xen platform
device answers from the expected model."""
from xenhil.harness.checks.pci import (check_pci_ownership, check_pci_views, check_platform_device,
                                       check_unowned_bdfs_read_ones, companion_servers, gather_pci_views,
                                       identify_platform_model, probe_unowned_bdfs, read_model_traces,
                                       server_ids_by_model)
from xenhil.harness.checks.failure import save_evidence
from xenhil.harness.xen.parsers.probe_output import PortRead, parse_single


def test_guest_sees_exactly_the_expected_devices(guest, topology):
    views, evidence = gather_pci_views(guest)
    check_pci_views(topology, views, evidence)


def test_bdfs_no_model_owns_read_all_ones(guest, topology):
    reads, output = probe_unowned_bdfs(guest, topology)
    evidence = {"xhprobe pci-read": save_evidence(guest.artifacts_dir / "pci", "unowned.txt", output)}
    check_unowned_bdfs_read_ones(topology, reads, evidence)


def test_each_bdf_is_in_its_models_pci_rangeset(guest, topology, model_logs):
    traces, evidence = read_model_traces(guest.host, model_logs)
    server_models = server_ids_by_model(traces, evidence, companion_servers(guest))
    dump = guest.xl.rangesets_text()
    evidence["xl debug-keys q"] = save_evidence(guest.artifacts_dir / "pci", "rangesets.txt", dump)
    servers = guest.xl.rangesets()[guest.domid]
    check_pci_ownership(topology, servers, server_models, evidence)


def test_xen_platform_device_answers_from_the_expected_model(guest, topology, model_logs):
    magic = parse_single(guest.run("xhprobe inw 0x10"), PortRead)
    traces, evidence = read_model_traces(guest.host, model_logs)
    servers = guest.xl.rangesets()[guest.domid]
    record = identify_platform_model(magic, servers,
                                     server_ids_by_model(traces, evidence, companion_servers(guest)),
                                     None, None, evidence)
    check_platform_device(record, topology.platform_model, evidence)
