"""QEMU ``log`` trace-backend lines from ``/var/log/xen/qemu-dm-<name>.log``.

The format strings below are QEMU's, from hw/xen/trace-events and
hw/i386/xen/trace-events (qemu/qemu).  The log backend
(scripts/tracetool/backend/log.py) prints ``"<event> " fmt "\\n"``; QEMU
releases before 8.x (Xen 4.17's qemu-xen among them) print
``"%d@%zu.%06zu:<event> " fmt`` (thread id, seconds.microseconds) when
``-msg timestamp=on`` is given: both shapes are accepted.  Lines that are not
trace events of the table (QEMU's own messages) are skipped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Iterator

from xenhil.harness.xen.parsers.errors import UnexpectedOutput

# name -> (argument names, QEMU format string)
TRACE_FORMATS: dict[str, tuple[tuple[str, ...], str]] = {
    "xen_default_ioreq_server": ((), ""),
    "xen_ioreq_server_create": (("id",), "id: %u"),
    "xen_ioreq_server_destroy": (("id",), "id: %u"),
    "xen_ioreq_server_state": (("id", "enable"), "id: %u: enable: %i"),
    "xen_map_mmio_range": (("id", "start_addr", "end_addr"), "id: %u start: 0x%PRIx64 end: 0x%PRIx64"),
    "xen_unmap_mmio_range": (("id", "start_addr", "end_addr"), "id: %u start: 0x%PRIx64 end: 0x%PRIx64"),
    "xen_map_portio_range": (("id", "start_addr", "end_addr"), "id: %u start: 0x%PRIx64 end: 0x%PRIx64"),
    "xen_unmap_portio_range": (("id", "start_addr", "end_addr"), "id: %u start: 0x%PRIx64 end: 0x%PRIx64"),
    "xen_map_pcidev": (("id", "bus", "dev", "func"), "id: %u bdf: %02x.%02x.%02x"),
    "xen_unmap_pcidev": (("id", "bus", "dev", "func"), "id: %u bdf: %02x.%02x.%02x"),
    "handle_ioreq": (("req", "type", "dir", "df", "data_is_ptr", "addr", "data", "count", "size"),
                     "I/O=%p type=%d dir=%d df=%d ptr=%d port=0x%PRIx64 data=0x%PRIx64 count=%d size=%d"),
    "handle_ioreq_read": (("req", "type", "df", "data_is_ptr", "addr", "data", "count", "size"),
                          "I/O=%p read type=%d df=%d ptr=%d port=0x%PRIx64 data=0x%PRIx64 count=%d size=%d"),
    "handle_ioreq_write": (("req", "type", "df", "data_is_ptr", "addr", "data", "count", "size"),
                           "I/O=%p write type=%d df=%d ptr=%d port=0x%PRIx64 data=0x%PRIx64 count=%d size=%d"),
    "cpu_ioreq_pio": (("req", "dir", "df", "data_is_ptr", "addr", "data", "count", "size"),
                      "I/O=%p pio dir=%d df=%d ptr=%d port=0x%PRIx64 data=0x%PRIx64 count=%d size=%d"),
    "cpu_ioreq_pio_read_reg": (("req", "data", "addr", "size"),
                               "I/O=%p pio read reg data=0x%PRIx64 port=0x%PRIx64 size=%d"),
    "cpu_ioreq_pio_write_reg": (("req", "data", "addr", "size"),
                                "I/O=%p pio write reg data=0x%PRIx64 port=0x%PRIx64 size=%d"),
    "cpu_ioreq_move": (("req", "dir", "df", "data_is_ptr", "addr", "data", "count", "size"),
                       "I/O=%p copy dir=%d df=%d ptr=%d port=0x%PRIx64 data=0x%PRIx64 count=%d size=%d"),
    "cpu_ioreq_config_read": (("req", "sbdf", "reg", "size", "data"),
                              "I/O=%p sbdf=0x%x reg=%u size=%u data=0x%x"),
    "cpu_ioreq_config_write": (("req", "sbdf", "reg", "size", "data"),
                               "I/O=%p sbdf=0x%x reg=%u size=%u data=0x%x"),
    "xen_map_resource_ioreq": (("id", "addr"), "id: %u addr: %p"),
    "xen_platform_log": (("s",), "xen platform: %s"),
    # hw/i386/xen/trace-events (xen-mapcache.c): a map-cache miss, the bucket
    # (guest physical address >> 20: 1 MiB buckets on x86-64) mapped anew.
    "xen_remap_bucket": (("index",), "index 0x%PRIx64"),
}

# ioreq types (xen/include/public/hvm/ioreq.h)
IOREQ_TYPES = {0: "PIO", 1: "COPY", 2: "PCI_CONFIG", 7: "TIMEOFFSET", 8: "INVALIDATE"}
IOREQ_TYPE_PIO, IOREQ_TYPE_COPY, IOREQ_TYPE_PCI_CONFIG, IOREQ_TYPE_INVALIDATE = 0, 1, 2, 8

_CONVERSIONS = [  # (format token, regex, converter)
    ("0x%PRIx64", r"0x([0-9a-fA-F]+)", 16),
    ("0x%x", r"0x([0-9a-fA-F]+)", 16),
    ("%02x", r"([0-9a-fA-F]+)", 16),
    ("%u", r"(\d+)", 10),
    ("%d", r"(-?\d+)", 10),
    ("%i", r"(-?\d+)", 10),
    ("%p", r"(\S+)", None),
    ("%s", r"(.*)", None),
]


def _compile(fmt: str) -> tuple[re.Pattern, list[int | None]]:
    pattern, bases, i = "", [], 0
    while i < len(fmt):
        for token, rx, base in _CONVERSIONS:
            if fmt.startswith(token, i):
                pattern += rx
                bases.append(base)
                i += len(token)
                break
        else:
            pattern += re.escape(fmt[i])
            i += 1
    return re.compile("^" + pattern + r"\s*$"), bases


_COMPILED = {name: (args, *_compile(fmt)) for name, (args, fmt) in TRACE_FORMATS.items()}
# Optional prefixes: "<tid>@<sec>.<usec>:" (QEMU < 8 with -msg timestamp=on) or
# an ISO-8601 UTC stamp and a space (newer qemu_log with -msg timestamp=on).
_LINE = re.compile(r"^(?:(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) )?"
                   r"(?:(?P<pid>\d+)@(?P<time>\d+\.\d+):)?(?P<name>[a-z0-9_]+)(?: (?P<rest>.*))?$")


@dataclass(frozen=True)
class TraceEvent:
    name: str
    args: dict = field(hash=False)
    line_no: int
    pid: int | None = None
    time: float | None = None       # seconds since the epoch, when QEMU printed it

    def __getitem__(self, key: str):
        return self.args[key]

    @property
    def ioreq_type(self) -> str | None:
        t = self.args.get("type")
        return None if t is None else IOREQ_TYPES.get(t, str(t))

    @property
    def pci_sbdf_reg(self) -> tuple[int, int] | None:
        """For a PCI_CONFIG ioreq: (SBDF, register). Xen puts the SBDF in the
        high 32 bits of the address (QEMU's cpu_ioreq_config)."""
        if self.args.get("type") != IOREQ_TYPE_PCI_CONFIG or "addr" not in self.args:
            return None
        return self.args["addr"] >> 32, self.args["addr"] & 0xFFFFFFFF


def parse_trace_line(line: str, line_no: int = 0, source: str = "qemu-dm log") -> TraceEvent | None:
    """One log line -> TraceEvent, or None when it is not a known trace event.
    A known event whose arguments do not fit QEMU's format raises."""
    m = _LINE.match(line.rstrip("\r\n"))
    if not m or m.group("name") not in _COMPILED:
        return None
    name = m.group("name")
    argnames, pattern, bases = _COMPILED[name]
    rest = m.group("rest") or ""
    am = pattern.match(rest)
    if not am:
        raise UnexpectedOutput(source, f"trace event {name} does not match QEMU's format "
                                       f"{TRACE_FORMATS[name][1]!r}", line_no=line_no, line=line)
    args = {}
    for arg, value, base in zip(argnames, am.groups(), bases):
        args[arg] = int(value, base) if base else value
    when = float(m.group("time")) if m.group("time") else None
    if when is None and m.group("iso"):
        when = datetime.fromisoformat(m.group("iso").replace("Z", "+00:00")).timestamp()
    return TraceEvent(name, args, line_no, int(m.group("pid")) if m.group("pid") else None, when)


def parse_trace_log(text: str, source: str = "qemu-dm log") -> list[TraceEvent]:
    return list(iter_trace_events(text.splitlines(), source))


def iter_trace_events(lines: Iterable[str], source: str = "qemu-dm log") -> Iterator[TraceEvent]:
    """Stream over a big log (35 000 handle_ioreq lines a boot) without a list."""
    for no, line in enumerate(lines, start=1):
        event = parse_trace_line(line, no, source)
        if event is not None:
            yield event


# --- what the checks ask of a model's log ---------------------------------

def remapped_buckets(events: Iterable[TraceEvent]) -> list[int]:
    """Bucket indices of the model's map-cache misses (xen_remap_bucket), in order."""
    return [e["index"] for e in events if e.name == "xen_remap_bucket"]


def ioreq_server_ids(events: Iterable[TraceEvent]) -> list[int]:
    """Ids this QEMU created (xen_ioreq_server_create), in order."""
    return [e["id"] for e in events if e.name == "xen_ioreq_server_create"]


def mapped_pci_devices(events: Iterable[TraceEvent]) -> list[str]:
    """BDFs registered with xen_map_pcidev minus those unmapped later, as "00:01.0"."""
    seen: dict[str, None] = {}
    for e in events:
        if e.name in ("xen_map_pcidev", "xen_unmap_pcidev"):
            bdf = f"{e['bus']:02x}:{e['dev']:02x}.{e['func']:x}"
            if e.name == "xen_map_pcidev":
                seen[bdf] = None
            else:
                seen.pop(bdf, None)
    return list(seen)


def platform_log_messages(events: Iterable[TraceEvent]) -> list[str]:
    """Text the guest wrote to the Xen platform device's log port (0x12)."""
    return [e["s"] for e in events if e.name == "xen_platform_log"]


def ioreqs_of_type(events: Iterable[TraceEvent], ioreq_type: int) -> list[TraceEvent]:
    """handle_ioreq* events of one ioreq type (e.g. IOREQ_TYPE_INVALIDATE)."""
    return [e for e in events if e.name.startswith("handle_ioreq") and e.args.get("type") == ioreq_type]
