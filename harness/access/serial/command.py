"""Serial kind ``command``: a local command line that prints the console
(``conserver-client``, ``socat``, ...), run without a shell."""
from __future__ import annotations

import shlex
from pathlib import Path

from xenhil.harness.access.serial.driver import SerialDriver, register_serial_driver
from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.model import HostSpec


@register_serial_driver
class CommandConsole(SerialDriver):
    kind = "command"
    fields = {"command": {"type": "string", "minLength": 1,
                          "x-fix": "give the command line that prints the console, e.g. command: "
                                   "conserver-client h1"}}
    required = ("command",)
    summary = "command (with command)"
    fix = "a command console needs command: the command line that connects to the console"

    @classmethod
    def console(cls, host: HostSpec, transcript: Path, **kw):
        from xenhil.harness.access.console import Console
        where = f"host {host.name}: serial"
        if not host.serial.command:
            raise ConfigError(f"{where}: kind command needs command",
                              help="set serial.command to the command line that attaches the console")
        try:
            argv = shlex.split(host.serial.command)
        except ValueError as exc:
            raise ConfigError(f"{where}.command cannot be parsed: {exc}",
                              help="fix the quoting of serial.command") from None
        return Console.command(host.name, argv, transcript, **kw)

    @classmethod
    def endpoint(cls, section, power):
        command = section.get("command")
        if not isinstance(command, str):
            return None
        return ("command", command), "console command", ("serial", "command")

    @classmethod
    def command_lines(cls, section):
        command = section.get("command")
        return [(("command",), command)] if isinstance(command, str) else []
