"""Serial consoles of lab hosts: one driver per inventory ``serial.kind``,
each in a module of its own that registers itself (harness.access.serial.driver
has the base class and the registry):

- ``tcp``, ``telnet``: a console server on the network (network.py);
- ``ipmi-sol``: IPMI serial over LAN with ipmitool (ipmi_sol.py);
- ``command``: a local command that prints the console (command.py).

A new kind is a new module here plus its line below.  The console itself
(expect, transcript, login) is harness.access.console's.
"""
from __future__ import annotations

from pathlib import Path

from xenhil.harness.access.serial.driver import (SERIAL_KINDS, SerialDriver, register_serial_driver)
# The registrations: importing a driver's module registers its kind.
from xenhil.harness.access.serial import network, ipmi_sol, command  # noqa: F401  (this order: the kinds in messages)
from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.model import HostSpec


def console_for(host: HostSpec, transcript_dir: Path, **kw):
    """The console of an inventory host (closed; call open()).  The transcript
    is ``<transcript_dir>/<host>.console.log``."""
    if host.serial is None:
        raise ConfigError(f"host {host.name}: serial: no serial console configured",
                          help=f"add a serial: entry (kind {'|'.join(SERIAL_KINDS.kinds())}) "
                               f"to host {host.name}")
    if host.serial.kind not in SERIAL_KINDS.kinds():
        raise ConfigError(f"host {host.name}: serial: unknown kind {host.serial.kind!r}",
                          help=f"use one of: {', '.join(SERIAL_KINDS.kinds())}")
    driver = SERIAL_KINDS.get(host.serial.kind)
    return driver.console(host, Path(transcript_dir) / f"{host.name}.console.log", **kw)


__all__ = ["SERIAL_KINDS", "SerialDriver", "register_serial_driver", "console_for"]
