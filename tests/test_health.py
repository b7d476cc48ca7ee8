"""Health checks and quarantine (issue 17, item 2) against real hosts: real
sshd servers (this machine has no Xen, so `xl info` fails on them: a host
that is not a dom0 fails its full check), a real IPMI BMC whose machine is
an sshd (a real power cycle), the xenhil CLI and pytest runs of the plugin.

A host whose check may honestly pass here is one whose inventory limits its
check to what it has (``health: {steps: [dom0-ssh, leftover-files]}``): the
other steps are reported as not applicable, never as passed."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

import xenhil.harness.lab.health as health
from xenhil.harness.lab.health import FAILED, NOT_APPLICABLE, NOT_RUN, PASSED, check_host
from xenhil.harness.lab.leases import (EVENT_INFRA_FAILURE, EVENT_QUARANTINED, EVENT_RELEASED, Holder,
                                       HostsQuarantined, Pool, open_store)
from xenhil.harness.lab.model import (HEALTH_STEPS, CredentialRef, HostSpec, Inventory, PowerConfig,
                                      SerialConfig)
from tests.support.bmc import (BMC_PASSWORD_ENV, BMC_USER, bmc_password, require_ipmitool,  # noqa: F401
                               running_bmc)
from tests.support.sshd import SSHD, SSHServer, fresh_sshd_server, sshd_factory, sshd_server  # noqa: F401

pytest_plugins = ["pytester"]

XENHIL = [sys.executable, "-m", "xenhil.harness.cli.main"]
REPO = Path(__file__).resolve().parent.parent
ME = Holder.current(run_id="health-test")
LIMITED = ("dom0-ssh", "leftover-files")


def _spec(name: str, server: SSHServer, steps=None, **kw) -> HostSpec:
    return HostSpec(name=name, address=server.address, ssh=server.ssh_config(), serial=None,
                    power=PowerConfig(kind="none"), health_steps=steps, **kw)


def _pool(tmp_path: Path, *specs: HostSpec) -> Pool:
    inventory = Inventory(path=tmp_path / "lab.yaml", hosts={s.name: s for s in specs})
    return Pool(open_store(str(tmp_path / "leases.sqlite")), inventory, ttl=60)


def _statuses(report) -> dict[str, str]:
    return {s.name: s.status for s in report.steps}


def test_the_schema_lists_the_health_steps_of_the_model():
    from xenhil.harness.lab.inventory import inventory_schema
    schema = inventory_schema()
    assert tuple(schema["$defs"]["health"]["properties"]["steps"]["items"]["enum"]) == HEALTH_STEPS


def test_a_host_without_xen_fails_at_xl_info_and_is_quarantined(sshd_factory, tmp_path):
    server, other = sshd_factory(), sshd_factory()
    pool = _pool(tmp_path, _spec("h1", server), _spec("h2", other, LIMITED))
    report = check_host(pool, "h1", ME, tmp_path / "art")
    assert not report.passed
    assert _statuses(report) == {
        "power-cycle": NOT_APPLICABLE, "xen-banner": NOT_APPLICABLE, "dom0-ssh": PASSED,
        "xl-info": FAILED, "guest": NOT_RUN, "leftover-domains": NOT_RUN,
        "leftover-device-models": NOT_RUN, "leftover-files": PASSED}
    assert report.step("power-cycle").detail == "power kind none: the host cannot be power-cycled"
    assert "xl info" in report.step("xl-info").detail and "not found" in report.step("xl-info").detail
    assert report.step("guest").detail == "needs xl-info, which failed"
    # Recorded: the report file, and the quarantine with the failing step.
    saved = json.loads(report.report_path.read_text())
    assert saved["passed"] is False and saved["steps"][3]["name"] == "xl-info"
    q = pool.store.quarantined()["h1"]
    assert q.reason.startswith("health check failed: xl-info: ") and q.run_id == "health-test"
    assert report.quarantine == q
    # Claims skip it; one that only it could serve fails at once.
    assert pool.claim(ME, timeout=5).host == "h2"
    with pytest.raises(HostsQuarantined, match="h1: quarantined since"):
        pool.claim(ME, host="h1", timeout=600)


def test_a_check_limited_to_what_the_host_has_passes_and_says_so(sshd_server, tmp_path):
    pool = _pool(tmp_path, _spec("h1", sshd_server, LIMITED))
    pool.quarantine_host("h1", "latched broken in an earlier run", ME)
    report = check_host(pool, "h1", ME, tmp_path / "art")
    assert report.passed
    statuses = _statuses(report)
    assert [n for n, s in statuses.items() if s == PASSED] == list(LIMITED)
    for name in set(HEALTH_STEPS) - set(LIMITED):           # never "passed"
        assert statuses[name] == NOT_APPLICABLE
        assert report.step(name).detail.startswith("not in this host's health profile")
    assert report.summary() == ("passed dom0-ssh, leftover-files (not applicable: power-cycle, "
                                "xen-banner, xl-info, guest, leftover-domains, "
                                "leftover-device-models)")
    # The pass returned it from quarantine, logged.
    assert pool.store.quarantined() == {}
    assert report.quarantine.reason == "latched broken in an earlier run"
    assert [e.kind for e in pool.store.host_events("h1")][-2:] == ["health-passed", EVENT_RELEASED]
    assert pool.claim(ME, timeout=0).host == "h1"


def test_a_stopped_sshd_fails_the_check_and_a_restarted_one_passes(fresh_sshd_server, tmp_path):
    pool = _pool(tmp_path, _spec("h1", fresh_sshd_server, LIMITED))
    fresh_sshd_server.kill()
    report = check_host(pool, "h1", ME, tmp_path / "art")
    assert not report.passed
    assert report.step("dom0-ssh").status == FAILED
    assert report.step("leftover-files").status == NOT_RUN
    assert "h1" in pool.store.quarantined()
    fresh_sshd_server.start()                   # same address, port and host key
    report = check_host(pool, "h1", ME, tmp_path / "art")
    assert report.passed, report.lines()
    assert pool.store.quarantined() == {}


def test_leftover_files_fail_the_check_with_the_fix(sshd_server, tmp_path, monkeypatch):
    leftovers = tmp_path / "var-lib-xenhil-guests"
    leftovers.mkdir()
    monkeypatch.setattr(health, "LEFTOVER_GLOBS", (f"{leftovers}/*", f"{tmp_path}/xenhil-probe-*"))
    pool = _pool(tmp_path, _spec("h1", sshd_server, LIMITED))
    assert check_host(pool, "h1", ME, tmp_path / "art").passed
    (leftovers / "xh-gw0-single-3.img").write_bytes(b"\0" * 1024)
    (tmp_path / "xenhil-probe-5-abcdef.json").write_text("{}")
    report = check_host(pool, "h1", ME, tmp_path / "art")
    step = report.step("leftover-files")
    assert step.status == FAILED
    assert f"{leftovers}/xh-gw0-single-3.img" in step.detail
    assert f"{tmp_path}/xenhil-probe-5-abcdef.json" in step.detail
    assert step.evidence["fix"].startswith("rm -f -- ")
    assert "h1" in pool.store.quarantined()


def _sshd_machine(workdir: Path) -> tuple[SSHServer, list[str]]:
    """An sshd that a BMC powers: its argv, and the server's keys and config."""
    server = SSHServer(workdir)
    with socket.socket() as s:
        s.bind((server.address, 0))
        server.port = s.getsockname()[1]
    server._write_config()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    return server, [SSHD, "-D", "-e", "-f", str(server.config_file)]


def _wait_for_port(server: SSHServer, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((server.address, server.port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_power_cycle_through_a_real_bmc_and_a_console_without_xens_banner(tmp_path, bmc_password):
    require_ipmitool()
    server, argv = _sshd_machine(tmp_path / "sshd")
    with running_bmc(tmp_path / "bmc", argv=argv, power_on=True) as bmc:
        _wait_for_port(server)
        power = PowerConfig(kind="ipmi", address=bmc.address, port=bmc.port, user=BMC_USER,
                            password=CredentialRef(env=BMC_PASSWORD_ENV))
        # Its serial console: the machine's own output (sshd's log), no Xen in it.
        serial = SerialConfig(kind="command", command=f"tail -n 0 -F {bmc.machine_log_path}")
        base = HostSpec(name="h1", address=server.address, ssh=server.ssh_config(), serial=serial,
                        power=power)
        full = replace(base, health_steps=("power-cycle", "xen-banner", "dom0-ssh",
                                           "leftover-files"))
        pool = _pool(tmp_path, full)
        before = bmc.machine_pid()
        report = check_host(pool, "h1", ME, tmp_path / "art", boot_timeout=8)
        assert report.step("power-cycle").status == PASSED, report.lines()
        assert report.step("power-cycle").evidence["power before"] == "on"
        assert bmc.machine_pid() not in (None, before)           # a new machine process
        banner = report.step("xen-banner")
        assert banner.status == FAILED and "XEN" in banner.detail, report.lines()
        assert "Server listening" in Path(banner.evidence["boot console"]).read_text()
        assert report.step("dom0-ssh").status == PASSED
        assert "after the power cycle" in report.step("dom0-ssh").detail
        assert not report.passed and "h1" in pool.store.quarantined()

        # Without the banner in its profile, and powered off first: powered on, passes.
        pool = _pool(tmp_path, replace(base, health_steps=("power-cycle", "dom0-ssh",
                                                           "leftover-files")))
        subprocess.run(["ipmitool", "-I", "lanplus", "-H", bmc.address, "-p", str(bmc.port),
                        "-U", BMC_USER, "-E", "chassis", "power", "off"], check=True,
                       env=dict(os.environ, IPMI_PASSWORD=bmc_password), capture_output=True)
        assert bmc.machine_pid() is None
        report = check_host(pool, "h1", ME, tmp_path / "art", boot_timeout=30)
        assert report.passed, report.lines()
        assert report.step("power-cycle").evidence == {"power before": "off",
                                                       "power action": "on (it was off)"}
        assert report.step("xen-banner").status == NOT_APPLICABLE
        assert pool.store.quarantined() == {}


# --- the CLI ---------------------------------------------------------------------------

def _ssh_entry(server: SSHServer) -> dict:
    return {"address": server.address, "port": server.port, "user": server.user,
            "key_file": str(server.client_key), "host_key": server.host_key}


def _write_lab(tmp_path: Path, hosts: list[dict]) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump({"lease_db": f"sqlite://{tmp_path / 'leases.sqlite'}",
                                    "hosts": hosts}, sort_keys=False))
    return path


def _xenhil(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(XENHIL + list(args), capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=dict(os.environ, COLUMNS="250"))


def test_lab_health_status_quarantine_and_unquarantine_commands(sshd_factory, tmp_path):
    a, b = sshd_factory(), sshd_factory()
    lab = _write_lab(tmp_path, [
        {"name": "h1", "address": a.address, "ssh": _ssh_entry(a), "power": {"kind": "none"}},
        {"name": "h2", "address": b.address, "ssh": _ssh_entry(b), "power": {"kind": "none"},
         "health": {"steps": list(LIMITED)}}])
    L = ("--lab", str(lab))
    checked = _xenhil("lab", "health", *L, "--artifacts", str(tmp_path / "art"))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    out = checked.stdout
    assert "h1: health check FAILED; quarantined since" in out
    assert "h2: health check PASSED; not quarantined" in out
    assert "xl-info                 failed" in out and "1 of 2 hosts failed" in out
    status = _xenhil("lab", "status", *L)
    assert status.returncode == 0, status.stderr
    assert "│ h1   │ quarantined" in status.stdout and "│ h2   │ free" in status.stdout
    assert "1 quarantined (claims skip them)" in status.stdout
    assert "h1: quarantined since" in status.stdout and "health check failed: xl-info" in status.stdout
    refused = _xenhil("reserve", *L, "--host", "h1", "--timeout", "600")
    assert refused.returncode == 1 and "every matching host is quarantined" in refused.stderr
    got = _xenhil("reserve", *L, "--timeout", "0")
    assert got.returncode == 0 and got.stdout.startswith("reserved h2"), got.stdout + got.stderr
    assert _xenhil("release", "h2", *L).returncode == 0

    assert _xenhil("lab", "unquarantine", "h1", *L).returncode == 2        # --reason is required
    back = _xenhil("lab", "unquarantine", "h1", *L, "--reason", "xl installed by hand")
    assert back.returncode == 0 and "WITHOUT a health check" in back.stdout, back.stdout
    status = _xenhil("lab", "status", *L).stdout
    assert "0 quarantined" in status and "│ h1   │ free" in status
    assert "h1  released  by " in status and "xl installed by hand" in status

    out = _xenhil("lab", "quarantine", "h2", *L, "--reason", "rack maintenance")
    assert out.returncode == 0 and "quarantined h2" in out.stdout
    assert "rack maintenance" in _xenhil("lab", "status", *L).stdout
    only = _xenhil("lab", "health", *L, "--quarantined", "--artifacts", str(tmp_path / "art"))
    assert only.returncode == 0, only.stdout + only.stderr
    assert "h2: health check PASSED; released from quarantine" in only.stdout
    assert "h1:" not in only.stdout                           # not quarantined: not checked
    assert "0 quarantined" in _xenhil("lab", "status", *L).stdout


# --- pytest runs -----------------------------------------------------------------------

RUN_ON_ONE = """
import pytest

@pytest.mark.requires_tags("one")
@pytest.mark.parametrize("n", range(3))
def test_needs_h1(host, n):
    assert host.ssh.run("true").exit_status == 0
"""

RUN_ANYWHERE = """
import os, pytest
from xenhil.harness.errors import InfrastructureError

def test_a(host):
    open(os.environ["HOSTS_USED"], "a").write(host.name + "\\n")

def test_b(host):
    open(os.environ["HOSTS_USED"], "a").write(host.name + "\\n")

def test_product_failure(host):
    open(os.environ["HOSTS_USED"], "a").write(host.name + "\\n")
    assert host.ssh.run("echo 1").stdout.strip() == "2", "a check on the product"

def test_infrastructure_failure(host):
    open(os.environ["HOSTS_USED"], "a").write(host.name + "\\n")
    raise InfrastructureError("the guest console stalled")
"""


def test_a_run_quarantines_a_dead_host_the_next_run_skips_it_and_a_check_returns_it(
        sshd_factory, pytester: pytest.Pytester, tmp_path, monkeypatch):
    dead, good = sshd_factory(), sshd_factory()
    dead.kill()                                # a host made to fail: dom0's SSH is gone
    lab = _write_lab(tmp_path, [
        {"name": "h1", "address": dead.address, "tags": ["one"], "ssh": _ssh_entry(dead),
         "power": {"kind": "none"}, "health": {"steps": list(LIMITED)}},
        {"name": "h2", "address": good.address, "tags": ["two"], "ssh": _ssh_entry(good),
         "power": {"kind": "none"}, "health": {"steps": list(LIMITED)}}])
    common = ["--lab", str(lab), "--reserve-timeout", "600", "-p", "no:cacheprovider",
              "--artifacts", str(tmp_path / "artifacts")]

    # Run 1, two workers: the first test latches h1 broken (no SSH, no power
    # to cycle it), which quarantines it; the others fail at once at their
    # claim; the run's end health-checks h1, which still fails.
    pytester.makepyfile(test_one=RUN_ON_ONE)
    began = time.monotonic()
    run = pytester.runpytest_subprocess("-n", "2", *common)
    assert time.monotonic() - began < 240          # nobody waited for the 600 s reservation
    run.assert_outcomes(errors=3)
    text = run.stdout.str()
    assert "HostsQuarantined" in text or "every matching host is quarantined" in text
    assert "xenhil health checks of the hosts this run quarantined" in text
    assert "h1: health check FAILED: stays quarantined" in text
    store = open_store(str(tmp_path / "leases.sqlite"))
    q = store.quarantined()["h1"]
    assert q.reason.startswith("health check failed: dom0-ssh: ")
    kinds = [e.kind for e in store.host_events("h1")]
    assert kinds[:2] == [EVENT_INFRA_FAILURE, EVENT_QUARANTINED]
    assert store.host_events("h1")[1].reason.startswith("latched broken in run ")
    status = _xenhil("lab", "status", "--lab", str(lab)).stdout
    assert "│ h1   │ quarantined" in status and "health check failed: dom0-ssh" in status

    # Run 2: every test lands on h2; a product failure does not count against
    # it, an infrastructure failure counts once (below the threshold).
    used = tmp_path / "hosts-used"
    monkeypatch.setenv("HOSTS_USED", str(used))
    (pytester.path / "test_one.py").unlink()
    pytester.makepyfile(test_any=RUN_ANYWHERE)
    run = pytester.runpytest_subprocess("-n", "2", *common)
    run.assert_outcomes(passed=2, failed=2)
    assert used.read_text().split() == ["h2"] * 4
    h2 = store.host_events("h2")
    assert [e.kind for e in h2] == [EVENT_INFRA_FAILURE], h2
    assert "test_infrastructure_failure" in h2[0].reason and "console stalled" in h2[0].reason
    assert "h2" not in store.quarantined()
    assert "health checks of the hosts this run quarantined" not in run.stdout.str()

    # Repaired (sshd back), a passing check returns h1; a run uses it again.
    dead.start()
    checked = _xenhil("lab", "health", "h1", "--lab", str(lab), "--artifacts",
                      str(tmp_path / "art"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "h1: health check PASSED; released from quarantine" in checked.stdout
    assert store.quarantined() == {}
    (pytester.path / "test_any.py").unlink()
    pytester.makepyfile(test_one=RUN_ON_ONE)
    pytester.runpytest_subprocess(*common).assert_outcomes(passed=3)
    store.close()


def test_no_health_check_leaves_the_quarantine_for_later(sshd_factory, pytester, tmp_path):
    dead = sshd_factory()
    dead.kill()
    lab = _write_lab(tmp_path, [
        {"name": "h1", "address": dead.address, "tags": ["one"], "ssh": _ssh_entry(dead),
         "power": {"kind": "none"}, "health": {"steps": list(LIMITED)}}])
    pytester.makepyfile(test_one=RUN_ON_ONE)
    run = pytester.runpytest_subprocess("--lab", str(lab), "--no-health-check",
                                        "-p", "no:cacheprovider",
                                        "--artifacts", str(tmp_path / "artifacts"))
    run.assert_outcomes(errors=3)
    assert "health checks of the hosts this run quarantined" not in run.stdout.str()
    store = open_store(str(tmp_path / "leases.sqlite"))
    assert store.quarantined()["h1"].reason.startswith("latched broken in run ")
    assert [e.kind for e in store.host_events("h1")] == [EVENT_INFRA_FAILURE, EVENT_QUARANTINED]


def test_leftover_device_models_are_processes_serving_no_domain(sshd_server, tmp_path):
    """Real processes on a real host, found over SSH by their arguments: a
    device model (`-xen-domid N`) or probe (`harness.probe_dm --domid N`)
    for a domain that does not exist is left over; dom0's own disk backend
    (`-xen-domid 0`) and a live domain's device model are not."""
    from xenhil.harness.host import Host
    argvs = [["sh", "-c", "sleep 120", "qemu-system-i386", "-xen-domid", "71", "-nodefaults"],
             ["sh", "-c", "sleep 120", "qemu-system-i386", "-xen-domid", "0", "-xen-attach"],
             ["sh", "-c", "sleep 120", "python3", "-m", "xenhil.harness.probe_dm", "--domid", "72"],
             ["sh", "-c", "sleep 120", "qemu-system-i386", "-xen-domid", "73"]]
    procs = [subprocess.Popen(argv) for argv in argvs]
    try:
        spec = _spec("h1", sshd_server, LIMITED)
        check = health.HealthCheck(Host(spec, tmp_path / "h1"), tmp_path / "art")
        check._live_domids = {0, 73}            # what `xl list` would have said
        with pytest.raises(health.StepFailed) as info:
            check._leftover_device_models()
        found = info.value.detail
        assert f"device model pid {procs[0].pid} for domain 71, which does not exist" in found
        assert f"probe ioreq server pid {procs[2].pid} for domain 72" in found
        assert str(procs[1].pid) not in found and str(procs[3].pid) not in found
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    check._live_domids = {0}
    assert check._leftover_device_models()[0].startswith("no device model")


def test_a_host_returned_during_the_run_is_tried_again(sshd_server, tmp_path):
    from xenhil.fixtures.health import watch
    from xenhil.harness.host import HostState
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.lab.lab import Lab
    from xenhil.harness.lab.leases import Holder
    lab_file = _write_lab(tmp_path, [{"name": "h1", "address": sshd_server.address,
                                      "ssh": _ssh_entry(sshd_server), "power": {"kind": "none"}}])
    # The run's Lab as fixtures.lab.open_lab makes it: the health bookkeeping wired in.
    lab = Lab(load_inventory(lab_file), ttl=60.0, artifacts=tmp_path / "art",
              holder=Holder.current(run_id="run-returned", worker="main"))
    watch(lab)
    try:
        lease = lab.claim(set(), {}, timeout=5)
        machine = lab.host_object("h1")
        machine.mark_broken("ensure_ready: power cycle failed")     # the run latches it
        lab.release(lease)
        q = lab.pool.store.quarantined()["h1"]
        assert q.reason == ("latched broken in run run-returned: ensure_ready: power cycle "
                            "failed") and q.infra_failures == 1
        with pytest.raises(HostsQuarantined):
            lab.claim(set(), {}, timeout=600)
        lab.pool.unquarantine_host("h1", "checked by hand", ME)
        lease = lab.claim(set(), {}, timeout=5)
        assert machine.state is not HostState.BROKEN            # forgotten: tried again
        machine.ensure_ready()
        lab.release(lease)
        assert lab.pool.store.quarantined() == {}
    finally:
        lab.close()
