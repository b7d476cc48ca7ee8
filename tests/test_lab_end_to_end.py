"""The lab as a developer uses it: an inventory whose host is a real sshd and
a real IPMI BMC, driven through the xenhil CLI and through pytest's ``host``
fixture under xdist."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.bmc import BMC_PASSWORD_ENV, BMC_USER, bmc_password, require_ipmitool, running_bmc  # noqa: F401
from tests.support.sshd import running_sshd

pytest_plugins = ["pytester"]

XENHIL = [sys.executable, "-m", "xenhil.harness.cli.main"]


@pytest.fixture
def real_lab(tmp_path: Path, bmc_password: str):
    """One host: SSH to a real sshd, power through a real BMC (machine: sleep)."""
    require_ipmitool()
    with running_sshd(tmp_path / "sshd") as sshd, \
            running_bmc(tmp_path / "bmc", power_on=True) as bmc:
        inventory = {
            "lease_db": f"sqlite://{tmp_path / 'leases.sqlite'}",
            "hosts": [{
                "name": "h1", "address": sshd.address, "tags": ["loopback"],
                "capabilities": {"cpu_vendor": "amd", "virt": "svm"},
                "ssh": {"address": sshd.address, "port": sshd.port, "user": sshd.user,
                        "key_file": str(sshd.client_key), "host_key": sshd.host_key},
                "power": {"kind": "ipmi", "address": bmc.address, "port": bmc.port,
                          "user": BMC_USER, "password": {"env": BMC_PASSWORD_ENV}},
            }],
        }
        path = tmp_path / "lab.yaml"
        path.write_text(yaml.safe_dump(inventory, sort_keys=False))
        yield path


def _xenhil(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(XENHIL + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parent.parent)


def test_lab_check_accepts_the_inventory(real_lab: Path) -> None:
    result = _xenhil("lab", "check", str(real_lab))
    assert result.returncode == 0, result.stderr
    assert "OK: 1 hosts" in result.stdout


def test_host_run_passes_the_exit_status_through(real_lab: Path) -> None:
    result = _xenhil("host", "run", "h1", "--lab", str(real_lab), "--",
                     "sh", "-c", "echo \"it's here\"; echo oops >&2; exit 7")
    assert result.returncode == 7
    assert result.stdout == "it's here\n"
    assert "oops" in result.stderr


def test_power_status_and_cycle_through_the_bmc(real_lab: Path) -> None:
    assert _xenhil("power", "h1", "status", "--lab", str(real_lab)).stdout.strip() == "h1: on"
    cycled = _xenhil("power", "h1", "cycle", "--lab", str(real_lab))
    assert cycled.returncode == 0, cycled.stderr
    off = _xenhil("power", "h1", "off", "--lab", str(real_lab))
    assert off.returncode == 0, off.stderr
    assert _xenhil("power", "h1", "status", "--lab", str(real_lab)).stdout.strip() == "h1: off"


def test_reserve_status_release(real_lab: Path) -> None:
    got = _xenhil("reserve", "--lab", str(real_lab), "--host", "h1", "--timeout", "5")
    assert got.returncode == 0, got.stderr
    status = _xenhil("lab", "status", "--lab", str(real_lab))
    assert "h1" in status.stdout and "interactive" in status.stdout
    busy = _xenhil("reserve", "--lab", str(real_lab), "--tag", "loopback", "--timeout", "0")
    # Same person asking again for a host it holds: extended, not refused.
    assert busy.returncode in (0, 1)
    released = _xenhil("release", "h1", "--lab", str(real_lab))
    assert released.returncode == 0, released.stderr


TWO_WORKERS = """
import json, os, time, pytest

@pytest.mark.parametrize("n", range(6))
def test_uses_the_host(host, n):
    t0 = host.ssh.run("date +%s.%N", check=True).stdout.strip()
    time.sleep(0.3)
    t1 = host.ssh.run("date +%s.%N", check=True).stdout.strip()
    with open(os.environ["INTERVALS"], "a") as fh:
        fh.write(json.dumps({"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
                             "host": host.name, "start": float(t0), "end": float(t1)}) + "\\n")
"""


def test_two_workers_on_one_host_take_turns_and_all_tests_run(
        real_lab: Path, pytester: pytest.Pytester, monkeypatch, tmp_path: Path) -> None:
    intervals = tmp_path / "intervals.jsonl"
    monkeypatch.setenv("INTERVALS", str(intervals))
    pytester.makepyfile(test_two=TWO_WORKERS)
    result = pytester.runpytest_subprocess("-n", "2", "--lab", str(real_lab),
                                           "--reserve-timeout", "120", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    rows = [json.loads(line) for line in intervals.read_text().splitlines()]
    assert {r["worker"] for r in rows} == {"gw0", "gw1"}       # both workers ran tests
    rows.sort(key=lambda r: r["start"])
    for before, after in zip(rows, rows[1:]):                   # never two at once
        assert before["end"] <= after["start"], (before, after)


HOLDS_THE_HOST = """
import time
def test_holds(host):
    open(__import__("os").environ["STARTED"], "w").close()
    time.sleep(120)
"""


def _as_started_from_a_terminal() -> None:
    # A shell without job control starts background jobs with SIGINT ignored,
    # and the child inherits that (then Python installs no KeyboardInterrupt
    # handler and the Ctrl-C below does nothing): the framework's tests run
    # from nohup or cron hung here.  Ctrl-C comes from a terminal, so start
    # the run the way a terminal does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_releases_the_lease(real_lab: Path, pytester: pytest.Pytester, tmp_path: Path) -> None:
    started = tmp_path / "started"
    pytester.makepyfile(test_hold=HOLDS_THE_HOST)
    env = dict(os.environ, STARTED=str(started))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "--lab", str(real_lab), "-p",
                             "no:cacheprovider", "-q"], cwd=pytester.path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_as_started_from_a_terminal)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the test never got its host"
            time.sleep(0.1)
        held = _xenhil("lab", "status", "--lab", str(real_lab)).stdout
        assert "pid" in held or str(proc.pid) in held, held
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the run did not stop within 60 s of Ctrl-C; it printed:\n"
                        + proc.communicate()[0])
    finally:
        if proc.poll() is None:
            proc.kill()
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.lab.leases import Pool, open_store, resolve_store_url
    inventory = load_inventory(real_lab)
    pool = Pool(open_store(resolve_store_url(None, inventory)), inventory)
    assert [lease for _, lease in pool.status()] == [None]
