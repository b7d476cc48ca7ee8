"""I/O routing: each device class's ports, MMIO and BDFs reach the model that
owns it and no other; each server's rangesets cover what its devices need
and nothing is claimed twice.

The I/O each device class needs is in one table, DEVICE_PORTS, with the
source of every range; PCI devices add their BDF (config space) and their
BARs (read from the guest's sysfs, since the firmware places them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from xenhil.harness.checks.failure import Evidence, Mismatch, fail_if
from xenhil.harness.checks.topology import PLATFORM, PROBE_CLASS, ExpectedTopology
from xenhil.harness.probe_dm.companion import PROBE_MODEL
from xenhil.harness.xen.parsers.errors import UnexpectedOutput
from xenhil.harness.xen.parsers.qemu_trace import (IOREQ_TYPE_COPY, IOREQ_TYPE_PCI_CONFIG, IOREQ_TYPE_PIO,
                                                   TraceEvent)
from xenhil.harness.xen.parsers.rangesets import DomainServers, Range, overlaps, sbdf_to_str, str_to_sbdf
from xenhil.harness.xen import splits


@dataclass(frozen=True)
class IoRange:
    kind: str          # "port" | "memory" | "pci" (an SBDF number)
    lo: int
    hi: int            # inclusive
    what: str
    source: str = ""

    def __str__(self) -> str:
        if self.kind == "pci":
            return f"{self.what} (PCI {sbdf_to_str(self.lo)})"
        span = f"{self.lo:#x}" if self.lo == self.hi else f"{self.lo:#x}-{self.hi:#x}"
        return f"{self.what} ({self.kind} {span})"


def _p(lo: int, hi: int, what: str, source: str) -> IoRange:
    return IoRange("port", lo, hi, what, source)


_PIIX = "QEMU hw/ide/piix.c piix_ide port_info + hw/ide/ioport.c"
#: Fixed I/O ports of each device class (ranges the model must register and
#: the guest's accesses to them must reach that model).
DEVICE_PORTS: dict[str, tuple[IoRange, ...]] = {
    splits.IDE: (
        _p(0x1F0, 0x1F7, "IDE primary command block", _PIIX),
        _p(0x3F6, 0x3F6, "IDE primary control", _PIIX),
        _p(0x170, 0x177, "IDE secondary command block", _PIIX),
        _p(0x376, 0x376, "IDE secondary control", _PIIX),
    ),
    splits.SERIAL: (
        _p(0x3F8, 0x3FF, "COM1", "QEMU hw/char/serial-isa.c isa_serial_io[0], 8 ports"),
    ),
    splits.UI: (
        _p(0x60, 0x60, "i8042 keyboard data", "QEMU hw/input/pckbd.c"),
        _p(0x64, 0x64, "i8042 keyboard command/status", "QEMU hw/input/pckbd.c"),
        _p(0x3C0, 0x3CF, "VGA attribute/sequencer/graphics", "QEMU hw/display/vga.c vga_portio_list"),
        _p(0x3D4, 0x3D5, "VGA CRT controller (colour)", "QEMU hw/display/vga.c vga_portio_list"),
        _p(0x3DA, 0x3DA, "VGA input status (colour)", "QEMU hw/display/vga.c vga_portio_list"),
        _p(0xCF8, 0xCFB, "PCI config address",
           "docs/xen-ioreq-facts.md section 2: the CF8 write goes to the "
           "server owning 0xcf8 (the root bridge's model)"),
        _p(0xB000, 0xB003, "ACPI PM1a event block",
           "xen/include/public/hvm/ioreq.h ACPI_PM1A_EVT_BLK_ADDRESS_V1 (qemu-xen's PIIX4 PM)"),
    ),
    PLATFORM: (
        _p(0x10, 0x1F, "Xen platform fixed I/O", "QEMU hw/i386/xen/xen_platform.c, 16 ports at 0x10"),
    ),
    splits.AUDIO: (),          # PCI cards: BDF and BARs only
}

#: Xen-internal ports: never reach any model (docs/xen-ioreq-facts.md section 2).
XEN_INTERNAL_PORTS: tuple[IoRange, ...] = (
    _p(0x40, 0x43, "PIT", "xen/arch/x86/emul-i8254.c"),
)


# --------------------------------------------------------------------------
# What each class / model needs
# --------------------------------------------------------------------------

_IORESOURCE_IO, _IORESOURCE_MEM = 0x100, 0x200


def parse_sysfs_resource(text: str, bdf: str, source: str = "sysfs resource") -> list[IoRange]:
    """``/sys/bus/pci/devices/0000:BDF/resource`` -> the BARs (lines 0-5; the
    ROM, line 6, is left out: it is mapped only while enabled)."""
    out: list[IoRange] = []
    for no, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise UnexpectedOutput(source, "expected 'START END FLAGS' in hex", line_no=no, line=line)
        try:
            lo, hi, flags = (int(p, 16) for p in parts)
        except ValueError:
            raise UnexpectedOutput(source, "not hex numbers", line_no=no, line=line) from None
        if no > 6 or (lo == 0 and hi == 0):
            continue
        kind = "port" if flags & _IORESOURCE_IO else "memory" if flags & _IORESOURCE_MEM else None
        if kind:
            out.append(IoRange(kind, lo, hi, f"{bdf} BAR{no - 1}", source))
    return out


# BARs a model claims only in part: QEMU registers the memory regions it
# implements inside the BAR, not the whole BAR.  Seen for real (Xen 4.17,
# qemu-xen 7.2): the cirrus BAR0 is 32 MiB at 0xf0000000, of which the server's
# memory rangeset holds 0xf0000000-0xf07fffff (the 8 MiB VRAM window) and
# 0xf1000000-0xf13fffff (the blitter MMIO at +16 MiB) only.  Such a BAR is not
# required to be covered in full; nothing may claim it twice all the same
# (the overlap part of check_server_ranges).
PARTLY_CLAIMED_BARS = {("cirrus-vga", 0), ("VGA", 0), ("qxl-vga", 0)}


def _needs_ioreqs(qemu_type: str, bar: IoRange) -> bool:
    index = bar.what.rsplit("BAR", 1)[-1]
    return not (bar.kind == "memory" and index.isdigit()
                and (qemu_type, int(index)) in PARTLY_CLAIMED_BARS)


def io_needs(topology: ExpectedTopology, bars: Mapping[str, Sequence[IoRange]] | None = None,
             classes: Iterable[str] | None = None) -> dict[str, list[IoRange]]:
    """Device class -> the I/O it needs: DEVICE_PORTS, plus for each expected
    PCI device of the class its config space (BDF) and its BARs (``bars``:
    BDF -> parse_sysfs_resource())."""
    bars = bars or {}
    wanted = set(classes) if classes is not None else None
    needs: dict[str, list[IoRange]] = {}
    present = {d.device_class for d in topology.devices} | set(DEVICE_PORTS)
    for dclass in sorted(present):
        if wanted is not None and dclass not in wanted:
            continue
        items = list(DEVICE_PORTS.get(dclass, ()))
        for d in topology.of_class(dclass):
            sbdf = str_to_sbdf(d.bdf)
            items.append(IoRange("pci", sbdf, sbdf, f"{d.qemu_type} config space", "expected topology"))
            items.extend(b for b in bars.get(d.bdf, ()) if _needs_ioreqs(d.qemu_type, b))
        needs[dclass] = items
    return needs


def class_owners(split, topology: ExpectedTopology, classes: Iterable[str]) -> dict[str, str | None]:
    """Device class -> owning model (platform: the topology's platform owner;
    probe: the probe, which owns only its own function and ranges)."""
    def owner(c: str) -> str | None:
        if c == PLATFORM:
            return topology.platform_model
        if c == PROBE_CLASS:
            return PROBE_MODEL
        return split.owner_of(c)
    return {c: owner(c) for c in classes}


def probe_needs(needs: Mapping[str, Sequence[IoRange]], settings) -> dict[str, list[IoRange]]:
    """``needs`` with the probe's port ranges added to its class (its config
    space and BAR come from the topology, like any PCI device's)."""
    out = {c: list(r) for c, r in needs.items()}
    out.setdefault(PROBE_CLASS, []).extend(
        IoRange("port", lo, hi, "probe registers", "the catalog's probe settings")
        for lo, hi in settings.ports)
    return out


def check_probe_io(before, after, wanted: Mapping[str, tuple[int, int]], evidence: Evidence) -> None:
    """The probe's own counters (two readings, ProbeCounters) saw at least the
    (reads, writes) the guest drove at each of its windows, and nothing
    outside the ranges it claimed (Xen routed it nobody else's I/O)."""
    problems: list[Mismatch] = []
    for window, (reads, writes) in wanted.items():
        got = tuple(after.window(window).get(k, 0) - before.window(window).get(k, 0)
                    for k in ("reads", "writes"))
        if got[0] < reads or got[1] < writes:
            problems.append(Mismatch(f"probe window {window}", f">= {reads} reads, >= {writes} writes",
                                     f"{got[0]} reads, {got[1]} writes"))
    outside = after.counts.get("outside", 0) - before.counts.get("outside", 0)
    if outside:
        problems.append(Mismatch("probe, outside its ranges", "no request (Xen routes it only what it claimed)",
                                 f"{outside} request(s)"))
    fail_if(problems, "I/O routing to the probe ioreq server",
            expected="the guest's probe I/O counted by the probe, nothing else", evidence=evidence)


# --------------------------------------------------------------------------
# Accesses seen in a model's trace
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class IoAccess:
    kind: str       # port | memory | pci
    addr: int       # port, guest-physical address, or SBDF
    size: int
    line_no: int


def io_accesses(events: Iterable[TraceEvent]) -> list[IoAccess]:
    """The I/O requests a model handled.  ``handle_ioreq`` lines are used when
    present (one per request); else ``cpu_ioreq_pio``/``cpu_ioreq_move``/
    ``cpu_ioreq_config_*`` (enabled without handle_ioreq)."""
    events = list(events)
    out: list[IoAccess] = []
    handled = [e for e in events if e.name == "handle_ioreq"]
    if handled:
        for e in handled:
            t = e["type"]
            if t == IOREQ_TYPE_PIO:
                out.append(IoAccess("port", e["addr"], max(e["size"], 1), e.line_no))
            elif t == IOREQ_TYPE_COPY:
                out.append(IoAccess("memory", e["addr"], max(e["size"], 1), e.line_no))
            elif t == IOREQ_TYPE_PCI_CONFIG:
                out.append(IoAccess("pci", e["addr"] >> 32, 1, e.line_no))
        return out
    for e in events:
        if e.name == "cpu_ioreq_pio":
            out.append(IoAccess("port", e["addr"], max(e["size"], 1), e.line_no))
        elif e.name == "cpu_ioreq_move":
            out.append(IoAccess("memory", e["addr"], max(e["size"], 1), e.line_no))
        elif e.name in ("cpu_ioreq_config_read", "cpu_ioreq_config_write"):
            out.append(IoAccess("pci", e["sbdf"], 1, e.line_no))
    return out


def _hits(accesses: Sequence[IoAccess], r: IoRange) -> list[IoAccess]:
    return [a for a in accesses if a.kind == r.kind and a.addr <= r.hi and a.addr + a.size - 1 >= r.lo]


def check_io_routing(needs: Mapping[str, Sequence[IoRange]], owners: Mapping[str, str | None],
                     traces: Mapping[str, Sequence[TraceEvent]], evidence: Evidence, *,
                     require_activity: Iterable[str] | bool = True) -> dict[str, dict[str, int]]:
    """For each device class: its owning model saw I/O in the class's ranges
    (for the classes in ``require_activity``; True: all), and no other model
    saw any.  Returns {class: {model: accesses}} for the record."""
    per_model = {m: io_accesses(ev) for m, ev in traces.items()}
    required = set(needs) if require_activity is True else set(require_activity or ())
    problems: list[Mismatch] = []
    counts: dict[str, dict[str, int]] = {}
    for dclass, ranges in needs.items():
        owner = owners.get(dclass)
        counts[dclass] = {}
        for model, acc in per_model.items():
            hits = [(r, a) for r in ranges for a in _hits(acc, r)]
            counts[dclass][model] = len(hits)
            if model != owner and hits:
                r, a = hits[0]
                problems.append(Mismatch(
                    f"{dclass} I/O in model {model}'s log",
                    f"no access (owner is {owner or 'no model'})",
                    f"{len(hits)} accesses, first {r} at log line {a.line_no}"))
        if dclass in required and owner is not None and counts[dclass].get(owner, 0) == 0:
            if owner not in per_model:
                problems.append(Mismatch(f"{dclass} I/O", f"accesses in owner {owner}'s log",
                                         f"no trace given for model {owner}"))
            else:
                problems.append(Mismatch(f"{dclass} I/O", f"accesses to {', '.join(map(str, ranges))} "
                                                           f"in owner {owner}'s log", "none"))
    fail_if(problems, "I/O routing by device class",
            expected="each device class's I/O reaches its owning model only", evidence=evidence)
    return counts


# --------------------------------------------------------------------------
# Rangesets against needs
# --------------------------------------------------------------------------

def _uncovered(ranges: Sequence[Range], lo: int, hi: int) -> list[Range]:
    gaps, cur = [], lo
    for r_lo, r_hi in sorted(ranges):
        if r_hi < cur:
            continue
        if r_lo > hi:
            break
        if r_lo > cur:
            gaps.append((cur, r_lo - 1))
        cur = max(cur, r_hi + 1)
        if cur > hi:
            break
    if cur <= hi:
        gaps.append((cur, hi))
    return gaps


def needs_by_model(needs: Mapping[str, Sequence[IoRange]],
                   owners: Mapping[str, str | None]) -> dict[str, list[IoRange]]:
    out: dict[str, list[IoRange]] = {}
    for dclass, ranges in needs.items():
        owner = owners.get(dclass)
        if owner is not None:
            out.setdefault(owner, []).extend(ranges)
    return out


def check_server_ranges(servers: DomainServers, server_models: Mapping[int, str],
                        model_needs: Mapping[str, Sequence[IoRange]], evidence: Evidence) -> None:
    """Each model's server covers all its needs; no range is claimed by two
    servers (rangesets.overlaps); no server claims I/O another model needs."""
    problems: list[Mismatch] = []
    sid_of = {m: s for s, m in server_models.items()}
    for model, items in model_needs.items():
        sid = sid_of.get(model)
        if sid is None or sid not in servers:
            problems.append(Mismatch(f"model {model}", "an ioreq server with rangesets",
                                     "no server of this model in the dump"))
            continue
        for r in items:
            gaps = _uncovered(servers[sid].get(r.kind, []), r.lo, r.hi)
            if gaps:
                shown = ", ".join(f"{a:#x}-{b:#x}" if a != b else f"{a:#x}" for a, b in gaps)
                problems.append(Mismatch(f"{r}", f"in server {sid}'s {r.kind} rangeset (model {model})",
                                         f"not covered: {shown}"))
            for other_sid, kinds in servers.items():
                if other_sid == sid:
                    continue
                for o_lo, o_hi in kinds.get(r.kind, []):
                    if o_lo <= r.hi and r.lo <= o_hi:
                        problems.append(Mismatch(
                            f"{r}", f"claimed by model {model} only",
                            f"also claimed by server {other_sid} "
                            f"({server_models.get(other_sid, 'no model')}): {o_lo:#x}-{o_hi:#x}"))
    for o in overlaps(servers):
        problems.append(Mismatch(str(o).split(" claimed")[0], "claimed by one server", str(o)))
    fail_if(problems, "ioreq server rangesets against device needs",
            expected="each model's server covers its devices' I/O, nothing claimed twice",
            evidence=evidence)


def read_bars(guest, topology: ExpectedTopology) -> dict[str, list[IoRange]]:
    """BDF -> BARs of every expected PCI device, from the guest's sysfs; read
    once per guest domain (``Guest.observe``: its kernel assigned them at boot)."""
    return guest.observe(f"pci bars of {sorted(d.bdf for d in topology.devices)}",
                         lambda: _read_bars(guest, topology))


def _read_bars(guest, topology: ExpectedTopology) -> dict[str, list[IoRange]]:
    import shlex

    bars: dict[str, list[IoRange]] = {}
    for d in topology.devices:
        path = f"/sys/bus/pci/devices/0000:{d.bdf}/resource"
        # The first six lines are the BARs, all parse_sysfs_resource reads; the
        # rest (ROM, bridge windows) would only slow a console that passes
        # on 40 bytes a second when the lab machine is busy.
        text = guest.run(f"head -n 6 {shlex.quote(path)}", timeout=60, check=False)
        if "No such file" in text:
            continue  # the guest does not see it: the PCI view check reports that
        bars[d.bdf] = parse_sysfs_resource(text, d.bdf, source=f"guest {path}")
    return bars
