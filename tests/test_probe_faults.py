"""The probe's planted faults (harness/probe_dm/faults.py, issue 14 item 1):
the parser and its messages, and each fault's effect on the decisions the
probe makes (what it registers with Xen, what it counts, how long it takes),
without Xen.  Their effect on a real guest is what the mutant catalog's runs
show (lab/mutants/)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from xenhil.harness.errors import ConfigError
from xenhil.harness.probe_dm.__main__ import build_device, build_parser
from xenhil.harness.probe_dm.emulation import Bdf, ProbeDevice, Request
from xenhil.harness.probe_dm.faults import (DEFAULT_QEMU_PORTS, FAULTS, MAX_DELAY_US, ProbeFault,
                                            parse_fault, registrations)
from xenhil.harness.probe_dm.host import PACKAGE_FILES, ProbeSpec
from xenhil.harness.probe_dm.server import ProbeServer
from xenhil.harness.probe_dm.xenlibs import IOREQ_READ, IOREQ_TYPE_INVALIDATE, IOREQ_TYPE_PIO

REPO = Path(__file__).resolve().parents[1]
PORTS = [(0x6100, 0x610F)]
MMIO = (0xF0000000, 0xF0000FFF)
BDF = Bdf.parse("00:05.0")


@pytest.mark.parametrize("text, canonical", [
    ("claim-qemu-port", f"claim-qemu-port={DEFAULT_QEMU_PORTS}"),
    ("claim-qemu-port=0x3F8-0x3ff", "claim-qemu-port=0x3f8-0x3ff"),
    ("ignore-invalidate", "ignore-invalidate"),
    (" skip-reregister-after-restore ", "skip-reregister-after-restore"),
    ("delay=200", "delay=200"),
])
def test_each_fault_parses_to_its_canonical_text(text, canonical):
    fault = parse_fault(text)
    assert fault.text == canonical
    assert parse_fault(fault.text) == fault      # what dom0 gets parses to the same fault


def test_every_fault_of_the_table_parses_from_its_own_example():
    for name, rule in FAULTS.items():
        assert parse_fault(rule.example).name == name


@pytest.mark.parametrize("text, needle", [
    ("", "empty"),
    ("delay-200", "no such fault"),
    ("Ignore-invalidate", "no such fault"),
    ("delay", "needs a value"),
    ("delay=0", "a whole number from 1"),
    ("delay=-5", "a whole number from 1"),
    ("delay=2.5", "a whole number from 1"),
    (f"delay={MAX_DELAY_US + 1}", "a whole number from 1"),
    ("ignore-invalidate=yes", "takes no value"),
    ("claim-qemu-port=0x177-0x170", "below the start"),
    ("claim-qemu-port=0xffff-0x10000", "beyond port 0xffff"),
    ("claim-qemu-port=0x170", "not a port range"),
    ("claim-qemu-port=com1", "not a port range"),
])
def test_a_bad_fault_names_the_option_and_the_fix(text, needle):
    with pytest.raises(ConfigError) as caught:
        parse_fault(text, "--probe-fault")
    message = caught.value.args[0]
    assert message.startswith("--probe-fault"), message
    assert needle in message
    assert caught.value.help and ("e.g." in caught.value.help or "without '='" in caught.value.help
                                  or "one fault" in caught.value.help)


def test_registrations_under_each_fault():
    clean = registrations(PORTS, BDF, None, restoring=False)
    assert (clean.ports, clean.pci, clean.mmio) == (tuple(PORTS), True, True)
    assert registrations(PORTS, None, None, restoring=True).pci is False   # no PCI function
    claim = registrations(PORTS, BDF, parse_fault("claim-qemu-port"), restoring=False)
    assert claim.ports == (*PORTS, (0x170, 0x177)) and claim.pci and claim.mmio
    skip = parse_fault("skip-reregister-after-restore")
    assert registrations(PORTS, BDF, skip, restoring=False) == clean       # first start: whole
    assert registrations(PORTS, BDF, skip, restoring=True) == type(clean)((), False, False)
    for other in ("ignore-invalidate", "delay=10"):
        assert registrations(PORTS, BDF, parse_fault(other), restoring=True) == clean


def test_the_server_takes_its_plan_from_the_fault_and_the_restore(tmp_path):
    # ProbeServer's constructor touches no Xen library: its plan is what start() maps.
    device = ProbeDevice(PORTS, MMIO, BDF)
    skip = parse_fault("skip-reregister-after-restore")
    first = ProbeServer(1, PORTS, device, tmp_path / "c.json", bdf=BDF, fault=skip)
    restored = ProbeServer(1, PORTS, device, tmp_path / "c.json", bdf=BDF, fault=skip, restoring=True)
    assert first.plan.ports == tuple(PORTS) and first.plan.pci
    assert restored.plan.ports == () and not restored.plan.pci and not restored.plan.mmio


def invalidate() -> Request:
    return Request(IOREQ_TYPE_INVALIDATE, 1, 0, 0)


def test_ignore_invalidate_answers_without_counting():
    clean, faulty = ProbeDevice(PORTS, MMIO, BDF), ProbeDevice(PORTS, MMIO, BDF,
                                                               fault=parse_fault("ignore-invalidate"))
    for dev in (clean, faulty):
        assert dev.handle(invalidate(), 0) is None
        assert dev.handle(Request(IOREQ_TYPE_PIO, IOREQ_READ, 0x6100, 4), 0) == 0x58484C50
    assert clean.counters()["by_type"] == {"invalidate": 1, "pio": 1}
    assert faulty.counters()["by_type"] == {"pio": 1}     # the mapcache suite counts this


def test_delay_holds_every_request_at_least_its_time():
    def slowest(dev: ProbeDevice, n: int = 5) -> float:
        took = []
        for _ in range(n):
            start = time.perf_counter()
            dev.handle(Request(IOREQ_TYPE_PIO, IOREQ_READ, 0x6100, 4), 0)
            took.append(time.perf_counter() - start)
        return min(took)

    delayed = ProbeDevice(PORTS, MMIO, BDF, fault=parse_fault("delay=3000"))
    assert slowest(delayed) >= 0.003
    assert slowest(ProbeDevice(PORTS, MMIO, BDF)) < 0.003   # the clean device does not wait
    before = time.perf_counter()
    delayed.handle(invalidate(), 0)                          # every request, invalidates too
    assert time.perf_counter() - before >= 0.003


def test_the_command_line_carries_the_fault_to_the_device():
    args = build_parser().parse_args(["--domid", "1", "--ports", "0x6100-0x610f", "--counters", "c",
                                      "--fault", "delay=50"])
    device, _, _ = build_device(args)
    assert device.fault == ProbeFault("delay", delay_us=50)
    args = build_parser().parse_args(["--domid", "1", "--ports", "0x6100-0x610f", "--counters", "c"])
    assert build_device(args)[0].fault is None


def test_a_claimed_range_overlapping_the_probes_own_ports_is_refused():
    args = build_parser().parse_args(["--domid", "1", "--ports", "0x6100-0x610f", "--counters", "c",
                                      "--fault", "claim-qemu-port=0x6108-0x6120"])
    with pytest.raises(ConfigError, match=r"--fault claim-qemu-port=0x6108-0x6120: overlaps"):
        build_device(args)


def test_a_bad_fault_exits_2_in_dom0_before_any_xen_call(tmp_path):
    result = subprocess.run([sys.executable, "-m", "xenhil.harness.probe_dm", "--domid", "1", "--ports",
                             "0x6100-0x610f", "--counters", str(tmp_path / "c.json"),
                             "--fault", "delay=forever"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--fault delay='forever'" in result.stderr and "e.g. delay=200" in result.stderr
    assert not (tmp_path / "c.json").exists()


def test_the_test_machine_passes_the_fault_in_canonical_form_and_refuses_a_bad_one():
    spec = ProbeSpec(((0x6100, 0x610F),), MMIO, "00:05.0", fault="claim-qemu-port=0x3F8-0x3FF")
    args = spec.arguments()
    assert args[args.index("--fault") + 1] == "claim-qemu-port=0x3f8-0x3ff"
    assert "--fault" not in ProbeSpec(((0x6100, 0x610F),)).arguments()
    with pytest.raises(ConfigError):
        ProbeSpec(((0x6100, 0x610F),), fault="nope").arguments()


def test_the_dom0_bundle_carries_the_faults_module():
    assert "harness/probe_dm/faults.py" in PACKAGE_FILES
    source = (REPO / "harness/probe_dm/faults.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    # dom0 has the standard library and the bundle's xenhil.harness.errors only
    assert all(line.split()[1] in ("__future__", "time", "dataclasses", "xenhil.harness.errors")
               for line in imports), imports
