"""Serial kinds ``tcp`` and ``telnet``: a console server on the network
(raw TCP, or telnet with its option negotiation)."""
from __future__ import annotations

from pathlib import Path

from xenhil.harness.access.serial.driver import SerialDriver, register_serial_driver
from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.model import HostSpec, section_port

_NETWORK_FIELDS = {"host": {"$ref": "#/$defs/address"}, "port": {"$ref": "#/$defs/port"}}


class _NetworkConsole(SerialDriver):
    fields = _NETWORK_FIELDS
    required = ("host", "port")
    fix = "a tcp/telnet console needs host (the console server) and port"

    @classmethod
    def console(cls, host: HostSpec, transcript: Path, **kw):
        from xenhil.harness.access.console import Console
        serial = host.serial
        if not serial.host or not serial.port:
            raise ConfigError(f"host {host.name}: serial: kind {serial.kind} needs host and port",
                              help="set serial.host and serial.port (the console server)")
        make = Console.tcp if cls.kind == "tcp" else Console.telnet
        return make(host.name, serial.host, int(serial.port), transcript, **kw)

    @classmethod
    def endpoint(cls, section, power):
        host, port = section.get("host"), section_port(section.get("port"), 0)
        if not isinstance(host, str) or not port:
            return None
        return ("net", host.lower(), port), f"console {host}:{port}", ("serial", "port")


@register_serial_driver
class TCPConsole(_NetworkConsole):
    kind = "tcp"
    summary = "tcp or telnet (with host and port)"


@register_serial_driver
class TelnetConsole(_NetworkConsole):
    kind = "telnet"
    summary = None      # named with tcp
