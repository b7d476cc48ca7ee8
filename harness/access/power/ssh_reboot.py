"""Power kind ``ssh-reboot``: ``reboot`` over SSH, for hosts without a power
controller; it can only cycle."""
from __future__ import annotations

import logging
from typing import Any, Callable

from xenhil.harness.access.power.driver import (ON, UNKNOWN, PowerDriver, SSHRunner, _tail,
                                                register_power_driver)
from xenhil.harness.errors import (ConnectionLost, InfrastructureError, PowerError, RemoteCommandFailed,
                                   SSHError, TestBugError)
from xenhil.harness.lab.model import HostSpec

log = logging.getLogger("xenhil.power")

# Exceptions that mean "the SSH connection went away" rather than "the command failed".
_CONNECTION_GONE = (ConnectionLost, SSHError, EOFError, OSError, TimeoutError)


@register_power_driver
class SSHRebootPower(PowerDriver):
    """For hosts without a power controller: ``cycle`` runs ``reboot`` over
    SSH (the connection dropping under it is expected and tolerated).
    ``status`` is "on" when SSH answers and "unknown" otherwise (down,
    booting and hung look the same).  ``on`` and ``off`` cannot be done this
    way and fail with advice.  ``cycle`` is not confirmed: the host goes away
    and comes back; waiting for it is the caller's job (host state machine)."""

    kind = "ssh-reboot"
    summary = "ssh-reboot"
    unused_field_hint = "ssh-reboot uses the host's ssh settings; "
    needs_ssh = True
    state_after_cycle = UNKNOWN  # rebooting: SSH is down for a while

    @classmethod
    def for_host(cls, host: HostSpec, ssh_factory: Callable[[], SSHRunner] | None) -> "SSHRebootPower":
        if ssh_factory is None:
            raise TestBugError(f"host {host.name} has ssh-reboot power but no SSH connection "
                               "factory was given to power_for()",
                               help="pass ssh_factory= (a callable returning an SSH connection)")
        return cls(host.name, ssh_factory)

    def __init__(self, host_name: str, ssh_connection_factory: Callable[[], SSHRunner], *,
                 reboot_command: str = "reboot", command_timeout: float = 30.0):
        super().__init__(host_name)
        self.connect = ssh_connection_factory
        self.reboot_command = reboot_command
        # A reboot is not retried: a second one could hit the host as it comes back.
        self.attempts = 1
        self.command_timeout = command_timeout

    @staticmethod
    def _close(conn: Any) -> None:
        try:
            conn.close()
        except Exception:  # closing a dropped connection may fail; nothing to do
            pass

    def _status(self) -> str:
        conn = None
        try:
            conn = self.connect()
            result = conn.run("true", timeout=self.command_timeout)
            return ON if getattr(result, "exit_status", 0) == 0 else UNKNOWN
        except (InfrastructureError, *_CONNECTION_GONE) as exc:
            log.info("power status of %s: SSH does not answer (%s)", self.host_name,
                     type(exc).__name__)
            return UNKNOWN
        finally:
            if conn is not None:
                self._close(conn)

    def _cycle(self) -> None:
        conn = None
        try:
            conn = self.connect()
            # Connect before the reboot, so "unreachable" is not mistaken for
            # "dropped by the reboot" (SSHConnection connects lazily otherwise).
            if hasattr(conn, "connect"):
                conn.connect()
        except (InfrastructureError, *_CONNECTION_GONE) as exc:
            if conn is not None:
                self._close(conn)
            raise PowerError(f"power cycle of {self.host_name}: cannot reach it over SSH to reboot "
                             f"it ({type(exc).__name__}: {exc})",
                             help="the host has only ssh-reboot power: power-cycle it by hand, "
                                  "or add an ipmi or command power section") from None
        try:
            result = conn.run(self.reboot_command, timeout=self.command_timeout)
        except _CONNECTION_GONE as exc:
            log.info("power cycle of %s: connection dropped by the reboot (%s), as expected",
                     self.host_name, type(exc).__name__)
            return
        except RemoteCommandFailed as exc:  # a runner that checks exit status itself
            result = exc
        finally:
            self._close(conn)
        status = getattr(result, "exit_status", 0)
        # -1: the channel closed without an exit status (the reboot cut it);
        # 255: OpenSSH's own "connection closed" status.
        if status not in (0, -1, 255):
            raise PowerError(f"power cycle of {self.host_name}: `{self.reboot_command}` exited "
                             f"{status}: {_tail(getattr(result, 'stderr', '') or getattr(result, 'stderr_tail', ''))}",
                             help="the SSH user must be allowed to reboot the host (root, or "
                                  "a reboot command with sudo)")

    def _unsupported(self, action: str) -> None:
        raise PowerError(f"power {action} of {self.host_name} is not possible: it has only "
                         "ssh-reboot power (reboot over SSH)",
                         help="power it by hand, or give it an ipmi or command power section "
                              "in the inventory")

    def _on(self) -> None:
        self._unsupported("on")

    def _off(self) -> None:
        self._unsupported("off")

    def reports_status(self) -> bool:
        return False
