"""xenhil.harness.access.power against a real BMC (harness.lab.virtual.bmc on
loopback, powering ``sleep 1000``) driven by the real ipmitool; CommandPower
with real local commands; SSHRebootPower against a real sshd."""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from xenhil.harness.access.power import (CommandPower, IPMIPower, NoPower, PowerAuthError,
                                         SSHRebootPower, power_for)
from xenhil.harness.access.ssh import SSHConnection
from xenhil.harness.errors import ConfigError, PowerError, TestBugError
from xenhil.harness.lab.model import CredentialRef, HostSpec, PowerConfig, SSHConfig
from xenhil.harness.lab.virtual.bmc import ProcessMachine, stop_bmc_pidfile
from tests.support.bmc import (BMC_PASSWORD_ENV, free_udp_port, ipmitool_argv,  # noqa: F401
                               power_config, require_ipmitool, running_bmc, bmc_password,
                               virtual_bmc)
from tests.support.sshd import fresh_sshd_server  # noqa: F401


def alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def group_exists(pgid: int) -> bool:
    """True when a live (non-zombie) process is in process group ``pgid``.
    Zombies are ignored: orphans are reaped by pid 1 whenever it gets to it."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def fast(driver):
    """Shorter retry pauses for tests (the behaviour is the same)."""
    driver.retry_delay = 0.1
    driver.settle_poll = 0.1
    return driver


def ipmitool(bmc, *args, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(ipmitool_argv(bmc, *args), capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, IPMI_PASSWORD=password))


# --- IPMI against the real BMC -------------------------------------------------

def test_ipmi_status_on_cycle_off_drive_the_machine(virtual_bmc, bmc_password, caplog):
    caplog.set_level(logging.DEBUG)
    power = fast(IPMIPower("vhost1", power_config(virtual_bmc)))
    assert power.state == "unknown"
    assert power.status() == "off"
    assert virtual_bmc.machine_pid() is None

    power.on()
    assert power.state == "on"
    assert power.status() == "on"
    first = virtual_bmc.machine_pid()
    assert first is not None and alive(first)
    assert cmdline(first) == ["sleep", "1000"]
    assert os.getpgid(first) == first  # the machine leads its own process group

    power.cycle()
    second = virtual_bmc.machine_pid()
    assert second is not None and second != first
    assert alive(second) and not alive(first)
    assert power.status() == "on"

    power.off()
    assert power.state == "off"
    assert power.status() == "off"
    assert not alive(second)
    assert not group_exists(second)
    assert virtual_bmc.machine_pid() is None
    # the password went through the environment only: never on argv, never logged
    assert bmc_password not in " ".join(power.command("chassis", "power", "status"))
    assert bmc_password not in caplog.text
    assert "chassis power" in caplog.text  # the steps did log


def test_ipmi_cycle_of_a_host_that_is_off_powers_it_on(virtual_bmc, bmc_password):
    # Like many real BMCs, this one refuses "cycle" while off (0xd5) ...
    refused = ipmitool(virtual_bmc, "chassis", "power", "cycle", password=bmc_password)
    assert refused.returncode != 0
    assert "not supported in present state" in refused.stderr
    # ... so the driver powers on instead: "cycle for a fresh boot" works from off too.
    power = fast(IPMIPower("vhost1", power_config(virtual_bmc)))
    power.cycle()
    assert power.status() == "on"
    assert alive(virtual_bmc.machine_pid())


def test_plain_ipmitool_drives_the_bmc_like_a_real_server(virtual_bmc, bmc_password):
    def run(*args):
        proc = ipmitool(virtual_bmc, "chassis", "power", *args, password=bmc_password)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert run("status").strip() == "Chassis Power is off"
    assert "Up/On" in run("on")
    assert run("status").strip() == "Chassis Power is on"
    before = virtual_bmc.machine_pid()
    assert "Cycle" in run("cycle")
    after_cycle = virtual_bmc.machine_pid()
    assert after_cycle != before and alive(after_cycle) and not alive(before)
    assert "Reset" in run("reset")
    after_reset = virtual_bmc.machine_pid()
    assert after_reset != after_cycle and alive(after_reset)
    assert "Down/Off" in run("off")
    assert not alive(after_reset)
    assert run("status").strip() == "Chassis Power is off"


def test_wrong_password_is_a_clear_error_without_the_password(virtual_bmc, bmc_password,
                                                               caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + bmc_password[3:12]  # as long as a real one (IPMI: at most 20 bytes)
    secret_file = tmp_path / "bmc-password"
    secret_file.write_text(wrong + "\n")
    power = fast(IPMIPower("vhost1", power_config(virtual_bmc, CredentialRef(file=secret_file))))
    with pytest.raises(PowerAuthError) as caught:
        power.status()
    text = str(caught.value)
    assert f"rejected user 'admin'" in text
    assert "wrong user name or password" in text
    assert str(secret_file) in text  # names where the password came from
    assert power.state == "unknown"
    for secret in (wrong, bmc_password):
        assert secret not in text
        assert secret not in caplog.text
    # an authentication failure is not retried: no "attempt n of m" warnings
    assert "attempt" not in caplog.text
    assert virtual_bmc.machine_pid() is None


def test_credential_file_is_read_at_call_time(virtual_bmc, bmc_password, tmp_path):
    secret_file = tmp_path / "bmc-password"
    power = fast(IPMIPower("vhost1", power_config(virtual_bmc, CredentialRef(file=secret_file))))
    with pytest.raises(ConfigError, match="cannot be read"):
        power.status()
    secret_file.write_text(bmc_password + "\n")
    assert power.status() == "off"


def test_bmc_not_listening_fails_after_bounded_retries(bmc_password, caplog):
    require_ipmitool()
    config = PowerConfig(kind="ipmi", address="127.0.0.6", port=free_udp_port("127.0.0.6"),
                         user="admin", password=CredentialRef(env=BMC_PASSWORD_ENV))
    power = IPMIPower("vhost9", config, attempts=2, retry_delay=0.1, ipmi_timeout=1,
                      ipmi_retries=1)
    with pytest.raises(PowerError) as caught:
        power.on()
    text = str(caught.value)
    assert "power on of vhost9 failed after 2 attempts" in text
    assert "Unable to establish IPMI v2 / RMCP+ session" in text  # ipmitool's stderr tail
    assert f"127.0.0.6:{config.port}" in text  # the help names the BMC
    assert not isinstance(caught.value, PowerAuthError)
    assert "attempt 1 of 2" in caplog.text and "attempt 2 of 2" in caplog.text
    assert bmc_password not in text + caplog.text


def test_ipmi_password_longer_than_20_bytes_is_a_config_error(monkeypatch):
    monkeypatch.setenv("XENHIL_LONG_PASSWORD", "x" * 21)
    power = IPMIPower("h1", PowerConfig(kind="ipmi", address="127.0.0.5", user="admin",
                                        password=CredentialRef(env="XENHIL_LONG_PASSWORD")))
    with pytest.raises(ConfigError, match="longer than 20 bytes") as caught:
        power.status()
    assert "x" * 21 not in str(caught.value)


def test_ipmi_config_without_password_is_a_config_error():
    with pytest.raises(ConfigError, match=r"host h1: power.password is missing"):
        IPMIPower("h1", PowerConfig(kind="ipmi", address="127.0.0.5", user="admin"))


# --- the BMC daemon's own lifecycle ----------------------------------------------

def test_bmc_exits_on_sigterm_leaving_no_machine(virtual_bmc, bmc_password):
    power = fast(IPMIPower("vhost1", power_config(virtual_bmc)))
    power.on()
    machine = virtual_bmc.machine_pid()
    assert alive(machine)
    virtual_bmc.popen.send_signal(signal.SIGTERM)
    assert virtual_bmc.popen.wait(timeout=30) == 0
    assert not alive(machine)
    assert not group_exists(machine)
    assert not virtual_bmc.pidfile.exists()
    assert not virtual_bmc.machine_pidfile.exists()


def test_stop_by_pidfile_stops_bmc_and_machine(virtual_bmc, bmc_password):
    # What `lab down` does from another process: only the pid files are known.
    fast(IPMIPower("vhost1", power_config(virtual_bmc))).on()
    machine = virtual_bmc.machine_pid()
    stop_bmc_pidfile(virtual_bmc.pidfile, virtual_bmc.machine_pidfile)
    assert virtual_bmc.popen.wait(timeout=30) == 0
    assert not alive(machine)


def test_stop_by_stale_pidfile_signals_nobody(tmp_path):
    # A pid file left over from an old run must not kill whoever has that pid now.
    bystander = subprocess.Popen(["sleep", "1000"])
    try:
        pidfile = tmp_path / "bmc.pid"
        pidfile.write_text(f"{bystander.pid}\n")
        stop_bmc_pidfile(pidfile)
        assert bystander.poll() is None
        assert not pidfile.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_bmc_that_cannot_bind_reports_why(tmp_path, bmc_password):
    import socket
    from xenhil.harness.lab.virtual.bmc import BMCError, start_bmc_process
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.5", 0))
        port = taken.getsockname()[1]
        with pytest.raises(BMCError, match=rf"127.0.0.5:{port} did not start"):
            start_bmc_process("127.0.0.5", port, "admin", BMC_PASSWORD_ENV, ["sleep", "1000"],
                              tmp_path, ready_timeout=30)


def test_bmc_refuses_to_start_without_its_password_variable(tmp_path, monkeypatch):
    from xenhil.harness.lab.virtual.bmc import main
    monkeypatch.delenv("XENHIL_NO_SUCH_PASSWORD", raising=False)
    with pytest.raises(SystemExit) as caught:
        main(["--address", "127.0.0.5", "--user", "admin", "--password-env",
              "XENHIL_NO_SUCH_PASSWORD", "--log", str(tmp_path / "log"), "--", "true"])
    assert caught.value.code == 2


def test_process_machine_kills_its_whole_group(tmp_path):
    # A machine that forks (as QEMU's helpers would): power off leaves no child behind.
    child_pidfile = tmp_path / "child.pid"
    machine = ProcessMachine(["sh", "-c", f"sleep 1000 & echo $! > {shlex.quote(str(child_pidfile))}; wait"],
                             tmp_path / "machine.log", stop_grace=2)
    machine.start()
    try:
        leader = machine.pid
        for _ in range(200):
            if child_pidfile.exists() and child_pidfile.read_text().strip():
                break
            time.sleep(0.02)
        child = int(child_pidfile.read_text())
        assert alive(child) and os.getpgid(child) == leader
    finally:
        machine.stop()
    assert not machine.is_running()
    assert not alive(leader) and not alive(child)
    assert not group_exists(leader)


# --- CommandPower with real local commands ----------------------------------------

PDU_SCRIPT = """\
#!/bin/sh
# A tiny "PDU": action and state file; every action is logged.
state="$2"
echo "$1" >> "$state.log"
case "$1" in
  on)  echo on > "$state" ;;
  off) echo off > "$state" ;;
  status) printf 'outlet 3: %s\\n' "$(cat "$state" 2>/dev/null || echo off)" ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def pdu(tmp_path):
    folder = tmp_path / "pdu dir"  # a space: the command lines must be quoted properly
    folder.mkdir()
    script = folder / "pdu.sh"
    script.write_text(PDU_SCRIPT)
    state = folder / "outlet state"
    commands = {action: shlex.join(["sh", str(script), action, str(state)])
                for action in ("on", "off", "status")}
    return commands, state


def test_command_power_runs_local_commands(pdu):
    commands, state = pdu
    power = fast(CommandPower("pduhost", commands))
    assert power.status() == "off"
    power.on()
    assert state.read_text().strip() == "on"
    assert power.status() == "on"
    power.cycle()  # no cycle command: off then on
    power.off()
    assert power.status() == "off"
    log = Path(f"{state}.log").read_text().split()
    assert log == ["status", "on", "status", "status", "off", "on", "off", "status", "status"]


def test_command_power_failure_is_retried_then_reported(tmp_path):
    failing = shlex.join(["sh", "-c", "echo outlet busy >&2; exit 3"])
    power = fast(CommandPower("pduhost", {"on": failing}, attempts=2))
    with pytest.raises(PowerError) as caught:
        power.on()
    text = str(caught.value)
    assert "failed after 2 attempts" in text and "exited 3" in text and "outlet busy" in text


def test_command_power_unparseable_status_and_missing_action(tmp_path):
    power = fast(CommandPower("pduhost", {"status": "echo outlet is in an odd mood"}))
    with pytest.raises(PowerError, match="cannot tell on/off"):
        power.status()
    with pytest.raises(PowerError) as caught:
        power.off()
    assert "power.commands.off" in str(caught.value)
    with pytest.raises(PowerError, match="not found"):
        CommandPower("pduhost", {"on": "/nonexistent/pdu on"}).on()


def test_command_power_bad_commands_are_config_errors():
    with pytest.raises(ConfigError, match="unknown action"):
        CommandPower("pduhost", {"boot": "true"})
    with pytest.raises(ConfigError, match="cannot be split"):
        CommandPower("pduhost", {"on": "pdu 'unclosed"})


# --- NoPower and power_for ----------------------------------------------------------

@pytest.mark.parametrize("action", ["status", "on", "off", "cycle"])
def test_no_power_refuses_every_action_with_advice(action):
    with pytest.raises(PowerError) as caught:
        getattr(NoPower("bare"), action)()
    assert "host has no power control" in str(caught.value)
    assert caught.value.help == "power-cycle it by hand or add a power section"


def _host(power: PowerConfig) -> HostSpec:
    return HostSpec(name="h1", address="127.0.0.1", ssh=SSHConfig(address="127.0.0.1"),
                    serial=None, power=power)


def test_power_for_picks_the_driver_of_the_inventory_kind():
    ipmi = PowerConfig(kind="ipmi", address="127.0.0.5", user="admin",
                       password=CredentialRef(env=BMC_PASSWORD_ENV))
    assert isinstance(power_for(_host(ipmi)), IPMIPower)
    assert isinstance(power_for(_host(PowerConfig(kind="command", commands={"on": "true"}))),
                      CommandPower)
    assert isinstance(power_for(_host(PowerConfig(kind="none"))), NoPower)
    assert isinstance(power_for(_host(PowerConfig(kind="ssh-reboot")), ssh_factory=lambda: None),
                      SSHRebootPower)
    with pytest.raises(TestBugError, match="no SSH connection factory"):
        power_for(_host(PowerConfig(kind="ssh-reboot")))
    with pytest.raises(ConfigError, match="unknown power.kind 'pdu'"):
        power_for(_host(PowerConfig(kind="pdu")))


# --- SSHRebootPower against a real sshd -----------------------------------------------

def test_ssh_reboot_tolerates_the_connection_drop(fresh_sshd_server):
    factory = lambda: SSHConnection(fresh_sshd_server.ssh_config(), name="sshhost", retries=1)
    # The "reboot" here kills the SSH session under the command, as a real
    # reboot does (never run a real reboot on the test machine).
    power = SSHRebootPower("sshhost", factory, reboot_command="kill -9 $PPID; sleep 5")
    assert power.status() == "on"
    power.cycle()
    assert power.state == "unknown"
    fresh_sshd_server.kill()
    assert power.status() == "unknown"
    with pytest.raises(PowerError, match="cannot reach it over SSH"):
        power.cycle()


def test_ssh_reboot_that_fails_and_on_off_are_errors(fresh_sshd_server):
    factory = lambda: SSHConnection(fresh_sshd_server.ssh_config(), name="sshhost", retries=1)
    power = SSHRebootPower("sshhost", factory,
                           reboot_command="echo 'reboot: must be superuser.' >&2; exit 1")
    with pytest.raises(PowerError) as caught:
        power.cycle()
    assert "exited 1" in str(caught.value) and "must be superuser" in str(caught.value)
    for action in ("on", "off"):
        with pytest.raises(PowerError, match="only ssh-reboot power"):
            getattr(power, action)()


# --- Serial over LAN through the BMC, to a real shell behind a TCP serial ----------

def test_ipmitool_sol_reaches_the_machine_serial(tmp_path, bmc_password):
    require_ipmitool()
    import pexpect
    from tests.support.console_server import socat_shell
    with socat_shell(tmp_path) as serial, \
            running_bmc(tmp_path / "bmc", sol_tcp=(serial.host, serial.port)) as bmc:
        argv = ipmitool_argv(bmc, "sol", "activate")
        env = dict(os.environ, IPMI_PASSWORD=bmc_password)
        # Off: nothing to attach to, the BMC refuses the payload.
        refused = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                                 stdin=subprocess.DEVNULL)
        assert refused.returncode != 0
        fast(IPMIPower("vhost1", power_config(bmc))).on()
        sol = pexpect.spawn(argv[0], argv[1:], env=env, timeout=30, encoding="utf-8")
        try:
            sol.expect_exact("SOL Session operational")
            sol.expect_exact("$ ")  # the shell is up (input before it could be flushed)
            # pyghmi's BMC loses a SOL packet now and then on a loaded machine
            # (seen in CI under -n 2); a user would type the line again.
            for attempt in range(3):
                sol.send("echo sol-$((6*7))\r")
                if sol.expect_exact(["sol-42", pexpect.TIMEOUT], timeout=20) == 0:
                    break
            else:
                raise AssertionError(f"no answer over SOL after 3 tries; seen: {sol.before[-500:]!r}")
            sol.send("\r~.")  # ipmitool's escape: deactivate and exit
            sol.expect(pexpect.EOF)
        finally:
            sol.close(force=True)
        assert "SOL activated" in bmc.log_path.read_text()


@pytest.fixture
def toy_power_kind(monkeypatch):
    """tests/support/toy_power_kind.py registered in a copy of the registry,
    with the inventory schema made again from it; both restored after."""
    import importlib
    import sys

    from xenhil.harness.access.power import driver
    from xenhil.harness.lab import inventory
    monkeypatch.setattr(driver.POWER_KINDS, "_classes", dict(driver.POWER_KINDS._classes))
    inventory.inventory_schema.cache_clear()
    inventory._validator.cache_clear()
    sys.modules.pop("tests.support.toy_power_kind", None)
    module = importlib.import_module("tests.support.toy_power_kind")
    yield module.LocalProcessPower
    sys.modules.pop("tests.support.toy_power_kind", None)
    monkeypatch.undo()
    inventory.inventory_schema.cache_clear()
    inventory._validator.cache_clear()


def test_a_new_power_kind_is_one_file_and_its_registration(toy_power_kind, tmp_path):
    """The toy kind's file alone makes the inventory take its fields (and
    refuse them elsewhere, and name its missing ones with its fix) and makes
    power_for drive it, for real: a local `sleep` powered on, seen on, off."""
    from xenhil.harness.access.power import power_kinds
    from xenhil.harness.lab.inventory import InventoryError, load_inventory
    assert "local-process" in power_kinds()
    pidfile = tmp_path / "host.pid"
    host = ("hosts:\n  - name: toy1\n    address: 127.0.0.1\n    ssh: none\n"
            "    power: {kind: local-process, command: sleep 1000, pidfile: %s%s}\n")
    lab = tmp_path / "lab.yaml"
    lab.write_text(host % (pidfile, ""))
    spec = load_inventory(lab).host("toy1")
    power = power_for(spec)
    assert isinstance(power, toy_power_kind)
    try:
        power.on()
        assert power.status() == "on"
        pid = int(pidfile.read_text())
        power.off()
        assert power.status() == "off" and not alive(pid)
    finally:
        power.off()

    lab.write_text(host.replace("command: sleep 1000, ", "") % (pidfile, ""))
    with pytest.raises(InventoryError) as missing:
        load_inventory(lab)
    assert "command" in str(missing.value) and "needs command: and pidfile:" in str(missing.value)
    lab.write_text(host % (pidfile, ", user: admin"))
    with pytest.raises(InventoryError) as foreign:
        load_inventory(lab)
    assert "field 'user' is not used by power kind 'local-process'" in str(foreign.value)
    lab.write_text("hosts:\n  - name: toy1\n    address: 127.0.0.1\n    ssh: none\n"
                   "    power: {kind: ipmi, address: 127.0.0.2, user: admin, password: {env: X},"
                   f" pidfile: {pidfile}}}\n")
    with pytest.raises(InventoryError) as other:
        load_inventory(lab)
    assert "field 'pidfile' is not used by power kind 'ipmi'" in str(other.value)


def test_the_registry_refuses_a_kind_twice_and_a_field_with_two_schemas(toy_power_kind):
    from xenhil.harness.access.power import PowerDriver, register_power_driver

    class Again(toy_power_kind):
        pass

    with pytest.raises(TestBugError, match="power kind 'local-process' is registered twice"):
        register_power_driver(Again)

    class Clash(PowerDriver):
        kind = "clash"
        fields = {"address": {"type": "integer"}}

    with pytest.raises(TestBugError, match="power field 'address' of kind 'clash' differs"):
        register_power_driver(Clash)
