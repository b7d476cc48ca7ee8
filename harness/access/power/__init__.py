"""Power control of lab hosts: on, off, cycle and status.

One driver class per way of powering a host (the inventory's ``power.kind``),
each in a module of its own that registers itself (harness.access.power.driver
has the base class, the registry and the schema the drivers make):

- ``ipmi``: :class:`IPMIPower`, ``ipmitool -I lanplus`` against the BMC.
- ``ssh-reboot``: :class:`SSHRebootPower`, ``reboot`` over SSH; can only cycle.
- ``command``: :class:`CommandPower`, local command lines (a PDU script, ...).
- ``none``: :class:`NoPower`, every action fails with advice.

A new kind is a new module here plus its line below.
"""
from xenhil.harness.access.power.driver import (OFF, ON, POWER_ACTIONS, POWER_KINDS, UNKNOWN, PowerAuthError,
                                                PowerDriver, SSHRunner, parse_on_off, power_driver_class,
                                                power_for, power_kinds, power_schema,
                                                register_power_driver, run_local, scrub)
# The registrations: importing a driver's module registers its kind.
from xenhil.harness.access.power.ipmi import IPMI_PASSWORD_MAX, IPMIPower
from xenhil.harness.access.power.ssh_reboot import SSHRebootPower
from xenhil.harness.access.power.command import CommandPower
from xenhil.harness.access.power.nopower import NoPower

__all__ = ["OFF", "ON", "POWER_ACTIONS", "POWER_KINDS", "UNKNOWN", "PowerAuthError", "PowerDriver", "SSHRunner",
           "parse_on_off", "power_driver_class", "power_for", "power_kinds", "power_schema",
           "register_power_driver", "run_local", "scrub", "IPMI_PASSWORD_MAX", "IPMIPower",
           "SSHRebootPower", "CommandPower", "NoPower"]
