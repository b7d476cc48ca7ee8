"""A lab host as a state machine (after labgrid's strategies).

States: unknown -> off -> booting -> dom0_ready, and broken.  Every
transition is a @step; the first failure inside one *latches* the host as
broken for the rest of the run, with the reason, so later tests fail fast
with HostBroken instead of fighting a dead machine.

The host owns one connection per channel (SSH, serial console, power), made
lazily: a test that only needs SSH never opens the console.
"""
from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from xenhil.harness import budgets
from xenhil.harness.access.console import ConsoleClosed
from xenhil.harness.errors import ConfigError, HostBroken, InfrastructureError, TimeLimitExceeded, XenhilError
from xenhil.harness.lab.model import HostSpec
from xenhil.harness.step import step

log = logging.getLogger("xenhil.host")


class HostBootTimeout(TimeLimitExceeded):
    help = "Read the serial transcript: did Xen or dom0 fail to boot?"


class HostState(enum.Enum):
    UNKNOWN = "unknown"
    OFF = "off"
    BOOTING = "booting"
    DOM0_READY = "dom0 ready"
    BROKEN = "broken"


# Which state may follow which.  BROKEN is reachable from anywhere and left
# only by an explicit repair() (a new run, or a human).
_ALLOWED = {
    HostState.UNKNOWN: {HostState.OFF, HostState.BOOTING, HostState.DOM0_READY},
    HostState.OFF: {HostState.BOOTING, HostState.OFF},
    HostState.BOOTING: {HostState.DOM0_READY, HostState.OFF, HostState.BOOTING},
    HostState.DOM0_READY: {HostState.BOOTING, HostState.OFF, HostState.DOM0_READY},
    HostState.BROKEN: set(),
}


def latching(func: Callable) -> Callable:
    """A transition: refuse on a broken host, latch the first failure."""

    @functools.wraps(func)
    def wrapper(self: "Host", *args, **kwargs):
        self.raise_if_broken()
        try:
            return func(self, *args, **kwargs)
        except XenhilError as exc:
            if exc.failure_class == "infrastructure":
                self.mark_broken(f"{func.__name__}: {exc}")
            raise
        except Exception as exc:
            # Unclassified errors during bring-up count as infrastructure.
            self.mark_broken(f"{func.__name__}: {type(exc).__name__}: {exc}")
            raise InfrastructureError(f"{self.name}: {func.__name__} failed: {exc}") from exc

    return wrapper


class Host:
    """One lab host reached over SSH, serial and power, whatever their kinds."""

    def __init__(self, spec: HostSpec, artifacts_dir: Path,
                 ssh_factory: Callable | None = None,
                 console_factory: Callable | None = None,
                 power_factory: Callable | None = None):
        self.spec = spec
        self.name = spec.name
        self.artifacts_dir = Path(artifacts_dir)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.state = HostState.UNKNOWN
        self.broken_reason: str | None = None
        self._lock = threading.RLock()
        self._ssh = self._console = self._power = None
        self._ssh_factory = ssh_factory or self._default_ssh
        self._console_factory = console_factory or self._default_console
        self._power_factory = power_factory or self._default_power
        # Per-run facts about the host (e.g. the Xen build it runs), filled by upper layers.
        self.facts: dict[str, object] = {}

    # -- channels ---------------------------------------------------------
    def _default_ssh(self):
        from xenhil.harness.access.ssh import connection_for
        if self.spec.ssh is None:
            raise ConfigError(f"host {self.name} has `ssh: none` in the inventory but this step needs SSH",
                              help="give the host an ssh: section, or do not run SSH tests on it")
        return connection_for(self.name, self.spec.ssh)

    def _default_console(self):
        from xenhil.harness.access.console import console_for
        return console_for(self.spec, self.artifacts_dir)

    def _default_power(self):
        from xenhil.harness.access.power import power_for
        return power_for(self.spec, ssh_factory=lambda: self.ssh)

    @property
    def ssh(self):
        with self._lock:
            # The process's connection to a host is shared by every Host object
            # of it (harness.access.ssh.connection_for): when another one closed
            # it (a test that made its own Host and closed it at its end), take
            # a new one instead of failing every later command with "used after
            # close()" (CI's real-Xen layer: after the smoke, the next test's
            # host never reached dom0 ready).
            if self._ssh is None or getattr(self._ssh, "state", None) == "closed":
                self._ssh = self._ssh_factory()
            return self._ssh

    @property
    def console(self):
        with self._lock:
            if self._console is None:
                self._console = self._console_factory()
            return self._console

    @property
    def power(self):
        with self._lock:
            if self._power is None:
                self._power = self._power_factory()
            return self._power

    # -- state ------------------------------------------------------------
    def _transition(self, new: HostState) -> None:
        if new is HostState.BROKEN:
            self.state = new
            return
        if new not in _ALLOWED[self.state]:
            raise InfrastructureError(
                f"{self.name}: state {self.state.value} cannot become {new.value}",
                help="This is a harness bug: a transition was attempted out of order.")
        log.info("%s: %s -> %s", self.name, self.state.value, new.value)
        self.state = new

    def mark_broken(self, reason: str) -> None:
        """Latch the first failure; later ones do not overwrite the reason."""
        with self._lock:
            if self.state is not HostState.BROKEN:
                self.broken_reason = reason
                log.error("%s: host broken: %s", self.name, reason)
            self.state = HostState.BROKEN

    def raise_if_broken(self) -> None:
        if self.state is HostState.BROKEN:
            raise HostBroken(f"{self.name} is broken for this run: {self.broken_reason}")

    def repair(self) -> None:
        """Forget a latched failure (a human or a new run decided to retry)."""
        with self._lock:
            self.state, self.broken_reason = HostState.UNKNOWN, None

    # -- transitions ------------------------------------------------------
    def _ssh_answers(self) -> bool:
        try:
            return self.ssh.run("true", timeout=20).exit_status == 0
        except XenhilError:
            return False

    @latching
    @step("probe {self.name}")
    def probe(self) -> HostState:
        """Find out where the host is without changing anything."""
        if self._ssh_answers():
            self._transition(HostState.DOM0_READY)
        elif self.power.reports_off and self.power.status() == "off":
            self._transition(HostState.OFF)
        return self.state

    @latching
    @step("bring {self.name} to dom0 ready")
    def ensure_ready(self, boot_timeout: float | None = None) -> None:
        """``boot_timeout``: power-on to dom0's SSH (default: the host's "dom0
        boot" budget, harness/budgets.py)."""
        if boot_timeout is None:
            boot_timeout = budgets.seconds("dom0 boot", self.spec.profile)
        # A stage: a failure, or the test's limit running out, names it.
        with budgets.stage(f"bringing {self.name} to dom0 ready",
                           budgets.host_ready_s(self.spec.profile)):
            self._ensure_ready(boot_timeout)

    def _ensure_ready(self, boot_timeout: float) -> None:
        if self.state is HostState.DOM0_READY and self._ssh_answers():
            return
        if self.state is HostState.UNKNOWN:
            self.probe()
            if self.state is HostState.DOM0_READY:
                return
        if self.state is HostState.OFF:
            self.power.on()
        else:
            self.power.cycle()
        self._transition(HostState.BOOTING)
        self.wait_for_dom0(boot_timeout)

    @latching
    @step("reboot {self.name}")
    def reboot(self, boot_timeout: float | None = None) -> None:
        """Reboot cleanly over SSH when it answers, else power-cycle."""
        if boot_timeout is None:
            boot_timeout = budgets.seconds("dom0 boot", self.spec.profile)
        if self.state is HostState.DOM0_READY and self._ssh_answers():
            try:
                self.ssh.run("systemctl reboot || reboot", timeout=20)
            except XenhilError:
                pass  # the connection drops while rebooting
        else:
            self.power.cycle()
        self._transition(HostState.BOOTING)
        self.wait_for_dom0(boot_timeout)

    @step("wait for dom0 SSH on {self.name}")
    def wait_for_dom0(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Let the old sshd go away before polling, so a reboot is not
        # mistaken for readiness.
        time.sleep(2)
        while time.monotonic() < deadline:
            if self._ssh_answers():
                self._transition(HostState.DOM0_READY)
                return
            if self._console is not None and self._console.is_open:
                # Between polls, watch the serial console: a Xen panic or a
                # dom0 crash ends the wait at once, with the console's tail.
                try:
                    self._console.watch(3)
                except ConsoleClosed:
                    log.warning("%s: serial console closed while dom0 boots", self.name)
            else:
                time.sleep(3)
        raise HostBootTimeout(
            f"{self.name}: dom0 did not answer SSH within {timeout:.0f}s",
            evidence={"console transcript": str(self.artifacts_dir)})

    def let_go_of_console(self) -> None:
        """Close the serial console link until the next use opens a new one
        (its transcript goes on in the same file).  A serial server serves one
        client at a time (QEMU's chardev socket; many console servers): a
        link kept open by a process that released the host leaves the next
        holder's link connected but silent.  CI's real-Xen layer lost a
        provisioning that way: the smoke's suite, a second process, saw no
        Xen banner while the first process still held the link of a host it
        had released, and power-cycled the host out of the build it booted."""
        with self._lock:
            console, self._console = self._console, None
        if console is not None:
            try:
                console.close()
            except Exception:  # closing is best effort: the next use opens its own
                log.debug("%s: closing %r failed", self.name, console, exc_info=True)

    def close(self) -> None:
        for channel in (self._ssh, self._console):
            if channel is not None:
                try:
                    channel.close()
                except Exception:  # closing is best effort at teardown
                    log.debug("%s: closing %r failed", self.name, channel, exc_info=True)
