"""A lab host's health check, after LAVA's: a fixed sequence of named steps
that proves the host can serve tests, each with its result and evidence.

Steps, in order (names are :data:`harness.lab.model.HEALTH_STEPS`):

``power-cycle``
    through the host's power driver (``power.kind``); a host that is off is
    powered on.  Not applicable for ``power: {kind: none}``.
``xen-banner``
    Xen's banner (:data:`harness.xen.provision.XEN_BANNER`) on the serial
    console during the boot the power cycle started.  Not applicable without
    a serial console or without a power cycle (nothing boots to watch).
``dom0-ssh``
    dom0 answers over SSH: after a power cycle within the host's "dom0 boot"
    budget (the console watched for panics meanwhile), else at once.
``xl-info``
    ``xl info`` runs and parses, and names a Xen version.
``guest``
    a small HVM guest (64 MiB, no disk, no network) is created, listed with
    its device model running, destroyed, and gone with its device model.
``leftover-domains``
    ``xl list`` shows Domain-0 only.
``leftover-device-models``
    no device model (qemu ``-xen-domid N``) or probe ioreq server
    (``harness.probe_dm --domid N``) runs for a domain that does not exist.
``leftover-files``
    none of :data:`LEFTOVER_GLOBS` (guest disks, configs and save files, the
    probe's state files, this check's own guest config) exists.

A step a host cannot do is *not applicable*, with the reason: its power kind
is none, it has no serial console, or its inventory limits its check to what
it has (``health: {steps: [...]}``, e.g. a host that is not a Xen dom0).  A
step whose prerequisite failed is *not run*.  Neither is ever counted as
passed; a check passes when no step failed and at least one passed.

:func:`check_host` runs the check under a lease of the host (quarantined
hosts may be leased for it) and records the outcome in the lease store: a
pass returns a quarantined host to the pool, a failure quarantines it
(harness.lab.leases).  ``xenhil lab health`` and the pytest plugin (after a
run that quarantined hosts) call it.

Which failures count towards quarantine during runs is
:func:`counts_against_host`: infrastructure failures on a host do, product
failures and test bugs never.
"""
from __future__ import annotations

import datetime
import json
import logging
import re
import secrets
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from xenhil.harness import budgets
from xenhil.harness.errors import INFRASTRUCTURE, XenhilError
from xenhil.harness.lab.model import HEALTH_STEPS, HostSpec
from xenhil.harness.step import step_context

log = logging.getLogger("xenhil.health")

PASSED = "passed"
FAILED = "failed"
NOT_APPLICABLE = "not applicable"
NOT_RUN = "not run"

#: Which step each step needs: it is not run when that one failed, and not
#: applicable when that one is.
NEEDS: dict[str, tuple[str, ...]] = {
    "xen-banner": ("power-cycle",),
    "xl-info": ("dom0-ssh",),
    "guest": ("xl-info",),
    "leftover-domains": ("xl-info",),
    # Whether a device model is left over depends on which domains exist.
    "leftover-device-models": ("xl-info",),
    "leftover-files": ("dom0-ssh",),
}

#: Files xenhil leaves on a host only when something went wrong: guest disks,
#: configs and save files (fixtures.guest removes them with the guest), the
#: probe ioreq server's state files (harness.probe_dm.host; /run), and this
#: check's own guest config.  Fixed-name scratch files that every use
#: overwrites (/tmp/xenhil-capability-probe.cfg) do not pile up and are not
#: listed.
LEFTOVER_GLOBS: tuple[str, ...] = ("/var/lib/xenhil/guests/*", "/run/xenhil-probe-*",
                                   "/tmp/xenhil-health-*")
_SAFE_GLOB = re.compile(r"[A-Za-z0-9_./*-]+")

#: The small guest: no disk, no network, booting from an empty CD drive
#: (its firmware finds nothing and waits), 64 MiB.
GUEST_MEMORY_MIB = 64


@dataclass
class StepResult:
    name: str
    status: str                     # PASSED, FAILED, NOT_APPLICABLE, NOT_RUN
    detail: str                     # one line: what was seen, or why not
    evidence: dict[str, str] = field(default_factory=dict)   # name -> short text or file path
    seconds: float = 0.0


class StepFailed(Exception):
    """A step saw something wrong (not an exception of the lab layer)."""

    def __init__(self, detail: str, evidence: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.evidence = dict(evidence or {})


@dataclass
class HealthReport:
    host: str
    started_at: float
    steps: list[StepResult]
    profile: tuple[str, ...]
    report_path: Path | None = None
    # Set by check_host: the quarantine after the check (failed), or the one a
    # pass ended (released), from the lease store.
    quarantine: object | None = None

    @property
    def failed(self) -> list[StepResult]:
        return [s for s in self.steps if s.status == FAILED]

    @property
    def passed(self) -> bool:
        return not self.failed and any(s.status == PASSED for s in self.steps)

    def step(self, name: str) -> StepResult:
        return next(s for s in self.steps if s.name == name)

    def summary(self) -> str:
        """One line: the failed steps, or what passed and what could not be checked."""
        if self.failed:
            return "; ".join(f"{s.name}: {s.detail}" for s in self.failed)
        passed = [s.name for s in self.steps if s.status == PASSED]
        if not passed:
            return "no step of the health check applies to this host: nothing was checked"
        skipped = [s.name for s in self.steps if s.status != PASSED]
        return (f"passed {', '.join(passed)}"
                + (f" (not applicable: {', '.join(skipped)})" if skipped else ""))

    def brief(self) -> dict:
        """What the lease store's log keeps of it."""
        return {"steps": {s.name: [s.status, s.detail] for s in self.steps},
                "report": str(self.report_path) if self.report_path else ""}

    def to_dict(self) -> dict:
        return {"host": self.host, "started_at": self.started_at, "passed": self.passed,
                "summary": self.summary(), "profile": list(self.profile),
                "steps": [asdict(s) for s in self.steps]}

    def lines(self) -> list[str]:
        """The per-step table, for people."""
        width = max(len(s.name) for s in self.steps)
        out = []
        for s in self.steps:
            out.append(f"  {s.name:<{width}}  {s.status:<14}  {s.detail}")
        if self.report_path:
            out.append(f"  report: {self.report_path}")
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, XenhilError):
        text = text.removeprefix(f"[{exc.failure_class}] ")
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    # A failed command's message continues with its output's tails: keep the
    # last line of stderr, where "xl: command not found" lands.
    if "--- stderr (tail) ---" in text:
        tail = text.split("--- stderr (tail) ---", 1)[1].split("\n  how to fix:", 1)[0].strip()
        if tail:
            first += f" ({tail.splitlines()[-1].strip()})"
    return first[:500]


class HealthCheck:
    """The health check of one host, on a :class:`harness.host.Host` the
    caller holds a lease for."""

    def __init__(self, host, artifacts_dir: Path, boot_timeout: float | None = None):
        self.host = host
        self.spec: HostSpec = host.spec
        self.artifacts_dir = Path(artifacts_dir)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.boot_timeout = (budgets.seconds("dom0 boot", self.spec.profile) if boot_timeout is None
                             else float(boot_timeout))
        self.profile = tuple(self.spec.health_steps or HEALTH_STEPS)
        self.results: dict[str, StepResult] = {}
        self._console = None
        self._console_mark = None
        self._console_error: BaseException | None = None
        self._live_domids: set[int] = set()

    # --- the sequence ----------------------------------------------------------
    def run(self) -> HealthReport:
        started = time.time()
        runners: dict[str, Callable[[], tuple[str, dict[str, str]]]] = {
            "power-cycle": self._power_cycle, "xen-banner": self._xen_banner,
            "dom0-ssh": self._dom0_ssh, "xl-info": self._xl_info, "guest": self._guest,
            "leftover-domains": self._leftover_domains,
            "leftover-device-models": self._leftover_device_models,
            "leftover-files": self._leftover_files,
        }
        try:
            for name in HEALTH_STEPS:
                self.results[name] = self._run_step(name, runners[name])
        finally:
            self._close()
        report = HealthReport(self.spec.name, started, [self.results[n] for n in HEALTH_STEPS],
                              self.profile)
        stamp = datetime.datetime.fromtimestamp(started).strftime("%Y%m%dT%H%M%S")
        path = self.artifacts_dir / f"health-{stamp}-{secrets.token_hex(2)}.json"
        report.report_path = path
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        return report

    def _run_step(self, name: str, runner) -> StepResult:
        blocked = self._blocked(name)
        if blocked is not None:
            return blocked
        began = time.monotonic()
        with step_context(f"health check of {self.spec.name}: {name}"):
            try:
                detail, evidence = runner()
                status = PASSED
            except StepFailed as exc:
                status, detail, evidence = FAILED, exc.detail, exc.evidence
            except _NotApplicable as exc:
                status, detail, evidence = NOT_APPLICABLE, str(exc), {}
            except Exception as exc:  # every failure of the lab layer is this step's result
                status, detail = FAILED, _first_line(exc)
                evidence = {k: str(v) for k, v in getattr(exc, "evidence", {}).items()}
                log.info("health check of %s: %s failed", self.spec.name, name, exc_info=True)
        return StepResult(name, status, detail, evidence, round(time.monotonic() - began, 2))

    def _blocked(self, name: str) -> StepResult | None:
        if name not in self.profile:
            return StepResult(name, NOT_APPLICABLE,
                              "not in this host's health profile (inventory health.steps: "
                              f"{', '.join(self.profile)})")
        for need in NEEDS.get(name, ()):
            before = self.results[need]
            if before.status in (FAILED, NOT_RUN):
                return StepResult(name, NOT_RUN, f"needs {need}, which "
                                  f"{'failed' if before.status == FAILED else 'did not run'}")
            if before.status == NOT_APPLICABLE:
                return StepResult(name, NOT_APPLICABLE, f"needs {need}: {before.detail}")
        return None

    # --- steps -------------------------------------------------------------------
    def _power_cycle(self):
        kind = self.spec.power.kind
        power = self.host.power
        if not power.can_power:
            raise _NotApplicable(f"power kind {kind}: the host cannot be power-cycled")
        self._open_console()
        before = "unknown"
        if power.reports_status():
            before = power.status()
        if before == "off":
            power.on()
            action = "on (it was off)"
        else:
            power.cycle()
            action = "cycle"
        return (f"power {action} through {kind}",
                {"power before": before, "power action": action})

    def _xen_banner(self):
        if self.spec.serial is None:
            raise _NotApplicable("no serial console in the inventory")
        if self._console_error is not None:
            raise StepFailed(f"the serial console did not open: {_first_line(self._console_error)}")
        from xenhil.harness.xen.provision import XEN_BANNER, _follow_to_banner
        boot = self.artifacts_dir / f"{self.spec.name}.health-boot.console.txt"
        evidence = {"boot console": str(boot), "transcript": str(self._console.transcript_path)}
        try:
            _follow_to_banner(self._console, self.boot_timeout)
        except Exception as exc:  # a timeout, a panic (fatal console output), a dead link
            boot.write_text(self._console.slice(self._console_mark))
            raise StepFailed(f"no Xen banner on the serial console within "
                             f"{self.boot_timeout:.0f}s of the power cycle: {_first_line(exc)}",
                             evidence) from None
        text = self._console.slice(self._console_mark)
        boot.write_text(text)
        found = re.search(XEN_BANNER + r".*", text)
        return (found.group(0).strip() if found else "Xen banner seen"), evidence

    def _dom0_ssh(self):
        if self.spec.ssh is None:
            raise _NotApplicable("ssh: none in the inventory")
        began = time.monotonic()
        if self.results["power-cycle"].status == PASSED:
            self.host.wait_for_dom0(self.boot_timeout)
            how = f"answered {time.monotonic() - began:.0f}s after the power cycle"
        else:
            self.host.ssh.run("true", timeout=60, check=True)
            how = "answered"
        uptime = self.host.ssh.run("cat /proc/uptime", timeout=60, check=True).stdout.split()
        kernel = self.host.ssh.run("uname -sr", timeout=60, check=True).stdout.strip()
        evidence = {"uname": kernel, "uptime s": uptime[0] if uptime else "?"}
        if self._console is not None and self._console_mark is not None:
            boot = self.artifacts_dir / f"{self.spec.name}.health-boot.console.txt"
            boot.write_text(self._console.slice(self._console_mark))
            evidence["boot console"] = str(boot)
        return f"SSH {how} ({kernel}, up {evidence['uptime s']}s)", evidence

    def _toolstack(self):
        from xenhil.harness.xen.toolstack import Toolstack
        return Toolstack(self.host.ssh, self.spec.name, emulated=self.spec.profile.emulated)

    def _xl_info(self):
        from xenhil.harness.xen.parsers.xl_info import parse_xl_info
        text = self._toolstack().read("info", timeout=120).stdout
        saved = self.artifacts_dir / f"{self.spec.name}.health-xl-info.txt"
        saved.write_text(text)
        info = parse_xl_info(text)
        if "xen_version" not in info.fields and "xen_major" not in info.fields:
            raise StepFailed("`xl info` names no Xen version", {"xl info": str(saved)})
        caps = " ".join(sorted(info.virt_caps)) or "none"
        return (f"Xen {info.xen_version}, {info.get('nr_cpus', '?')} CPUs, "
                f"{info.get('free_memory', '?')} MiB free, virt_caps {caps}",
                {"xl info": str(saved), "xen_commandline": info.xen_commandline or ""})

    def _guest(self):
        from xenhil.harness.xen.xlconfig import DiskBoot, HvmGuest
        host_profile = self.spec.profile
        xl = self._toolstack()
        name = f"xenhil-health-{secrets.token_hex(3)}"
        cfg = f"/tmp/{name}.cfg"
        model = HvmGuest(name=name, memory=GUEST_MEMORY_MIB, maxmem=GUEST_MEMORY_MIB, vcpus=1,
                         boot=DiskBoot(order="d"), serial=None, on_crash="destroy",
                         on_reboot="destroy").apply_quirks(host_profile.guest_xl_settings).check()
        self.host.ssh.put_bytes(model.render(), cfg)
        evidence = {"guest config": model.render()}
        destroyed = False
        try:
            began = time.monotonic()
            xl.create(cfg, name, timeout=budgets.seconds("xl create", host_profile))
            created_s = time.monotonic() - began
            entry = xl.domain(name)
            if entry is None:
                raise StepFailed(f"`xl create` returned but {name} is not in `xl list`", evidence)
            domid = entry.domid
            pids = xl.qemu_pids(domid)
            evidence.update({"domid": str(domid), "device model pids": " ".join(map(str, pids))})
            if not pids:
                raise StepFailed(f"{name} (domain {domid}) runs without a device model "
                                 f"(no qemu -xen-domid {domid})", evidence)
            began = time.monotonic()
            xl.xl("destroy", name, timeout=budgets.seconds("xl destroy", host_profile))
            destroyed = True
            left: list[str] = []
            deadline = time.monotonic() + 30
            while True:
                left = []
                if xl.domain(name) is not None:
                    left.append(f"domain {name}")
                if xl.qemu_pids(domid):
                    left.append(f"device model of domain {domid}")
                if xl.xenstore_exists(f"/local/domain/{domid}"):
                    left.append(f"xenstore /local/domain/{domid}")
                if not left or time.monotonic() > deadline:
                    break
                time.sleep(1)
            if left:
                raise StepFailed(f"30s after `xl destroy` {', '.join(left)} still exist", evidence)
            return (f"HVM guest {name} created in {created_s:.1f}s (domain {domid}, device model "
                    f"pid {pids[0]}), destroyed in {time.monotonic() - began:.1f}s, nothing left",
                    evidence)
        finally:
            if not destroyed:
                try:
                    xl.xl("destroy", name, timeout=120, check=False)
                except XenhilError as exc:
                    log.warning("health check of %s: destroying %s failed: %s",
                                self.spec.name, name, exc)
            try:
                self.host.ssh.run(["rm", "-f", cfg], timeout=60)
            except XenhilError:
                pass    # leftover-files reports it

    def _leftover_domains(self):
        domains = self._toolstack().domains()
        self._live_domids = {d.domid for d in domains}
        others = [f"{d.name} (domain {d.domid})" for d in domains if d.domid != 0]
        if others:
            raise StepFailed(f"domains left running: {', '.join(others)}",
                             {"fix": "xl destroy " + " ".join(d.name for d in domains if d.domid != 0)})
        return "only Domain-0 runs", {}

    def _leftover_device_models(self):
        if not self._live_domids:
            self._live_domids = {d.domid for d in self._toolstack().domains()}
        listing = self.host.ssh.run(["ps", "-eo", "pid=,args="], timeout=60, check=True).stdout
        stray = []
        for line in listing.splitlines():
            pid, _, args = line.strip().partition(" ")
            qemu = re.search(r"-xen-domid\s+(\d+)", args)
            probe = re.search(r"harness\.probe_dm\b.*--domid\s+(\d+)", args)
            for found, what in ((qemu, "device model"), (probe, "probe ioreq server")):
                if found and int(found.group(1)) != 0 and int(found.group(1)) not in self._live_domids:
                    stray.append(f"{what} pid {pid} for domain {found.group(1)}, which does not exist")
        if stray:
            raise StepFailed("; ".join(stray), {"processes": "\n".join(stray)})
        return "no device model or probe serves a domain that does not exist", {}

    def _leftover_files(self):
        for glob in LEFTOVER_GLOBS:
            if not _SAFE_GLOB.fullmatch(glob):
                raise ValueError(f"leftover glob {glob!r} is not a plain path pattern")
        script = ("for f in " + " ".join(LEFTOVER_GLOBS) + "; do "
                  "if [ -e \"$f\" ] || [ -L \"$f\" ]; then printf '%s\\n' \"$f\"; fi; done")
        found = self.host.ssh.run(script, timeout=60, check=True).stdout.split("\n")
        found = [f for f in found if f]
        if found:
            shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
            raise StepFailed(f"leftover files: {shown}",
                             {"files": "\n".join(found),
                              "fix": "rm -f -- " + " ".join(shlex.quote(f) for f in found)})
        return f"none of {', '.join(LEFTOVER_GLOBS)}", {}

    # --- console ----------------------------------------------------------------
    def _open_console(self) -> None:
        """Before the power cycle: the serial console, open, with a mark from
        which the boot is read (a failure to open is the banner step's)."""
        if self.spec.serial is None or "xen-banner" not in self.profile:
            return
        try:
            self._console = self.host.console
            self._console.reconnect(30)
            self._console_mark = self._console.mark("health check power cycle")
        except Exception as exc:  # the banner step reports it
            self._console_error = exc

    def _close(self) -> None:
        try:
            self.host.close()
        except Exception:  # best effort
            log.debug("closing %s after its health check failed", self.spec.name, exc_info=True)


class _NotApplicable(Exception):
    """A step this host cannot do (with the reason)."""


# --- recording it in the lease store ---------------------------------------------

def check_host(pool, name: str, holder, artifacts_dir: Path, *, boot_timeout: float | None = None,
               claim_timeout: float = 600.0, host_factory: Callable | None = None) -> HealthReport:
    """Lease ``name`` (also when quarantined), run its health check on a
    fresh :class:`harness.host.Host`, and record the outcome while still
    holding the lease: a pass returns the host from quarantine, a failure
    quarantines it.  ``report.quarantine`` is the store's row (the new or
    updated quarantine, or the one the pass ended; None otherwise)."""
    from xenhil.harness.host import Host
    spec = pool.inventory.host(name)
    folder = Path(artifacts_dir) / name
    with pool.lease(holder, host=name, timeout=claim_timeout, allow_quarantined=True):
        host = (host_factory or Host)(spec, folder)
        report = HealthCheck(host, folder, boot_timeout=boot_timeout).run()
        report.quarantine = pool.store.record_health(name, report.passed, report.summary(),
                                                     holder, detail=report.brief())
    return report


# --- which failures count -----------------------------------------------------------

def counts_against_host(exc: BaseException | None, phase: str = "call") -> bool:
    """Whether a test's failure counts towards quarantining the host it held:
    infrastructure failures do (the host, its console, power or SSH failed,
    a wait on it ran out), except those that say nothing about the host
    (its lease was lost or the lease store failed: the runner's trouble; a
    claim that found it quarantined or busy; HostBroken, the echo of a
    latch already counted).  Product failures and test bugs never count."""
    if exc is None:
        return False
    from xenhil.harness.errors import HostBroken, ReservationTimeout
    from xenhil.harness.lab.leases import HostsQuarantined, LeaseLost, LeaseStoreError
    from xenhil.harness.results.classify import failure_class_of
    if isinstance(exc, (HostBroken, ReservationTimeout, HostsQuarantined, LeaseLost,
                        LeaseStoreError)):
        return False
    return failure_class_of(exc, phase) == INFRASTRUCTURE
