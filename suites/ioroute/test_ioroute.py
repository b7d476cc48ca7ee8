"""I/O routing: I/O the guest drives at each device class reaches the model
that owns the class and no other; the servers' ranges cover what their
devices need and no range is claimed twice."""
from harness.checks.pci import read_model_traces, server_ids_by_model
from harness.checks.failure import save_evidence
from harness.checks.routing import (check_io_routing, check_server_ranges, class_owners, io_needs,
                                    needs_by_model, read_bars)

# Guest workloads per device class: each touches the class's ports or its
# PCI function, through the guest kernel's drivers and the probe.
WORKLOADS = {
    "ide": "dd if=/dev/sda of=/dev/null bs=4k count=64 2>&1 || xhprobe inb 0x1f7",
    "serial": "echo xenhil-serial-routing",
    "ui": "xhprobe inb 0x64; xhprobe inb 0x3da",
}


def _drive_io(guest, classes):
    for dclass in classes:
        command = WORKLOADS.get(dclass)
        if dclass.startswith("nic:"):
            command = "ip link set eth0 up; ping -c 3 -W 1 192.0.2.1 >/dev/null 2>&1; true"
        if command:
            guest.run(command, timeout=120, check=False)


def test_io_reaches_only_the_owning_model(guest, topology, model_logs):
    classes = guest.config.device_classes()
    _drive_io(guest, classes)
    needs = io_needs(topology, read_bars(guest, topology), classes)
    traces, evidence = read_model_traces(guest.host, model_logs)
    check_io_routing(needs, class_owners(guest.config.split, topology, needs), traces, evidence)


def test_server_ranges_match_devices_and_never_overlap(guest, topology, model_logs):
    classes = guest.config.device_classes()
    needs = io_needs(topology, read_bars(guest, topology), classes)
    traces, evidence = read_model_traces(guest.host, model_logs)
    evidence["xl debug-keys q"] = save_evidence(guest.artifacts_dir / "ioroute", "rangesets.txt",
                                                guest.xl.rangesets_text())
    servers = guest.xl.rangesets()[guest.domid]
    owners = class_owners(guest.config.split, topology, needs)
    check_server_ranges(servers, server_ids_by_model(traces, evidence),
                        needs_by_model(needs, owners), evidence)
