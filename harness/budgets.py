"""Time budgets: how long each wait of a test may take, and what they add up to.

A test on a lab host waits in stages, each bounded by its own budget:

    reservation            wait for a free host (--reserve-timeout)
    host ready             power-cycle and dom0 boot when the host does not answer
    provisioning           install the build, reboot into it, verify it
    guest boot             BOOT_ATTEMPTS x (xl create + boot to a shell + evidence + destroy)
    test body              the suite's own waits (save/restore cycles, latency runs)
    teardown               destroy a disruptive test's guest, leak check

The leaves are in :data:`BUDGETS`, each with the reason for its figure; the
functions below derive the composite stages from them, for real hosts and
for emulated ones (``HostSpec.profile.emulated``), and the limit of a whole test is
their sum plus slack (:data:`SLACK_FRACTION`, at least :data:`SLACK_MIN_S`).  The plugin gives that limit to pytest-timeout
(harness.plugin), so the test's own limit can never cut a stage that is
still within its budget, as 900 s once cut the third boot attempt of a guest.

:func:`stage` marks a stage in the code.  A failure leaving it learns the
stage's name (an infrastructure failure's message starts with it) and the
time spent against the budget; when pytest-timeout's limit runs out, the
plugin names the stage it ran out in (:func:`time_limit_error`).
"""
from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from xenhil.harness.errors import INFRASTRUCTURE, TestTimeLimitExceeded, TimeLimitExceeded, XenhilError
from xenhil.harness.lab.profile import HostProfile
from xenhil.harness.lab.virtual.quirks import DOM0_BOOT_TIMEOUT_S, GUEST_BOOT_TIMEOUT_S
from xenhil.harness.xen.evidence import HOST_COMMANDS

@dataclass(frozen=True)
class Budget:
    """Seconds a wait may take on a real host and on an emulated one, and why."""

    real_s: float
    emulated_s: float
    why: str

    def on(self, profile: HostProfile) -> float:
        return self.emulated_s if profile.emulated else self.real_s


def _same(seconds: float, why: str) -> Budget:
    return Budget(seconds, seconds, why)


# --- the leaves ----------------------------------------------------------------

# SSH (harness.access.ssh uses these as its defaults).
SSH_CONNECT_S = 10.0
SSH_CONNECT_ATTEMPTS = 3
SSH_RETRY_DELAY_S = 1.0
SSH_CHANNEL_S = 30.0
SSH_KILL_S = 15.0
SFTP_REPLY_S = 120.0

# The guest's console (harness.guest uses these).
CONSOLE_STALL_S = 150.0
COMMAND_ECHO_S = 60.0
# A console command whose time is up while its output is still arriving (a
# byte within CONSOLE_PROGRESS_S) goes on, up to CONSOLE_SLOW_FACTOR times
# its timeout (harness.access.console.shell): a slow console is not a stuck
# one.  Seen on the virtual lab with the machine's two cores busy beside it
# (main job 20261201T112836Z-1f46f7): the guest echoed a typed line in 55 s
# and printed a 741-byte sysfs file at about 40 bytes a second, so a 60 s
# `cat` ran out of time mid-output; idle, the same `cat` takes 17-22 s.
CONSOLE_PROGRESS_S = 15.0
CONSOLE_SLOW_FACTOR = 4.0

#: Boots of one guest before its split fails on a host (fixtures.guest: only a
#: guest that crashed while booting is booted again).
BOOT_ATTEMPTS = 3

BUDGETS: dict[str, Budget] = {
    "ssh connect": _same(
        SSH_CONNECT_ATTEMPTS * 3 * SSH_CONNECT_S + (SSH_CONNECT_ATTEMPTS - 1) * SSH_RETRY_DELAY_S,
        f"{SSH_CONNECT_ATTEMPTS} attempts, each bounded by {SSH_CONNECT_S:g} s for TCP, the "
        f"banner and the login, {SSH_RETRY_DELAY_S:g} s apart"),
    "ssh session start": _same(
        3 * 2 * SSH_CHANNEL_S,
        f"opening a session and sshd's answer to the exec request, each bounded by "
        f"{SSH_CHANNEL_S:g} s (a loaded emulated dom0 forks slowly); tried twice on the "
        f"connection and once on a new one"),
    "ssh kill": _same(SSH_KILL_S, "stopping a timed-out command's processes on the host"),
    "sftp reply": _same(
        SFTP_REPLY_S,
        "one SFTP request's answer (a chunk of a copy, a stat); a healthy host answers in "
        "well under a second"),
    "console stall": _same(
        CONSOLE_STALL_S,
        "silence after the guest's shell prompt that counts as a stuck `xl console` relay "
        "(a shell echoes every poll); before the prompt a quiet boot (loglevel=4 on emulated "
        "hosts) is bounded by the guest boot budget alone"),
    "command echo": _same(
        COMMAND_ECHO_S,
        "a shell echoes a typed line within seconds even on a loaded emulated guest"),
    "dom0 boot": Budget(
        600.0, DOM0_BOOT_TIMEOUT_S,
        "power on or reboot -> dom0 answering SSH: a real server's firmware may take "
        "minutes; emulated: harness/lab/virtual/quirks.py DOM0_BOOT_TIMEOUT_S"),
    "power cycle": _same(
        3 * 60.0 + 2 * 2.0,
        "harness/access/power/driver.py: 3 attempts of a 60 s BMC command, 2 s apart"),
    "install": _same(
        900.0 + 300.0,
        "dpkg -i of the build's packages (900 s timeout, the longest install command) "
        "plus 300 s to copy the build and write the GRUB entry"),
    "reboot command": _same(20.0, "`systemctl reboot` over SSH before the connection drops"),
    "verify": _same(120.0 + 30.0, "xl info (120 s) and /proc/cmdline (30 s) on the new dom0"),
    "xl create": _same(300.0, "xenhil.harness.guest.Guest.create: `xl create` and its device models"),
    "xl destroy": _same(120.0, "`xl destroy` of a guest"),
    "balloon settle": Budget(
        60.0, 300.0,
        "a guest's balloon driver reaching its target before `xl save` (harness/xen/"
        "balloon.py); emulated: more than 30 s measured for 56 MiB"),
    "guest boot": Budget(
        300.0, GUEST_BOOT_TIMEOUT_S,
        "`xl create` -> the guest's shell answering on its console; emulated: "
        "harness/lab/virtual/quirks.py GUEST_BOOT_TIMEOUT_S"),
    "evidence": _same(
        len(HOST_COMMANDS) * 60.0 + 30.0 + 120.0,
        f"harness/xen/evidence.py: {len(HOST_COMMANDS)} host commands of 60 s, listing "
        f"/var/log/xen (30 s), copying its logs (120 s)"),
    "test body": _same(
        3600.0,
        "the longest suite body: 3 save/restore cycles (--saverestore-cycles), each up to "
        "save 200 s (after its balloon check: 15 s at most for a guest not ballooning) + "
        "restore 300 s + shell 420 s + its commands; a test needing more sets "
        "@pytest.mark.timeout"),
    "teardown": _same(
        600.0,
        "a disruptive test's guest destroyed (120 s), its files removed, the leak check's "
        "xl, pgrep and xenstore reads, the lease released"),
}

#: Added to the sum of a test's stages: the small commands between the big
#: waits (mkdir, xl domid, uptime), session starts on a loaded dom0, polls
#: that overrun a deadline by one interval.
SLACK_FRACTION = 0.10
SLACK_MIN_S = 300.0


def seconds(name: str, profile: HostProfile) -> float:
    """The budget of the leaf stage ``name`` on a host of this profile."""
    return BUDGETS[name].on(profile)


# --- composite stages --------------------------------------------------------------

def ssh_command_s(timeout: float) -> float:
    """One SSH command: connecting (at first use, and again when the session
    could not be started on the old connection), starting the session, the
    command's own ``timeout``, stopping it when it outlives that."""
    return (2 * BUDGETS["ssh connect"].real_s + BUDGETS["ssh session start"].real_s + timeout
            + BUDGETS["ssh kill"].real_s)


def guest_command_s(timeout: float) -> float:
    """One command in the guest over its console (harness.guest.Guest.run):
    its timeout, and after a lost relay a re-attach (120 s shell wait, after
    the echo wait) and the command once more; each wait as long as a slow
    console's output keeps it going (CONSOLE_SLOW_FACTOR)."""
    return CONSOLE_SLOW_FACTOR * (COMMAND_ECHO_S + 2 * timeout) + 120.0


def guest_boot_attempt_s(profile: HostProfile) -> float:
    """One boot of a guest: `xl create` (created once more after a destroy when
    the connection or, emulated, a dom0 process died under it), the boot to
    its shell, evidence when it failed, destroy."""
    create = 2 * seconds("xl create", profile) + seconds("xl destroy", profile)
    return (create + seconds("guest boot", profile) + seconds("evidence", profile)
            + seconds("xl destroy", profile))


def guest_boot_s(profile: HostProfile) -> float:
    """Booting a split's guest: every attempt (fixtures.guest GuestPool.get)."""
    return BOOT_ATTEMPTS * guest_boot_attempt_s(profile)


def host_ready_s(profile: HostProfile) -> float:
    """A host that does not answer: probe, power-cycle, dom0 boot (Host.ensure_ready)."""
    return 20.0 + seconds("power cycle", profile) + seconds("dom0 boot", profile)


def reboot_s(profile: HostProfile) -> float:
    """Rebooting into a new build (harness.xen.provision.reboot_and_follow):
    the reboot command and a boot; when Xen's banner never came, a power
    cycle and a second boot."""
    boot = seconds("dom0 boot", profile)
    return seconds("reboot command", profile) + boot + seconds("power cycle", profile) + boot


def provisioning_s(profile: HostProfile) -> float:
    """Putting a build on a host: install, reboot into it, verify it."""
    return seconds("install", profile) + reboot_s(profile) + seconds("verify", profile)


@dataclass(frozen=True)
class ItemBudget:
    """What one test on a lab host may spend, by phase, and its whole limit."""

    setup_s: float
    body_s: float
    teardown_s: float
    limit_s: float
    parts: dict[str, float] = field(default_factory=dict)


def item_budget(profile: HostProfile, reservation_s: float, *, provisions: bool = True,
                boots_guest: bool = True) -> ItemBudget:
    """The budget of a test on a host of this profile: what its setup
    may wait for (the reservation, bringing the host up, provisioning and
    booting its guest when the test uses those fixtures), its body, its
    teardown, and its limit: their sum plus slack, rounded up to a minute."""
    parts = {"reservation": reservation_s, "host ready": host_ready_s(profile)}
    if provisions:
        parts["provisioning"] = provisioning_s(profile)
    if boots_guest:
        parts["guest boot"] = guest_boot_s(profile)
    setup = sum(parts.values())
    body = seconds("test body", profile)
    teardown = seconds("teardown", profile)
    total = setup + body + teardown
    limit = 60 * math.ceil((total + max(SLACK_MIN_S, SLACK_FRACTION * total)) / 60)
    parts.update({"test body": body, "teardown": teardown})
    return ItemBudget(setup, body, teardown, limit, parts)


def describe(profile: HostProfile, reservation_s: float) -> str:
    """One line: the limit of a full test and what it is made of."""
    budget = item_budget(profile, reservation_s)
    kind = profile.kind
    parts = " + ".join(f"{name} {value:.0f}" for name, value in budget.parts.items())
    return f"{kind} host: test limit {budget.limit_s:.0f} s = {parts} + slack (seconds)"


# --- stages in the code ----------------------------------------------------------------

@dataclass(frozen=True)
class StageTime:
    """A stage a failure passed through: its budget and the time it had run."""

    name: str
    budget_s: float | None
    spent_s: float
    evidence: Mapping[str, str] = field(default_factory=dict)

    @property
    def overran(self) -> bool:
        return self.budget_s is not None and self.spent_s > self.budget_s

    def render(self) -> str:
        if self.budget_s is None:
            return f"{self.name}: {self.spent_s:.0f} s"
        return f"{self.name}: {self.spent_s:.0f} s of {self.budget_s:.0f} s"


_TIMES = "_xenhil_stage_times"


def stage_times(exc: BaseException) -> list[StageTime]:
    """The stages ``exc`` left, innermost first."""
    return list(getattr(exc, _TIMES, ()))


def render_times(times: list[StageTime]) -> str:
    """Outermost first, on one line (evidence is a path or a short quote)."""
    return "; ".join(t.render() for t in reversed(times))


@contextlib.contextmanager
def stage(name: str, budget_s: float | None = None, *, names_failures: bool = True,
          evidence: Mapping[str, str] | None = None) -> Iterator[None]:
    """A stage of a test: a failure leaving it records the stage and its time.

    ``names_failures``: an infrastructure failure's message starts with the
    stage's name; off for stages whose failures name themselves (an SSH
    command's timeout names the command).  ``evidence``: files a failure in
    this stage should point at (the guest's console transcript).
    """
    started = time.monotonic()
    try:
        yield
    except BaseException as exc:
        record = StageTime(name, budget_s, time.monotonic() - started, dict(evidence or {}))
        with contextlib.suppress(AttributeError, TypeError):  # an exception without a __dict__
            setattr(exc, _TIMES, [*stage_times(exc), record])
        if isinstance(exc, XenhilError) and exc.failure_class == INFRASTRUCTURE:
            if names_failures:
                exc.within(name)
            for key, value in record.evidence.items():
                exc.evidence.setdefault(key, value)
            if ran_out_of_time(exc):
                exc.evidence["stage times"] = render_times(stage_times(exc))
        raise


_PYTEST_TIMEOUT = re.compile(r"Timeout \(>([0-9.]+)s\) from pytest-timeout")


def pytest_timeout_limit(exc: BaseException) -> float | None:
    """The limit in pytest-timeout's own failure ("Timeout (>900.0s) from
    pytest-timeout."), or None for any other exception.  Recognised by its
    text: the harness does not import pytest."""
    if type(exc).__name__ != "Failed":
        return None
    match = _PYTEST_TIMEOUT.search(str(exc))
    return float(match.group(1)) if match else None


def ran_out_of_time(exc: BaseException) -> bool:
    """A wait's budget ran out: a typed timeout, a console that stayed silent,
    or the test's whole limit."""
    from xenhil.harness.access.console import ConsoleStalled
    return (isinstance(exc, (TimeLimitExceeded, ConsoleStalled))
            or pytest_timeout_limit(exc) is not None)


def time_limit_error(exc: BaseException) -> TestTimeLimitExceeded:
    """pytest-timeout's failure ``exc`` as a typed infrastructure error naming
    the stages it ran out in, outermost first (the plugin makes the test's
    phase the outermost), and saying whether the innermost stage overran its
    own budget (a wait that is not bounded) or every stage was within its own
    (the test's limit is too small for them)."""
    limit = pytest_timeout_limit(exc)
    times = stage_times(exc)
    shown = f"{limit:.0f} s" if limit is not None else "(unknown)"
    where = " > ".join(t.name for t in reversed(times)) or "a phase of the test"
    if len(times) <= 1:
        why = "no harness stage was running in it: the time went in the test's own code"
    elif times[0].overran:
        why = (f"{times[0].name} had run {times[0].spent_s:.0f} s, past its own budget of "
               f"{times[0].budget_s:.0f} s: that wait is not bounded (a xenhil bug)")
    else:
        why = ("every stage was within its own budget: together they needed more than the "
               "test's limit (harness/budgets.py must give this test more)")
    evidence: dict[str, str] = {}
    for t in times:
        for key, value in t.evidence.items():
            evidence.setdefault(key, value)
    evidence["stage times"] = render_times(times) or "no stage recorded"
    return TestTimeLimitExceeded(f"the test's time limit of {shown} ran out in {where}\n  {why}",
                                 evidence=evidence)
