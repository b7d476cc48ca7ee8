"""Time budgets (harness/budgets.py): the test's limit exceeds the sum of its
stages, the plugin gives it to pytest-timeout, a stage that runs out of time
is reported with its name and as infrastructure, and SSH waits are bounded."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import os
import shlex
import signal
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest

from xenhil.harness import budgets
from xenhil.harness.access.ssh import CommandResult, SSHConnection
from xenhil.harness.errors import INFRASTRUCTURE, ConsoleTimeout, TestBugError, TimeLimitExceeded
from xenhil.harness.lab.virtual import quirks
from xenhil.harness.results.classify import failure_class_of
from xenhil.harness.lab.profile import HostProfile
from tests.support.console_server import console_server_factory, scripted  # noqa: F401
from tests.support.sshd import _children_of, fresh_sshd_server, sshd_server, sshd_factory  # noqa: F401

pytest_plugins = ["pytester"]

EMULATED = HostProfile.of({"emulated": True, "cpu_vendor": "amd", "virt": "svm"})
REAL = HostProfile.of({"emulated": False, "cpu_vendor": "intel", "virt": "vmx"})
RESERVE_S = 1800.0  # --reserve-timeout's default


# --- the figures add up ------------------------------------------------------------

@pytest.mark.parametrize("capabilities", [EMULATED, REAL], ids=["emulated", "real"])
def test_a_tests_limit_exceeds_the_sum_of_the_waits_it_contains(capabilities):
    budget = budgets.item_budget(capabilities, RESERVE_S)
    emulated = capabilities.emulated
    # The waits, summed here from the code's own figures, not from budgets.py:
    # quirks' boot timeouts, 3 boot attempts (fixtures.guest), each with `xl
    # create` (300 s, tried twice) and the console's boot wait; provisioning
    # with a reboot, a power-cycle fallback and a second boot.
    guest_boot = quirks.GUEST_BOOT_TIMEOUT_S if emulated else 300.0
    dom0_boot = quirks.DOM0_BOOT_TIMEOUT_S if emulated else 600.0
    boots = 3 * (2 * 300.0 + guest_boot)
    provisioning = 900.0 + 2 * dom0_boot
    waits = RESERVE_S + dom0_boot + provisioning + boots
    assert budget.limit_s > waits + budget.body_s + budget.teardown_s
    assert budget.limit_s >= budget.setup_s + budget.body_s + budget.teardown_s + budgets.SLACK_MIN_S
    assert budget.setup_s == pytest.approx(sum(budget.parts[k] for k in (
        "reservation", "host ready", "provisioning", "guest boot")))
    assert budget.parts["guest boot"] == budgets.BOOT_ATTEMPTS * budgets.guest_boot_attempt_s(
        capabilities)
    # The run that was cut at 900 s: provisioning plus 3 boots of up to 900 s.
    assert budget.limit_s > 900.0 + 3 * 900.0


def test_the_waits_in_the_code_are_the_budgets_figures():
    from xenhil.fixtures.guest import BOOT_ATTEMPTS
    from xenhil.harness.guest import COMMAND_ECHO_S, CONSOLE_STALL_S
    assert BOOT_ATTEMPTS == budgets.BOOT_ATTEMPTS
    assert (CONSOLE_STALL_S, COMMAND_ECHO_S) == (budgets.CONSOLE_STALL_S, budgets.COMMAND_ECHO_S)
    for capabilities in (EMULATED, REAL):
        assert budgets.seconds("guest boot", capabilities) == capabilities.guest_boot_timeout()
    assert budgets.seconds("dom0 boot", EMULATED) == quirks.DOM0_BOOT_TIMEOUT_S
    assert all(b.why and b.real_s > 0 and b.emulated_s > 0 for b in budgets.BUDGETS.values())
    connection = SSHConnection(SimpleNamespace(user="root", address="192.0.2.1", port=22))
    assert connection.channel_timeout == budgets.SSH_CHANNEL_S
    assert connection.sftp_timeout == budgets.SFTP_REPLY_S


# --- the plugin gives pytest-timeout the derived limit ---------------------------------

LAB_TESTS = """
    import pytest

    @pytest.fixture
    def host():          # stands in for the lab's host fixture: only its name counts here
        return None

    @pytest.fixture
    def guest(host):
        return None

    def test_on_a_host(request, host):
        print("LIMIT", request.node.get_closest_marker("timeout").args[0])

    def test_with_a_guest(request, guest):
        print("LIMIT", request.node.get_closest_marker("timeout").args[0])

    @pytest.mark.timeout(5)
    def test_with_its_own_limit(request, host):
        print("LIMIT", request.node.get_closest_marker("timeout").args[0])

    def test_without_a_host(request):
        assert request.node.get_closest_marker("timeout") is None
"""


def _inventory(path: Path, emulated: bool) -> Path:
    path.write_text(f"hosts:\n  - name: vhost1\n    address: 127.0.0.11\n"
                    f"    capabilities: {{emulated: {str(emulated).lower()}}}\n"
                    f"    ssh: none\n    power: {{kind: none}}\n")
    return path


def test_the_plugin_gives_a_lab_test_its_derived_limit(pytester: pytest.Pytester, tmp_path):
    lab = _inventory(tmp_path / "lab.yaml", emulated=True)
    pytester.makepyfile(test_lab=LAB_TESTS)
    result = pytester.runpytest("-s", f"--lab={lab}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    limits = [float(m) for m in re.findall(r"LIMIT (\S+)", result.stdout.str())]
    on_host = budgets.item_budget(EMULATED, RESERVE_S, provisions=False, boots_guest=False)
    with_guest = budgets.item_budget(EMULATED, RESERVE_S, provisions=False, boots_guest=True)
    assert limits == [on_host.limit_s, with_guest.limit_s, 5.0]
    assert with_guest.limit_s > 900  # what pyproject.toml's ini gives a test without a host
    result.stdout.fnmatch_lines([f"xenhil: time limit of a test on a lab host*emulated host: "
                                 f"test limit {budgets.item_budget(EMULATED, RESERVE_S).limit_s:.0f} s*"])


def test_an_explicit_timeout_option_is_left_alone(pytester: pytest.Pytester, tmp_path):
    lab = _inventory(tmp_path / "lab.yaml", emulated=False)
    pytester.makepyfile(test_lab="""
        import pytest
        @pytest.fixture
        def host():
            return None
        def test_on_a_host(request, host):
            assert request.node.get_closest_marker("timeout") is None
    """)
    pytester.runpytest(f"--lab={lab}", "--timeout=7", "-p", "no:cacheprovider").assert_outcomes(
        passed=1)


# --- a stage that runs out of time is named, as infrastructure ----------------------------

HANGING_SSH = """
    import pytest
    from pathlib import Path
    from xenhil.harness.access.ssh import SSHConnection
    from xenhil.harness.lab.model import SSHConfig

    CONFIG = SSHConfig(address={address!r}, port={port}, user={user!r},
                       key_file=Path({key_file!r}), host_key={host_key!r})

    @pytest.mark.timeout(3)
    def test_xl_list_hangs():
        # A command with a generous timeout of its own that outlives the test's limit.
        SSHConnection(CONFIG, name="vhost1").run("sleep 60; echo xl list", timeout=120)
"""


def _allure_results(alluredir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in alluredir.glob("*-result.json")]


def test_the_tests_limit_running_out_names_the_stage_and_is_infrastructure(
        pytester: pytest.Pytester, sshd_server, tmp_path):
    """pytest-timeout's limit runs out while a real sshd runs a command: the
    report names the stage (the SSH command, inside the test body) and files
    it as infrastructure, never "unclassified" (a run once showed
    "[infrastructure] failure class (unclassified Failed during setup)")."""
    alluredir = tmp_path / "allure"
    config = sshd_server.ssh_config()
    pytester.makepyfile(test_hang=HANGING_SSH.format(
        address=config.address, port=config.port, user=config.user,
        key_file=str(config.key_file), host_key=config.host_key))
    result = pytester.runpytest(f"--alluredir={alluredir}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    [report] = _allure_results(alluredir)
    labels = [label["value"] for label in report["labels"] if label["name"] == "failure_class"]
    message = report["statusDetails"]["message"]
    assert labels == [INFRASTRUCTURE]
    assert message.startswith("xenhil.harness.errors.TestTimeLimitExceeded: [infrastructure] the test's "
                              "time limit of 3 s ran out in test body > ssh command "
                              "`sleep 60; echo xl list` on vhost1"), message
    assert "no harness stage" not in message and "unclassified" not in message
    budget = budgets.ssh_command_s(120)
    assert (f"evidence stage times: test body: 3 s; ssh command `sleep 60; echo xl list` on "
            f"vhost1: 3 s of {budget:.0f} s") in message
    assert "every stage was within its own budget" in message
    result.stdout.fnmatch_lines(["*TestTimeLimitExceeded: [[]infrastructure[]] the test's time "
                                 "limit of 3 s ran out in test body > ssh command*"])


class FakeDom0SSH:
    """fake_: dom0 as far as a guest boot asks it (the toolstack's commands
    and their answers); the guest's `xl console` is a real TCP connection to
    a console server.  The first guest crashes while booting (a triple fault
    leaves it shut down with reason crash), the second stays silent."""

    HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"

    def __init__(self, console_port: int):
        self.console_port = console_port
        self.creates = 0
        self.domain: str | None = None   # the guest's xl list row, while it exists

    def run(self, cmd, timeout: float = 60.0, check: bool = False, **_) -> CommandResult:
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        out = ""
        if line == "cat /proc/uptime":
            out = "1000.0 1900.0\n"
        elif line.startswith("xl create"):
            self.creates += 1
            name = line.split("/")[-1].removesuffix(".cfg")
            state = "---sc-" if self.creates == 1 else "-b----"
            self.domain = f"{name:<40} {self.creates + 4:5d}   256     1     {state}      12.0\n"
        elif line.startswith("xl domid"):
            out = f"{self.creates + 4}\n"
        elif line == "xl list":
            out = self.HEADER + (self.domain or "")
        elif line.startswith("xl destroy"):
            self.domain = None
        elif line.startswith("xenstore-exists"):
            return CommandResult(line, 1, "", "", 0.0, "vhost1")
        return CommandResult(line, 0, out, "", 0.0, "vhost1")

    def put_bytes(self, data, remote: str, mode=None) -> str:
        return ""

    def read_bytes(self, remote: str) -> bytes:
        return b""

    def open_interactive(self, cmd: str):
        return socket.create_connection(("127.0.0.1", self.console_port), timeout=10)


def test_a_guest_boot_that_runs_out_of_time_names_its_split_and_attempt(
        console_server_factory, tmp_path, monkeypatch):
    """The guest pool boots a split's guest; the first boot crashes (booted
    again, counted), the second one's console stays silent (a real console
    server) past the boot's budget: the failure names the split, the host
    and the attempt, and is infrastructure with the stage times as evidence."""
    from xenhil.fixtures.guest import GuestBootRetried, GuestPool
    from xenhil.harness.xen.catalog import load_catalog

    silent = console_server_factory(scripted(("await", rb"never\n")))
    monkeypatch.setitem(budgets.BUDGETS, "guest boot",
                        budgets.Budget(2.0, 2.0, "this test: a boot's console waits 2 s"))
    host = SimpleNamespace(name="vhost1", ssh=FakeDom0SSH(silent.port),
                           spec=SimpleNamespace(profile=EMULATED))
    pool = GuestPool("gw0", tmp_path)
    with pytest.warns(GuestBootRetried), pytest.raises(ConsoleTimeout) as info:
        pool.get(host, load_catalog().get("single"))
    exc = info.value
    first_line = str(exc).splitlines()[0]
    assert re.match(r"\[infrastructure\] guest boot of split single on vhost1, attempt 2 of 3: "
                    r"console vhost1/xh-gw0-single-1: no shell answered within [\d.]+s",
                    first_line), first_line
    assert failure_class_of(exc, "setup") == INFRASTRUCTURE
    assert isinstance(exc, TimeLimitExceeded)
    assert exc.evidence["stage times"].startswith(
        "guest boot of split single on vhost1, attempt 2 of 3: 2 s of "
        f"{budgets.guest_boot_attempt_s(EMULATED):.0f} s")
    assert exc.evidence["guest console"].endswith("xh-gw0-single-1.console.log")
    # The run's boot record counts the boot once and names its retry.
    pool.close()
    from xenhil.fixtures.guest import read_boot_records
    record = read_boot_records(tmp_path)
    assert record["boots"] == ["xh-gw0-single-1 on vhost1"]
    [retry] = record["boot_retries"]
    assert retry.startswith("guest xh-gw0-single-1 on vhost1 crashed while booting")


# --- SSH waits are bounded ------------------------------------------------------------------

def test_an_exec_request_sshd_never_answers_is_not_waited_for_forever(fresh_sshd_server,
                                                                       monkeypatch, caplog):
    """dom0's sshd stops answering after the session opened (its processes for
    this connection stopped; the connection itself stays up), as a hung dom0
    does: paramiko waits for the answer to the exec request without a limit,
    and an `xl list` once waited until the test's limit, 18 minutes.  The
    command is now given up on that connection after the channel timeout and
    run on a new one."""
    server = fresh_sshd_server
    connection = SSHConnection(server.ssh_config(), name="vhost1", channel_timeout=2)
    assert connection.run("true").ok
    stopped: list[int] = []
    real_exec = paramiko.Channel.exec_command

    def stop_sshd_then_exec(chan, command):
        if not stopped:  # sshd's processes serving this connection stop answering
            stopped.extend(_children_of(server.proc.pid))
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
        return real_exec(chan, command)

    monkeypatch.setattr(paramiko.Channel, "exec_command", stop_sshd_then_exec)
    caplog.set_level(logging.INFO, logger="xenhil.ssh")
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = connection.run("echo xl list", timeout=30)
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        thread.join(60)
        assert not thread.is_alive(), "the command still waits for sshd's answer"
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        connection.close()
    assert stopped, "no sshd process was stopped"
    assert outcome.get("result") is not None, outcome
    assert outcome["result"].stdout == "xl list\n"
    assert "no answer to the exec request within 2s" in caplog.text


@pytest.mark.parametrize("timeout", [None, math.inf, 0])
def test_an_ssh_command_without_a_finite_timeout_is_refused(timeout):
    connection = SSHConnection(SimpleNamespace(user="root", address="192.0.2.1", port=22))
    with pytest.raises(TestBugError, match="timeout must be a finite number of seconds"):
        connection.run("xl list", timeout=timeout)
