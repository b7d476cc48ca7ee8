"""Serial kind ``ipmi-sol``: IPMI serial over LAN through ``ipmitool sol
activate``.  Its BMC login is its own or, when the host's power kind is
ipmi, that of the power section."""
from __future__ import annotations

from pathlib import Path

from xenhil.harness.access.power.ipmi import BMC_LOGIN_FIELDS
from xenhil.harness.access.serial.driver import SerialDriver, register_serial_driver
from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.model import DEFAULT_IPMI_PORT, HostSpec, SerialConfig, section_port

def _bmc_of(power) -> dict:
    """The power section's BMC fields when its kind is ipmi, else none."""
    return power if isinstance(power, dict) and power.get("kind") == "ipmi" else {}


@register_serial_driver
class SerialOverLAN(SerialDriver):
    kind = "ipmi-sol"
    fields = {"host": {"$ref": "#/$defs/address"}, **BMC_LOGIN_FIELDS}
    summary = "ipmi-sol (a BMC: host, user, password, or those of power kind ipmi)"

    @classmethod
    def config(cls, section, power, credential) -> SerialConfig:
        # The serial section's BMC fields, else those of power kind ipmi.
        bmc = _bmc_of(power)
        own_host = "host" in section
        return SerialConfig(
            kind=cls.kind,
            host=section.get("host", bmc.get("address")),
            port=section.get("port", DEFAULT_IPMI_PORT if own_host
                             else bmc.get("port", DEFAULT_IPMI_PORT)),
            user=section.get("user", bmc.get("user")),
            password=credential(section.get("password", bmc.get("password"))))

    @classmethod
    def host_problems(cls, section, power):
        if _bmc_of(power):
            return []
        # Without an ipmi power section there is no BMC login to borrow.
        power_kind = power.get("kind") if isinstance(power, dict) else None
        return [(("serial", field),
                 f"serial kind 'ipmi-sol' needs field {field!r} ({what}) because power "
                 f"kind is {power_kind!r}, not 'ipmi'",
                 f"add {field}: to serial (or use power kind ipmi, whose BMC settings "
                 "serial-over-LAN then uses)")
                for field, what in (("host", "the BMC address"), ("user", "the BMC user"),
                                    ("password", "{env: IPMI_PASSWORD}"))
                if field not in section]

    @classmethod
    def endpoint(cls, section, power):
        if isinstance(section.get("host"), str):
            port = section_port(section.get("port"), DEFAULT_IPMI_PORT)
            sol, field = (section["host"].lower(), port), ("serial", "host")
        else:
            bmc = _bmc_of(power)
            if not isinstance(bmc.get("address"), str):
                return None
            port = section_port(bmc.get("port"), DEFAULT_IPMI_PORT)
            sol, field = (bmc["address"].lower(), port), ("serial", "kind")
        return ("sol",) + sol, f"serial-over-LAN console of BMC {sol[0]}:{sol[1]}", field

    @classmethod
    def console(cls, host: HostSpec, transcript: Path, **kw):
        from xenhil.harness.access.console import Console
        serial = host.serial
        # The inventory loader fills serial's BMC fields, from power: when power
        # is ipmi too; a host may have SOL without IPMI power (ssh-reboot).
        if not serial.host or not serial.user or serial.password is None:
            raise ConfigError(f"host {host.name}: serial: kind ipmi-sol needs the BMC's host, "
                              "user and password",
                              help=f"give host {host.name} serial.host/user/password "
                                   "(or power: kind ipmi, whose BMC login SOL then uses)")
        argv = ["ipmitool", "-I", "lanplus", "-H", serial.host, "-p",
                str(serial.port or DEFAULT_IPMI_PORT), "-U", serial.user, "-E", "sol", "activate"]
        return Console.command(host.name, argv, transcript,
                               secret_env={"IPMI_PASSWORD": serial.password},
                               close_sequence=b"\r~.", **kw)
