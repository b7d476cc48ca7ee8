"""What the probe device does with a request: pure logic, no Xen calls.

The device
==========

*Register windows* (each port range, and the MMIO window behind BAR0), all
little-endian, any access size 1/2/4/8 at any offset inside the window:

====== ===================================================================
offset register
====== ===================================================================
0x0    ID, read-only: ``0x58484C50`` (the bytes "PLHX", i.e. "XHLP" read
       as a 32-bit number)
0x4    COUNTER, read-only: accesses served by this window so far, this
       one included (low 32 bits)
0x8..  SCRATCH, read/write: reads return what was last written (zero at
       start); one separate scratch area per window, so a value written
       through one window and read through another proves misrouting
====== ===================================================================

*PCI function* (when a BDF is given): a type-0 header.

- vendor:device ``5853:c0de`` by default (5853 is XenSource's vendor id,
  also used by Xen's platform device 5853:0001; device c0de is not used by
  any driver, so no guest driver binds it; override with ``--vendor`` /
  ``--device``), subsystem ``5853:5848``, revision 1, class ``ff00``
  ("unassigned class"), header type 0 (single function), no capabilities,
  interrupt pin 0 (no INTx: the firmware routes no IRQ to it).
- Command: memory-space enable, bus master and INTx-disable are writable;
  I/O-space enable stays 0 (there is no I/O BAR).  Status is 0.
- BAR0: 32-bit non-prefetchable memory BAR of the MMIO window's size; the
  standard sizing protocol (write 0xffffffff, read back ``~(size-1)`` with the
  type bits) works.  BAR1-5 and the expansion ROM read 0 (not implemented).
- Writable besides: cache line size, latency timer, interrupt line.
- The MMIO window is decoded at the BAR's address only while the command
  register's memory-enable bit is set (as on hardware: the firmware, e.g.
  hvmloader, sizes and places the BAR with decoding off); :meth:`mmio_window`
  tells the server which range to claim from Xen.
- Config offsets 0x100-0xfff read 0; beyond that all ones.

*Other requests*: IOREQ_TYPE_INVALIDATE (map-cache invalidation, sent to
every enabled server when the guest gives memory back) and TIMEOFFSET are
answered and counted (the ``ignore-invalidate`` fault answers an
invalidate without counting it, harness.probe_dm.faults).  Requests with ``data_is_ptr`` (string I/O: ``rep
ins/outs``, ``rep movs`` to MMIO) are answered without touching guest memory
and counted as ``unsupported``.  A request for an address in none of the
probe's windows is answered with all ones (reads) and counted as ``outside``:
Xen sent something the probe never claimed, i.e. a routing bug.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

from xenhil.harness.errors import ConfigError
from xenhil.harness.probe_dm.faults import ProbeFault, hold, ignores_invalidate
from xenhil.harness.probe_dm.xenlibs import (
    IOREQ_READ,
    IOREQ_TYPE_COPY,
    IOREQ_TYPE_INVALIDATE,
    IOREQ_TYPE_PCI_CONFIG,
    IOREQ_TYPE_PIO,
    IOREQ_TYPE_TIMEOFFSET,
    Ioreq,
)

ID_MAGIC = 0x58484C50            # "XHLP"
ID_OFFSET, COUNTER_OFFSET, SCRATCH_OFFSET = 0x0, 0x4, 0x8

DEFAULT_VENDOR = 0x5853
DEFAULT_DEVICE = 0xC0DE
SUBSYSTEM_VENDOR = 0x5853
SUBSYSTEM_ID = 0x5848             # "XH"
REVISION = 0x01
CLASS_CODE = 0xFF0000             # class ff, subclass 00, prog-if 00

# PCI config space registers
PCI_VENDOR_ID, PCI_DEVICE_ID, PCI_COMMAND, PCI_STATUS = 0x00, 0x02, 0x04, 0x06
PCI_REVISION_ID, PCI_CLASS_PROG = 0x08, 0x09
PCI_CACHE_LINE_SIZE, PCI_LATENCY_TIMER, PCI_HEADER_TYPE = 0x0C, 0x0D, 0x0E
PCI_BAR0 = 0x10
PCI_SUBSYSTEM_VENDOR_ID, PCI_SUBSYSTEM_ID = 0x2C, 0x2E
PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN = 0x3C, 0x3D
PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER, PCI_COMMAND_INTX_DISABLE = 0x2, 0x4, 0x400
CONFIG_SPACE_SIZE = 256
EXTENDED_CONFIG_SIZE = 4096

TYPE_NAMES = {IOREQ_TYPE_PIO: "pio", IOREQ_TYPE_COPY: "mmio", IOREQ_TYPE_PCI_CONFIG: "pci_config",
              IOREQ_TYPE_TIMEOFFSET: "timeoffset", IOREQ_TYPE_INVALIDATE: "invalidate"}


def ones(size: int) -> int:
    return (1 << (8 * size)) - 1 if size < 8 else (1 << 64) - 1


# --- addresses ------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Bdf:
    segment: int
    bus: int
    device: int
    function: int

    @classmethod
    def parse(cls, text: str, where: str = "--bdf") -> "Bdf":
        """'00:05.0' or '0000:00:05.0'."""
        try:
            parts = text.strip().split(":")
            segment = int(parts[0], 16) if len(parts) == 3 else 0
            bus_text, devfn = parts[-2], parts[-1]
            dev_text, fn_text = devfn.split(".")
            bdf = cls(segment, int(bus_text, 16), int(dev_text, 16), int(fn_text, 16))
        except (ValueError, IndexError):
            raise ConfigError(f"{where}: {text!r} is not a PCI address",
                              help="write BUS:DEVICE.FUNCTION in hex, e.g. 00:05.0") from None
        if not (bdf.segment <= 0xFFFF and bdf.bus <= 0xFF and bdf.device <= 0x1F
                and bdf.function <= 7):
            raise ConfigError(f"{where}: {text!r} is out of range",
                              help="bus 00-ff, device 00-1f, function 0-7")
        return bdf

    @property
    def sbdf(self) -> int:
        """Xen's PCI range number: (seg<<16)|(bus<<8)|(dev<<3)|fn."""
        return (self.segment << 16) | (self.bus << 8) | (self.device << 3) | self.function

    def __str__(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.device:02x}.{self.function}"


def parse_range(text: str, where: str) -> tuple[int, int]:
    """'0xc100-0xc10f' (inclusive) -> (start, end)."""
    try:
        start_text, end_text = text.split("-")
        start, end = int(start_text, 0), int(end_text, 0)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a range",
                          help="write START-END, inclusive, e.g. 0x6100-0x610f") from None
    if start < 0 or end < start:
        raise ConfigError(f"{where}: {text!r}: the end is below the start",
                          help="write START-END with START <= END")
    return start, end


def pci_config_address(addr: int) -> tuple[int, int]:
    """An IOREQ_TYPE_PCI_CONFIG addr -> (sbdf, register): SEGMENT 63..48,
    BUS 47..40, DEV 39..35, FN 34..32, register 31..0."""
    return (addr >> 32) & 0xFFFFFFFF, addr & 0xFFFFFFFF


# --- register windows ------------------------------------------------------------

@dataclass
class Window:
    """One register window: a port range or the MMIO window."""

    name: str                  # "port0", "bar0"
    kind: str                  # "port" or "memory"
    size: int
    start: int | None          # None: not decoded (BAR disabled)
    scratch: bytearray = field(init=False)
    reads: int = 0
    writes: int = 0

    def __post_init__(self) -> None:
        self.scratch = bytearray(max(0, self.size - SCRATCH_OFFSET))

    @property
    def end(self) -> int | None:
        return None if self.start is None else self.start + self.size - 1

    def contains(self, addr: int, size: int) -> bool:
        return self.start is not None and self.start <= addr and addr + size - 1 <= self.end

    def _image_byte(self, offset: int) -> int:
        if offset < COUNTER_OFFSET:
            return (ID_MAGIC >> (8 * (offset - ID_OFFSET))) & 0xFF
        if offset < SCRATCH_OFFSET:
            return ((self.reads + self.writes) >> (8 * (offset - COUNTER_OFFSET))) & 0xFF
        return self.scratch[offset - SCRATCH_OFFSET]

    def read(self, offset: int, size: int) -> int:
        self.reads += 1
        return sum(self._image_byte(offset + i) << (8 * i) for i in range(size))

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes += 1
        for i in range(size):
            where = offset + i
            if where >= SCRATCH_OFFSET:  # ID and COUNTER ignore writes
                self.scratch[where - SCRATCH_OFFSET] = (value >> (8 * i)) & 0xFF

    def describe(self) -> dict:
        return {"kind": self.kind, "size": self.size,
                "start": None if self.start is None else hex(self.start),
                "end": None if self.end is None else hex(self.end),
                "reads": self.reads, "writes": self.writes}


# --- PCI function --------------------------------------------------------------

class PciFunction:
    """A type-0 config space with per-byte write masks (as QEMU's wmask)."""

    def __init__(self, bdf: Bdf, bar_size: int, vendor: int = DEFAULT_VENDOR,
                 device: int = DEFAULT_DEVICE, initial_bar: int = 0):
        if bar_size < 16 or bar_size & (bar_size - 1) or bar_size > 1 << 31:
            raise ConfigError(f"MMIO window size {bar_size:#x} is not a valid 32-bit memory BAR size",
                              help="use a power of two between 16 bytes and 2 GiB (4 KiB is usual)")
        if initial_bar % bar_size or initial_bar + bar_size > 1 << 32:
            raise ConfigError(f"MMIO window start {initial_bar:#x} is not aligned to its size "
                              f"{bar_size:#x} below 4 GiB",
                              help="a BAR's address is a multiple of its size (e.g. 0xfe000000-0xfe000fff)")
        self.bdf = bdf
        self.bar_size = bar_size
        self.config = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)
        self.reads = self.writes = self.bar_size_probes = 0
        self._put(PCI_VENDOR_ID, 2, vendor)
        self._put(PCI_DEVICE_ID, 2, device)
        self._put(PCI_REVISION_ID, 1, REVISION)
        self._put(PCI_CLASS_PROG, 3, CLASS_CODE)
        self._put(PCI_HEADER_TYPE, 1, 0x00)
        self._put(PCI_SUBSYSTEM_VENDOR_ID, 2, SUBSYSTEM_VENDOR)
        self._put(PCI_SUBSYSTEM_ID, 2, SUBSYSTEM_ID)
        self._put(PCI_INTERRUPT_PIN, 1, 0)
        self._put(PCI_BAR0, 4, initial_bar)  # type bits 0: 32-bit, non-prefetchable memory
        self._mask(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE)
        self._mask(PCI_CACHE_LINE_SIZE, 1, 0xFF)
        self._mask(PCI_LATENCY_TIMER, 1, 0xFF)
        self._mask(PCI_INTERRUPT_LINE, 1, 0xFF)
        self._mask(PCI_BAR0, 4, self.bar_mask)

    @property
    def bar_mask(self) -> int:
        """The BAR's writable address bits; also what sizing reads back."""
        return ~(self.bar_size - 1) & 0xFFFFFFF0

    def _put(self, offset: int, size: int, value: int) -> None:
        self.config[offset:offset + size] = value.to_bytes(size, "little")

    def _mask(self, offset: int, size: int, value: int) -> None:
        self.wmask[offset:offset + size] = value.to_bytes(size, "little")

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def read(self, offset: int, size: int) -> int:
        self.reads += 1
        if offset >= EXTENDED_CONFIG_SIZE:
            return ones(size)
        value = 0
        for i in range(size):
            where = offset + i
            byte = self.config[where] if where < CONFIG_SPACE_SIZE else 0
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes += 1
        if offset == PCI_BAR0 and size == 4 and value & 0xFFFFFFFF == 0xFFFFFFFF:
            self.bar_size_probes += 1
        for i in range(size):
            where = offset + i
            if where >= CONFIG_SPACE_SIZE:
                continue
            mask = self.wmask[where]
            byte = (value >> (8 * i)) & 0xFF
            self.config[where] = (self.config[where] & ~mask & 0xFF) | (byte & mask)

    @property
    def command(self) -> int:
        return self.get(PCI_COMMAND, 2)

    @property
    def bar_address(self) -> int:
        return self.get(PCI_BAR0, 4) & 0xFFFFFFF0

    def mmio_window(self) -> int | None:
        """Where the MMIO window is decoded now (BAR address), or None: memory
        decoding off, BAR unset, or the BAR still holds the sizing pattern."""
        address = self.bar_address
        if not self.command & PCI_COMMAND_MEMORY or address in (0, self.bar_mask):
            return None
        return address

    def snapshot(self) -> dict:
        return {"config": self.config.hex()}

    def restore(self, snapshot: dict) -> None:
        """Put back the writable state (command, BAR, ...) of an earlier
        instance: after save/restore the guest still believes its BAR setup."""
        old = bytes.fromhex(snapshot["config"])
        if len(old) != CONFIG_SPACE_SIZE:
            raise ConfigError("restore state: config space is not 256 bytes",
                              help="give the counters file of an earlier probe of this guest")
        for i in range(CONFIG_SPACE_SIZE):
            mask = self.wmask[i]
            self.config[i] = (self.config[i] & ~mask & 0xFF) | (old[i] & mask)

    def describe(self) -> dict:
        return {"bdf": str(self.bdf), "sbdf": self.bdf.sbdf,
                "vendor": f"{self.get(PCI_VENDOR_ID, 2):04x}",
                "device": f"{self.get(PCI_DEVICE_ID, 2):04x}",
                "command": hex(self.command), "bar0": hex(self.get(PCI_BAR0, 4)),
                "reads": self.reads, "writes": self.writes,
                "bar_size_probes": self.bar_size_probes}


# --- the device -------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """A decoded ioreq_t (so the logic is testable without shared memory)."""

    type: int
    dir: int
    addr: int
    size: int
    data: int = 0
    count: int = 1
    data_is_ptr: bool = False
    df: bool = False

    @classmethod
    def from_ioreq(cls, req: Ioreq) -> "Request":
        return cls(type=req.type, dir=req.dir, addr=req.addr, size=req.size, data=req.data,
                   count=req.count, data_is_ptr=bool(req.data_is_ptr), df=bool(req.df))

    @property
    def is_read(self) -> bool:
        return self.dir == IOREQ_READ


class ProbeDevice:
    """Port windows, the PCI function with its BAR window, and the counters."""

    def __init__(self, ports: list[tuple[int, int]], mmio: tuple[int, int] | None,
                 bdf: Bdf | None, vendor: int = DEFAULT_VENDOR, device: int = DEFAULT_DEVICE,
                 log: TextIO | None = None, clock: Callable[[], float] = time.time,
                 fault: ProbeFault | None = None):
        self.fault = fault          # a planted fault (harness.probe_dm.faults), None: none
        self.port_windows = [Window(f"port{i}", "port", end - start + 1, start)
                             for i, (start, end) in enumerate(ports)]
        _check_disjoint(ports, "--ports")
        self.pci: PciFunction | None = None
        self.mmio_window: Window | None = None
        if mmio is not None:
            start, end = mmio
            size = end - start + 1
            if bdf is not None:
                self.pci = PciFunction(bdf, size, vendor, device, initial_bar=start)
                self.mmio_window = Window("bar0", "memory", size, self.pci.mmio_window())
            else:  # no PCI function: the range is claimed as given, always decoded
                self.mmio_window = Window("mmio0", "memory", size, start)
        elif bdf is not None:
            raise ConfigError("--bdf needs --mmio: the PCI function's BAR0 decodes the MMIO window",
                              help="add --mmio START-END (a power-of-two size, e.g. 4 KiB)")
        self.by_type: dict[str, int] = {}
        self.by_vcpu: dict[str, int] = {}
        self.total = self.outside = self.unsupported = 0
        self.log = log
        self.clock = clock

    @property
    def windows(self) -> list[Window]:
        return self.port_windows + ([self.mmio_window] if self.mmio_window else [])

    def mmio_range(self) -> tuple[int, int] | None:
        """The MMIO range the server must claim from Xen now."""
        w = self.mmio_window
        return None if w is None or w.start is None else (w.start, w.end)

    # -- dispatch -----------------------------------------------------------------
    def handle(self, req: Request, vcpu: int) -> int | None:
        """Serve one request; the value to put in ``data`` for a read, else None."""
        kind = TYPE_NAMES.get(req.type, "other")
        hold(self.fault)
        if kind == "invalidate" and ignores_invalidate(self.fault):
            return None     # answered (a vCPU waits for it), neither acted on nor counted
        self.total += 1
        self.by_type[kind] = self.by_type.get(kind, 0) + 1
        self.by_vcpu[str(vcpu)] = self.by_vcpu.get(str(vcpu), 0) + 1
        result = self._dispatch(req, kind)
        if self.log is not None:
            self._log(req, vcpu, kind, result)
        return result

    def handle_ioreq(self, slot: Ioreq, vcpu: int) -> None:
        """Serve the request in a shared-page slot in place (the caller owns
        the state handshake)."""
        value = self.handle(Request.from_ioreq(slot), vcpu)
        if value is not None:
            slot.data = value

    def _dispatch(self, req: Request, kind: str) -> int | None:
        if kind in ("invalidate", "timeoffset"):
            return None
        if req.data_is_ptr or req.count != 1:
            self.unsupported += 1
            return None
        size = req.size if req.size in (1, 2, 4, 8) else 0
        if not size:
            self.unsupported += 1
            return ones(8) if req.is_read else None
        if kind == "pci_config":
            return self._pci_config(req, size)
        if kind in ("pio", "mmio"):
            wanted = "port" if kind == "pio" else "memory"
            for window in self.windows:
                if window.kind == wanted and window.contains(req.addr, size):
                    offset = req.addr - window.start
                    if req.is_read:
                        return window.read(offset, size)
                    window.write(offset, size, req.data & ones(size))
                    return None
        self.outside += 1
        return ones(size) if req.is_read else None

    def _pci_config(self, req: Request, size: int) -> int | None:
        sbdf, register = pci_config_address(req.addr)
        if self.pci is None or sbdf != self.pci.bdf.sbdf:
            self.outside += 1
            return ones(size) if req.is_read else None
        if req.is_read:
            return self.pci.read(register, size)
        self.pci.write(register, size, req.data & ones(size))
        if self.mmio_window is not None:
            self.mmio_window.start = self.pci.mmio_window()
        return None

    def _log(self, req: Request, vcpu: int, kind: str, result: int | None) -> None:
        data = result if result is not None else req.data
        self.log.write(f"{self.clock():.6f} vcpu={vcpu} type={kind} "
                       f"dir={'read' if req.is_read else 'write'} addr={req.addr:#x} "
                       f"size={req.size} count={req.count} ptr={int(req.data_is_ptr)} "
                       f"data={data:#x}\n")

    # -- state ----------------------------------------------------------------------
    def counters(self) -> dict:
        return {"total": self.total, "by_type": dict(sorted(self.by_type.items())),
                "by_vcpu": dict(sorted(self.by_vcpu.items())),
                "windows": {w.name: w.describe() for w in self.windows},
                "pci": self.pci.describe() if self.pci else None,
                "outside": self.outside, "unsupported": self.unsupported}

    def snapshot(self) -> dict:
        """The guest-visible state, to carry across save/restore."""
        return {"scratch": {w.name: w.scratch.hex() for w in self.windows},
                "pci": self.pci.snapshot() if self.pci else None}

    def restore(self, snapshot: dict) -> None:
        for window in self.windows:
            old = snapshot.get("scratch", {}).get(window.name)
            if old is not None:
                data = bytes.fromhex(old)[:len(window.scratch)]
                window.scratch[:len(data)] = data
        if self.pci is not None and snapshot.get("pci"):
            self.pci.restore(snapshot["pci"])
            if self.mmio_window is not None:
                self.mmio_window.start = self.pci.mmio_window()


def _check_disjoint(ranges: list[tuple[int, int]], where: str) -> None:
    ordered = sorted(ranges)
    for (s1, e1), (s2, e2) in zip(ordered, ordered[1:]):
        if s2 <= e1:
            raise ConfigError(f"{where}: ranges {s1:#x}-{e1:#x} and {s2:#x}-{e2:#x} overlap",
                              help="give each range once; Xen refuses overlaps within one server (EEXIST)")
