"""Power kind ``command``: local command lines per action (a PDU script, ...)."""
from __future__ import annotations

import shlex
from typing import Any, Callable, Mapping

from xenhil.harness.access.power.driver import (POWER_ACTIONS, PowerDriver, SSHRunner, parse_on_off,
                                                register_power_driver, run_local)
from xenhil.harness.errors import ConfigError, PowerError
from xenhil.harness.lab.model import HostSpec

@register_power_driver
class CommandPower(PowerDriver):
    """Local command lines per action (``on``, ``off``, ``cycle``, ``status``),
    split with shlex and run without a shell.  ``status`` output must contain
    exactly one of the words "on" / "off".  Without a ``cycle`` command, cycle
    is ``off`` then ``on``."""

    kind = "command"
    fields = {
        "commands": {
            "type": "object", "additionalProperties": False, "minProperties": 1,
            "x-fix": "give commands as a mapping of on, off, cycle and status to command lines",
            "properties": {action: {"type": "string", "minLength": 1} for action in POWER_ACTIONS},
        },
    }
    required = ("commands",)
    summary = "command (with commands)"
    fix = "power kind command needs commands: {on: ..., off: ..., cycle: ..., status: ...}"
    reports_off = False     # a PDU's "off" may be a script's guess: the probe asks SSH first

    @classmethod
    def for_host(cls, host: HostSpec, ssh_factory: Callable[[], SSHRunner] | None) -> "CommandPower":
        return cls(host.name, host.power.commands)

    @classmethod
    def command_lines(cls, section: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
        commands = section.get("commands")
        if not isinstance(commands, dict):
            return []
        return [(("commands", action), line) for action, line in commands.items()
                if isinstance(line, str)]

    def __init__(self, host_name: str, commands: Mapping[str, str], *, attempts: int = 3,
                 retry_delay: float = 2.0, command_timeout: float = 60.0):
        super().__init__(host_name)
        unknown = set(commands) - set(POWER_ACTIONS)
        if unknown:
            raise ConfigError(f"host {host_name}: power.commands has unknown action(s) "
                              f"{', '.join(sorted(unknown))}",
                              help=f"use only {', '.join(POWER_ACTIONS)}")
        self.commands: dict[str, list[str]] = {}
        for action, line in commands.items():
            try:
                argv = shlex.split(line)
            except ValueError as exc:
                raise ConfigError(f"host {host_name}: power.commands.{action} cannot be split: {exc}",
                                  help="fix the quoting of the command line") from None
            if not argv:
                raise ConfigError(f"host {host_name}: power.commands.{action} is empty",
                                  help="give a command line or remove the action")
            self.commands[action] = argv
        self.attempts, self.retry_delay = attempts, retry_delay
        self.command_timeout = command_timeout

    def _argv(self, action: str) -> list[str]:
        try:
            return self.commands[action]
        except KeyError:
            raise PowerError(f"power {action} of {self.host_name}: no command for it",
                             help=f"add power.commands.{action} to host {self.host_name} "
                                  "in the inventory") from None

    def _run(self, action: str) -> str:
        return run_local(self._argv(action), timeout=self.command_timeout).stdout

    def _status(self) -> str:
        out = self._run("status")
        state = parse_on_off(out)
        if state is None:
            raise PowerError(f"power status of {self.host_name}: cannot tell on/off from the "
                             f"output of {shlex.join(self.commands['status'])}: {out.strip()[-300:]!r}",
                             help="the status command must print exactly one of the words on / off")
        return state

    def _on(self) -> None:
        self._run("on")

    def _off(self) -> None:
        self._run("off")

    def _cycle(self) -> None:
        if "cycle" in self.commands:
            self._run("cycle")
        elif "on" in self.commands and "off" in self.commands:
            self._run("off")
            self._run("on")
        else:
            self._argv("cycle")  # raises with help

    def reports_status(self) -> bool:
        return "status" in self.commands
