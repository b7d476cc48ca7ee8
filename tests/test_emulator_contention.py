"""A virtual host's emulator contended for its machine's CPUs: found by its
command line, watched through the kernel's schedstat with real processes,
and a latency regression measured so refiled as infrastructure with the
busiest process named (issue 14, items 3 and 4)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from xenhil.harness.checks.latency import (LatencyOnContendedHost, measure_latency_watched,
                                           refile_on_contended_host)
from xenhil.harness.errors import INFRASTRUCTURE
from xenhil.harness.lab.virtual.contention import BusyProcess, CpuWait, EmulatorCpuWatch
from xenhil.harness.lab.virtual.launcher import VirtualHost, find_emulator, qemu_argv
from xenhil.harness.lab.virtual.quirks import EMULATOR_CPU_WAIT_CONTENDED, QEMU_BINARY
from xenhil.harness.probes import build_xhprobe

from tests.support.dry_run_guest import LocalDryRunGuest

SPIN_ON_CPU0 = "import os\nos.sched_setaffinity(0, {0})\nwhile True: pass"
SLEEP = "import time\ntime.sleep(120)"


@pytest.fixture
def processes():
    """Start Python processes with an argv of our choosing (``argv0``: what
    they are called, as bash's ``exec -a`` sets it); stopped by pid."""
    started = []

    def start(code: str, *argv: str, argv0: str | None = None) -> subprocess.Popen:
        command = [sys.executable, "-c", code, *argv]
        if argv0 is not None:
            command = ["bash", "-c", 'exec -a "$0" "$@"', argv0, *command]
        p = subprocess.Popen(command)
        started.append(p)
        # Until bash has exec'd, the process is still called bash: wait for
        # the command line it will be looked up by.
        wanted = (argv0 or sys.executable).encode()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")[0] != wanted:
            assert time.monotonic() < deadline, f"pid {p.pid} never became {wanted!r}"
            time.sleep(0.01)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()


def _looks_like_vhost(name: str, address: str) -> list[str]:
    """The arguments the launcher gives a virtual host's QEMU (qemu_argv),
    without the binary: what find_emulator reads."""
    host = VirtualHost(name=name, index=9, address=address, ssh_port=22, serial_port=5555,
                       bmc_port=623, directory=Path("/nonexistent") / name)
    return qemu_argv(host)[1:]


def test_the_emulator_is_found_by_its_name_and_its_address(processes):
    # The virtual lab's BMC carries QEMU's arguments after its own: found
    # first on the lab when only the arguments were read.
    processes(SLEEP, "--pidfile", "x", *_looks_like_vhost("vtest9", "127.0.0.99"))
    ours = processes(SLEEP, *_looks_like_vhost("vtest9", "127.0.0.99"), argv0=QEMU_BINARY)
    processes(SLEEP, *_looks_like_vhost("vtest9", "127.0.0.98"), argv0=QEMU_BINARY)   # another lab's
    assert find_emulator("vtest9", "127.0.0.99") == ours.pid
    assert find_emulator("vtest9", "127.0.0.97") is None
    assert find_emulator("vtest8", "127.0.0.99") is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no sched_setaffinity on this OS")
def test_an_emulator_that_shares_its_cpu_waits_and_its_rival_is_named(processes):
    emulator = processes(SPIN_ON_CPU0)
    rival = processes(SPIN_ON_CPU0)                  # same CPU, same nice: each gets about half
    watch = EmulatorCpuWatch("vtest9", emulator.pid).start()
    subprocess.run(["sleep", "2"], check=True)
    wait = watch.stop()
    assert wait is not None and wait.contended, wait
    assert wait.waited > EMULATOR_CPU_WAIT_CONTENDED and 0.2 < wait.ran <= 1.0
    assert rival.pid in [p.pid for p in wait.busiest], wait.busiest
    assert emulator.pid not in [p.pid for p in wait.busiest]        # itself is not "another process"
    assert f"QEMU pid {emulator.pid}" in str(wait) and f"pid {rival.pid}" in str(wait)


def test_an_emulator_that_sleeps_waits_for_nothing(processes):
    emulator = processes(SLEEP)
    watch = EmulatorCpuWatch("vtest9", emulator.pid).start()
    subprocess.run(["sleep", "1"], check=True)
    wait = watch.stop()
    assert wait is not None and wait.waited < 0.05 and not wait.contended


def test_an_emulator_gone_before_the_end_gives_no_figure(processes):
    emulator = processes(SLEEP)
    watch = EmulatorCpuWatch("vtest9", emulator.pid).start()
    os.kill(emulator.pid, signal.SIGKILL)
    emulator.wait()
    assert watch.stop() is None


# Hand-written figures (not measured): the refiling rule's inputs.
def _wait(waited: float) -> CpuWait:
    return CpuWait("vhost1", 976, 240.0, waited, 1.0, 2, [BusyProcess("pytest", 4242, 0.85)])


REGRESSION = ["vhost1 split=qnet+qall server=qall port 0x64: round-trip cost above baseline ..."]


def test_a_regression_measured_twice_on_a_contended_emulator_is_refiled_with_its_cause():
    with pytest.raises(LatencyOnContendedHost) as caught:
        refile_on_contended_host(REGRESSION, [_wait(0.87), _wait(0.9)], {"latency rows": "/x"})
    error = caught.value
    assert error.failure_class == INFRASTRUCTURE
    text = str(error)
    assert text.startswith("[infrastructure] refiled as infrastructure") and "pytest pid 4242 0.85 CPU" in text
    assert "measurement 1" in text and "measurement 2" in text and "server=qall" in text
    assert "evidence latency rows: /x" in text


@pytest.mark.parametrize("waits", [[_wait(0.87), _wait(0.1)], [_wait(0.1), _wait(0.9)],
                                   [_wait(0.87), None], [None, None], []],
                         ids=["second-had-its-cpus", "first-had-its-cpus", "second-not-watched",
                              "not-an-emulated-host", "nothing-watched"])
def test_a_regression_stays_a_product_failure_unless_every_measurement_was_contended(waits):
    refile_on_contended_host(REGRESSION, waits)      # returns: the caller fails it as product


def test_no_regression_is_never_refiled():
    refile_on_contended_host([], [_wait(0.9), _wait(0.9)])


@pytest.mark.parametrize("emulated", [True, False])
def test_a_measurement_on_a_virtual_host_keeps_its_emulators_wait(tmp_path, processes, emulated):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed: cannot build xhprobe")
    emulator = processes(SLEEP, *_looks_like_vhost("vtest9", "127.0.0.99"), argv0=QEMU_BINARY)
    probe = build_xhprobe(tmp_path / "xhprobe")
    host = SimpleNamespace(name="vtest9", spec=SimpleNamespace(
        address="127.0.0.99", profile=SimpleNamespace(emulated=emulated)))
    guest = LocalDryRunGuest(probe, tmp_path / "guest", host)
    rows, wait = measure_latency_watched(guest, {"0": 0x64}, count=200, probe=str(probe), check=False)
    assert [r.server for r in rows] == ["xen", "0"]
    saved = tmp_path / "guest" / "latency" / "emulator-cpu-wait.json"
    if emulated:
        assert wait is not None and wait.pid == emulator.pid
        assert json.loads(saved.read_text())["pid"] == emulator.pid
    else:
        assert wait is None and not saved.exists()
