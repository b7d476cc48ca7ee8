"""Typed failures, after LAVA's lava_common/exceptions.py.

Every failure the harness raises belongs to one *failure class* that tells a
patch reviewer whose problem it is:

- ``infrastructure``: the lab failed (host did not boot, SSH/console/BMC lost,
  reservation timed out).  Rerun; do not blame the patch.
- ``product``: Xen or QEMU behaved wrongly (a check failed).  Blame the patch.
- ``test-bug``: the framework, a suite or its input is wrong (bad inventory,
  bad split string).  Fix the test setup.

The class becomes an Allure category and a label on every result.  Each
exception carries ``help``: one sentence saying what to do about it.
"""
from __future__ import annotations

INFRASTRUCTURE = "infrastructure"
PRODUCT = "product"
TEST_BUG = "test-bug"
FAILURE_CLASSES = (INFRASTRUCTURE, PRODUCT, TEST_BUG)


class XenhilError(Exception):
    """Base of all harness failures.  Subclasses set ``failure_class``."""

    failure_class: str = TEST_BUG
    help: str = "This is a bug in xenhil or in a suite; report it with the traceback."

    def __init__(self, message: str, *, help: str | None = None, evidence: dict | None = None):
        super().__init__(message)
        if help is not None:
            self.help = help
        # name -> path (or short text) of evidence gathered for this failure
        self.evidence: dict[str, str] = dict(evidence or {})
        # Stages (harness.budgets.stage) the failure passed through, outermost first.
        self.stages: list[str] = []
        self._bare_message: str | None = None

    def within(self, stage: str) -> None:
        """Say that this failure happened inside ``stage`` (harness.budgets.stage
        calls it as the failure leaves each stage).  The message then starts
        with the stages, outermost first ("guest boot of split single on h1,
        attempt 2 of 3: console ... timed out"), so a reviewer reads where the
        lab failed before what failed.  The text lives in ``args``, where the
        report's secret scrubbing (harness.secrets) reaches it."""
        if not self.stages:
            if len(self.args) != 1 or not isinstance(self.args[0], str):
                return  # a message that is not one text: leave it as it is
            self._bare_message = self.args[0]
        if self._bare_message is None:
            return
        self.stages.insert(0, stage)
        self.args = (f"{' > '.join(self.stages)}: {self._bare_message}",)

    def __str__(self) -> str:
        # The "[class]" prefix is what the Allure categories match on
        # (harness.results.categories), so keep it first.
        text = f"[{self.failure_class}] {super().__str__()}"
        if self.help:
            text += f"\n  how to fix: {self.help}"
        for name, where in self.evidence.items():
            text += f"\n  evidence {name}: {where}"
        return text


class InfrastructureError(XenhilError):
    failure_class = INFRASTRUCTURE
    help = "The lab failed, not the patch: check the host's console transcript and rerun."


class ProductError(XenhilError, AssertionError):
    """A check on Xen/QEMU behaviour failed.  Also an AssertionError, so pytest
    shows it as a test failure rather than an error."""

    failure_class = PRODUCT
    help = "Xen or QEMU behaved differently than the check expects: read expected/seen and the evidence."


class TestBugError(XenhilError):
    __test__ = False  # not a test class, despite the name
    failure_class = TEST_BUG


class ConfigError(TestBugError):
    """Bad input (inventory, split string, Xen build, options): found before any
    host is touched."""

    help = "Fix the named field in the named file or option."


# --- infrastructure ------------------------------------------------------

class ConnectionLost(InfrastructureError):
    help = "The connection to the host dropped; check that it is up (power status, console)."


class SSHError(InfrastructureError):
    help = "Check the host's address, SSH port, user, key file and pinned host key in the inventory."


class HostKeyMismatch(SSHError):
    help = ("The host presented a key that differs from the pinned one. If the host was "
            "reinstalled, update its host_key in the inventory (or run `xenhil lab check --learn`); "
            "otherwise treat it as a possible man-in-the-middle.")


class RemoteCommandFailed(InfrastructureError):
    """A command on a host exited non-zero when it had to succeed."""

    def __init__(self, command: str, exit_status: int, stdout_tail: str, stderr_tail: str,
                 host: str = "", **kw):
        self.command, self.exit_status = command, exit_status
        self.stdout_tail, self.stderr_tail = stdout_tail, stderr_tail
        where = f" on {host}" if host else ""
        msg = (f"command{where} exited {exit_status}: {command}\n"
               f"--- stdout (tail) ---\n{stdout_tail}\n--- stderr (tail) ---\n{stderr_tail}")
        super().__init__(msg, **kw)


class TimeLimitExceeded(InfrastructureError):
    """A wait ran out of its budget (harness/budgets.py): the lab was too slow,
    or hung.  The message starts with the stage it ran out in."""

    help = ("A wait ran out of time: the message names the stage, the evidence has each "
            "stage's budget and time spent. Rerun; if the lab is merely slow, raise that "
            "stage's budget in harness/budgets.py.")


class TestTimeLimitExceeded(TimeLimitExceeded):
    """The limit of a whole test (pytest-timeout's, set by the plugin from
    harness/budgets.py) ran out; raised in place of pytest-timeout's plain
    failure so the stage it ran out in is named."""

    __test__ = False  # not a test class, despite the name
    help = ("The test as a whole ran out of time. The innermost stage named is where the time "
            "went: if it overran its own budget, that wait is not bounded (a xenhil bug: report "
            "it with this message); otherwise the stages add up to more than the test's limit "
            "and harness/budgets.py must give the test more.")


class ConsoleTimeout(TimeLimitExceeded):
    help = "The console did not show what was awaited in time: read the tail and the transcript."


class FatalConsoleOutput(InfrastructureError):
    """A fatal pattern (Xen assertion, panic) appeared on a console."""

    help = "Xen or the kernel crashed on the console; the transcript has the full trace."


class PowerError(InfrastructureError):
    help = "Check the BMC address, user and password reference in the inventory, and that the BMC answers."


class ReservationTimeout(TimeLimitExceeded):
    help = "All matching hosts stayed leased; wait, add hosts, or raise --reserve-timeout."


class HostBroken(InfrastructureError):
    help = "An earlier step broke this host for the rest of the run; see the first failure's reason."


class CapabilityProbeFailed(InfrastructureError):
    """A capability probe (harness.xen.toolstack.Toolstack.supports_device_models,
    harness.probe_dm.companion.probe_unavailable) could not tell whether the
    host has the capability: its command failed in a way a host that merely
    lacks it does not (xl exited non-zero, printed no domain config, the
    probe's own code crashed in dom0).  A failure, never a "capability
    missing" skip: a skip would hide that nothing was tested."""

    help = ("The host could not answer a capability question: read the command's output in the "
            "message; a host that lacks the capability answers cleanly and is skipped instead.")


# --- warnings ------------------------------------------------------------

class XenhilWarning(UserWarning):
    """Something a run got past that a reviewer must still see (a guest booted
    again, a device model replaced, a regression not confirmed): each
    subclass is counted in pytest's summary and in the report's triage
    summary (fixtures/reporting.py records them in the results store)."""
