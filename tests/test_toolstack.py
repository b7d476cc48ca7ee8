"""Toolstack.create when the SSH connection drops under `xl create`, or (on
an emulated host only) a dom0 process dies under it, both seen in CI on the
virtual lab: the half-made domain is destroyed and the guest created once
more; a second failure is the caller's."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from xenhil.harness.errors import ConnectionLost, RemoteCommandFailed
from xenhil.harness.xen.toolstack import Toolstack

HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
DOM0 = "Domain-0                                     0  1024     2     r-----     120.1\n"
HALF_MADE = "g1                                           3   256     1     --p---       0.0\n"


class ScriptedSSH:
    """Answers `xl ...` commands from a script; "lost" raises ConnectionLost."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers
        self.commands: list[str] = []

    def run(self, command, timeout=None, check=False):
        key = " ".join(command[1:2])
        self.commands.append(" ".join(command))
        answer = self.answers[key].pop(0)
        if answer == "lost":
            raise ConnectionLost("vhost1: connection lost while running: " + " ".join(command))
        if answer.startswith("exit "):
            status, stderr = answer[5:].split(":", 1)
            raise RemoteCommandFailed(" ".join(command), int(status), "", stderr, host="vhost1")
        return SimpleNamespace(stdout=answer, stderr="", exit_status=0)


def test_a_create_cut_off_by_a_lost_connection_starts_over_once():
    ssh = ScriptedSSH({"create": ["lost", ""], "list": [HEADER + DOM0 + HALF_MADE], "destroy": [""]})
    Toolstack(ssh, "vhost1").create("/g1.cfg", "g1", paused=True)
    assert ssh.commands == ["xl create -p /g1.cfg", "xl list", "xl destroy g1", "xl create -p /g1.cfg"]


def test_nothing_is_destroyed_when_the_lost_create_left_no_domain():
    ssh = ScriptedSSH({"create": ["lost", ""], "list": [HEADER + DOM0]})
    Toolstack(ssh, "vhost1").create("/g1.cfg", "g1")
    assert ssh.commands == ["xl create /g1.cfg", "xl list", "xl create /g1.cfg"]


def test_a_second_lost_connection_is_the_callers_failure():
    ssh = ScriptedSSH({"create": ["lost", "lost"], "list": [HEADER + DOM0]})
    with pytest.raises(ConnectionLost):
        Toolstack(ssh, "vhost1").create("/g1.cfg", "g1")


# stderr of the `xl create` that failed CI's smoke (stop 9, virtual lab).
XL_CHILD_ABORTED = """exit 3:Parsing config from /var/lib/xenhil/guests/smoke.cfg
got a tsc mode string: "native"
malloc(): unsorted double linked list corrupted
libxl: error: libxl_exec.c:127:libxl_report_child_exitstatus: domain monitoring daemonizing child [461] died due to fatal signal Aborted
"""
XL_REFUSES_CONFIG = """exit 1:Parsing config from /g1.cfg
/g1.cfg:3: config parsing error near `=': syntax error, unexpected '=', expecting VALUE
Failed to parse config: Invalid argument
"""


def test_on_an_emulated_host_a_dom0_process_dying_under_create_starts_over_once():
    ssh = ScriptedSSH({"create": [XL_CHILD_ABORTED, ""], "list": [HEADER + DOM0 + HALF_MADE],
                       "destroy": [""]})
    Toolstack(ssh, "vhost1", emulated=True).create("/g1.cfg", "g1")
    assert ssh.commands == ["xl create /g1.cfg", "xl list", "xl destroy g1", "xl create /g1.cfg"]


def test_on_real_hardware_a_dom0_process_dying_under_create_is_the_failure():
    # There the toolstack crashing is a product bug; retrying would hide it.
    ssh = ScriptedSSH({"create": [XL_CHILD_ABORTED, ""]})
    with pytest.raises(RemoteCommandFailed, match="died due to fatal signal Aborted"):
        Toolstack(ssh, "host7").create("/g1.cfg", "g1")
    assert ssh.commands == ["xl create /g1.cfg"]


def test_a_create_that_fails_without_a_death_is_not_retried_even_when_emulated():
    ssh = ScriptedSSH({"create": [XL_REFUSES_CONFIG, ""]})
    with pytest.raises(RemoteCommandFailed, match="config parsing error"):
        Toolstack(ssh, "vhost1", emulated=True).create("/g1.cfg", "g1")
    assert ssh.commands == ["xl create /g1.cfg"]


def test_a_second_death_is_the_callers_failure():
    ssh = ScriptedSSH({"create": [XL_CHILD_ABORTED, XL_CHILD_ABORTED], "list": [HEADER + DOM0]})
    with pytest.raises(RemoteCommandFailed, match="unsorted double linked list"):
        Toolstack(ssh, "vhost1", emulated=True).create("/g1.cfg", "g1")
    assert ssh.commands == ["xl create /g1.cfg", "xl list", "xl create /g1.cfg"]
