"""What every power driver shares: the actions (on, off, cycle, status) with
bounded retries and settling, the registry of drivers by the inventory's
``power.kind``, and the inventory schema of the ``power`` section, made
from what each registered driver declares.

A driver is a :class:`PowerDriver` subclass in a module of its own, decorated
with :func:`register_power_driver`; it names its ``kind``, the inventory
fields it takes (JSON Schema), which of them it requires, and builds itself
from a host's :class:`~harness.lab.model.HostSpec` (``for_host``).  The
package's ``__init__`` imports each driver module: that line is a kind's
registration.  Nothing else in xenhil lists the kinds.

Every action is a :func:`harness.step.step`.  Transient failures (the tool
exits non-zero, or hangs past its timeout) are retried a bounded number of
times with a delay, then raised as :class:`harness.errors.PowerError` with the
tail of the tool's stderr.  Passwords are resolved from their
:class:`~harness.lab.model.CredentialRef` at the moment of the call, handed
to tools through the environment, never put on a command line, and scrubbed
from any text that goes into an error or a log.
"""
from __future__ import annotations

import abc
import logging
import re
import shlex
import subprocess
import time
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

from xenhil.harness.access.kinds import KindRegistry
from xenhil.harness.errors import ConfigError, PowerError
from xenhil.harness.lab.model import HostSpec
from xenhil.harness.step import step

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


class SSHRunner(Protocol):
    """What a driver that works over SSH needs of a connection
    (:class:`harness.access.ssh.SSHConnection` fits): ``run`` returns a result
    with ``exit_status`` (-1 when the channel closed without one) and raises
    ``ConnectionLost``/``SSHError`` when the connection fails; ``close``; and
    optionally ``connect`` (used, when present, to connect before rebooting)."""

    def run(self, cmd: str, timeout: float = ...) -> Any: ...

    def close(self) -> None: ...


class PowerDriver(abc.ABC):
    """Powers one host.  ``state`` is the last known power state: "unknown"
    until an action or a status query tells, and again after a failure.

    A subclass registered with :func:`register_power_driver` also describes
    its part of the inventory (class attributes below)."""

    #: The inventory's ``power.kind`` this driver serves.
    kind: ClassVar[str] = "abstract"
    #: The fields of the power section this kind takes besides ``kind``, as
    #: JSON Schema (``$ref`` to the inventory schema's ``$defs`` allowed); a
    #: field two kinds share must have one schema.
    fields: ClassVar[dict[str, dict]] = {}
    #: Which of ``fields`` the inventory must give.
    required: ClassVar[tuple[str, ...]] = ()
    #: How the kind is named in the fix for a wrong kind, e.g. "ipmi (with
    #: address, user, password)".
    summary: ClassVar[str] = ""
    #: The fix shown when a required field is missing.
    fix: ClassVar[str] = ""
    #: Said before "remove it" of a field this kind does not take.
    unused_field_hint: ClassVar[str] = ""
    #: The host's ssh section is needed (``ssh: none`` is refused).
    needs_ssh: ClassVar[bool] = False
    #: False: the host cannot be powered at all (health checks skip the power cycle).
    can_power: ClassVar[bool] = True
    #: ``status`` tells "off" apart from "not answering" (a probe may trust an "off").
    reports_off: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def for_host(cls, host: HostSpec, ssh_factory: Callable[[], SSHRunner] | None) -> "PowerDriver":
        """The driver for ``host`` (its ``power`` section is of this kind)."""

    @classmethod
    def endpoint(cls, section: Mapping[str, Any]) -> tuple | None:
        """What this power controller reaches, as (address, port): two hosts
        with one endpoint share a controller, which the inventory refuses.
        None when the kind has none or the section does not say enough."""
        return None

    @classmethod
    def command_lines(cls, section: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
        """(field path under power, command line) of every local command line
        this kind's section holds: the inventory check looks for passwords
        written inline in them."""
        return []
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

    def reports_status(self) -> bool:
        """Whether status can confirm an on/off (drivers without status say no)."""
        return True

    # -- machinery -----------------------------------------------------------

    def _change(self, action: str, do: Callable[[], None], expect: str) -> None:
        self.state = UNKNOWN
        self._retrying(action, do)
        if action == "cycle":
            self.state = self.state_after_cycle
            return
        if self.reports_status():
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


# --- the registry -----------------------------------------------------------

#: The power drivers by kind (harness.access.kinds).
POWER_KINDS: KindRegistry[type[PowerDriver]] = KindRegistry("power")
register_power_driver = POWER_KINDS.register


def power_kinds() -> tuple[str, ...]:
    return POWER_KINDS.kinds()


def power_driver_class(kind: str) -> type[PowerDriver]:
    return POWER_KINDS.get(kind)


def power_schema() -> dict:
    """The inventory schema's ``power`` definition."""
    return POWER_KINDS.schema()


def power_for(host: HostSpec, ssh_factory: Callable[[], SSHRunner] | None = None) -> PowerDriver:
    """The power driver for ``host``'s ``power`` section.  ``ssh_factory``
    (returning a new SSH connection) is needed by kinds that work over SSH."""
    if host.power.kind not in POWER_KINDS.kinds():
        raise ConfigError(f"host {host.name}: unknown power.kind {host.power.kind!r}",
                          help=f"use one of: {', '.join(POWER_KINDS.kinds())}")
    return power_driver_class(host.power.kind).for_host(host, ssh_factory)
