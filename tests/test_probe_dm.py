"""Fast layer of the probe device model (issue 7): the ioreq ABI, the
bindings against the real Xen libraries of this machine, the PCI config
space and BAR sizing, the registers, request dispatch on ioreq_t structs,
the command line and the dom0 bundle.  Xen itself is exercised in
tests/test_probe_dm_real.py."""
from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import os
import subprocess
import sys
import tarfile
import gzip
from pathlib import Path

import pytest

from xenhil.harness.errors import ConfigError
from xenhil.harness.probe_dm import COUNTERS_FORMAT
from xenhil.harness.probe_dm import xenlibs
from xenhil.harness.probe_dm.__main__ import build_device, build_parser
from xenhil.harness.probe_dm.emulation import (
    ID_MAGIC,
    PCI_BAR0,
    PCI_COMMAND,
    Bdf,
    ProbeDevice,
    Request,
    pci_config_address,
)
from xenhil.harness.probe_dm.host import BUNDLE_PREFIX, PACKAGE_FILES, ProbeCounters, ProbeSpec, bundle
from xenhil.harness.probe_dm.server import write_json_atomically
from xenhil.harness.probe_dm.xenlibs import (
    IOREQ_READ,
    IOREQ_TYPE_COPY,
    IOREQ_TYPE_INVALIDATE,
    IOREQ_TYPE_PCI_CONFIG,
    IOREQ_TYPE_PIO,
    IOREQ_WRITE,
    Ioreq,
)

PORTS = (0x6100, 0x610F)
MMIO = (0xF0000000, 0xF0000FFF)
BDF = Bdf.parse("00:05.0")
HAVE_XEN_LIBS = all(ctypes.util.find_library(n) for n in
                    ("xendevicemodel", "xenforeignmemory", "xenevtchn"))
needs_xen_libs = pytest.mark.skipif(not HAVE_XEN_LIBS,
                                    reason="Xen tool libraries not installed here "
                                           "(apt-get install libxendevicemodel1 "
                                           "libxenforeignmemory1 libxenevtchn1)")


def device(**kw) -> ProbeDevice:
    return ProbeDevice([PORTS], MMIO, BDF, **kw)


def slot(type_: int, dir_: int, addr: int, size: int, data: int = 0, **fields) -> Ioreq:
    req = Ioreq(addr=addr, data=data, count=fields.pop("count", 1), size=size)
    req.type, req.dir, req.state = type_, dir_, 1
    for name, value in fields.items():
        setattr(req, name, value)
    return req


def cfg_addr(bdf: Bdf, register: int) -> int:
    return (bdf.sbdf << 32) | register


def cfg_read(dev: ProbeDevice, register: int, size: int = 4, bdf: Bdf = BDF) -> int:
    return dev.handle(Request(IOREQ_TYPE_PCI_CONFIG, IOREQ_READ, cfg_addr(bdf, register), size), 0)


def cfg_write(dev: ProbeDevice, register: int, value: int, size: int = 4) -> None:
    dev.handle(Request(IOREQ_TYPE_PCI_CONFIG, IOREQ_WRITE, cfg_addr(BDF, register), size, value), 0)


def enable_bar(dev: ProbeDevice, address: int) -> None:
    cfg_write(dev, PCI_BAR0, address)
    cfg_write(dev, PCI_COMMAND, 0x2, size=2)


# --- the ABI ------------------------------------------------------------------------

def test_ioreq_struct_matches_the_xen_abi():
    assert ctypes.sizeof(Ioreq) == 32
    offsets = {name: getattr(Ioreq, name).offset for name in
               ("addr", "data", "count", "size", "vp_eport", "_pad0", "type")}
    assert offsets == {"addr": 0, "data": 8, "count": 16, "size": 20, "vp_eport": 24,
                       "_pad0": 28, "type": 31}
    assert xenlibs.SLOTS_PER_PAGE == 128


def test_ioreq_bitfields_sit_where_gcc_puts_them():
    req = Ioreq()
    req.state = 3
    raw = bytes(req)
    assert raw[30] == 0x03
    req.data_is_ptr, req.dir = 1, 1
    assert bytes(req)[30] == 0x33
    req.df = 1
    assert bytes(req)[30] == 0x73
    req.type = 8
    assert bytes(req)[31] == 8 and bytes(req)[30] == 0x73


def test_slot_decodes_from_raw_bytes_written_by_xen():
    # A PCI config read of 00:05.0 register 0 as Xen lays it out in the page.
    raw = bytearray(32)
    raw[0:8] = ((0x28 << 32) | 0).to_bytes(8, "little")
    raw[16:20] = (1).to_bytes(4, "little")
    raw[20:24] = (4).to_bytes(4, "little")
    raw[24:28] = (37).to_bytes(4, "little")
    raw[30] = 0x01 | 0x20          # state READY, dir read
    raw[31] = IOREQ_TYPE_PCI_CONFIG
    req = Ioreq.from_buffer(raw)
    assert (req.state, req.dir, req.type, req.size, req.count, req.vp_eport) == (1, 1, 2, 4, 1, 37)
    assert pci_config_address(req.addr) == (0x28, 0)


# --- bindings against the real libraries --------------------------------------------

@needs_xen_libs
def test_every_bound_function_exists_in_the_installed_libraries():
    libs = xenlibs.XenLibs()
    assert libs.create_ioreq_server.argtypes[1] is xenlibs.domid_t
    assert libs.map_resource.restype is ctypes.c_void_p


@needs_xen_libs
def test_a_missing_library_names_it_and_its_debian_package():
    def fake_missing_loader(name, **kw):
        if name == "libxenforeignmemory.so.1":
            raise OSError(f"{name}: cannot open shared object file")
        return ctypes.CDLL(name, **kw)

    with pytest.raises(xenlibs.XenLibraryMissing) as info:
        xenlibs.XenLibs(loader=fake_missing_loader)
    assert "libxenforeignmemory.so.1" in str(info.value)
    assert "libxenforeignmemory1" in str(info.value)


@needs_xen_libs
@pytest.mark.skipif(os.path.exists("/dev/xen/privcmd"), reason="this machine is a Xen dom0")
def test_opening_outside_dom0_is_a_clear_error():
    with pytest.raises(xenlibs.NotInDom0) as info:
        xenlibs.DeviceModel(xenlibs.XenLibs())
    assert "ENOENT" in str(info.value) and "dom0" in str(info.value)


def test_errno_maps_to_the_documented_failures():
    import errno
    cases = {errno.ENOSPC: xenlibs.TooManyIoreqServers, errno.EEXIST: xenlibs.RangeAlreadyMapped,
             errno.EINVAL: xenlibs.NotAnHvmDomain}
    for err, kind in cases.items():
        with pytest.raises(kind) as info:
            xenlibs._raise("xendevicemodel_create_ioreq_server", "domain 3", err=err,
                           classify=cases)
        assert info.value.errno == err
    with pytest.raises(xenlibs.NoSuchDomain):
        xenlibs._raise("xendevicemodel_nr_vcpus", err=errno.ESRCH)
    assert "8 ioreq servers" in xenlibs.TooManyIoreqServers.help


# --- PCI config space -------------------------------------------------------------------

def test_config_space_header():
    dev = device()
    assert cfg_read(dev, 0x00) == 0xC0DE5853
    assert cfg_read(dev, 0x08) == 0xFF000001            # class ff00, prog-if 0, revision 1
    assert cfg_read(dev, 0x0E, 1) == 0x00                # type 0, single function
    assert cfg_read(dev, 0x2C) == 0x58485853             # subsystem 5853:5848
    assert cfg_read(dev, 0x3D, 1) == 0                   # no INTx pin
    assert cfg_read(dev, 0x34, 1) == 0                   # no capabilities
    assert cfg_read(dev, 0x06, 2) == 0                   # status
    assert cfg_read(dev, 0x100) == 0                     # extended space: zeros
    assert cfg_read(dev, 0x1000) == 0xFFFFFFFF


def test_vendor_and_device_can_be_chosen():
    dev = ProbeDevice([PORTS], MMIO, BDF, vendor=0x1AF4, device=0x10FF)
    assert cfg_read(dev, 0x00) == 0x10FF1AF4


def test_read_only_registers_ignore_writes_and_writable_ones_keep_them():
    dev = device()
    cfg_write(dev, 0x00, 0x12345678)
    cfg_write(dev, 0x08, 0)
    cfg_write(dev, 0x14, 0xFFFFFFFF)                     # BAR1: not implemented
    cfg_write(dev, 0x30, 0xFFFFFFFF)                     # expansion ROM: none
    assert cfg_read(dev, 0x00) == 0xC0DE5853
    assert cfg_read(dev, 0x08) == 0xFF000001
    assert cfg_read(dev, 0x14) == 0 and cfg_read(dev, 0x30) == 0
    cfg_write(dev, PCI_COMMAND, 0xFFFF, size=2)
    assert cfg_read(dev, PCI_COMMAND, 2) == 0x0406      # memory, master, INTx disable; no I/O
    cfg_write(dev, 0x3C, 0x0B, size=1)
    cfg_write(dev, 0x0C, 0x10, size=1)
    assert cfg_read(dev, 0x3C, 1) == 0x0B and cfg_read(dev, 0x0C, 1) == 0x10


def test_bar_sizing_protocol():
    dev = device()
    assert cfg_read(dev, PCI_BAR0) == 0xF0000000        # initial address; 32-bit memory
    cfg_write(dev, PCI_BAR0, 0xFFFFFFFF)
    assert cfg_read(dev, PCI_BAR0) == 0xFFFFF000        # size 4 KiB, type bits 0
    assert dev.pci.bar_size_probes == 1
    cfg_write(dev, PCI_BAR0, 0xE1234567)
    assert cfg_read(dev, PCI_BAR0) == 0xE1234000        # low bits below the size dropped


def test_bar_size_follows_the_mmio_window():
    dev = ProbeDevice([], (0xE0000000, 0xE00FFFFF), BDF)   # 1 MiB
    cfg_write(dev, PCI_BAR0, 0xFFFFFFFF)
    assert cfg_read(dev, PCI_BAR0) == 0xFFF00000


def test_bar_written_byte_by_byte():
    dev = device()
    for i, byte in enumerate((0x00, 0x50, 0x00, 0xE0)):
        cfg_write(dev, PCI_BAR0 + i, byte, size=1)
    assert cfg_read(dev, PCI_BAR0) == 0xE0005000


def test_mmio_is_decoded_only_with_memory_enable_and_a_placed_bar():
    dev = device()
    assert dev.mmio_range() is None                      # decoding off at reset
    cfg_write(dev, PCI_BAR0, 0xFFFFFFFF)
    cfg_write(dev, PCI_COMMAND, 0x2, size=2)
    assert dev.mmio_range() is None                      # sizing pattern is no address
    cfg_write(dev, PCI_BAR0, 0xF1000000)
    assert dev.mmio_range() == (0xF1000000, 0xF1000FFF)
    cfg_write(dev, PCI_COMMAND, 0x0, size=2)
    assert dev.mmio_range() is None


def test_without_a_pci_function_the_mmio_range_is_fixed():
    dev = ProbeDevice([PORTS], MMIO, None)
    assert dev.mmio_range() == MMIO
    assert dev.pci is None


@pytest.mark.parametrize("mmio", [(0xF0000000, 0xF0000FFE), (0xF0000800, 0xF00017FF),
                                  (0xF0000000, 0xF0000007)])
def test_bad_bar_windows_are_config_errors(mmio):
    with pytest.raises(ConfigError):
        ProbeDevice([], mmio, BDF)


# --- registers ------------------------------------------------------------------------------

def pio(dev, dir_, port, size, data=0, vcpu=0):
    return dev.handle(Request(IOREQ_TYPE_PIO, dir_, port, size, data), vcpu)


def test_id_register_and_its_bytes():
    dev = device()
    assert pio(dev, IOREQ_READ, 0x6100, 4) == ID_MAGIC
    assert [pio(dev, IOREQ_READ, 0x6100 + i, 1) for i in range(4)] == [0x50, 0x4C, 0x48, 0x58]
    pio(dev, IOREQ_WRITE, 0x6100, 4, 0)
    assert pio(dev, IOREQ_READ, 0x6100, 4) == ID_MAGIC


def test_counter_register_counts_this_windows_accesses_and_is_read_only():
    dev = device()
    pio(dev, IOREQ_WRITE, 0x6108, 1, 7)
    pio(dev, IOREQ_READ, 0x6100, 4)
    assert pio(dev, IOREQ_READ, 0x6104, 4) == 3          # two before, this one included
    pio(dev, IOREQ_WRITE, 0x6104, 4, 0)
    assert pio(dev, IOREQ_READ, 0x6104, 4) == 5


def test_scratch_reads_back_what_was_written_at_every_size():
    dev = device()
    pio(dev, IOREQ_WRITE, 0x6108, 4, 0xDEADBEEF)
    assert pio(dev, IOREQ_READ, 0x6108, 4) == 0xDEADBEEF
    assert pio(dev, IOREQ_READ, 0x6109, 2) == 0xADBE
    pio(dev, IOREQ_WRITE, 0x610F, 1, 0x5A)
    assert pio(dev, IOREQ_READ, 0x610C, 4) == 0x5A000000
    pio(dev, IOREQ_WRITE, 0x6106, 4, 0x11223344)         # half on the counter: only scratch kept
    assert pio(dev, IOREQ_READ, 0x6108, 2) == 0x1122


def test_port_and_mmio_windows_have_separate_scratch():
    dev = device()
    enable_bar(dev, 0xF1000000)
    pio(dev, IOREQ_WRITE, 0x6108, 4, 0x1111)
    dev.handle(Request(IOREQ_TYPE_COPY, IOREQ_WRITE, 0xF1000010, 8, 0x0123456789ABCDEF), 0)
    assert dev.handle(Request(IOREQ_TYPE_COPY, IOREQ_READ, 0xF1000010, 8), 0) == 0x0123456789ABCDEF
    assert dev.handle(Request(IOREQ_TYPE_COPY, IOREQ_READ, 0xF1000008, 4), 0) == 0
    assert dev.handle(Request(IOREQ_TYPE_COPY, IOREQ_READ, 0xF1000000, 4), 0) == ID_MAGIC
    assert pio(dev, IOREQ_READ, 0x6108, 4) == 0x1111


# --- dispatch on ioreq_t structs ------------------------------------------------------------------

def test_dispatch_writes_the_read_value_into_the_slot():
    dev = device()
    req = slot(IOREQ_TYPE_PIO, IOREQ_READ, 0x6100, 4, data=0xAAAA)
    dev.handle_ioreq(req, 0)
    assert req.data == ID_MAGIC
    write = slot(IOREQ_TYPE_PIO, IOREQ_WRITE, 0x6108, 2, data=0xFFFF_BEEF)
    dev.handle_ioreq(write, 0)
    assert write.data == 0xFFFF_BEEF                     # a write leaves data alone
    assert pio(dev, IOREQ_READ, 0x6108, 4) == 0xBEEF     # only `size` bytes were taken


def test_pci_config_through_slots_and_routing_by_sbdf():
    dev = device()
    req = slot(IOREQ_TYPE_PCI_CONFIG, IOREQ_READ, cfg_addr(BDF, 0), 2)
    dev.handle_ioreq(req, 0)
    assert req.data == 0x5853
    other = slot(IOREQ_TYPE_PCI_CONFIG, IOREQ_READ, cfg_addr(Bdf.parse("00:06.0"), 0), 4)
    dev.handle_ioreq(other, 0)
    assert other.data == 0xFFFFFFFF
    assert dev.outside == 1


def test_accesses_outside_every_window_read_all_ones_and_are_counted():
    dev = device()
    assert pio(dev, IOREQ_READ, 0x60FF, 1) == 0xFF
    assert pio(dev, IOREQ_READ, 0x610E, 4) == 0xFFFFFFFF  # straddles the end
    assert dev.handle(Request(IOREQ_TYPE_COPY, IOREQ_READ, 0xF0000000, 4), 0) == 0xFFFFFFFF
    assert dev.outside == 3                               # BAR not decoded yet


def test_invalidate_is_answered_and_counted():
    dev = device()
    req = slot(IOREQ_TYPE_INVALIDATE, IOREQ_WRITE, 0, 4, data=2**64 - 1)
    dev.handle_ioreq(req, 1)
    counters = dev.counters()
    assert counters["by_type"] == {"invalidate": 1}
    assert counters["by_vcpu"] == {"1": 1}
    assert counters["outside"] == 0


def test_string_io_is_answered_but_not_emulated():
    dev = device()
    req = slot(IOREQ_TYPE_PIO, IOREQ_READ, 0x6100, 1, data=0x1000, count=4, data_is_ptr=1)
    dev.handle_ioreq(req, 0)
    assert req.data == 0x1000 and dev.unsupported == 1


def test_counters_by_type_window_and_vcpu():
    dev = device()
    enable_bar(dev, 0xF1000000)
    pio(dev, IOREQ_READ, 0x6100, 4, vcpu=0)
    pio(dev, IOREQ_WRITE, 0x6108, 4, 1, vcpu=1)
    dev.handle(Request(IOREQ_TYPE_COPY, IOREQ_READ, 0xF1000000, 4), 1)
    c = dev.counters()
    assert c["total"] == 5
    assert c["by_type"] == {"mmio": 1, "pci_config": 2, "pio": 2}
    assert c["by_vcpu"] == {"0": 3, "1": 2}
    assert c["windows"]["port0"] == {"kind": "port", "size": 16, "start": "0x6100",
                                     "end": "0x610f", "reads": 1, "writes": 1}
    assert c["windows"]["bar0"]["start"] == "0xf1000000" and c["windows"]["bar0"]["reads"] == 1
    assert c["pci"]["bdf"] == "0000:00:05.0" and c["pci"]["sbdf"] == 0x28
    assert c["pci"]["command"] == "0x2"


def test_per_request_log_lines():
    out = io.StringIO()
    dev = ProbeDevice([PORTS], None, None, log=out, clock=lambda: 12.5)
    pio(dev, IOREQ_READ, 0x6100, 4)
    assert out.getvalue() == ("12.500000 vcpu=0 type=pio dir=read addr=0x6100 size=4 count=1 "
                              "ptr=0 data=0x58484c50\n")


def test_state_survives_a_snapshot_and_restore():
    dev = device()
    enable_bar(dev, 0xF2000000)
    pio(dev, IOREQ_WRITE, 0x6108, 4, 0xCAFE)
    snap = json.loads(json.dumps(dev.snapshot()))
    fresh = device()
    fresh.restore(snap)
    assert fresh.mmio_range() == (0xF2000000, 0xF2000FFF)
    assert pio(fresh, IOREQ_READ, 0x6108, 4) == 0xCAFE
    assert cfg_read(fresh, 0) == 0xC0DE5853


def test_bdf_parsing():
    assert Bdf.parse("00:05.0").sbdf == 0x28
    assert Bdf.parse("0000:00:01.0").sbdf == 0x8
    assert str(Bdf.parse("1:2:1f.7")) == "0001:02:1f.7"
    for bad in ("00:20.0", "05.0", "zz:00.0", "00:05.8"):
        with pytest.raises(ConfigError):
            Bdf.parse(bad)


# --- command line ------------------------------------------------------------------------------

def args(*argv):
    return build_parser().parse_args(["--domid", "3", "--counters", "/tmp/x.json", *argv])


def test_cli_builds_the_device():
    dev, ports, bdf = build_device(args("--ports", "0x6100-0x610f,0x6200-0x6203",
                                        "--mmio", "0xf0000000-0xf0000fff", "--bdf", "00:05.0"))
    assert ports == [(0x6100, 0x610F), (0x6200, 0x6203)] and bdf.sbdf == 0x28
    assert [w.name for w in dev.windows] == ["port0", "port1", "bar0"]


@pytest.mark.parametrize("argv,needle", [
    (["--ports", "0x6100-0x610f", "--ports", "0x610f-0x6110"], "overlap"),
    (["--ports", "0x6110-0x6100"], "below the start"),
    (["--ports", "0xfff0-0x10000"], "beyond port 0xffff"),
    (["--ports", "0x6100-0x610f", "--bdf", "00:05.0"], "--bdf needs --mmio"),
    ([], "nothing to emulate"),
    (["--mmio", "0xf0000000-0xf00005ff", "--bdf", "00:05.0"], "not a valid 32-bit memory BAR size"),
])
def test_cli_refuses_bad_arguments(argv, needle):
    with pytest.raises(ConfigError, match=needle):
        build_device(args(*argv))


def _run_module(cwd: Path, *argv: str, isolated: bool = False) -> subprocess.CompletedProcess:
    # -S -E: no site-packages (so not the editable install): only what cwd holds
    flags = ["-S", "-E"] if isolated else []
    env = {"PATH": os.environ.get("PATH", "")}
    return subprocess.run([sys.executable, *flags, "-m", "xenhil.harness.probe_dm", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env)


def _unpacked_bundle(tmp_path: Path) -> Path:
    _, data = bundle()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        assert sorted(tar.getnames()) == sorted(BUNDLE_PREFIX + name for name in PACKAGE_FILES)
        tar.extractall(tmp_path / "pkg")
    return tmp_path / "pkg"


def test_bad_arguments_exit_2_with_the_reason(tmp_path):
    result = _run_module(_unpacked_bundle(tmp_path), "--domid", "1", "--counters", str(tmp_path / "c.json"),
                         "--ports", "0x10-0x1", isolated=True)
    assert result.returncode == 2
    assert "--ports" in result.stderr and "how to fix" in result.stderr


@needs_xen_libs
@pytest.mark.skipif(os.path.exists("/dev/xen/privcmd"), reason="this machine is a Xen dom0")
def test_the_dom0_bundle_is_self_contained_and_reports_failure(tmp_path):
    """Unpack the bundle alone (no repository, no site-packages) and run it:
    outside dom0 it must fail cleanly, leaving a 'failed' counters file."""
    pkg = _unpacked_bundle(tmp_path)
    counters = tmp_path / "c.json"
    result = _run_module(pkg, "--domid", "1", "--counters", str(counters),
                         "--ports", "0x6100-0x610f", "--mmio", "0xf0000000-0xf0000fff",
                         "--bdf", "00:05.0", isolated=True)
    assert result.returncode == 1, result.stderr
    report = json.loads(counters.read_text())
    assert report["format"] == COUNTERS_FORMAT
    assert report["state"] == "failed" and "xendevicemodel_open" in report["error"]
    assert report["claimed"] == {"port": [], "memory": [], "pci": []}
    assert report["server_id"] is None


def test_bundle_is_reproducible():
    assert bundle() == bundle()


def test_counters_file_is_replaced_atomically(tmp_path):
    path = tmp_path / "c.json"
    write_json_atomically(path, {"a": 1})
    write_json_atomically(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_probe_spec_arguments_and_counters_view():
    spec = ProbeSpec(((0x6100, 0x610F),), (0xF0000000, 0xF0000FFF), "00:05.0", device=0xBEEF)
    assert spec.arguments() == ["--ports", "0x6100-0x610f", "--mmio", "0xf0000000-0xf0000fff",
                                "--bdf", "00:05.0", "--device", "beef"]
    with pytest.raises(ConfigError):
        ProbeSpec(bdf="nope").arguments()
    seen = ProbeCounters({"state": "enabled", "heartbeat_interval": 2.0, "supervisor_pid": 9,
                          "counters": {"by_type": {"invalidate": 2}}}, age=3.0)
    assert (seen.invalidations, seen.pid, seen.stale_after) == (2, 9, 10.0)
