"""Read an ``xl save`` file: xl header, config, libxl stream, libxc stream.

Layout, from the Xen sources (xen-project/xen):

1. tools/xl/xl.h ``struct save_file_header``: 32-byte magic
   ``"Xen saved domain, xl format\\n \\0 \\r"`` then four u32 in the saving
   host's byte order (byteorder = 0x01020304, mandatory_flags,
   optional_flags, optional_data_len).  mandatory flags: JSON config (bit 0),
   stream v2 (bit 1).
2. tools/xl/xl_saverestore.c ``save_domain_core_writeconfig()``: the
   optional data is a u32 config length (same byte order) and the config
   bytes (libxl JSON with a trailing NUL); unknown trailing optional data is
   skipped.
3. tools/libs/light/libxl_sr_stream_format.h and
   docs/specs/libxl-migration-stream.pandoc: header ``ident u64`` =
   "LibxlFmt", ``version u32`` = 2, ``options u32`` (bit 0 big-endian,
   bit 1 legacy), all big-endian; then records ``{type u32, length u32,
   body, zero padding to 8}`` in the stream's byte order.  Types: END 0,
   LIBXC_CONTEXT 1, EMULATOR_XENSTORE_DATA 2, EMULATOR_CONTEXT 3,
   CHECKPOINT_END 4, CHECKPOINT_STATE 5.  Emulator records start with
   ``{emulator_id u32, index u32}`` (0 unknown, 1 qemu-traditional,
   2 qemu-upstream).  libxl_stream_write.c writes: header, LIBXC_CONTEXT,
   [EMULATOR_XENSTORE_DATA], EMULATOR_CONTEXT (HVM), END.
4. LIBXC_CONTEXT has length 0 and is followed inline by the whole libxc
   stream (tools/libs/guest/xg_sr_stream_format.h,
   docs/specs/libxc-migration-stream.pandoc): image header (marker
   0xFFFFFFFFFFFFFFFF, id "XENF", version u32, options u16, reserved;
   big-endian), domain header (type u32, page_shift u16, reserved u16,
   xen_major u32, xen_minor u32), records like libxl's up to an END record.
   It is walked, not decoded: only record headers are read and bodies are
   skipped with seek, so a multi-GiB save costs little memory.

Failure classes (documented choice): a file that does not start with the xl
magic is not a save file at all -> ``NotASaveFile`` (ConfigError, bad input:
wrong path).  A file with the magic whose structure is broken was written by
xl -> ``CorruptSaveFile`` (ProductError).  Both name the offset and what was
expected there.
"""
from __future__ import annotations

import gzip
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from xenhil.harness.errors import ConfigError, ProductError

XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"
assert len(XL_MAGIC) == 32
XL_BYTEORDER_VALUE = 0x01020304
XL_MANDATORY_FLAG_JSON = 1 << 0
XL_MANDATORY_FLAG_STREAMV2 = 1 << 1
XL_MANDATORY_FLAGS_KNOWN = XL_MANDATORY_FLAG_JSON | XL_MANDATORY_FLAG_STREAMV2

LIBXL_IDENT = 0x4C6962786C466D74      # "LibxlFmt"
LIBXL_VERSION = 2
LIBXL_OPT_BIG_ENDIAN = 1 << 0
LIBXL_OPT_LEGACY = 1 << 1

LIBXL_REC_END = 0
LIBXL_REC_LIBXC_CONTEXT = 1
LIBXL_REC_EMULATOR_XENSTORE_DATA = 2
LIBXL_REC_EMULATOR_CONTEXT = 3
LIBXL_REC_CHECKPOINT_END = 4
LIBXL_REC_CHECKPOINT_STATE = 5
LIBXL_RECORD_TYPES = {0: "END", 1: "LIBXC_CONTEXT", 2: "EMULATOR_XENSTORE_DATA",
                      3: "EMULATOR_CONTEXT", 4: "CHECKPOINT_END", 5: "CHECKPOINT_STATE"}
EMULATOR_RECORD_TYPES = (LIBXL_REC_EMULATOR_XENSTORE_DATA, LIBXL_REC_EMULATOR_CONTEXT)
EMULATORS = {0: "unknown", 1: "qemu-traditional", 2: "qemu-upstream"}
EMULATOR_QEMU_UPSTREAM = 2

LIBXC_MARKER = 0xFFFFFFFFFFFFFFFF
LIBXC_ID = 0x58454E46                  # "XENF"
LIBXC_OPT_BIG_ENDIAN = 1 << 0
LIBXC_REC_END = 0
LIBXC_REC_CHECKPOINT = 0x0E
LIBXC_REC_LENGTH_MAX = 128 << 20       # xg_sr_stream_format.h REC_LENGTH_MAX
LIBXC_RECORD_TYPES = {
    0x00: "END", 0x01: "PAGE_DATA", 0x02: "X86_PV_INFO", 0x03: "X86_PV_P2M_FRAMES",
    0x04: "X86_PV_VCPU_BASIC", 0x05: "X86_PV_VCPU_EXTENDED", 0x06: "X86_PV_VCPU_XSAVE",
    0x07: "SHARED_INFO", 0x08: "X86_TSC_INFO", 0x09: "HVM_CONTEXT", 0x0A: "HVM_PARAMS",
    0x0B: "TOOLSTACK", 0x0C: "X86_PV_VCPU_MSRS", 0x0D: "VERIFY", 0x0E: "CHECKPOINT",
    0x0F: "CHECKPOINT_DIRTY_PFN_LIST", 0x10: "STATIC_DATA_END", 0x11: "X86_CPUID_POLICY",
    0x12: "X86_MSR_POLICY",
}
LIBXC_DOMAIN_TYPES = {1: "x86 PV", 2: "x86 HVM", 3: "x86 PVH", 4: "ARM"}
QEMU_VM_FILE_MAGIC = b"QEVM"           # start of QEMU's migration stream

# Bounds, so that a hostile length field or record count is refused in
# bounded memory and time (bodies are skipped with seek, never read).
READ_MAX = 16 << 20                    # a part read whole: the JSON config, xenstore data
LIBXL_RECORDS_MAX = 10_000             # libxl writes about five records
LIBXC_RECORDS_MAX = 1_000_000          # PAGE_DATA batches of <= 1024 pages: 4 TiB of guest RAM


# --- errors ----------------------------------------------------------------

class SaveFileError:
    """Mixin: where in which file parsing stopped, and what was expected."""

    path: str
    offset: int
    expected: str
    found: str
    #: What was read before the failure, once past the libxl stream header
    #: (records and libxc streams so far): a cut copy, like the recorded
    #: head of a real save, still shows its header, config and first records.
    partial: "SaveFile | None" = None

    def _init_where(self, path: str, offset: int, expected: str, found: str) -> str:
        self.path, self.offset, self.expected, self.found = path, offset, expected, found
        return f"{path}: at offset {offset} ({offset:#x}): expected {expected}, found {found}"


class NotASaveFile(SaveFileError, ConfigError):
    help = "Pass a file written by `xl save` (optionally gzip-compressed, ending in .gz)."

    def __init__(self, path: str, offset: int, expected: str, found: str):
        super().__init__(self._init_where(path, offset, expected, found))


class CorruptSaveFile(SaveFileError, ProductError):
    help = ("The file starts like an xl save file but its structure is broken: xl/libxl/libxc "
            "wrote a malformed stream (or the file was cut short: check the disk was not full "
            "and `xl save` exited 0). Keep the file as evidence.")

    def __init__(self, path: str, offset: int, expected: str, found: str):
        super().__init__(self._init_where(path, offset, expected, found))


# --- result ----------------------------------------------------------------

@dataclass(frozen=True)
class SaveRecord:
    offset: int                 # of the record header in the (uncompressed) file
    layer: str                  # "libxl" or "libxc"
    type: int
    type_name: str
    length: int                 # body length, without padding
    emulator_id: int | None = None
    emulator_index: int | None = None
    blob_magic: str | None = None   # EMULATOR_CONTEXT: "QEVM" for a QEMU migration stream

    @property
    def emulator_name(self) -> str | None:
        return None if self.emulator_id is None else EMULATORS.get(self.emulator_id, f"#{self.emulator_id}")

    def to_dict(self) -> dict:
        d = {"offset": self.offset, "layer": self.layer, "type": self.type, "type_name": self.type_name,
             "length": self.length}
        if self.emulator_id is not None:
            d.update(emulator_id=self.emulator_id, emulator=self.emulator_name,
                     emulator_index=self.emulator_index, blob_magic=self.blob_magic)
        return d


@dataclass
class LibxcStream:
    offset: int
    version: int
    options: int
    big_endian: bool
    domain_type: int
    page_shift: int
    xen_major: int
    xen_minor: int
    records: list[SaveRecord] = field(default_factory=list)
    end_offset: int = 0         # first byte after the libxc END record

    @property
    def domain_type_name(self) -> str:
        return LIBXC_DOMAIN_TYPES.get(self.domain_type, f"#{self.domain_type}")

    def record_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.type_name] = counts.get(r.type_name, 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {"offset": self.offset, "version": self.version, "options": self.options,
                "big_endian": self.big_endian, "domain_type": self.domain_type_name,
                "page_shift": self.page_shift, "xen_version": f"{self.xen_major}.{self.xen_minor}",
                "records": len(self.records), "record_counts": self.record_counts(),
                "end_offset": self.end_offset}


@dataclass
class SaveFile:
    path: str
    size: int
    byteorder: str                      # "little" | "big" (of the xl header)
    mandatory_flags: int
    optional_flags: int
    optional_data_len: int
    config_bytes: bytes | None
    libxl_offset: int
    libxl_version: int
    libxl_options: int
    records: list[SaveRecord]           # libxl records, in order
    libxc: list[LibxcStream]            # one per LIBXC_CONTEXT record
    xenstore_data: dict[tuple[int, int], dict[str, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def config_text(self) -> str | None:
        if self.config_bytes is None:
            return None
        return self.config_bytes.rstrip(b"\0").decode("utf-8", errors="replace")

    def config_json(self) -> dict:
        """The domain config as libxl JSON (mandatory flag JSON set)."""
        text = self.config_text
        if text is None or not (self.mandatory_flags & XL_MANDATORY_FLAG_JSON):
            raise CorruptSaveFile(self.path, 48, "a JSON domain config (mandatory flag 0x1)",
                                  "no JSON config in this save file")
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorruptSaveFile(self.path, 52 + exc.pos, "valid JSON in the config", exc.msg) from None

    def emulator_pairs(self, record_type: int = LIBXL_REC_EMULATOR_CONTEXT) -> list[tuple[int, int]]:
        """(emulator_id, index) of every EMULATOR_CONTEXT record, in stream order.
        A multi-model save must hold one pair per device model, indices distinct."""
        return [(r.emulator_id, r.emulator_index) for r in self.records
                if r.type == record_type and r.emulator_id is not None]

    def to_dict(self) -> dict:
        return {
            "path": self.path, "size": self.size,
            "xl_header": {"byteorder": self.byteorder, "mandatory_flags": self.mandatory_flags,
                          "optional_flags": self.optional_flags,
                          "optional_data_len": self.optional_data_len},
            "config_length": None if self.config_bytes is None else len(self.config_bytes),
            "libxl": {"offset": self.libxl_offset, "version": self.libxl_version,
                      "options": self.libxl_options},
            "records": [r.to_dict() for r in self.records],
            "libxc": [s.to_dict() for s in self.libxc],
            "emulator_pairs": [list(p) for p in self.emulator_pairs()],
            "xenstore_data": [{"emulator_id": k[0], "index": k[1], "keys": v}
                              for k, v in self.xenstore_data.items()],
            "warnings": self.warnings,
        }


# --- reader ----------------------------------------------------------------

class _Reader:
    def __init__(self, f: BinaryIO, path: str):
        self.f, self.path, self.pos = f, path, 0

    def _broken(self, expected: str, exc: Exception) -> CorruptSaveFile:
        # gzip.BadGzipFile / EOFError / zlib.error from a damaged .gz copy
        return CorruptSaveFile(self.path, self.pos, expected, f"unreadable compressed data ({exc})")

    def read(self, n: int, expected: str) -> bytes:
        if n > READ_MAX:   # read(n) would allocate n bytes before finding the file shorter
            raise CorruptSaveFile(self.path, self.pos, f"{expected} of at most {READ_MAX >> 20} MiB",
                                  f"a length of {n} bytes")
        try:
            data = self.f.read(n)
        except (EOFError, OSError, zlib.error) as exc:
            raise self._broken(expected, exc) from None
        if len(data) != n:
            raise CorruptSaveFile(self.path, self.pos, f"{expected} ({n} bytes)",
                                  f"end of file after {len(data)} bytes (file truncated?)")
        self.pos += n
        return data

    def skip(self, n: int, expected: str) -> None:
        if n <= 0:
            return
        target = self.pos + n
        # Seek past bodies; a short file is found by reading the last byte.
        try:
            self.f.seek(target - 1)
            got = self.f.read(1)
        except (EOFError, OSError, zlib.error) as exc:
            raise self._broken(expected, exc) from None
        if len(got) != 1:
            # GzipFile cannot seek from the end, but a forward seek past the
            # end leaves it at the end of the data.
            size = self.f.tell() if isinstance(self.f, gzip.GzipFile) else self.f.seek(0, io.SEEK_END)
            raise CorruptSaveFile(self.path, self.pos, f"{expected} ({n} bytes)",
                                  f"end of file after {max(size - self.pos, 0)} bytes (file truncated?)")
        self.pos = target

    def at_eof(self) -> bool:
        try:
            return self.f.read(1) == b""
        except (EOFError, OSError, zlib.error) as exc:
            raise self._broken("end of file", exc) from None


def _pad(length: int) -> int:
    return (-length) & 7


def _open(path: Path) -> BinaryIO:
    from xenhil.harness.safeio import open_regular
    f = open_regular(path, "save file", fix="pass the path `xl save DOMAIN PATH` wrote")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    f.seek(0)
    return f


def parse_savefile(path: str | Path) -> SaveFile:
    """Parse the save file at *path* (plain or gzip)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"save file {p} does not exist or is not a file",
                          help="pass the path `xl save DOMAIN PATH` wrote")
    f = _open(p)
    try:
        return _parse(f, str(p))
    finally:
        f.close()
        inner = getattr(f, "fileobj", None)
        if inner is not None:
            inner.close()


def parse_savefile_bytes(data: bytes, name: str = "<bytes>") -> SaveFile:
    return _parse(io.BytesIO(data), name)


def _parse(f: BinaryIO, path: str) -> SaveFile:
    r = _Reader(f, path)
    try:
        magic = f.read(32)
    except (EOFError, OSError, zlib.error) as exc:
        raise NotASaveFile(path, 0, "the xl save magic (in a plain or gzip file)",
                           f"unreadable gzip data ({exc})") from None
    if magic != XL_MAGIC:
        raise NotASaveFile(path, 0, f"the xl save magic {XL_MAGIC!r}", repr(magic[:40]))
    r.pos = 32
    raw = r.read(16, "the xl save header (byteorder, mandatory_flags, optional_flags, optional_data_len)")
    if struct.unpack("<I", raw[:4])[0] == XL_BYTEORDER_VALUE:
        order, bo = "little", "<"
    elif struct.unpack(">I", raw[:4])[0] == XL_BYTEORDER_VALUE:
        order, bo = "big", ">"
    else:
        raise CorruptSaveFile(path, 32, "byteorder 0x01020304 in either byte order", raw[:4].hex())
    _, mandatory, optional, optlen = struct.unpack(bo + "4I", raw)
    unknown = mandatory & ~XL_MANDATORY_FLAGS_KNOWN
    if unknown:
        raise CorruptSaveFile(path, 36, f"mandatory flags within {XL_MANDATORY_FLAGS_KNOWN:#x}",
                              f"{mandatory:#x} (unknown bits {unknown:#x}: a newer xl?)")
    if not mandatory & XL_MANDATORY_FLAG_STREAMV2:
        raise CorruptSaveFile(path, 36, "mandatory flag STREAMv2 (0x2): only migration-v2 streams are read",
                              f"{mandatory:#x} (a legacy pre-4.6 stream)")
    config: bytes | None = None
    opt_start = r.pos
    if optlen:
        if optlen < 4:
            raise CorruptSaveFile(path, opt_start, "optional data of at least 4 bytes (config length)",
                                  f"optional_data_len {optlen}")
        (config_len,) = struct.unpack(bo + "I", r.read(4, "the config length"))
        if config_len > optlen - 4:
            raise CorruptSaveFile(path, opt_start, f"a config length <= optional_data_len - 4 = {optlen - 4}",
                                  f"{config_len}")
        config = r.read(config_len, "the domain config") if config_len else None
        r.skip(opt_start + optlen - r.pos, "the rest of the optional data")
    warnings: list[str] = []

    libxl_offset = r.pos
    ident, version, options = struct.unpack(">QII", r.read(16, "the libxl stream header"))
    if ident != LIBXL_IDENT:
        raise CorruptSaveFile(path, libxl_offset, "the libxl stream ident 'LibxlFmt'",
                              repr(struct.pack(">Q", ident)))
    if version != LIBXL_VERSION:
        raise CorruptSaveFile(path, libxl_offset + 8, f"libxl stream version {LIBXL_VERSION}", str(version))
    lo = ">" if options & LIBXL_OPT_BIG_ENDIAN else "<"

    records: list[SaveRecord] = []
    libxc: list[LibxcStream] = []
    xs_data: dict[tuple[int, int], dict[str, str]] = {}
    try:
        _walk_libxl(r, path, lo, records, libxc, xs_data, warnings)
    except CorruptSaveFile as exc:
        exc.partial = SaveFile(path, r.pos, order, mandatory, optional, optlen, config, libxl_offset,
                               version, options, records, libxc, xs_data, warnings)
        raise
    return SaveFile(path, r.pos, order, mandatory, optional, optlen, config, libxl_offset, version, options,
                    records, libxc, xs_data, warnings)


def _walk_libxl(r: _Reader, path: str, lo: str, records: list[SaveRecord], libxc: list[LibxcStream],
                xs_data: dict[tuple[int, int], dict[str, str]], warnings: list[str]) -> None:
    """The libxl records up to END and the end of the file, into the lists given."""
    while True:
        offset = r.pos
        rtype, length = struct.unpack(lo + "II", r.read(8, "a libxl record header (an END record "
                                                           "ends the stream)"))
        name = LIBXL_RECORD_TYPES.get(rtype)
        if name is None:
            raise CorruptSaveFile(path, offset, "a libxl record type 0-5", f"type {rtype:#x}")
        if len(records) >= LIBXL_RECORDS_MAX:
            raise CorruptSaveFile(path, offset, f"an END record within {LIBXL_RECORDS_MAX} libxl "
                                                "records", f"record {len(records) + 1}")
        emu_id = emu_index = magic_seen = None
        if rtype in EMULATOR_RECORD_TYPES:
            if length < 8:
                raise CorruptSaveFile(path, offset + 4, f"an {name} record of at least 8 bytes "
                                                        "(emulator_id, index)", f"length {length}")
            emu_id, emu_index = struct.unpack(lo + "II", r.read(8, f"the {name} emulator header"))
            rest = length - 8
            if rtype == LIBXL_REC_EMULATOR_XENSTORE_DATA:
                xs_data[(emu_id, emu_index)] = _xenstore_pairs(r.read(rest, "the xenstore data"), path,
                                                               offset + 16)
            else:
                head = r.read(min(rest, 4), "the emulator context") if rest else b""
                magic_seen = head.decode("latin-1") if head == QEMU_VM_FILE_MAGIC else head.hex() or None
                r.skip(rest - len(head), "the emulator context")
        else:
            if rtype in (LIBXL_REC_END, LIBXL_REC_LIBXC_CONTEXT, LIBXL_REC_CHECKPOINT_END) and length:
                raise CorruptSaveFile(path, offset + 4, f"length 0 for a {name} record", f"length {length}")
            r.skip(length, f"the {name} body")
        padding = r.read(_pad(length), "record padding to 8 bytes")
        if padding.strip(b"\0"):
            warnings.append(f"non-zero padding after the {name} record at offset {offset}")
        records.append(SaveRecord(offset, "libxl", rtype, name, length, emu_id, emu_index, magic_seen))
        if rtype == LIBXL_REC_LIBXC_CONTEXT:
            _walk_libxc(r, path, libxc)
        elif rtype == LIBXL_REC_END:
            break
    if not r.at_eof():
        raise CorruptSaveFile(path, r.pos, "end of file after the libxl END record", "more data")


def _xenstore_pairs(body: bytes, path: str, offset: int) -> dict[str, str]:
    # Packed NUL-terminated (key, value) pairs (libxl-migration-stream.pandoc).
    parts = body.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) % 2:
        raise CorruptSaveFile(path, offset, "NUL-terminated (key, value) pairs in EMULATOR_XENSTORE_DATA",
                              f"{len(parts)} strings (odd)")
    return {parts[i].decode("latin-1"): parts[i + 1].decode("latin-1") for i in range(0, len(parts), 2)}


def _walk_libxc(r: _Reader, path: str, streams: list[LibxcStream]) -> LibxcStream:
    """One libxc stream, appended to ``streams`` once its headers are read
    (so a failure inside it leaves the records read so far there)."""
    start = r.pos
    marker, ident, version, options, _, _ = struct.unpack(">QIIHHI", r.read(24, "the libxc image header "
                                                                                 "(after LIBXC_CONTEXT)"))
    if marker != LIBXC_MARKER:
        raise CorruptSaveFile(path, start, "the libxc image marker 0xffffffffffffffff", f"{marker:#x}")
    if ident != LIBXC_ID:
        raise CorruptSaveFile(path, start + 8, "the libxc image id 'XENF' (0x58454e46)", f"{ident:#x}")
    if version not in (2, 3):
        raise CorruptSaveFile(path, start + 12, "libxc stream version 2 or 3", str(version))
    xo = ">" if options & LIBXC_OPT_BIG_ENDIAN else "<"
    dtype, page_shift, _, major, minor = struct.unpack(xo + "IHHII", r.read(16, "the libxc domain header"))
    if dtype not in LIBXC_DOMAIN_TYPES:
        raise CorruptSaveFile(path, start + 24, "a libxc domain type 1-4", str(dtype))
    stream = LibxcStream(start, version, options, bool(options & LIBXC_OPT_BIG_ENDIAN), dtype, page_shift,
                         major, minor)
    streams.append(stream)
    while True:
        offset = r.pos
        rtype, length = struct.unpack(xo + "II", r.read(8, "a libxc record header (the libxc stream ends "
                                                           "with its END record)"))
        base = rtype & ~0x80000000
        name = LIBXC_RECORD_TYPES.get(base)
        if name is None:
            if not rtype & 0x80000000:
                raise CorruptSaveFile(path, offset, "a known libxc record type (0x0-0x12, or optional "
                                                    "with bit 31)", f"type {rtype:#x}")
            name = f"OPTIONAL_{rtype:#x}"
        if len(stream.records) >= LIBXC_RECORDS_MAX:
            raise CorruptSaveFile(path, offset, f"an END record within {LIBXC_RECORDS_MAX} libxc "
                                                "records", f"record {len(stream.records) + 1}")
        if length > LIBXC_REC_LENGTH_MAX:
            raise CorruptSaveFile(path, offset + 4, f"a libxc record length <= {LIBXC_REC_LENGTH_MAX}",
                                  f"{length} in a {name} record")
        if base == LIBXC_REC_CHECKPOINT:
            raise CorruptSaveFile(path, offset, "a plain save (xl save), not a checkpointed stream",
                                  "a libxc CHECKPOINT record (Remus/COLO streams are not read)")
        r.skip(length + _pad(length), f"the libxc {name} body")
        stream.records.append(SaveRecord(offset, "libxc", rtype, name, length))
        if rtype == LIBXC_REC_END:
            if length:
                raise CorruptSaveFile(path, offset + 4, "length 0 for the libxc END record", str(length))
            stream.end_offset = r.pos
            return stream


def format_savefile(sf: SaveFile, *, libxc_records: bool = False) -> str:
    """Human-readable listing (``xenhil savefile inspect``)."""
    flags = [n for bit, n in ((XL_MANDATORY_FLAG_JSON, "JSON config"), (XL_MANDATORY_FLAG_STREAMV2, "stream v2"))
             if sf.mandatory_flags & bit]
    lines = [f"{sf.path}: xl save file, {sf.size} bytes, {sf.byteorder}-endian header",
             f"  mandatory flags {sf.mandatory_flags:#x} ({', '.join(flags) or 'none'}), "
             f"optional flags {sf.optional_flags:#x}, optional data {sf.optional_data_len} bytes",
             f"  config: {len(sf.config_bytes) if sf.config_bytes is not None else 0} bytes",
             f"  libxl stream v{sf.libxl_version} at offset {sf.libxl_offset:#x}, options {sf.libxl_options:#x}",
             f"  {'offset':>12}  {'type':<24} {'length':>12}  emulator"]
    libxc = iter(sf.libxc)
    for rec in sf.records:
        emu = ""
        if rec.emulator_id is not None:
            emu = f"{rec.emulator_name} index {rec.emulator_index}"
            if rec.blob_magic:
                emu += f" (blob starts {rec.blob_magic})"
        lines.append(f"  {rec.offset:>#12x}  {rec.type_name:<24} {rec.length:>12}  {emu}".rstrip())
        if rec.type == LIBXL_REC_LIBXC_CONTEXT:
            s = next(libxc)
            counts = ", ".join(f"{k} {v}" for k, v in s.record_counts().items())
            lines.append(f"  {'':>12}    libxc v{s.version}: {s.domain_type_name}, Xen {s.xen_major}.{s.xen_minor}, "
                         f"page_shift {s.page_shift}, {len(s.records)} records ({counts}), "
                         f"ends at {s.end_offset:#x}")
            if libxc_records:
                for x in s.records:
                    lines.append(f"  {x.offset:>#12x}    {x.type_name:<22} {x.length:>12}")
    pairs = ", ".join(f"({EMULATORS.get(i, i)}, {n})" for i, n in sf.emulator_pairs())
    lines.append(f"  emulator pairs (EMULATOR_CONTEXT): {pairs or 'none'}")
    for key, kv in sf.xenstore_data.items():
        lines.append(f"  xenstore data for {EMULATORS.get(key[0], key[0])} index {key[1]}: {len(kv)} keys")
    for w in sf.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
