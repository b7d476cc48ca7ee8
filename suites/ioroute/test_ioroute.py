"""I/O routing: I/O the guest drives at each device class reaches the model
that owns the class and no other; the servers' ranges cover what their
devices need and no range is claimed twice.  With the probe ioreq server in
the split, its registers and BAR are driven too: its own counters must see
that I/O, and no QEMU trace any of it."""
from xenhil.harness.checks.observe import observe_rangesets, observe_servers
from xenhil.harness.checks.pci import read_model_traces
from xenhil.harness.checks.routing import (check_io_routing, check_probe_io, check_server_ranges,
                                           class_owners, io_needs, needs_by_model, probe_needs, read_bars)
from xenhil.harness.checks.topology import PROBE_CLASS
from xenhil.harness.lab.virtual.guestkit import NIC_TRAFFIC_COMMAND

# Guest workloads per device class: each touches the class's ports or its
# PCI function, through the guest kernel's drivers and the probe.
WORKLOADS = {
    "ide": "dd if=/dev/sda of=/dev/null bs=4k count=64 2>&1 || xhprobe inb 0x1f7",
    # Written to the UART itself: the command may run over SSH.
    "serial": "echo xenhil-serial-routing > /dev/ttyS0",
    "ui": "xhprobe inb 0x64; xhprobe inb 0x3da",
}


def _drive_io(guest, classes):
    # The NIC workload drives every NIC of the guest: once is enough.
    commands = [NIC_TRAFFIC_COMMAND if dclass.startswith("nic:") else WORKLOADS.get(dclass)
                for dclass in classes]
    for command in dict.fromkeys(c for c in commands if c):
        guest.run(command, timeout=120, check=False)


def _drive_probe(guest, settings, bar0: int) -> dict[str, tuple[int, int]]:
    """Read the probe's ID register, write and read back a scratch register,
    read its BAR; the (reads, writes) each window must have counted."""
    guest.run(f"xhprobe inl {settings.id_port:#x}; "
              f"xhprobe outl {settings.scratch_port:#x} 0x11223344; "
              f"xhprobe inl {settings.scratch_port:#x}; xhprobe mmio-read {bar0:#x} 4", timeout=120)
    return {"port0": (2, 1), "bar0": (1, 0)}


def _classes_and_needs(guest, topology):
    classes = guest.config.device_classes()
    probe = guest.companion("probe")
    if probe is not None:
        classes = [*classes, PROBE_CLASS]
    bars = read_bars(guest, topology)
    needs = io_needs(topology, bars, classes)
    if probe is not None:
        needs = probe_needs(needs, probe.settings)
    return classes, needs, bars, probe


def test_io_reaches_only_the_owning_model(guest, topology, model_logs):
    classes, needs, bars, probe = _classes_and_needs(guest, topology)
    before = probe.fresh_counters() if probe else None
    _drive_io(guest, classes)
    if probe is not None:
        bar0 = next(r.lo for r in bars[topology.of_class(PROBE_CLASS)[0].bdf] if r.kind == "memory")
        wanted = _drive_probe(guest, probe.settings, bar0)
    traces, evidence = read_model_traces(guest.host, model_logs)
    owners = class_owners(guest.config.split, topology, classes)
    # The probe keeps no QEMU trace: its own counters are its evidence.
    check_io_routing(needs, owners, traces, evidence,
                     require_activity=[c for c in classes if c != PROBE_CLASS])
    if probe is not None:
        after = probe.fresh_counters()
        evidence.update(probe.evidence(guest, guest.artifacts_dir))
        check_probe_io(before, after, wanted, evidence)


def test_server_ranges_match_devices_and_never_overlap(guest, topology, model_logs):
    _, needs, _, _ = _classes_and_needs(guest, topology)
    server_map, ranges = observe_servers(guest, model_logs), observe_rangesets(guest)
    owners = class_owners(guest.config.split, topology, needs)
    check_server_ranges(ranges.servers, server_map.models, needs_by_model(needs, owners),
                        {**server_map.evidence, **ranges.evidence})
