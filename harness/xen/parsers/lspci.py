"""PCI device listings from inside a guest -> ``PciDevice`` records.

Accepted formats (one device a line, detected per line):

- ``lspci -n``   ``00:01.1 0101: 8086:7010 (rev 00)``  (``-D`` adds ``0000:``)
- ``lspci -nn``  ``00:01.1 IDE interface [0101]: Intel Corporation 82371SB PIIX3 IDE
                 [Natoma/Triton II] [8086:7010] (prog-if 80 [ISA Compatibility mode-only ...])``
- ``lspci -mn``  ``00:01.1 "0101" "8086" "7010" -p80 "1af4" "1100"``
  (``-mnn`` puts the numbers in brackets after the names)
- busybox        ``0000:00:01.1 Class 0101: 8086:7010`` and ``-m``:
                 ``0000:00:01.1 "Class 0101" "8086" "7010" "1af4" "1100"``
                 (busybox lspci.c prints ``" Class %04x: %04x:%04x"``)
- sysfs loop     ``/sys/bus/pci/devices/0000:00:01.1 0x8086 0x7010 0x010180``
  from ``for d in /sys/bus/pci/devices/*; do echo $d $(cat $d/vendor $d/device $d/class); done``
  (sysfs ``class`` is 24 bits: base, sub-class, prog-if).
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from xenhil.harness.xen.parsers.errors import UnexpectedOutput
from xenhil.harness.xen.parsers.rangesets import sbdf_to_str, str_to_sbdf


@dataclass(frozen=True)
class PciDevice:
    bdf: str                 # "00:01.1" (segment shown only when non-zero)
    vendor: int
    device: int
    class_code: int          # 16 bits: base class << 8 | sub-class, e.g. 0x0101
    prog_if: int | None = None
    revision: int | None = None

    @property
    def sbdf(self) -> int:
        return str_to_sbdf(self.bdf)

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"

    def __str__(self) -> str:
        return f"{self.bdf} {self.class_code:04x}: {self.ids}"


_ADDR = r"(?P<addr>(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])"
_N = re.compile(_ADDR + r" (?:Class )?(?P<cls>[0-9a-fA-F]{4}): (?P<ven>[0-9a-fA-F]{4}):(?P<dev>[0-9a-fA-F]{4})"
                r"(?: \(rev (?P<rev>[0-9a-fA-F]{2})\))?(?: \(prog-if (?P<pi>[0-9a-fA-F]{2})\))?")
_NN_CLASS = re.compile(_ADDR + r" .*? \[(?P<cls>[0-9a-fA-F]{4})\]: ")
_NN_IDS = re.compile(r"\[(?P<ven>[0-9a-fA-F]{4}):(?P<dev>[0-9a-fA-F]{4})\]")
_REV = re.compile(r"\(rev (?P<rev>[0-9a-fA-F]{2})\)")
_PROG_IF = re.compile(r"\(prog-if (?P<pi>[0-9a-fA-F]{2})")
_SYSFS = re.compile(r"^\S*/(?P<addr>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s+"
                    r"0x(?P<ven>[0-9a-fA-F]{4})\s+0x(?P<dev>[0-9a-fA-F]{4})\s+0x(?P<cls>[0-9a-fA-F]{6})\s*$")
_BRACKET_NUM = re.compile(r"\[([0-9a-fA-F]{4})\]\s*$")
_HEX4 = re.compile(r"^[0-9a-fA-F]{4}$")


def _norm_bdf(addr: str) -> str:
    return sbdf_to_str(str_to_sbdf(addr))


def _machine_field(field: str) -> int | None:
    """'-m' field: "8086", "Class 0600", or with -nn "Intel Corporation [8086]"."""
    field = field.strip()
    if field.startswith("Class "):
        field = field[len("Class "):]
    if _HEX4.match(field):
        return int(field, 16)
    m = _BRACKET_NUM.search(field)
    return int(m.group(1), 16) if m else None


def _parse_machine(line: str, line_no: int, source: str) -> PciDevice:
    try:
        tokens = shlex.split(line)
    except ValueError as exc:
        raise UnexpectedOutput(source, f"unbalanced quotes in lspci -m line ({exc})",
                               line_no=line_no, line=line) from None
    addr, rest = tokens[0], tokens[1:]
    options = [t for t in rest if t.startswith("-") and len(t) > 1]
    quoted = [t for t in rest if t not in options]
    if len(quoted) < 3:
        raise UnexpectedOutput(source, "lspci -m line needs class, vendor and device fields",
                               line_no=line_no, line=line)
    cls, ven, dev = (_machine_field(q) for q in quoted[:3])
    if cls is None or ven is None or dev is None:
        raise UnexpectedOutput(source, "lspci -m line without numeric ids: use `lspci -mn`",
                               line_no=line_no, line=line)
    rev = next((int(o[2:], 16) for o in options if o.startswith("-r")), None)
    prog_if = next((int(o[2:], 16) for o in options if o.startswith("-p")), None)
    return PciDevice(_norm_bdf(addr), ven, dev, cls, prog_if, rev)


def parse_pci_listing(text: str, source: str = "lspci") -> list[PciDevice]:
    """Parse any of the formats above (mixed formats are fine); blank lines and
    lspci's indented detail lines are skipped, anything else raises."""
    devices: list[PciDevice] = []
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line.strip() or line[0].isspace():
            continue
        m = _SYSFS.match(line)
        if m:
            cls24 = int(m.group("cls"), 16)
            devices.append(PciDevice(_norm_bdf(m.group("addr")), int(m.group("ven"), 16),
                                     int(m.group("dev"), 16), cls24 >> 8, cls24 & 0xFF))
            continue
        if not re.match(_ADDR + r" ", line):
            raise UnexpectedOutput(source, "line does not start with a PCI address (BB:DD.F)",
                                   line_no=no, line=raw)
        if '"' in line:
            devices.append(_parse_machine(line, no, source))
            continue
        m = _N.match(line)
        if m:
            devices.append(PciDevice(
                _norm_bdf(m.group("addr")), int(m.group("ven"), 16), int(m.group("dev"), 16),
                int(m.group("cls"), 16),
                int(m.group("pi"), 16) if m.group("pi") else None,
                int(m.group("rev"), 16) if m.group("rev") else None))
            continue
        m = _NN_CLASS.match(line)
        if m:
            head = line.split(" (prog-if", 1)[0]
            ids = _NN_IDS.findall(head)
            if ids:
                ven, dev = ids[-1]
                rev, pi = _REV.search(line), _PROG_IF.search(line)
                devices.append(PciDevice(
                    _norm_bdf(m.group("addr")), int(ven, 16), int(dev, 16), int(m.group("cls"), 16),
                    int(pi.group("pi"), 16) if pi else None,
                    int(rev.group("rev"), 16) if rev else None))
                continue
        raise UnexpectedOutput(source, "no numeric vendor:device ids: plain `lspci` names only; "
                                       "use `lspci -n`, `-nn` or `-mn`",
                               line_no=no, line=raw)
    return devices


def by_bdf(devices: list[PciDevice]) -> dict[str, PciDevice]:
    return {d.bdf: d for d in devices}
