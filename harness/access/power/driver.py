"""Power control of lab hosts: on, off, cycle and status.

One small driver class per way of powering a host (the inventory's
``power.kind``), all behind :class:`PowerDriver`:

- ``ipmi``: :class:`IPMIPower`, ``ipmitool -I lanplus`` against the BMC.
- ``ssh-reboot``: :class:`SSHRebootPower`, ``reboot`` over SSH; can only cycle.
- ``command``: :class:`CommandPower`, local command lines (a PDU script, ...).
- ``none``: :class:`NoPower`, every action fails with advice.

Every action is a :func:`harness.step.step`.  Transient failures (the tool
exits non-zero, or hangs past its timeout) are retried a bounded number of
times with a delay, then raised as :class:`harness.errors.PowerError` with the
tail of the tool's stderr.  Passwords are resolved from their
:class:`~harness.lab.model.CredentialRef` at the moment of the call, handed
to ipmitool through the environment (``-E`` reads ``IPMI_PASSWORD``), never
put on a command line, and scrubbed from any text that goes into an error or
a log.
"""
from __future__ import annotations

import abc
import logging
import os
import re
import shlex
import subprocess
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

from harness.errors import (ConfigError, ConnectionLost, InfrastructureError, PowerError,
                            RemoteCommandFailed, SSHError, TestBugError)
from harness.lab.model import HostSpec, PowerConfig
from harness.step import step

log = logging.getLogger("xenhil.power")

ON = "on"
OFF = "off"
UNKNOWN = "unknown"

POWER_ACTIONS = ("on", "off", "cycle", "status")

# How much of a tool's stderr goes into an error message.
_TAIL_CHARS = 2000


class PowerAuthError(PowerError):
    """The BMC refused the user name or password: retrying cannot help."""

    help = ("Check power.user and the password its CredentialRef points to "
            "(power.password env/file) in the inventory.")


class _TransientFailure(Exception):
    """One attempt failed in a way a retry may cure."""

    def __init__(self, summary: str, stderr_tail: str = ""):
        super().__init__(summary)
        self.summary, self.stderr_tail = summary, stderr_tail


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


def run_local(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
              secrets: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run a local command (no shell).  Non-zero exit or timeout raises
    :class:`_TransientFailure` with scrubbed stderr; a missing program is a
    :class:`PowerError` at once (retrying will not install it)."""
    shown = shlex.join(argv)
    log.debug("power: running %s", shown)
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=dict(env) if env is not None else None,
                              stdin=subprocess.DEVNULL, errors="replace")
    except FileNotFoundError:
        raise PowerError(f"power command not found: {argv[0]}",
                         help=f"install {argv[0]} (for ipmitool: apt-get install ipmitool) "
                              "or fix the command in the inventory") from None
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise _TransientFailure(f"{shown} timed out after {timeout:g}s",
                                _tail(scrub(err, secrets))) from None
    if proc.returncode != 0:
        raise _TransientFailure(f"{shown} exited {proc.returncode}",
                                _tail(scrub(proc.stderr or proc.stdout, secrets)))
    return proc


def parse_on_off(text: str) -> str | None:
    """"on" or "off" when exactly one of the words appears in ``text``
    (e.g. ipmitool's "Chassis Power is on"), else None."""
    found = {m.lower() for m in re.findall(r"\b(on|off)\b", text, re.IGNORECASE)}
    return found.pop() if len(found) == 1 else None


class PowerDriver(abc.ABC):
    """Powers one host.  ``state`` is the last known power state: "unknown"
    until an action or a status query tells, and again after a failure."""

    kind = "abstract"
    # Retries of one action on transient failures, and the pause between them.
    attempts: int = 3
    retry_delay: float = 2.0
    # After on/off, how long to poll status until the host reports the new
    # state (some BMCs apply power changes asynchronously).
    settle_timeout: float = 30.0
    settle_poll: float = 1.0
    # What is known right after a cycle was accepted.
    state_after_cycle: str = ON

    def __init__(self, host_name: str):
        self.host_name = host_name
        self.state = UNKNOWN

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host_name!r}, state={self.state!r})"

    # -- public actions ----------------------------------------------------

    @step("power status {self.host_name}")
    def status(self) -> str:
        """"on" or "off" ("unknown" for drivers that cannot tell off from down)."""
        try:
            self.state = self._retrying("status", self._status)
        except BaseException:
            self.state = UNKNOWN
            raise
        return self.state

    @step("power on {self.host_name}")
    def on(self) -> None:
        self._change("on", self._on, expect=ON)

    @step("power off {self.host_name}")
    def off(self) -> None:
        self._change("off", self._off, expect=OFF)

    @step("power cycle {self.host_name}")
    def cycle(self) -> None:
        self._change("cycle", self._cycle, expect=ON)

    # -- what a driver implements ------------------------------------------

    @abc.abstractmethod
    def _status(self) -> str: ...

    @abc.abstractmethod
    def _on(self) -> None: ...

    @abc.abstractmethod
    def _off(self) -> None: ...

    @abc.abstractmethod
    def _cycle(self) -> None: ...

    def _can_confirm(self) -> bool:
        """Whether status can confirm an on/off (drivers without status say no)."""
        return True

    # -- machinery -----------------------------------------------------------

    def _change(self, action: str, do: Callable[[], None], expect: str) -> None:
        self.state = UNKNOWN
        self._retrying(action, do)
        if action == "cycle":
            self.state = self.state_after_cycle
            return
        if self._can_confirm():
            self._await_state(action, expect)
        self.state = expect

    def _await_state(self, action: str, expect: str) -> None:
        deadline = time.monotonic() + self.settle_timeout
        while True:
            seen = self._retrying("status", self._status)
            if seen == expect:
                return
            if time.monotonic() >= deadline:
                raise PowerError(f"power {action} of {self.host_name}: the host still reports "
                                 f"{seen!r} after {self.settle_timeout:g}s",
                                 help="the power controller accepted the command but the host did "
                                      "not change state; check it by hand")
            time.sleep(self.settle_poll)

    def _retrying(self, action: str, attempt: Callable[[], Any]) -> Any:
        last: _TransientFailure | None = None
        for number in range(1, self.attempts + 1):
            try:
                return attempt()
            except _TransientFailure as failure:
                last = failure
                log.warning("power %s of %s failed (attempt %d of %d): %s",
                            action, self.host_name, number, self.attempts, failure.summary)
                if number < self.attempts:
                    time.sleep(self.retry_delay)
        assert last is not None
        raise PowerError(f"power {action} of {self.host_name} failed after {self.attempts} "
                         f"attempts: {last.summary}\n--- stderr (tail) ---\n{last.stderr_tail}",
                         help=self._failure_help())

    def _failure_help(self) -> str:
        return PowerError.help


# --------------------------------------------------------------------------

# ipmitool's words when the BMC refused the credentials (with -v).  pyghmi's
# BMC and most real ones answer a wrong password with a bad RAKP 2 HMAC;
# others send an error status in RAKP 2.
_IPMI_AUTH_FAILURES = ("rakp 2 hmac is invalid", "rakp 2 message indicates an error",
                       "unauthorized name", "invalid integrity check value")


# IPMI v2.0 (RAKP) passwords are at most 20 bytes; ipmitool -I lanplus refuses longer.
IPMI_PASSWORD_MAX = 20


class IPMIPower(PowerDriver):
    """``ipmitool -I lanplus -H addr -p port -U user -E chassis power ...``.

    The password goes in ``IPMI_PASSWORD`` in ipmitool's environment only.
    ``cycle`` of a host that is off issues ``on`` instead: the IPMI spec lets
    a BMC refuse a cycle in that state (completion code 0xd5, "not supported
    in present state") and many do, which would make "cycle to get a fresh
    boot" fail exactly when the host is already down.
    """

    kind = "ipmi"

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


# --------------------------------------------------------------------------

class SSHRunner(Protocol):
    """What :class:`SSHRebootPower` needs of an SSH connection
    (:class:`harness.access.ssh.SSHConnection` fits): ``run`` returns a result
    with ``exit_status`` (-1 when the channel closed without one) and raises
    ``ConnectionLost``/``SSHError`` when the connection fails; ``close``; and
    optionally ``connect`` (used, when present, to connect before rebooting)."""

    def run(self, cmd: str, timeout: float = ...) -> Any: ...

    def close(self) -> None: ...


# Exceptions that mean "the SSH connection went away" rather than "the command failed".
_CONNECTION_GONE = (ConnectionLost, SSHError, EOFError, OSError, TimeoutError)


class SSHRebootPower(PowerDriver):
    """For hosts without a power controller: ``cycle`` runs ``reboot`` over
    SSH (the connection dropping under it is expected and tolerated).
    ``status`` is "on" when SSH answers and "unknown" otherwise (down,
    booting and hung look the same).  ``on`` and ``off`` cannot be done this
    way and fail with advice.  ``cycle`` is not confirmed: the host goes away
    and comes back; waiting for it is the caller's job (host state machine)."""

    kind = "ssh-reboot"
    state_after_cycle = UNKNOWN  # rebooting: SSH is down for a while

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

    def _can_confirm(self) -> bool:
        return False


# --------------------------------------------------------------------------

class CommandPower(PowerDriver):
    """Local command lines per action (``on``, ``off``, ``cycle``, ``status``),
    split with shlex and run without a shell.  ``status`` output must contain
    exactly one of the words "on" / "off".  Without a ``cycle`` command, cycle
    is ``off`` then ``on``."""

    kind = "command"

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

    def _can_confirm(self) -> bool:
        return "status" in self.commands


# --------------------------------------------------------------------------

class NoPower(PowerDriver):
    """A host without power control: every action fails with advice."""

    kind = "none"

    def _fail(self, action: str):
        raise PowerError(f"power {action} of {self.host_name}: host has no power control",
                         help="power-cycle it by hand or add a power section")

    def _status(self) -> str:
        self._fail("status")

    def _on(self) -> None:
        self._fail("on")

    def _off(self) -> None:
        self._fail("off")

    def _cycle(self) -> None:
        self._fail("cycle")


def power_for(host: HostSpec, ssh_factory: Callable[[], SSHRunner] | None = None) -> PowerDriver:
    """The power driver for ``host``'s ``power`` section.  ``ssh_factory``
    (returning a new SSH connection) is needed for kind ``ssh-reboot``."""
    kind = host.power.kind
    if kind == "ipmi":
        return IPMIPower(host.name, host.power)
    if kind == "ssh-reboot":
        if ssh_factory is None:
            raise TestBugError(f"host {host.name} has ssh-reboot power but no SSH connection "
                               "factory was given to power_for()",
                               help="pass ssh_factory= (a callable returning an SSH connection)")
        return SSHRebootPower(host.name, ssh_factory)
    if kind == "command":
        return CommandPower(host.name, host.power.commands)
    if kind == "none":
        return NoPower(host.name)
    raise ConfigError(f"host {host.name}: unknown power.kind {kind!r}",
                      help="use one of: ipmi, ssh-reboot, command, none")
