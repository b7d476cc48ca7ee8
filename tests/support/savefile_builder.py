"""Builder of test input: xl save files laid out exactly as xl/libxl/libxc
write them (see harness/xen/savefile.py for the sources of each field).

This is not a fake of any part: it produces *input bytes* for the parser, the
way a recorded file would, with knobs to make the malformed variants a
broken xl could write.  The default shape follows a real Xen 4.17 HVM save
(docs/xen-ioreq-facts.md section 6): xl header, JSON config, "LibxlFmt" header,
LIBXC_CONTEXT (length 0) followed inline by a libxc stream (image header,
HVM domain header, CPUID/MSR policy, STATIC_DATA_END, TSC_INFO, PAGE_DATA,
HVM_CONTEXT, HVM_PARAMS, END), one EMULATOR_CONTEXT (qemu-upstream, index
0) holding a QEMU migration stream ("QEVM"...), END.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from xenhil.harness.xen import savefile as sf

PAGE = 4096


def pad8(body: bytes) -> bytes:
    return body + b"\0" * ((-len(body)) & 7)


def record(rtype: int, body: bytes = b"", order: str = "<", length: int | None = None) -> bytes:
    """``{type u32, length u32, body, zero padding to 8}``; *length* overrides
    the header's length field (to build inconsistent records)."""
    n = len(body) if length is None else length
    return struct.pack(order + "II", rtype, n) + pad8(body)


def emulator_record(rtype: int, emulator_id: int, index: int, payload: bytes, order: str = "<") -> bytes:
    return record(rtype, struct.pack(order + "II", emulator_id, index) + payload, order)


def qemu_device_state(size: int = 300) -> bytes:
    """The start of what QEMU's xen-save-devices-state writes: a QEMU
    migration stream (QEMU_VM_FILE_MAGIC "QEVM", version 3), then filler."""
    head = b"QEVM" + struct.pack(">I", 3)
    return head + bytes((i * 7) & 0xFF for i in range(max(size - len(head), 0)))


def libxc_stream(*, pages: int = 3, order: str = "<", xen: tuple[int, int] = (4, 17),
                 end: bool = True, extra_records: list[bytes] | None = None) -> bytes:
    """A libxc v3 HVM stream: image header (big-endian), domain header and
    records in *order*."""
    options = sf.LIBXC_OPT_BIG_ENDIAN if order == ">" else 0
    out = struct.pack(">QIIHHI", sf.LIBXC_MARKER, sf.LIBXC_ID, 3, options, 0, 0)
    out += struct.pack(order + "IHHII", 2, 12, 0, xen[0], xen[1])     # x86 HVM, 4 KiB pages
    # xen_cpuid_leaf_t entries are 24 bytes, xen_msr_entry_t 16 bytes.
    out += record(0x11, b"".join(struct.pack(order + "6I", leaf, 0, 1, 2, 3, 4) for leaf in (0, 1, 7)), order)
    out += record(0x12, struct.pack(order + "IIQ", 0xCE, 0, 0), order)
    out += record(0x10, b"", order)                                   # STATIC_DATA_END
    tsc_info = struct.pack(order + "IIQII", 0, 2_500_000, 123_456_789, 1, 0)
    out += record(0x08, tsc_info, order)
    if pages:
        pfns = b"".join(struct.pack(order + "Q", pfn) for pfn in range(pages))
        data = b"".join(bytes([pfn & 0xFF]) * PAGE for pfn in range(pages))
        out += record(0x01, struct.pack(order + "II", pages, 0) + pfns + data, order)
    out += record(0x08, tsc_info, order)
    out += record(0x09, b"HVM-CONTEXT-BLOB" * 13, order)             # 208 bytes, pad 0
    params = [(2, 0xFEFFF), (5, 1)]
    out += record(0x0A, struct.pack(order + "II", len(params), 0)
                  + b"".join(struct.pack(order + "QQ", i, v) for i, v in params), order)
    for extra in extra_records or []:
        out += extra
    if end:
        out += record(0x00, b"", order)
    return out


@dataclass
class SaveFileBuilder:
    """Knobs default to a well-formed single-model HVM save."""

    config: dict = field(default_factory=lambda: {
        "c_info": {"type": "hvm", "name": "xhguest"},
        "b_info": {"max_memkb": 262144, "type.hvm": {"tsc_mode": "native"}},
    })
    byteorder: str = "<"                 # of the xl header
    mandatory_flags: int = sf.XL_MANDATORY_FLAG_JSON | sf.XL_MANDATORY_FLAG_STREAMV2
    extra_optional_data: bytes = b""
    stream_order: str = "<"              # of the libxl/libxc records
    # (emulator_id, index) per device model, in write order
    emulators: list[tuple[int, int]] = field(default_factory=lambda: [(sf.EMULATOR_QEMU_UPSTREAM, 0)])
    xenstore: dict[tuple[int, int], dict[str, str]] = field(default_factory=dict)
    pages: int = 3
    emulator_blob_size: int = 300

    def xl_header(self) -> bytes:
        config = json.dumps(self.config, indent=4).encode() + b"\0"   # strlen + 1, as xl does
        optional = struct.pack(self.byteorder + "I", len(config)) + config + self.extra_optional_data
        head = struct.pack(self.byteorder + "4I", sf.XL_BYTEORDER_VALUE, self.mandatory_flags, 0, len(optional))
        return sf.XL_MAGIC + head + optional

    def libxl_header(self) -> bytes:
        options = sf.LIBXL_OPT_BIG_ENDIAN if self.stream_order == ">" else 0
        return struct.pack(">QII", sf.LIBXL_IDENT, sf.LIBXL_VERSION, options)

    def libxl_records(self) -> list[bytes]:
        """Records in libxl_stream_write.c order: LIBXC_CONTEXT + libxc
        stream, EMULATOR_XENSTORE_DATA (only if any), EMULATOR_CONTEXT per
        model, END."""
        o = self.stream_order
        out = [record(sf.LIBXL_REC_LIBXC_CONTEXT, b"", o) + libxc_stream(pages=self.pages, order=o)]
        for (emu_id, index), kv in self.xenstore.items():
            payload = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in kv.items())
            out.append(emulator_record(sf.LIBXL_REC_EMULATOR_XENSTORE_DATA, emu_id, index, payload, o))
        for emu_id, index in self.emulators:
            out.append(emulator_record(sf.LIBXL_REC_EMULATOR_CONTEXT, emu_id, index,
                                       qemu_device_state(self.emulator_blob_size), o))
        out.append(record(sf.LIBXL_REC_END, b"", o))
        return out

    def build(self) -> bytes:
        return self.xl_header() + self.libxl_header() + b"".join(self.libxl_records())
