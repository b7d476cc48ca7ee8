"""Planted faults of the probe device model: the probe made to misbehave on
purpose, so that a run shows the suites catch a device model's bug
(mutants, issue 14; the catalog is ``lab/mutants/mutants.yaml``).

A fault is one text, given to the probe in dom0 as ``--fault FAULT`` and to
pytest as ``--probe-fault FAULT`` (the run's every probe then carries it,
and the run's provenance names it, so no report takes a mutant run for a
clean one)::

    claim-qemu-port[=START-END]     also claim a port range QEMU owns
    ignore-invalidate               answer map-cache invalidates, do nothing
    skip-reregister-after-restore   after a restore, register nothing with Xen
    delay=MICROSECONDS              wait this long before answering any request

Every rule is in :data:`FAULTS`; :func:`parse_fault` is the one parser, and
each problem it finds names the option and its fix.  What a fault changes
is decided here too (:func:`registrations`, :func:`hold`), so the server and
the device only ask, and the decisions are testable without Xen.

Nothing here imports more than ``harness.errors``: this module is part of
the probe's dom0 bundle (harness/probe_dm/host.py PACKAGE_FILES).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from xenhil.harness.errors import ConfigError

# --------------------------------------------------------------------------
# Tables: the faults.  Change them here only.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultRule:
    """One fault: what it breaks, and its value (None: it takes none)."""

    breaks: str
    value: str | None = None          # what the value is, for messages
    default: str | None = None        # the value when the fault is given bare
    example: str = ""


#: The secondary IDE channel's command block (QEMU hw/ide/piix.c, 0x170-0x177):
#: QEMU registers it in every split that has an ide model, and the suites'
#: guest has its one disk on the primary channel (hda), so the guest reads a
#: floating bus (0xff: no drive) there with or without the fault and still
#: boots; what changes is that the probe (the newer server) wins the range in
#: Xen, which a check of the servers' rangesets must see.
DEFAULT_QEMU_PORTS = "0x170-0x177"

#: The longest delay: a request held a second already stalls a vCPU past
#: what any check of latency needs (the latency mutant wants +30 % of a
#: round trip, tens to hundreds of microseconds).
MAX_DELAY_US = 1_000_000

FAULTS: dict[str, FaultRule] = {
    "claim-qemu-port": FaultRule(
        "the probe also claims a port range QEMU owns, and wins it in Xen (the newest server "
        "wins an overlap): a port range answered by a server that does not own it",
        value="a port range START-END (inclusive, hex)", default=DEFAULT_QEMU_PORTS,
        example="claim-qemu-port=0x170-0x177"),
    "ignore-invalidate": FaultRule(
        "map-cache invalidates are answered but not acted on (not counted): a model that "
        "ignores IOREQ_TYPE_INVALIDATE", example="ignore-invalidate"),
    "skip-reregister-after-restore": FaultRule(
        "the probe started for a restored guest creates and enables its server but registers "
        "no port, PCI function or MMIO range with Xen", example="skip-reregister-after-restore"),
    "delay": FaultRule(
        "every request is answered this many microseconds late: a slow server (latency)",
        value=f"microseconds, a whole number from 1 to {MAX_DELAY_US}", example="delay=200"),
}


# --------------------------------------------------------------------------
# The fault, parsed
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeFault:
    """One parsed fault; ``text`` is its canonical form (what the probe in
    dom0 gets, and what reports show)."""

    name: str
    claim_ports: tuple[tuple[int, int], ...] = ()
    ignore_invalidate: bool = False
    skip_reregister_after_restore: bool = False
    delay_us: int = 0

    @property
    def text(self) -> str:
        if self.claim_ports:
            return f"{self.name}=" + ",".join(f"{s:#x}-{e:#x}" for s, e in self.claim_ports)
        if self.delay_us:
            return f"{self.name}={self.delay_us}"
        return self.name

    def __str__(self) -> str:
        return self.text


def _fix(name: str | None = None) -> str:
    if name is None:
        return "give one fault: " + ", ".join(r.example for r in FAULTS.values())
    rule = FAULTS[name]
    if rule.value is None:
        return f"give {name} alone, without '='"
    return f"give {name}=VALUE, VALUE {rule.value}, e.g. {rule.example}"


def _port_range(text: str, where: str, name: str) -> tuple[int, int]:
    try:
        start_text, end_text = text.split("-")
        start, end = int(start_text, 16), int(end_text, 16)
    except ValueError:
        raise ConfigError(f"{where} {name}={text!r}: not a port range START-END in hex",
                          help=_fix(name)) from None
    if end < start or end > 0xFFFF:
        raise ConfigError(f"{where} {name}={text!r}: the end is below the start or beyond port 0xffff",
                          help=_fix(name))
    return start, end


def parse_fault(text: str, where: str = "--fault") -> ProbeFault:
    """``text`` (``NAME`` or ``NAME=VALUE``) as a fault of :data:`FAULTS`;
    ConfigError naming ``where`` (the option) and the fix otherwise."""
    raw = str(text).strip()
    if not raw:
        raise ConfigError(f"{where}: empty", help=_fix())
    name, has_value, value = raw.partition("=")
    rule = FAULTS.get(name)
    if rule is None:
        raise ConfigError(f"{where} {name[:40]!r}: no such fault", help=_fix())
    if has_value and rule.value is None:
        raise ConfigError(f"{where} {raw[:60]!r}: {name} takes no value", help=_fix(name))
    if not has_value:
        if rule.default is None and rule.value is not None:
            raise ConfigError(f"{where} {name}: needs a value ({rule.value})", help=_fix(name))
        value = rule.default or ""
    if name == "claim-qemu-port":
        return ProbeFault(name, claim_ports=(_port_range(value, where, name),))
    if name == "delay":
        if not value.isdigit() or not 1 <= int(value) <= MAX_DELAY_US:
            raise ConfigError(f"{where} delay={value[:20]!r}: not {rule.value}", help=_fix(name))
        return ProbeFault(name, delay_us=int(value))
    if name == "ignore-invalidate":
        return ProbeFault(name, ignore_invalidate=True)
    return ProbeFault(name, skip_reregister_after_restore=True)


# --------------------------------------------------------------------------
# What a fault changes (the server and the device ask these)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Registrations:
    """What the server registers with Xen: port ranges, and whether its PCI
    function and its MMIO window are registered at all."""

    ports: tuple[tuple[int, int], ...]
    pci: bool
    mmio: bool


def registrations(ports, bdf, fault: ProbeFault | None, restoring: bool) -> Registrations:
    """The ranges a probe serving ``ports`` (and ``bdf``, None: no PCI
    function) registers, under ``fault``; ``restoring``: started for a
    restored guest (``--restore-state``)."""
    if fault is not None and fault.skip_reregister_after_restore and restoring:
        return Registrations((), False, False)
    extra = fault.claim_ports if fault is not None else ()
    return Registrations(tuple(ports) + tuple(extra), bdf is not None, True)


def ignores_invalidate(fault: ProbeFault | None) -> bool:
    return fault is not None and fault.ignore_invalidate


def hold(fault: ProbeFault | None, clock=time.perf_counter) -> None:
    """Before a request is answered: wait the fault's delay.  A busy wait,
    since a sleep of tens of microseconds overshoots by as much again, at
    random, and the delay must be the same for every request."""
    if fault is None or not fault.delay_us:
        return
    deadline = clock() + fault.delay_us / 1e6
    while clock() < deadline:
        pass


__all__ = ["FAULTS", "FaultRule", "ProbeFault", "Registrations", "parse_fault", "registrations",
           "ignores_invalidate", "hold", "DEFAULT_QEMU_PORTS", "MAX_DELAY_US"]
