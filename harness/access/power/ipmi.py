"""Power kind ``ipmi``: ``ipmitool -I lanplus`` against the host's BMC."""
from __future__ import annotations

import logging
import os
import re
from typing import Callable

from xenhil.harness.access.power.driver import (OFF, PowerAuthError, PowerDriver, SSHRunner,
                                                _TransientFailure, register_power_driver, run_local)
from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.model import DEFAULT_IPMI_PORT, HostSpec, PowerConfig, section_port

log = logging.getLogger("xenhil.power")

# ipmitool's words when the BMC refused the credentials (with -v).  pyghmi's
# BMC and most real ones answer a wrong password with a bad RAKP 2 HMAC;
# others send an error status in RAKP 2.
_IPMI_AUTH_FAILURES = ("rakp 2 hmac is invalid", "rakp 2 message indicates an error",
                       "unauthorized name", "invalid integrity check value")


# IPMI v2.0 (RAKP) passwords are at most 20 bytes; ipmitool -I lanplus refuses longer.
IPMI_PASSWORD_MAX = 20


#: A BMC's port and login as the inventory gives them (power kind ipmi, and
#: serial kind ipmi-sol when it has a BMC of its own).
BMC_LOGIN_FIELDS = {
    "port": {"$ref": "#/$defs/port"},
    "user": {"type": "string", "minLength": 1, "pattern": "^[^:]+$",
             "x-fix": "give the BMC user name only (user:password is not a user name: the "
                      "password goes in password: {env: NAME})"},
    "password": {"$ref": "#/$defs/credential_ref"},
}


@register_power_driver
class IPMIPower(PowerDriver):
    """``ipmitool -I lanplus -H addr -p port -U user -E chassis power ...``.

    The password goes in ``IPMI_PASSWORD`` in ipmitool's environment only.
    ``cycle`` of a host that is off issues ``on`` instead: the IPMI spec lets
    a BMC refuse a cycle in that state (completion code 0xd5, "not supported
    in present state") and many do, which would make "cycle to get a fresh
    boot" fail exactly when the host is already down.
    """

    kind = "ipmi"
    fields = {"address": {"$ref": "#/$defs/address"}, **BMC_LOGIN_FIELDS}
    required = ("address", "user", "password")
    summary = "ipmi (with address, user, password)"
    fix = "power kind ipmi needs the BMC's address, user and password: {env: IPMI_PASSWORD}"
    reports_off = True

    @classmethod
    def for_host(cls, host: HostSpec, ssh_factory: Callable[[], SSHRunner] | None) -> "IPMIPower":
        return cls(host.name, host.power)

    @classmethod
    def endpoint(cls, section) -> tuple | None:
        address = section.get("address")
        if not isinstance(address, str):
            return None
        return address.lower(), section_port(section.get("port"), DEFAULT_IPMI_PORT)

    def __init__(self, host_name: str, config: PowerConfig, *, attempts: int = 3,
                 retry_delay: float = 2.0, command_timeout: float = 60.0,
                 ipmitool: str = "ipmitool", ipmi_timeout: int = 2, ipmi_retries: int = 3):
        super().__init__(host_name)
        where = f"host {host_name}: power"
        for field_name in ("address", "user", "password"):
            if not getattr(config, field_name):
                raise ConfigError(f"{where}.{field_name} is missing (kind ipmi)",
                                  help=f"add power.{field_name} to host {host_name} in the inventory")
        self.config = config
        self.attempts, self.retry_delay = attempts, retry_delay
        self.command_timeout = command_timeout
        self.ipmitool = ipmitool
        # ipmitool's own per-request timeout (-N s) and retransmissions (-R n)
        self.ipmi_timeout, self.ipmi_retries = ipmi_timeout, ipmi_retries

    def command(self, *args: str) -> list[str]:
        """The ipmitool argv for ``args`` (no secret in it)."""
        c = self.config
        return [self.ipmitool, "-I", "lanplus", "-H", str(c.address), "-p", str(c.port),
                "-U", str(c.user), "-E", "-N", str(self.ipmi_timeout), "-R", str(self.ipmi_retries),
                # -v: ipmitool names the cause of a session failure (e.g. bad HMAC)
                "-v", *args]

    def _ipmitool(self, *args: str) -> str:
        password = self.config.password.resolve()  # at call time, never stored
        if len(password.encode()) > IPMI_PASSWORD_MAX:
            raise ConfigError(f"host {self.host_name}: the IPMI password from "
                              f"{self.config.password!r} is longer than {IPMI_PASSWORD_MAX} bytes",
                              help="IPMI v2 passwords have at most 20 bytes (ipmitool refuses "
                                   "longer ones): set a shorter password on the BMC and in the secret")
        env = dict(os.environ, IPMI_PASSWORD=password)
        try:
            proc = run_local(self.command(*args), timeout=self.command_timeout, env=env,
                             secrets=(password,))
        except _TransientFailure as failure:
            if any(word in failure.stderr_tail.lower() for word in _IPMI_AUTH_FAILURES):
                c = self.config
                raise PowerAuthError(
                    f"power {args[-1]} of {self.host_name}: the BMC at {c.address}:{c.port} "
                    f"rejected user {c.user!r} (wrong user name or password)\n"
                    f"--- stderr (tail) ---\n{failure.stderr_tail}",
                    help=f"check power.user and the password in {c.password!r}") from None
            raise
        return proc.stdout

    def _status(self) -> str:
        out = self._ipmitool("chassis", "power", "status")
        match = re.search(r"Chassis Power is (on|off)", out)
        if not match:
            raise _TransientFailure(f"unexpected ipmitool output: {out.strip()[-200:]!r}")
        return match.group(1)

    def _on(self) -> None:
        self._ipmitool("chassis", "power", "on")

    def _off(self) -> None:
        self._ipmitool("chassis", "power", "off")

    def _cycle(self) -> None:
        if self._status() == OFF:
            log.info("power cycle of %s: it is off, powering on instead", self.host_name)
            self._ipmitool("chassis", "power", "on")
        else:
            self._ipmitool("chassis", "power", "cycle")

    def _failure_help(self) -> str:
        c = self.config
        return (f"check that the BMC at {c.address}:{c.port} answers (ping it, "
                f"`ipmitool -I lanplus -H {c.address} -p {c.port} -U {c.user} -E chassis power status` "
                f"with IPMI_PASSWORD set), and power.address/port/user in the inventory")
