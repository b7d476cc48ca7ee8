"""Output of the guest probe ``xhprobe`` (harness/probes/xhprobe.c): one JSON
object per line, keyed by ``op``.  Hex strings become ints here."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from xenhil.harness.errors import InfrastructureError
from xenhil.harness.xen.parsers.errors import UnexpectedOutput

SOURCE = "xhprobe output"


class ProbeFailed(InfrastructureError):
    """xhprobe reported an error line (bad arguments, no I/O privilege, ...):
    the probe could not measure, which says nothing about Xen."""

    help = ("The guest probe could not do its job: read its error; 'iopl'/'ioperm' errors mean "
            "it did not run as root in an HVM guest, 'usage' errors are a bug in the caller.")

    def __init__(self, cmd: str, error: str, errno: int | None, line_no: int):
        self.cmd, self.error, self.errno, self.line_no = cmd, error, errno, line_no
        super().__init__(f"{SOURCE}, line {line_no}: xhprobe {cmd}: {error} (errno {errno})")


@dataclass(frozen=True)
class PortRead:
    port: int
    width: int
    values: tuple[int, ...]
    dry_run: bool = False

    @property
    def value(self) -> int:
        return self.values[-1]


@dataclass(frozen=True)
class PortWrite:
    port: int
    width: int
    value: int
    dry_run: bool = False


@dataclass(frozen=True)
class TimeIn:
    port: int
    width: int
    n: int
    tsc_hz: float
    min_cycles: int
    p50_cycles: int
    p90_cycles: int
    p99_cycles: int
    max_cycles: int
    mean_cycles: float
    last_value: int
    tsc_hz_source: str = ""
    dry_run: bool = False
    samples: tuple[int, ...] = field(default=(), repr=False)   # with --raw
    interleaved: int = 1      # ports read in turn by the same time-in (this one included)

    def ns(self, cycles: float) -> float:
        if self.tsc_hz <= 0:
            raise UnexpectedOutput(SOURCE, f"time-in on port {self.port:#x} reported tsc_hz={self.tsc_hz}")
        return cycles * 1e9 / self.tsc_hz

    @property
    def p50_ns(self) -> float:
        return self.ns(self.p50_cycles)

    @property
    def p99_ns(self) -> float:
        return self.ns(self.p99_cycles)


@dataclass(frozen=True)
class PciConfigAccess:
    op: str                 # "pci-read" | "pci-write"
    bdf: str
    reg: int
    width: int
    value: int
    dry_run: bool = False


@dataclass(frozen=True)
class PciFunction:
    bdf: str
    vendor: int
    device: int
    class_code: int         # base << 8 | sub-class
    prog_if: int
    revision: int
    header_type: int


@dataclass(frozen=True)
class PciScan:
    devices: tuple[PciFunction, ...]
    dry_run: bool = False


@dataclass(frozen=True)
class MmioRead:
    addr: int
    width: int
    value: int
    dry_run: bool = False


ProbeResult = PortRead | PortWrite | TimeIn | PciConfigAccess | PciScan | MmioRead


def _hex(obj: dict, key: str, line_no: int, line: str) -> int:
    try:
        return int(obj[key], 16)
    except (KeyError, TypeError, ValueError):
        raise UnexpectedOutput(SOURCE, f"field {key!r} missing or not a hex string",
                               line_no=line_no, line=line) from None


def parse_probe_output(text: str) -> list[ProbeResult]:
    """Every result in *text*.  An ``error`` line raises ProbeFailed; lines
    that are not JSON objects (a shell prompt, console noise) raise too,
    since probe output is read from a command's own stdout."""
    results: list[ProbeResult] = []
    samples: list[int] = []
    pci: list[PciFunction] = []
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or "op" not in obj:
            raise UnexpectedOutput(SOURCE, "not a JSON object with an 'op' key", line_no=no, line=raw)
        op, dry = obj["op"], bool(obj.get("dry_run", False))
        try:
            if op == "error":
                raise ProbeFailed(str(obj.get("cmd")), str(obj.get("error")), obj.get("errno"), no)
            elif op == "in":
                results.append(PortRead(_hex(obj, "port", no, raw), int(obj["width"]),
                                        tuple(int(v, 16) for v in obj["values"]), dry))
            elif op == "out":
                results.append(PortWrite(_hex(obj, "port", no, raw), int(obj["width"]),
                                         _hex(obj, "value", no, raw), dry))
            elif op == "sample":
                samples.append(int(obj["cycles"]))
            elif op == "time-in":
                results.append(TimeIn(
                    _hex(obj, "port", no, raw), int(obj["width"]), int(obj["n"]), float(obj["tsc_hz"]),
                    int(obj["min_cycles"]), int(obj["p50_cycles"]), int(obj["p90_cycles"]),
                    int(obj["p99_cycles"]), int(obj["max_cycles"]), float(obj["mean_cycles"]),
                    _hex(obj, "last_value", no, raw), str(obj.get("tsc_hz_source", "")), dry,
                    tuple(samples), int(obj.get("interleaved", 1))))
                samples = []
            elif op in ("pci-read", "pci-write"):
                results.append(PciConfigAccess(op, str(obj["bdf"]), _hex(obj, "reg", no, raw),
                                               int(obj["width"]), _hex(obj, "value", no, raw), dry))
            elif op == "pci-dev":
                pci.append(PciFunction(str(obj["bdf"]), _hex(obj, "vendor", no, raw),
                                       _hex(obj, "device", no, raw), _hex(obj, "class", no, raw),
                                       _hex(obj, "prog_if", no, raw), _hex(obj, "revision", no, raw),
                                       _hex(obj, "header_type", no, raw)))
            elif op == "pci-scan":
                if int(obj["found"]) != len(pci):
                    raise UnexpectedOutput(SOURCE, f"pci-scan says found={obj['found']} but "
                                                   f"{len(pci)} pci-dev lines came before it (output cut?)",
                                           line_no=no, line=raw)
                results.append(PciScan(tuple(pci), dry))
                pci = []
            elif op == "mmio-read":
                results.append(MmioRead(_hex(obj, "addr", no, raw), int(obj["width"]),
                                        _hex(obj, "value", no, raw), dry))
            elif op == "version":
                continue
            else:
                raise UnexpectedOutput(SOURCE, f"unknown op {op!r}", line_no=no, line=raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedOutput(SOURCE, f"{op} line lacks or mangles a field ({exc!r})",
                                   line_no=no, line=raw) from None
    if samples or pci:
        raise UnexpectedOutput(SOURCE, "output ends inside a time-in or pci-scan (no summary line): "
                                       "the probe was cut short")
    return results


def parse_single(text: str, kind: type) -> ProbeResult:
    """The one result of one probe run, checked to be of *kind*."""
    results = parse_probe_output(text)
    if len(results) != 1 or not isinstance(results[0], kind):
        raise UnexpectedOutput(SOURCE, f"expected one {kind.__name__} result, got "
                                       f"{[type(r).__name__ for r in results]}")
    return results[0]
