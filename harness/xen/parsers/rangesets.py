"""Ownership oracle: the ioreq-server rangesets Xen prints on ``xl debug-keys q``.

Format, read from the Xen sources (xen-project/xen):

- xen/common/ioreq.c (x86: xen/arch/x86/hvm/ioreq.c before 4.15),
  ``ioreq_server_alloc_rangesets()``: each server owns three rangesets named
  ``asprintf("ioreq_server %d %s", id, "port"|"memory"|"pci")``, created with
  ``RANGESETF_prettyprint_hex`` and attached to the *target* (guest) domain.
- xen/common/rangeset.c, ``rangeset_domain_printk()``: prints
  ``"Rangesets belonging to domain %u:\\n"`` and then, per rangeset,
  ``"    "`` + ``rangeset_printk()`` + ``"\\n"``; ``rangeset_printk()`` prints
  ``"%-10s {"`` (name), then each range as ``" %lx"`` or ``" %lx-%lx"``
  separated by ``","``, then ``" }"``.  xen/common/keyhandler.c
  ``dump_domains()`` (debug key ``q``) calls ``rangeset_domain_printk(d)``
  for every domain, after "General information for domain %u:".
- ``rangeset_new()`` adds each set at the head of the domain's list, so the
  dump shows the most recently *created* server first.  Server ids are the
  lowest free slot, so a higher id is not necessarily a newer server.

Xen's console adds ``(XEN) `` (and with ``console_timestamps=`` a ``[...]``
stamp) at the start of each line.  The pieces of one rangeset are separate
printk calls, so a message from another CPU can break the line, and a serial
capture may wrap it at a fixed width (cutting a number in two).  Continuation
lines are therefore joined and all whitespace inside the braces dropped
before splitting on ``,``: that is exact for both kinds of break.

PCI ranges are SBDF numbers ``(seg << 16) | (bus << 8) | (dev << 3) | fn``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from xenhil.harness.xen.parsers.errors import UnexpectedOutput

RANGE_KINDS = ("port", "memory", "pci")

Range = tuple[int, int]                      # inclusive (lo, hi)
ServerRanges = dict[str, list[Range]]        # kind -> ranges
DomainServers = dict[int, ServerRanges]      # server id -> kind -> ranges
IoreqRangesets = dict[int, DomainServers]    # domid -> ...

SOURCE = "xl dmesg (after xl debug-keys q)"

# "(XEN) ", "(XEN) [   12.345678] ", "(XEN) [2026-11-25 10:00:00.123] " ...
_PREFIX = re.compile(r"^\s*(?:\(XEN\)\s?)?(?:\[[^\]]*\]\s?)?")
_DOMAIN_HEADER = re.compile(r"Rangesets belonging to domain (\d+):")
_IOREQ_START = re.compile(r"^\s*ioreq_server (\d+) (port|memory|pci)\s*\{(.*)$")
_CONTINUATION = re.compile(r"^[0-9a-fA-F,\-\s]*(?:\}\s*)?$")
_RANGE = re.compile(r"^([0-9a-fA-F]+)(?:-([0-9a-fA-F]+))?$")


def _strip_prefix(line: str) -> tuple[bool, str]:
    """(had a console prefix, text after it)."""
    m = _PREFIX.match(line)
    prefix = m.group(0) if m else ""
    return ("(XEN)" in prefix or "[" in prefix), line[len(prefix):]


def parse_range_list(body: str, *, line_no: int | None = None, line: str | None = None) -> list[Range]:
    """``" 0, 8-9, b "`` -> ``[(0, 0), (8, 9), (0xb, 0xb)]`` (whitespace-insensitive)."""
    compact = re.sub(r"\s+", "", body)
    if not compact:
        return []
    ranges: list[Range] = []
    for item in compact.split(","):
        m = _RANGE.match(item)
        if not m:
            raise UnexpectedOutput(SOURCE, f"bad range {item!r} in a rangeset (expected HEX or HEX-HEX)",
                                   line_no=line_no, line=line)
        lo = int(m.group(1), 16)
        hi = int(m.group(2), 16) if m.group(2) else lo
        if hi < lo:
            raise UnexpectedOutput(SOURCE, f"range {item!r} ends before it starts",
                                   line_no=line_no, line=line)
        ranges.append((lo, hi))
    return ranges


def parse_ioreq_rangesets(text: str) -> IoreqRangesets:
    """Parse ``xl dmesg`` text into ``{domid: {server_id: {"port": [...], "memory": [...], "pci": [...]}}}``.

    Every server seen gets all three kinds (empty lists for empty sets).  When
    the text holds several dumps (the console ring is not cleared between
    ``q`` presses), the last dump of each domain wins.  Domains without ioreq
    servers (dom0, PV guests) are left out.
    """
    result: IoreqRangesets = {}
    domid: int | None = None
    open_set: tuple[int, str, list[str], int, str] | None = None  # sid, kind, pieces, line_no, line

    def close(pieces_end: str) -> None:
        nonlocal open_set
        assert open_set is not None and domid is not None
        sid, kind, pieces, start_no, start_line = open_set
        pieces.append(pieces_end)
        ranges = parse_range_list("".join(pieces), line_no=start_no, line=start_line)
        servers = result.setdefault(domid, {})
        server = servers.setdefault(sid, {k: [] for k in RANGE_KINDS})
        server[kind] = ranges
        open_set = None

    for no, raw in enumerate(text.splitlines(), start=1):
        prefixed, body = _strip_prefix(raw)
        if open_set is not None:
            if not _CONTINUATION.match(body):
                sid, kind, _, start_no, _ = open_set
                raise UnexpectedOutput(
                    SOURCE, f"rangeset 'ioreq_server {sid} {kind}' started at line {start_no} "
                            "is interrupted by other text before its closing '}'; "
                            "clear the ring (xl dmesg -c), press q again and re-read",
                    line_no=no, line=raw)
            # A console break ("(XEN)" line) may split a range at '-' or between
            # ranges; a raw wrap may split a number.  Whitespace is dropped in
            # parse_range_list, so plain concatenation is right for both.
            if "}" in body:
                close(body[:body.index("}")])
            else:
                open_set[2].append(body)
            continue
        header = _DOMAIN_HEADER.search(body)
        if header:
            domid = int(header.group(1))
            result.pop(domid, None)  # a newer dump of this domain replaces the older one
            continue
        start = _IOREQ_START.match(body)
        if not start:
            continue
        if domid is None:
            raise UnexpectedOutput(
                SOURCE, "ioreq_server rangeset before any 'Rangesets belonging to domain N:' "
                        "header: the console ring lost the start of the dump; run `xl dmesg -c`, "
                        "then `xl debug-keys q` and read `xl dmesg` again",
                line_no=no, line=raw)
        sid, kind, rest = int(start.group(1)), start.group(2), start.group(3)
        open_set = (sid, kind, [], no, raw)
        if "}" in rest:
            close(rest[:rest.index("}")])
        else:
            open_set[2].append(rest)
    if open_set is not None:
        sid, kind, _, start_no, start_line = open_set
        raise UnexpectedOutput(SOURCE, f"rangeset 'ioreq_server {sid} {kind}' has no closing '}}' "
                                       "before the end of the text (output cut short?)",
                               line_no=start_no, line=start_line)
    # Drop domains that had a header but no ioreq server.
    return {d: s for d, s in result.items() if s}


# --- PCI SBDF numbers ---------------------------------------------------

_BDF = re.compile(r"^(?:([0-9a-fA-F]{1,4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")


def sbdf_to_str(sbdf: int, *, always_segment: bool = False) -> str:
    """``0x8`` -> ``"00:01.0"``; segment shown only when non-zero (or asked for)."""
    if not 0 <= sbdf <= 0xFFFFFFFF:
        raise ValueError(f"SBDF {sbdf:#x} out of range")
    seg, bus, dev, fn = sbdf >> 16, (sbdf >> 8) & 0xFF, (sbdf >> 3) & 0x1F, sbdf & 0x7
    text = f"{bus:02x}:{dev:02x}.{fn:x}"
    return f"{seg:04x}:{text}" if (seg or always_segment) else text


def str_to_sbdf(text: str) -> int:
    """``"00:01.0"`` or ``"0000:00:01.0"`` -> ``(seg<<16)|(bus<<8)|(dev<<3)|fn``."""
    m = _BDF.match(text.strip())
    if not m:
        raise ValueError(f"not a PCI address: {text!r} (expected BB:DD.F or SSSS:BB:DD.F, hex)")
    seg = int(m.group(1), 16) if m.group(1) else 0
    bus, dev, fn = int(m.group(2), 16), int(m.group(3), 16), int(m.group(4))
    if dev > 0x1F:
        raise ValueError(f"PCI device number {dev:#x} > 0x1f in {text!r}")
    return (seg << 16) | (bus << 8) | (dev << 3) | fn


def expand_pci(ranges: Iterable[Range]) -> list[str]:
    """PCI SBDF ranges -> BDF strings, e.g. ``[(0,0), (8,9)]`` -> ``["00:00.0", "00:01.0", "00:01.1"]``."""
    return [sbdf_to_str(n) for lo, hi in ranges for n in range(lo, hi + 1)]


# --- questions the checks ask ---------------------------------------------

def _contains(ranges: Iterable[Range], lo: int, hi: int) -> bool:
    # Xen routes an access to a server only if it lies entirely in one range.
    return any(r_lo <= lo and hi <= r_hi for r_lo, r_hi in ranges)


def owners(servers: DomainServers, kind: str, value: int, size: int = 1) -> list[int]:
    """Ids of the servers whose *kind* ranges wholly contain [value, value+size-1]."""
    if kind not in RANGE_KINDS:
        raise ValueError(f"kind must be one of {RANGE_KINDS}, not {kind!r}")
    hi = value + max(size, 1) - 1
    return sorted(sid for sid, kinds in servers.items() if _contains(kinds.get(kind, ()), value, hi))


class AmbiguousOwner(UnexpectedOutput):
    """More than one server claims the same access."""

    help = ("Two device models claim the same I/O: in a split every device belongs to exactly "
            "one model; read the rangeset dump to see which.")


def _single_owner(servers: DomainServers, kind: str, value: int, size: int, shown: str) -> int | None:
    found = owners(servers, kind, value, size)
    if len(found) > 1:
        raise AmbiguousOwner(SOURCE, f"{shown} is claimed by ioreq servers {found}")
    return found[0] if found else None


def owner_of_port(servers: DomainServers, port: int, size: int = 1) -> int | None:
    """The server owning I/O port *port* (None: nobody, Xen answers all-ones).
    Raises AmbiguousOwner when several servers claim it; use ``owners()`` to
    see overlaps without raising."""
    return _single_owner(servers, "port", port, size, f"port {port:#x}")


def owner_of_mmio(servers: DomainServers, addr: int, size: int = 1) -> int | None:
    return _single_owner(servers, "memory", addr, size, f"MMIO address {addr:#x}")


def owner_of_bdf(servers: DomainServers, bdf: str | int) -> int | None:
    sbdf = str_to_sbdf(bdf) if isinstance(bdf, str) else bdf
    return _single_owner(servers, "pci", sbdf, 1, f"PCI device {sbdf_to_str(sbdf)}")


@dataclass(frozen=True)
class Overlap:
    kind: str
    server_a: int
    server_b: int
    lo: int
    hi: int

    def __str__(self) -> str:
        span = f"{self.lo:#x}" if self.lo == self.hi else f"{self.lo:#x}-{self.hi:#x}"
        if self.kind == "pci":
            span = (sbdf_to_str(self.lo) if self.lo == self.hi
                    else f"{sbdf_to_str(self.lo)}..{sbdf_to_str(self.hi)}")
        return f"{self.kind} {span} claimed by servers {self.server_a} and {self.server_b}"


def overlaps(servers: DomainServers) -> list[Overlap]:
    """Every range claimed by two different servers (Xen accepts this; a split must not)."""
    found: list[Overlap] = []
    ids = sorted(servers)
    for kind in RANGE_KINDS:
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                for a_lo, a_hi in servers[a].get(kind, ()):
                    for b_lo, b_hi in servers[b].get(kind, ()):
                        lo, hi = max(a_lo, b_lo), min(a_hi, b_hi)
                        if lo <= hi:
                            found.append(Overlap(kind, a, b, lo, hi))
    return found


def format_ranges(ranges: Iterable[Range]) -> str:
    """Back to Xen's notation: ``[(0,0),(8,9)]`` -> ``"0, 8-9"``."""
    return ", ".join(f"{lo:x}" if lo == hi else f"{lo:x}-{hi:x}" for lo, hi in ranges)
