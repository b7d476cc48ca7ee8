"""An HVM guest on a host: create, console, SSH, save/restore, destroy, and
the leak check after it.

The guest's console is ``xl console`` run on the host through its SSH
connection, with its own transcript.  Readiness is detected by sending a
command and waiting for its answer, never by waiting for a boot message:
the pty serial drops output while nobody is attached (docs/xen-ioreq-facts.md section 7).
"""
from __future__ import annotations

import enum
import logging
import shlex
import time
import warnings
from pathlib import Path
from typing import Callable, Protocol, Sequence, TypeVar

from xenhil.harness import budgets
from xenhil.harness.budgets import COMMAND_ECHO_S, CONSOLE_STALL_S
from xenhil.harness.errors import InfrastructureError, ProductError, XenhilError
from xenhil.harness.guest_ssh import GuestRouteLost, GuestShell, NoGuestRoute
from xenhil.harness.step import step
from xenhil.harness.xen import evidence
from xenhil.harness.xen.balloon import BalloonSettled, wait_balloon_settled
from xenhil.harness.xen.dom0_crashes import dom0_uptime
from xenhil.harness.xen.toolstack import Toolstack

log = logging.getLogger("xenhil.guest")
T = TypeVar("T")

GUEST_DIR = "/var/lib/xenhil/guests"
# CONSOLE_STALL_S (silence after the guest's shell prompt that counts as a
# stuck console relay) and COMMAND_ECHO_S (how long a shell may take to echo
# a typed line) are budgets, with their reasons, in harness/budgets.py.


class GuestState(enum.Enum):
    DEFINED = "defined"
    PAUSED = "paused"
    RUNNING = "running"
    SAVED = "saved"
    DESTROYED = "destroyed"
    BROKEN = "broken"


class Companion(Protocol):
    """Something in dom0 that serves the guest besides the toolstack's device
    model (the probe ioreq server): it must join while the domain is paused,
    before the guest runs its first instruction, and again after a restore."""

    name: str

    def attach(self, guest: "Guest", domid: int) -> None: ...
    def saved(self, guest: "Guest") -> None: ...
    def reattach(self, guest: "Guest", domid: int) -> None: ...
    def detach(self, guest: "Guest") -> None: ...
    def evidence(self, guest: "Guest", directory: Path) -> dict[str, str]: ...
    # A guest another process booted is used by whoever holds its host next
    # (fixtures.guest): what that process needs to take the companion over
    # (JSON), and taking it over.
    def record(self) -> dict: ...
    def adopt(self, guest: "Guest", record: dict) -> None: ...


class GuestLeak(ProductError):
    help = ("The toolstack left pieces of a destroyed domain behind; read the listed leftovers "
            "and the evidence (xl list -l, processes).")


class Guest:
    def __init__(self, host, config, artifacts_dir: Path, ready_condition: str | None = None,
                 companions: Sequence[Companion] = (), prompt: str | None = None,
                 address: str | None = None):
        """``ready_condition``: a quote-free shell test that holds once the guest
        is ready for commands (the guest kit's READY_CONDITION).
        ``prompt``: the guest shell's prompt (the kit's GUEST_PROMPT); while
        booting, silence counts as a stalled console only once it was seen
        (None: from the first byte received).
        ``companions``: attached while the domain is paused after create and
        restore, detached before destroy.
        ``address``: the guest's address on dom0's bridge, given to it on its
        kernel command line (harness.xen.testguest.guest_model): once it is
        ready, :meth:`run` goes over SSH there (harness.guest_ssh), and over
        the console when it cannot."""
        self.host = host
        self.companions = list(companions)
        self.ready_condition = ready_condition
        self.prompt = prompt
        self.config = config
        self.name = config.name
        self.artifacts_dir = Path(artifacts_dir)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.xl = Toolstack(host.ssh, host.name, emulated=host.spec.profile.emulated)
        self.dom0_uptime_at_create: float | None = None
        self.state = GuestState.DEFINED
        self.domid: int | None = None
        self.broken_reason: str | None = None
        self._console = None
        self.cfg_path = f"{GUEST_DIR}/{self.name}.cfg"
        self.save_path = f"{GUEST_DIR}/{self.name}.save"
        self.domids_seen: list[int] = []
        # (domid, what) -> an observation that holds while that domain lives.
        self._observed: dict[tuple[int | None, str], object] = {}
        self.address = address
        self._shell = (GuestShell(host, self.name, address,
                                  self.artifacts_dir / f"{self.name}.commands.log")
                       if address is not None else None)
        # Over SSH only while the guest is known to be up with its network:
        # after wait_ready, adopt and restore; until a route failure.
        self._shell_usable = False
        self.route_failures: list[str] = []

    def observe(self, what: str, read: Callable[[], T]) -> T:
        """``read()``, once per domain of this guest: what cannot change while
        the domain lives (its PCI BARs, assigned by its kernel at boot) is
        read by the first test that needs it and shared with the tests after
        it; over the console of an emulated host one such read costs minutes.
        A restored guest is a new domain and is read again."""
        key = (self.domid, what)
        if key not in self._observed:
            self._observed[key] = read()
        return self._observed[key]

    # -- console -------------------------------------------------------------
    @property
    def console(self):
        if self._console is None or not self._console.is_open:
            from xenhil.harness.access.console import Console
            channel = self.host.ssh.open_interactive(f"xl console {shlex.quote(self.name)}")
            self._console = Console.channel(f"{self.host.name}/{self.name}", channel,
                                            self.artifacts_dir / f"{self.name}.console.log")
            self._console.open()
        return self._console

    def _close_console(self) -> None:
        if self._console is not None:
            try:
                self._console.close()
            except Exception:  # the domain is gone: xl console already exited
                log.debug("closing console of %s", self.name, exc_info=True)
            self._console = None

    def _close_shell(self) -> None:
        self._shell_usable = False
        if self._shell is not None:
            self._shell.close()

    def detach_console(self) -> None:
        """Let go of the console: only one `xl console` may attach to a
        domain, and the next holder of the host may be another process."""
        self._close_console()

    # -- lifecycle -----------------------------------------------------------
    def record(self) -> dict:
        """What another process needs to take this running guest over
        (:meth:`adopt`): its address and its companions' state, as JSON."""
        return {"address": self.address,
                "companions": {c.name: c.record() for c in self.companions}}

    def adopt(self, domid: int, record: dict) -> None:
        """Take over this guest, already running as ``domid``: booted by
        another process (or another Guest object) from the same config;
        ``record`` is what its :meth:`record` returned.  Its console is
        attached on first use."""
        self.domid = int(domid)
        self.domids_seen = [self.domid]
        self.state = GuestState.RUNNING
        self._shell_usable = self._shell is not None
        states = record.get("companions", {})
        for companion in self.companions:
            companion.adopt(self, states.get(companion.name, {}))

    def _refresh_domid(self) -> int:
        result = self.host.ssh.run(["xl", "domid", self.name], timeout=30, check=True)
        self.domid = int(result.stdout.strip())
        self.domids_seen.append(self.domid)
        return self.domid

    def make_disks(self, size: str) -> None:
        """Create the guest's raw disk images on the host, ``size`` each (truncate: sparse)."""
        paths = [d.target for d in getattr(self.config, "disks", ())]
        if paths:
            self.host.ssh.run(["mkdir", "-p", GUEST_DIR], check=True)
            self.host.ssh.run(["truncate", "-s", size, *paths], check=True)

    def remove_files(self) -> None:
        """Remove what the guest left in dom0's GUEST_DIR (after destroy)."""
        disks = [d.target for d in getattr(self.config, "disks", ())]
        self.host.ssh.run(["rm", "-f", *disks, self.save_path, self.cfg_path], timeout=60)

    @step("create guest {self.name} on {self.host.name}")
    def create(self, paused: bool = False) -> int:
        self.host.ssh.run(["mkdir", "-p", GUEST_DIR], check=True)
        text = self.config.render()
        self.host.ssh.put_bytes(text, self.cfg_path)
        (self.artifacts_dir / f"{self.name}.cfg").write_text(text)
        hold = paused or bool(self.companions)
        # dom0's clock when this guest's life began: crashes of dom0 processes
        # after it are read back when a check fails (harness.xen.dom0_crashes).
        self.dom0_uptime_at_create = dom0_uptime(self.host.ssh)
        self.xl.create(self.cfg_path, self.name, paused=hold,
                       timeout=budgets.seconds("xl create", self.host.spec.profile))
        self.state = GuestState.PAUSED if hold else GuestState.RUNNING
        domid = self._refresh_domid()
        for companion in self.companions:
            companion.attach(self, domid)
        if hold and not paused:
            self.unpause()
        return domid

    def companion(self, name: str):
        """The companion called ``name`` (e.g. "probe"), or None."""
        return next((c for c in self.companions if c.name == name), None)

    @step("unpause guest {self.name}")
    def unpause(self) -> None:
        self.xl.xl("unpause", self.name)
        self.state = GuestState.RUNNING

    @step("wait for guest {self.name}'s shell")
    def wait_ready(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = budgets.seconds("guest boot", self.host.spec.profile)
        from xenhil.harness.access.console import ConsoleClosed, ConsoleStalled
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.console.wait_for_shell(timeout=max(deadline - time.monotonic(), 1.0),
                                            poll_interval=10.0,
                                            ready_condition=self.ready_condition,
                                            stall_timeout=CONSOLE_STALL_S,
                                            stall_armed_by=self.prompt,
                                            target_alive=self._domain_lives)
                self._shell_usable = self._shell is not None
                return
            except ConsoleClosed as exc:
                # `xl console` can exit while a loaded host boots the guest, or
                # stop relaying (seen on the virtual lab: the guest booted to its
                # shell, the attached xl console passed nothing on; a fresh one
                # did).  The guest itself is fine if xl still lists it: attach again.
                self._close_console()
                if time.monotonic() >= deadline or not self._domain_lives():
                    raise
                if isinstance(exc, ConsoleStalled):
                    self._end_stuck_relay()
                log.warning("console of %s %s while it booted; attaching again", self.name,
                            "stalled" if isinstance(exc, ConsoleStalled) else "closed")

    def _domain_lives(self) -> bool:
        """Listed by xl and not shut down: only then is a lost console worth
        attaching again.  A domain shut down for a reboot (Xen's answer to a
        triple fault) lives on when its config lets xl restart it; the
        suites' guests preserve it instead (on_reboot="preserve")."""
        entry = self.xl.domain(self.name)
        if entry is None:
            return False
        if "shutdown" not in entry.flags:
            return True
        return entry.shutdown_reason == "reboot" and getattr(self.config, "on_reboot", None) != "preserve"

    def _reattach_console(self, why: str) -> None:
        """Close the console, end a stuck `xl console` of this domain (it holds
        xenconsole's per-domain lock) and attach again."""
        log.warning("console of guest %s %s: attaching again", self.name, why)
        self._close_console()
        self._end_stuck_relay()
        self.console.wait_for_shell(timeout=120, poll_interval=5.0)

    def _end_stuck_relay(self) -> None:
        """A stuck `xl console` holds xenconsole's per-domain lock: end it."""
        if self.domid is not None:
            self.host.ssh.run(f"pkill -f '^[^ ]*xenconsole {int(self.domid)} ' || true", timeout=30)

    def run(self, command: str, timeout: float = 120.0, check: bool = True) -> str:
        """Run a shell command in the guest; its output (stdout and stderr).

        Over SSH when the guest has an address and is ready (harness.guest_ssh:
        the console of an emulated host passes some 55 bytes a second); over
        its console otherwise, and from the first time SSH cannot reach it
        (the command is then run on the console: it must be safe to repeat).

        The virtual lab's `xl console` relay sometimes stops passing output on
        or ends (the guest is fine: a fresh `xl console` gets its shell at
        once).  When the typed line is not even echoed within COMMAND_ECHO_S,
        or the console closes under it, the console is attached again and the
        command run once more (it must be safe to repeat, as the suites' reads
        and register writes are).  A command that times out after
        CONSOLE_STALL_S of silence is not repeated (it may just be slow); the
        console is re-attached for the next one."""
        # A stage, so that when the test's own limit runs out in here the
        # report names this command (its own timeout names it otherwise).
        with budgets.stage(f"guest command `{command[:60]}` in {self.name}",
                           budgets.guest_command_s(timeout), names_failures=False):
            return self._run(command, timeout, check)

    def _run(self, command: str, timeout: float, check: bool) -> str:
        status, output = self._run_over_ssh(command, timeout) or self._run_on_console(command,
                                                                                     timeout)
        if check and status != 0:
            raise InfrastructureError(
                f"guest {self.name}: `{command}` exited {status}:\n{output[-2000:]}",
                help="read the guest's command transcript and console transcript",
                evidence={"guest commands": str(self.artifacts_dir / f"{self.name}.commands.log"),
                          "guest console": str(self.artifacts_dir / f"{self.name}.console.log")})
        return output

    def _run_over_ssh(self, command: str, timeout: float) -> tuple[int, str] | None:
        """(status, output) over SSH, or None when the guest has no route
        (then, and for the guest's later commands, the console)."""
        if not self._shell_usable:
            return None
        try:
            return self._shell.run(command, timeout)
        except NoGuestRoute as exc:
            self._shell_usable = False
            message = f"guest {self.name}: commands go over the console from now on: {exc}"
            self.route_failures.append(message)
            log.warning("%s", message)
            # Counted in the run's warnings summary: a route that always fails
            # leaves the run right but slow, which nobody would notice otherwise.
            warnings.warn(GuestRouteLost(message))
            return None

    def _run_on_console(self, command: str, timeout: float) -> tuple[int, str]:
        from xenhil.harness.access.console import ConsoleClosed, ConsoleStalled
        from xenhil.harness.errors import ConsoleTimeout
        try:
            status, output = self.console.run(command, timeout=timeout,
                                              start_timeout=COMMAND_ECHO_S)
        except ConsoleClosed as exc:
            # `xl console` ended (stuck relay killed, or the SSH connection
            # under it was replaced) while the domain lives on: attach again.
            if not self._domain_lives():
                raise
            self._reattach_console(f"{'stalled' if isinstance(exc, ConsoleStalled) else 'closed'} "
                                   f"during `{command[:60]}`")
            status, output = self.console.run(command, timeout=timeout)
        except ConsoleTimeout:
            # The command had its whole budget: a silent console gets attached
            # again for the next command, but this one is not repeated (a
            # long, quiet command may simply be slow).
            silent = time.monotonic() - self.console.last_received
            if silent >= CONSOLE_STALL_S:
                try:
                    self._reattach_console(f"silent for {silent:.0f}s during `{command[:60]}`")
                except XenhilError as exc:
                    log.warning("re-attaching the console of %s failed: %s", self.name, exc)
            raise
        return status, output

    def ssh(self, ssh_config):
        """An SSH connection into the guest through the host (direct-tcpip)."""
        return self.host.ssh.guest(ssh_config, name=f"{self.host.name}/{self.name}")

    @step("save guest {self.name} to {path}")
    def save(self, path: str | None = None, timeout: float = 200.0) -> str:
        """``xl save`` the guest to ``path`` (its save_path by default), once
        its balloon driver has settled: a Linux guest still ballooning cannot
        suspend (harness/xen/balloon.py)."""
        path = path or self.save_path
        self.wait_balloon_settled()
        self._close_console()
        self._close_shell()
        self.xl.xl("save", self.name, path, timeout=timeout)
        if self.xl.domain(self.name) is not None:
            raise ProductError(f"guest {self.name} still listed by xl after `xl save`",
                               help="xl save must destroy the domain once its state is saved")
        self.state = GuestState.SAVED
        for companion in self.companions:
            companion.saved(self)
        return path

    @step("wait for the balloon driver of guest {self.name}")
    def wait_balloon_settled(self, reach_target: bool = False) -> BalloonSettled:
        """The guest's memory at its balloon target, or no longer moving
        (with ``reach_target``: at its target)."""
        settled = wait_balloon_settled(
            self.xl, self.name, budgets.seconds("balloon settle", self.host.spec.profile),
            reach_target=reach_target)
        log.info("guest %s: memory %d MiB, balloon target %s MiB (%s after %.0f s)", self.name,
                 settled.memory_mib, settled.target_mib,
                 "reached" if settled.reached else "not moving", settled.waited_s)
        return settled

    @step("restore guest {self.name} from {path}")
    def restore(self, path: str | None = None, paused: bool = False, timeout: float = 300.0) -> int:
        path = path or self.save_path
        hold = paused or bool(self.companions)
        self.xl.xl("restore", *(["-p"] if hold else []), path, timeout=timeout)
        self.state = GuestState.PAUSED if hold else GuestState.RUNNING
        # The restored guest runs on where it was saved, network included.
        self._shell_usable = self._shell is not None
        domid = self._refresh_domid()
        for companion in self.companions:
            companion.reattach(self, domid)
        if hold and not paused:
            self.unpause()
        return domid

    @step("destroy guest {self.name}")
    def destroy(self) -> None:
        self._close_console()
        self._close_shell()
        for companion in self.companions:
            try:
                companion.detach(self)
            except XenhilError as exc:  # the domain goes anyway; the leak check judges
                log.warning("detaching %s from %s: %s", companion.name, self.name, exc)
        if self.xl.domain(self.name) is not None:
            self.xl.xl("destroy", self.name,
                       timeout=budgets.seconds("xl destroy", self.host.spec.profile))
        self.state = GuestState.DESTROYED

    @step("leak check after guest {self.name}")
    def leak_check(self, past_only: bool = False) -> None:
        """Nothing of any domain this guest had may survive it: no domain, no
        device-model process, no xenstore subtree.  ``past_only``: the guest
        still runs; check only the domains it had before (e.g. before each
        restore)."""
        leftovers = []
        if not past_only and self.xl.domain(self.name) is not None:
            leftovers.append(f"domain {self.name} still in `xl list`")
        past = set(self.domids_seen) - ({self.domid} if past_only else set())
        for domid in sorted(past):
            pids = self.xl.qemu_pids(domid)
            if pids:
                leftovers.append(f"device-model process(es) {pids} for domid {domid}")
            for path in (f"/local/domain/{domid}", f"/local/domain/0/device-model/{domid}"):
                if self.xl.xenstore_exists(path):
                    leftovers.append(f"xenstore {path}")
        if leftovers:
            raise GuestLeak(f"guest {self.name} left behind: " + "; ".join(leftovers),
                            evidence=self.collect_evidence("leak"))

    def collect_evidence(self, why: str) -> dict[str, str]:
        dest = self.artifacts_dir / f"evidence-{why}"
        extra = {"guest console": self.artifacts_dir / f"{self.name}.console.log",
                 "guest commands": self.artifacts_dir / f"{self.name}.commands.log",
                 "guest config": self.artifacts_dir / f"{self.name}.cfg"}
        try:
            found = evidence.collect(self.host, dest, extra)
        except XenhilError as exc:  # evidence is best effort; the failure is already raised
            log.warning("evidence for %s incomplete: %s", self.name, exc)
            found = {}
        dest.mkdir(parents=True, exist_ok=True)
        for companion in self.companions:
            found.update(companion.evidence(self, dest))
        return found
