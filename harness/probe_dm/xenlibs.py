"""ctypes bindings to Xen's own dom0 libraries, and the ioreq ABI.

No compiled extension: the probe runs on any dom0 that has Xen's stable
libraries (Debian: libxendevicemodel1, libxenforeignmemory1, libxenevtchn1,
all pulled in by xen-utils-4.17).  Signatures follow Xen's public headers
(tools/include/xendevicemodel.h, xenforeignmemory.h, xenevtchn.h, Xen 4.17):

- ``domid_t`` and ``ioservid_t`` are uint16, ``evtchn_port_t`` uint32,
  ``xen_pfn_t`` unsigned long.
- Every call returns -1 (or NULL) and sets errno on failure; the libraries
  are loaded with ``use_errno=True`` so :func:`ctypes.get_errno` sees it.

The ioreq ABI (xen/include/public/hvm/ioreq.h)::

    struct ioreq {                      offset
        uint64_t addr;                   0  physical address / port / SBDF<<32|reg
        uint64_t data;                   8  data (or guest paddr of data)
        uint32_t count;                 16  rep count
        uint32_t size;                  20  access size in bytes
        uint32_t vp_eport;              24  event channel of this vCPU (Xen side)
        uint16_t _pad0;                 28
        uint8_t state:4;                30  bits 0-3
        uint8_t data_is_ptr:1;          30  bit 4
        uint8_t dir:1;                  30  bit 5  (1 = read)
        uint8_t df:1;                   30  bit 6
        uint8_t _pad1:1;                30  bit 7
        uint8_t type;                   31
    };                                  32 bytes; slot i of the shared page is vCPU i

(The task brief listed the bit-fields without ``state:4``; the header has it,
and the state nibble is the whole handshake.)
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import os
from typing import Callable

from xenhil.harness.errors import ConfigError, InfrastructureError, TestBugError

# --- the ABI ---------------------------------------------------------------

IOREQ_READ = 1
IOREQ_WRITE = 0

STATE_IOREQ_NONE = 0
STATE_IOREQ_READY = 1
STATE_IOREQ_INPROCESS = 2
STATE_IORESP_READY = 3

IOREQ_TYPE_PIO = 0
IOREQ_TYPE_COPY = 1          # MMIO
IOREQ_TYPE_PCI_CONFIG = 2
IOREQ_TYPE_TIMEOFFSET = 7
IOREQ_TYPE_INVALIDATE = 8    # map-cache invalidation

# dm_op range types (xen/include/public/hvm/dm_op.h)
XEN_DMOP_IO_RANGE_PORT = 0
XEN_DMOP_IO_RANGE_MEMORY = 1
XEN_DMOP_IO_RANGE_PCI = 2

HVM_IOREQSRV_BUFIOREQ_OFF = 0
XENMEM_RESOURCE_IOREQ_SERVER = 0
XENMEM_RESOURCE_IOREQ_SERVER_FRAME_BUFIOREQ = 0
XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ0 = 1   # frame_ioreq(n) = 1 + n

MAX_NR_IOREQ_SERVERS = 8
PAGE_SIZE = 4096

PROT_READ, PROT_WRITE = 0x1, 0x2


class Ioreq(ctypes.Structure):
    """``struct ioreq`` (ctypes lays bit-fields out as GCC does on x86: from bit 0)."""

    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("data", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("vp_eport", ctypes.c_uint32),
        ("_pad0", ctypes.c_uint16),
        ("state", ctypes.c_uint8, 4),
        ("data_is_ptr", ctypes.c_uint8, 1),
        ("dir", ctypes.c_uint8, 1),
        ("df", ctypes.c_uint8, 1),
        ("_pad1", ctypes.c_uint8, 1),
        ("type", ctypes.c_uint8),
    ]


IOREQ_SIZE = 32
SLOTS_PER_PAGE = PAGE_SIZE // IOREQ_SIZE

domid_t = ctypes.c_uint16
ioservid_t = ctypes.c_uint16
evtchn_port_t = ctypes.c_uint32
xen_pfn_t = ctypes.c_ulong

# --- failures ----------------------------------------------------------------

#: soname -> Debian package that ships it
LIBRARIES = {
    "libxendevicemodel.so.1": "libxendevicemodel1",
    "libxenforeignmemory.so.1": "libxenforeignmemory1",
    "libxenevtchn.so.1": "libxenevtchn1",
}


class XenLibraryMissing(ConfigError):
    help = ("Run the probe in a Xen dom0 with Xen's tool libraries installed "
            "(Debian: apt-get install xen-utils-4.17, which pulls them in).")


class XenCallFailed(InfrastructureError):
    """A Xen library call returned -1; ``errno`` is kept."""

    help = "A Xen tool-library call failed: read the function, errno and the hint."

    def __init__(self, function: str, err: int, detail: str = "", **kw):
        self.function, self.errno = function, err
        name = errno_mod.errorcode.get(err, str(err))
        text = f"{function} failed: {name} ({os.strerror(err)})"
        if detail:
            text += f": {detail}"
        super().__init__(text, **kw)


class NoSuchDomain(XenCallFailed):
    help = "The domain does not exist (any more): check the domid with `xl list`."


class NotAnHvmDomain(XenCallFailed, ConfigError):
    failure_class = ConfigError.failure_class
    help = ("ioreq servers exist only for HVM guests: give the domid of a type=\"hvm\" "
            "domain (`xl list -l` shows the type).")


class TooManyIoreqServers(XenCallFailed, TestBugError):
    failure_class = TestBugError.failure_class
    help = (f"Xen allows {MAX_NR_IOREQ_SERVERS} ioreq servers per domain (MAX_NR_IOREQ_SERVERS): "
            "the guest already has that many (device models plus probes); start fewer.")


class RangeAlreadyMapped(XenCallFailed, TestBugError):
    failure_class = TestBugError.failure_class
    help = ("This ioreq server already claims (part of) that range: give each port/MMIO "
            "range once, without overlaps.")


class NotPermitted(XenCallFailed):
    help = "Run the probe as root in dom0 (dm_op and privcmd need it)."


class NotInDom0(XenCallFailed):
    help = ("The Xen device nodes are missing: run in a Xen dom0 with the xen kernel "
            "modules loaded (/dev/xen/privcmd, /dev/xen/evtchn).")


def _raise(function: str, detail: str = "", err: int | None = None,
           classify: dict[int, type[XenCallFailed]] | None = None) -> None:
    err = ctypes.get_errno() if err is None else err
    kind = (classify or {}).get(err)
    if kind is None:
        kind = {errno_mod.ESRCH: NoSuchDomain, errno_mod.EPERM: NotPermitted,
                errno_mod.EACCES: NotPermitted}.get(err, XenCallFailed)
    raise kind(function, err, detail)


# --- library loading -------------------------------------------------------------

def load_library(soname: str, loader: Callable[..., ctypes.CDLL] = ctypes.CDLL) -> ctypes.CDLL:
    """dlopen one of :data:`LIBRARIES`; a missing one is a :class:`XenLibraryMissing`
    naming the library and its Debian package."""
    try:
        return loader(soname, use_errno=True)
    except OSError as exc:
        package = LIBRARIES.get(soname, "the Xen tool libraries")
        raise XenLibraryMissing(
            f"cannot load {soname} ({exc}); it ships in the Debian package {package}") from None


def _bind(lib: ctypes.CDLL, name: str, restype, *argtypes):
    func = getattr(lib, name)
    func.restype = restype
    func.argtypes = list(argtypes)
    return func


class XenLibs:
    """The three libraries with every function the probe calls, typed."""

    def __init__(self, loader: Callable[..., ctypes.CDLL] = ctypes.CDLL):
        dm = load_library("libxendevicemodel.so.1", loader)
        fm = load_library("libxenforeignmemory.so.1", loader)
        ev = load_library("libxenevtchn.so.1", loader)
        vp, c_int, c_uint = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint
        u8, u16, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint64
        # libxendevicemodel
        self.dm_open = _bind(dm, "xendevicemodel_open", vp, vp, c_uint)
        self.dm_close = _bind(dm, "xendevicemodel_close", c_int, vp)
        self.create_ioreq_server = _bind(dm, "xendevicemodel_create_ioreq_server", c_int,
                                         vp, domid_t, c_int, ctypes.POINTER(ioservid_t))
        self.get_ioreq_server_info = _bind(dm, "xendevicemodel_get_ioreq_server_info", c_int,
                                           vp, domid_t, ioservid_t, ctypes.POINTER(xen_pfn_t),
                                           ctypes.POINTER(xen_pfn_t),
                                           ctypes.POINTER(evtchn_port_t))
        self.map_io_range = _bind(dm, "xendevicemodel_map_io_range_to_ioreq_server", c_int,
                                  vp, domid_t, ioservid_t, c_int, u64, u64)
        self.unmap_io_range = _bind(dm, "xendevicemodel_unmap_io_range_from_ioreq_server",
                                    c_int, vp, domid_t, ioservid_t, c_int, u64, u64)
        self.map_pcidev = _bind(dm, "xendevicemodel_map_pcidev_to_ioreq_server", c_int,
                                vp, domid_t, ioservid_t, u16, u8, u8, u8)
        self.unmap_pcidev = _bind(dm, "xendevicemodel_unmap_pcidev_from_ioreq_server", c_int,
                                  vp, domid_t, ioservid_t, u16, u8, u8, u8)
        self.set_ioreq_server_state = _bind(dm, "xendevicemodel_set_ioreq_server_state", c_int,
                                            vp, domid_t, ioservid_t, c_int)
        self.destroy_ioreq_server = _bind(dm, "xendevicemodel_destroy_ioreq_server", c_int,
                                          vp, domid_t, ioservid_t)
        self.nr_vcpus = _bind(dm, "xendevicemodel_nr_vcpus", c_int,
                              vp, domid_t, ctypes.POINTER(c_uint))
        # libxenforeignmemory
        self.fm_open = _bind(fm, "xenforeignmemory_open", vp, vp, c_uint)
        self.fm_close = _bind(fm, "xenforeignmemory_close", c_int, vp)
        self.map_resource = _bind(fm, "xenforeignmemory_map_resource", vp,
                                  vp, domid_t, c_uint, c_uint, ctypes.c_ulong, ctypes.c_ulong,
                                  ctypes.POINTER(vp), c_int, c_int)
        self.unmap_resource = _bind(fm, "xenforeignmemory_unmap_resource", c_int, vp, vp)
        # libxenevtchn
        self.evtchn_open = _bind(ev, "xenevtchn_open", vp, vp, c_uint)
        self.evtchn_close = _bind(ev, "xenevtchn_close", c_int, vp)
        self.evtchn_fd = _bind(ev, "xenevtchn_fd", c_int, vp)
        self.evtchn_bind_interdomain = _bind(ev, "xenevtchn_bind_interdomain", c_int,
                                             vp, ctypes.c_uint32, evtchn_port_t)
        self.evtchn_unbind = _bind(ev, "xenevtchn_unbind", c_int, vp, evtchn_port_t)
        self.evtchn_pending = _bind(ev, "xenevtchn_pending", c_int, vp)
        self.evtchn_unmask = _bind(ev, "xenevtchn_unmask", c_int, vp, evtchn_port_t)
        self.evtchn_notify = _bind(ev, "xenevtchn_notify", c_int, vp, evtchn_port_t)


# --- handles ------------------------------------------------------------------------

def _opened(handle, function: str):
    if not handle:
        err = ctypes.get_errno()
        if err in (errno_mod.ENOENT, errno_mod.ENXIO, errno_mod.ENODEV):
            raise NotInDom0(function, err, "no Xen device node (not a Xen dom0?)")
        _raise(function, err=err)
    return handle


class DeviceModel:
    """A libxendevicemodel handle: the dm_op calls of one ioreq server's owner."""

    def __init__(self, libs: XenLibs):
        self.libs = libs
        self.handle = _opened(libs.dm_open(None, 0), "xendevicemodel_open")

    def close(self) -> None:
        if self.handle:
            self.libs.dm_close(self.handle)
            self.handle = None

    def create_ioreq_server(self, domid: int, handle_bufioreq: int = HVM_IOREQSRV_BUFIOREQ_OFF) -> int:
        server = ioservid_t()
        if self.libs.create_ioreq_server(self.handle, domid, handle_bufioreq,
                                         ctypes.byref(server)) != 0:
            _raise("xendevicemodel_create_ioreq_server", f"domain {domid}",
                   classify={errno_mod.ENOSPC: TooManyIoreqServers,
                             errno_mod.EINVAL: NotAnHvmDomain,
                             errno_mod.EOPNOTSUPP: NotAnHvmDomain})
        return server.value

    def server_exists(self, domid: int, server: int) -> bool:
        """True while the domain and this server exist (no gfns asked: no side effect)."""
        if self.libs.get_ioreq_server_info(self.handle, domid, server, None, None, None) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno_mod.ESRCH, errno_mod.ENOENT):
            return False
        _raise("xendevicemodel_get_ioreq_server_info", f"domain {domid} server {server}", err=err)
        return False  # not reached

    def map_io_range(self, domid: int, server: int, is_mmio: bool, start: int, end: int) -> None:
        if self.libs.map_io_range(self.handle, domid, server, int(is_mmio), start, end) != 0:
            kind = "memory" if is_mmio else "port"
            _raise("xendevicemodel_map_io_range_to_ioreq_server",
                   f"{kind} {start:#x}-{end:#x} for server {server} of domain {domid}",
                   classify={errno_mod.EEXIST: RangeAlreadyMapped})

    def unmap_io_range(self, domid: int, server: int, is_mmio: bool, start: int, end: int) -> None:
        if self.libs.unmap_io_range(self.handle, domid, server, int(is_mmio), start, end) != 0:
            kind = "memory" if is_mmio else "port"
            _raise("xendevicemodel_unmap_io_range_from_ioreq_server",
                   f"{kind} {start:#x}-{end:#x} of server {server}")

    def map_pcidev(self, domid: int, server: int, segment: int, bus: int, device: int,
                   function: int) -> None:
        if self.libs.map_pcidev(self.handle, domid, server, segment, bus, device, function) != 0:
            _raise("xendevicemodel_map_pcidev_to_ioreq_server",
                   f"{segment:04x}:{bus:02x}:{device:02x}.{function} for server {server}",
                   classify={errno_mod.EEXIST: RangeAlreadyMapped})

    def set_state(self, domid: int, server: int, enabled: bool) -> None:
        if self.libs.set_ioreq_server_state(self.handle, domid, server, int(enabled)) != 0:
            _raise("xendevicemodel_set_ioreq_server_state", f"server {server} of domain {domid}")

    def destroy_ioreq_server(self, domid: int, server: int) -> None:
        if self.libs.destroy_ioreq_server(self.handle, domid, server) != 0:
            _raise("xendevicemodel_destroy_ioreq_server", f"server {server} of domain {domid}")

    def nr_vcpus(self, domid: int) -> int:
        count = ctypes.c_uint()
        if self.libs.nr_vcpus(self.handle, domid, ctypes.byref(count)) != 0:
            _raise("xendevicemodel_nr_vcpus", f"domain {domid}")
        return count.value


class ForeignMemory:
    """A libxenforeignmemory handle, for mapping the ioreq server's page."""

    def __init__(self, libs: XenLibs):
        self.libs = libs
        self.handle = _opened(libs.fm_open(None, 0), "xenforeignmemory_open")

    def map_ioreq_page(self, domid: int, server: int) -> tuple[int, int]:
        """Map the synchronous ioreq page (frame 1 of the ioreq server resource);
        (resource handle, address)."""
        addr = ctypes.c_void_p(None)
        res = self.libs.map_resource(self.handle, domid, XENMEM_RESOURCE_IOREQ_SERVER, server,
                                     XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ0, 1,
                                     ctypes.byref(addr), PROT_READ | PROT_WRITE, 0)
        if not res:
            err = ctypes.get_errno()
            hint = ""
            if err in (errno_mod.EOPNOTSUPP, errno_mod.ENOTTY):
                hint = "the dom0 kernel lacks IOCTL_PRIVCMD_MMAP_RESOURCE (needs Linux >= 4.18)"
            _raise("xenforeignmemory_map_resource", hint or f"ioreq page of server {server}",
                   err=err)
        return res, addr.value

    def unmap(self, resource: int) -> None:
        if resource:
            self.libs.unmap_resource(self.handle, resource)

    def close(self) -> None:
        if self.handle:
            self.libs.fm_close(self.handle)
            self.handle = None


class EventChannels:
    """A libxenevtchn handle: one local port per vCPU of the served domain."""

    def __init__(self, libs: XenLibs):
        self.libs = libs
        self.handle = _opened(libs.evtchn_open(None, 0), "xenevtchn_open")

    def fd(self) -> int:
        return self.libs.evtchn_fd(self.handle)

    def bind_interdomain(self, domid: int, remote_port: int) -> int:
        port = self.libs.evtchn_bind_interdomain(self.handle, domid, remote_port)
        if port < 0:
            _raise("xenevtchn_bind_interdomain", f"domain {domid} port {remote_port}")
        return port

    def unbind(self, port: int) -> None:
        self.libs.evtchn_unbind(self.handle, port)

    def pending(self) -> int:
        port = self.libs.evtchn_pending(self.handle)
        if port < 0:
            _raise("xenevtchn_pending")
        return port

    def unmask(self, port: int) -> None:
        if self.libs.evtchn_unmask(self.handle, port) != 0:
            _raise("xenevtchn_unmask", f"port {port}")

    def notify(self, port: int) -> None:
        if self.libs.evtchn_notify(self.handle, port) != 0:
            _raise("xenevtchn_notify", f"port {port}")

    def close(self) -> None:
        if self.handle:
            self.libs.evtchn_close(self.handle)
            self.handle = None


def ioreq_slots(address: int, count: int):
    """The first ``count`` vCPU slots of a mapped ioreq page, as ctypes structs
    over the shared memory (reads and writes go straight to the page)."""
    if not 0 < count <= SLOTS_PER_PAGE:
        raise InfrastructureError(f"{count} vCPUs do not fit one ioreq page ({SLOTS_PER_PAGE} slots)")
    return (Ioreq * count).from_address(address)
