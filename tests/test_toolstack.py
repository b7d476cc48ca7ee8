"""Toolstack.create when the SSH connection drops under `xl create` (seen
in CI on the virtual lab): the half-made domain is destroyed and the guest
created once more; a second loss is the caller's failure."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.errors import ConnectionLost
from harness.xen.toolstack import Toolstack

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
