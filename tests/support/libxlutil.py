"""xl's own config parser, for checking rendered configs against the real
thing: ``libxlutil.so.4.17`` (Debian package ``libxenmisc4.17``) through
ctypes.  It parses without a hypervisor, so it runs on any machine; when the
library is missing, ``LIBXLUTIL`` is None and the tests that need it skip.

Only the reading side is wrapped: ``xlu_cfg_readdata`` + ``xlu_cfg_get_*``
(the same calls ``xl create`` makes) and ``xlu_disk_parse`` (the disk spec
parser ``xl create`` uses for each ``disk=`` entry).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass

LIBRARY = "libxlutil.so.4.17"
LIGHT_LIBRARY = "libxenlight.so.4.17"
INSTALL_HINT = "apt-get install libxenmisc4.17 (xl's config parser library)"


class XlParseFailed(Exception):
    """The real parser rejected the text; ``report`` is what it printed."""

    def __init__(self, rc: int, report: str):
        self.rc, self.report = rc, report
        super().__init__(f"libxlutil rc={rc} ({errno.errorcode.get(rc, '?')}): {report.strip()}")


class _DiskHead(ctypes.Structure):
    # The leading fields of libxl_device_disk (libxl_types.idl, Xen 4.17),
    # followed by room for the rest of the struct.
    _fields_ = [("backend_domid", ctypes.c_uint32), ("backend_domname", ctypes.c_char_p),
                ("pdev_path", ctypes.c_char_p), ("vdev", ctypes.c_char_p),
                ("backend", ctypes.c_int), ("format", ctypes.c_int), ("script", ctypes.c_char_p),
                ("removable", ctypes.c_int), ("readwrite", ctypes.c_int), ("is_cdrom", ctypes.c_int),
                ("_rest", ctypes.c_char * 4096)]


# libxl_disk_format values (libxl_types.idl)
DISK_FORMATS = {0: "unknown", 1: "qcow", 2: "qcow2", 3: "vhd", 4: "raw", 5: "empty", 6: "qed"}


@dataclass(frozen=True)
class ParsedDisk:
    target: str
    vdev: str
    format: str
    readwrite: bool
    is_cdrom: bool


class LibXlUtil:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(LIBRARY)
        self.light = ctypes.CDLL(LIGHT_LIBRARY)
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"))
        c_void_p, c_char_p, c_int = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        self.libc.tmpfile.restype = c_void_p
        for name in ("fflush", "fileno", "fclose"):
            getattr(self.libc, name).argtypes = [c_void_p]
        lib = self.lib
        lib.xlu_cfg_init.restype = c_void_p
        lib.xlu_cfg_init.argtypes = [c_void_p, c_char_p]
        lib.xlu_cfg_readdata.argtypes = [c_void_p, c_char_p, c_int]
        lib.xlu_cfg_destroy.argtypes = [c_void_p]
        lib.xlu_cfg_get_string.argtypes = [c_void_p, c_char_p, ctypes.POINTER(c_char_p), c_int]
        lib.xlu_cfg_get_list.argtypes = [c_void_p, c_char_p, ctypes.POINTER(c_void_p),
                                         ctypes.POINTER(c_int), c_int]
        lib.xlu_cfg_get_listitem.restype = c_char_p
        lib.xlu_cfg_get_listitem.argtypes = [c_void_p, c_int]
        lib.xlu_disk_parse.argtypes = [c_void_p, c_int, ctypes.POINTER(c_char_p), c_void_p]
        self.light.libxl_device_disk_init.argtypes = [c_void_p]
        self.light.libxl_device_disk_dispose.argtypes = [c_void_p]

    def _report(self, stream) -> str:
        self.libc.fflush(stream)
        fd = self.libc.fileno(stream)
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 1 << 16).decode("utf-8", "replace")

    def read(self, text: str, keys: list[str]) -> dict[str, str | list[str] | None]:
        """Parse ``text`` as xl does, then fetch each key as xl would: a
        string (numbers come back as their text) or a list of strings.
        A key that is absent maps to None.  Raises XlParseFailed."""
        data = text.encode("utf-8")
        stream = self.libc.tmpfile()
        cfg = self.lib.xlu_cfg_init(stream, b"rendered.cfg")
        try:
            rc = self.lib.xlu_cfg_readdata(cfg, data, len(data))
            if rc:
                raise XlParseFailed(rc, self._report(stream))
            out: dict[str, str | list[str] | None] = {}
            for key in keys:
                value = ctypes.c_char_p()
                rc = self.lib.xlu_cfg_get_string(cfg, key.encode(), ctypes.byref(value), 1)
                if rc == 0:
                    out[key] = value.value.decode("utf-8")
                    continue
                if rc == errno.ESRCH:
                    out[key] = None
                    continue
                lst, count = ctypes.c_void_p(), ctypes.c_int()
                rc = self.lib.xlu_cfg_get_list(cfg, key.encode(), ctypes.byref(lst), ctypes.byref(count), 1)
                if rc:
                    raise XlParseFailed(rc, f"{key}: neither a string nor a list")
                items = [self.lib.xlu_cfg_get_listitem(lst, i) for i in range(count.value)]
                out[key] = [i.decode("utf-8") if i is not None else None for i in items]
            return out
        finally:
            self.lib.xlu_cfg_destroy(cfg)
            self.libc.fclose(stream)

    def parse_disk(self, spec: str) -> ParsedDisk:
        """One ``disk=`` entry through xl's disk spec parser."""
        stream = self.libc.tmpfile()
        cfg = self.lib.xlu_cfg_init(stream, b"rendered.cfg")
        disk = _DiskHead()
        self.light.libxl_device_disk_init(ctypes.byref(disk))
        try:
            specs = (ctypes.c_char_p * 1)(spec.encode("utf-8"))
            rc = self.lib.xlu_disk_parse(cfg, 1, specs, ctypes.byref(disk))
            if rc:
                raise XlParseFailed(rc, self._report(stream))
            return ParsedDisk(target=(disk.pdev_path or b"").decode("utf-8"),
                              vdev=(disk.vdev or b"").decode("utf-8"),
                              format=DISK_FORMATS.get(disk.format, str(disk.format)),
                              readwrite=bool(disk.readwrite), is_cdrom=bool(disk.is_cdrom))
        finally:
            self.light.libxl_device_disk_dispose(ctypes.byref(disk))
            self.lib.xlu_cfg_destroy(cfg)
            self.libc.fclose(stream)


def _load() -> LibXlUtil | None:
    try:
        return LibXlUtil()
    except OSError:
        return None


LIBXLUTIL: LibXlUtil | None = _load()
