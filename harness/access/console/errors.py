"""The console's own failures, beside harness.errors' ConsoleTimeout and
FatalConsoleOutput."""
from __future__ import annotations

from xenhil.harness.errors import ConnectionLost, InfrastructureError


class ConsoleClosed(ConnectionLost):
    """The console's far end went away (server dropped us, command exited)."""

    help = ("The console connection dropped: check the console server / BMC / host, "
            "then read the tail and the transcript.")


class ConsoleStalled(ConsoleClosed):
    help = ("The console delivered nothing for a long time while the target was being "
            "polled: the relay (e.g. `xl console`) is stuck.  Attach again.")


class ConsoleUnavailable(InfrastructureError):
    """The console could not be opened at all."""

    help = ("The console could not be opened: check the serial: entry of the host in the "
            "inventory and that the console server (or BMC, or command) is reachable.")
