"""The guest probe xhprobe: built with gcc -static, run here in --dry-run
(touches no port or memory), and its output parsed."""
import shutil
import subprocess
from pathlib import Path

import pytest

from xenhil.harness.probes import build_xhprobe, xhprobe_source
from xenhil.harness.xen.parsers.errors import UnexpectedOutput
from xenhil.harness.xen.parsers.probe_output import (MmioRead, PciConfigAccess, PciScan, PortRead, PortWrite,
                                                     ProbeFailed, TimeIn, parse_probe_output, parse_single)


def _static_build_possible() -> str | None:
    if shutil.which("gcc") is None:
        return "gcc not installed (apt-get install gcc libc6-dev)"
    if not any(Path(d, "libc.a").exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib")):
        return "no static libc (apt-get install libc6-dev)"
    return None


@pytest.fixture(scope="module")
def xhprobe(tmp_path_factory):
    reason = _static_build_possible()
    if reason:
        pytest.skip(reason)
    return build_xhprobe(tmp_path_factory.mktemp("probe") / "xhprobe")


def run(binary, *args, ok=True):
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_source_ships_with_the_package():
    assert xhprobe_source().is_file() and xhprobe_source().name == "xhprobe.c"


def test_binary_is_static_and_has_help(xhprobe):
    out = run(xhprobe, "--help").stdout
    for command in ("inb|inw|inl", "outb|outw|outl", "time-in", "pci-read", "pci-scan", "mmio-read", "--dry-run"):
        assert command in out
    assert not _has_interpreter(xhprobe)                  # static: runs in a bare initramfs


def _has_interpreter(binary: Path) -> bool:
    """True when the ELF64 file has a PT_INTERP program header (needs ld.so)."""
    data = binary.read_bytes()
    assert data[:5] == b"\x7fELF\x02"
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    return any(int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4], "little") == 3
               for i in range(phnum))


def test_dry_run_reads_look_like_nobody_claims_the_access(xhprobe):
    read = parse_single(run(xhprobe, "--dry-run", "inw", "0x10", "3").stdout, PortRead)
    assert (read.port, read.width, read.values, read.dry_run) == (0x10, 2, (0xFFFF,) * 3, True)
    cfg = parse_single(run(xhprobe, "--dry-run", "pci-read", "00:01.0", "0x2", "2").stdout, PciConfigAccess)
    assert (cfg.bdf, cfg.reg, cfg.width, cfg.value) == ("00:01.0", 2, 2, 0xFFFF)
    scan = parse_single(run(xhprobe, "--dry-run", "pci-scan").stdout, PciScan)
    assert scan.devices == () and scan.dry_run
    mmio = parse_single(run(xhprobe, "--dry-run", "mmio-read", "0xfc000000", "8").stdout, MmioRead)
    assert (mmio.addr, mmio.width, mmio.value) == (0xFC000000, 8, 2**64 - 1)
    write = parse_single(run(xhprobe, "--dry-run", "outb", "0x12", "0x41").stdout, PortWrite)
    assert (write.port, write.value) == (0x12, 0x41)


def test_time_in_summary_and_raw_samples(xhprobe):
    out = run(xhprobe, "--dry-run", "time-in", "0x40", "200", "--raw", "--calib-ms", "20").stdout
    timing = parse_single(out, TimeIn)
    assert timing.n == 200 and len(timing.samples) == 200 and timing.port == 0x40
    assert timing.min_cycles <= timing.p50_cycles <= timing.p90_cycles <= timing.p99_cycles <= timing.max_cycles
    assert timing.min_cycles == min(timing.samples) and timing.max_cycles == max(timing.samples)
    assert timing.tsc_hz > 0 and timing.p50_ns >= 0 and timing.last_value == 0xFF
    assert timing.interleaved == 1


def test_time_in_of_several_ports_reads_them_in_turn(xhprobe):
    out = run(xhprobe, "--dry-run", "time-in", "0x40,0x64,0x6100", "120", "--raw",
              "--calib-ms", "20").stdout
    timings = parse_probe_output(out)
    assert [t.port for t in timings] == [0x40, 0x64, 0x6100]
    assert all(isinstance(t, TimeIn) and t.n == 120 and len(t.samples) == 120 and t.interleaved == 3
               for t in timings)
    assert all(t.min_cycles == min(t.samples) for t in timings)


@pytest.mark.parametrize("args", [["time-in", ",", "10"], ["time-in", "0x40,0x10000", "10"],
                                  ["time-in", ",".join(["0x40"] * 9), "10"],
                                  ["time-in", "0x40,nine", "10"], ["time-in", "0x40", "10000001"]])
def test_time_in_refuses_a_bad_port_list_or_count(xhprobe, args):
    proc = run(xhprobe, "--dry-run", *args, ok=False)
    assert proc.returncode == 2
    with pytest.raises(ProbeFailed) as info:
        parse_probe_output(proc.stdout)
    assert info.value.errno == 22 or "0x10000" in info.value.error


@pytest.mark.parametrize("args", [["inb"], ["inb", "0x10000"], ["outb", "0x80", "0x100"],
                                  ["pci-read", "00:20.0", "0"], ["pci-read", "00:01.0", "3", "2"],
                                  ["pci-read", "0001:00:01.0", "0"], ["time-in", "0x40", "0"],
                                  ["mmio-read", "0x1001", "4"], ["frobnicate"]])
def test_bad_arguments_give_an_error_line_and_exit_2(xhprobe, args):
    proc = run(xhprobe, "--dry-run", *args, ok=False)
    assert proc.returncode == 2 and proc.stderr.startswith("xhprobe ")
    with pytest.raises(ProbeFailed) as info:
        parse_probe_output(proc.stdout)
    assert info.value.errno == 22


# Shape of a real pci-scan in a default xenfv guest (docs/xen-ioreq-facts.md section 5);
# written from xhprobe.c's printf formats.
PCI_SCAN = """\
{"op":"pci-dev","bdf":"00:00.0","vendor":"0x8086","device":"0x1237","class":"0x0600","prog_if":"0x00","revision":"0x02","header_type":"0x00"}
{"op":"pci-dev","bdf":"00:01.0","vendor":"0x8086","device":"0x7000","class":"0x0601","prog_if":"0x00","revision":"0x00","header_type":"0x80"}
{"op":"pci-dev","bdf":"00:02.0","vendor":"0x5853","device":"0x0001","class":"0xff80","prog_if":"0x00","revision":"0x01","header_type":"0x00"}
{"op":"pci-scan","bus":0,"found":3,"dry_run":false}
"""


def test_pci_scan_output():
    scan = parse_single(PCI_SCAN, PciScan)
    assert [(d.bdf, d.vendor, d.device, d.class_code) for d in scan.devices] == [
        ("00:00.0", 0x8086, 0x1237, 0x0600), ("00:01.0", 0x8086, 0x7000, 0x0601), ("00:02.0", 0x5853, 1, 0xFF80)]
    assert scan.devices[1].header_type == 0x80


def test_cut_short_or_noisy_output_is_rejected():
    with pytest.raises(UnexpectedOutput, match="cut short"):
        parse_probe_output(PCI_SCAN.splitlines()[0] + "\n")
    with pytest.raises(UnexpectedOutput, match="found=3 but 2"):
        parse_probe_output("\n".join(PCI_SCAN.splitlines()[1:]))
    with pytest.raises(UnexpectedOutput, match="not a JSON object") as info:
        parse_probe_output('{"op":"version","version":"1"}\n~ # \n')
    assert info.value.line_no == 2


def test_iopl_failure_is_infrastructure_not_product():
    line = '{"op":"error","cmd":"inb","error":"iopl(3) and ioperm failed: Operation not permitted","errno":1}'
    with pytest.raises(ProbeFailed, match="iopl") as info:
        parse_probe_output(line)
    assert info.value.failure_class == "infrastructure"
