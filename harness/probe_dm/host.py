"""Test-machine side of the probe: copy it to dom0, start it, read it, stop it.

    handle = start_probe(host, domid, ports=[(0x6100, 0x610f)],
                         mmio=(0xf0000000, 0xf0000fff), bdf="00:05.0")
    ...                                   # xl unpause, guest I/O
    seen = handle.check_alive()           # ProbeCounters; raises ProbeStale
    handle.stop()                         # destroys the server, final counters

After ``xl save`` the probe exits by itself (state ``domain-gone``); after
``xl restore -p`` call ``handle.reattach(new_domid)`` before unpausing: a new
probe with the same ranges and the old one's scratch registers and PCI
config (the guest still believes its BAR setup).

The package is copied as a small deterministic tarball into
``/var/lib/xenhil/probe_dm/<hash>/`` (once per content), and runs with dom0's
``python3`` (a dependency of xen-utils) via ``setsid nohup``: it survives
the SSH session.  Clocks: heartbeat ages are computed on dom0's clock.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import secrets
import shlex
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from xenhil.harness.errors import InfrastructureError
from xenhil.harness.probe_dm.emulation import Bdf
from xenhil.harness.step import step

log = logging.getLogger("xenhil.probe_dm.host")

REMOTE_ROOT = "/var/lib/xenhil/probe_dm"
_REPO = Path(__file__).resolve().parents[2]
# What dom0 needs: the package minus this file, and the failure classes.  The
# files keep their place under xenhil/ (a namespace, no __init__.py), so dom0
# runs the same module names as here: python3 -m xenhil.harness.probe_dm.
BUNDLE_PREFIX = "xenhil/"
PACKAGE_FILES = ("harness/__init__.py", "harness/errors.py", "harness/probe_dm/__init__.py",
                 "harness/probe_dm/xenlibs.py", "harness/probe_dm/faults.py",
                 "harness/probe_dm/emulation.py",
                 "harness/probe_dm/server.py", "harness/probe_dm/__main__.py")
START_TIMEOUT = 60.0
LIVE_STATES = ("starting", "enabled")


class ProbeStartFailed(InfrastructureError):
    help = ("The probe device model did not reach 'enabled' in dom0: read its error and "
            "stderr tail (missing Xen libraries, not an HVM domid, 8 servers already...).")


class ProbeStale(InfrastructureError):
    help = ("The probe stopped serving: its heartbeat is old or its state is not 'enabled'. "
            "A guest touching the probe's ranges may now block; the handle reaps the "
            "server (destroys it) so the guest can go on.")


def bundle() -> tuple[str, bytes]:
    """(content hash, tar.gz) of :data:`PACKAGE_FILES`, byte-for-byte reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in PACKAGE_FILES:
            data = (_REPO / name).read_bytes()
            info = tarfile.TarInfo(BUNDLE_PREFIX + name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(raw.getvalue()).hexdigest()[:16]
    return digest, gzip.compress(raw.getvalue(), mtime=0)


@step("install the probe device model on {host.name}")
def install(host) -> str:
    """Copy the package to dom0 unless this exact content is there; its directory."""
    digest, data = bundle()
    directory = f"{REMOTE_ROOT}/{digest}"
    if host.ssh.run(["test", "-f", f"{directory}/.complete"], timeout=30).exit_status == 0:
        return directory
    q = shlex.quote
    host.ssh.run(f"rm -rf {q(directory)} && mkdir -p {q(directory)} && "
                 f"tar -xzf - -C {q(directory)} && touch {q(directory + '/.complete')}",
                 input=data, timeout=60, check=True)
    return directory


@dataclass(frozen=True)
class ProbeSpec:
    ports: tuple[tuple[int, int], ...] = ()
    mmio: tuple[int, int] | None = None
    bdf: str | None = None
    vendor: int | None = None
    device: int | None = None
    fault: str | None = None        # a planted fault's text (harness.probe_dm.faults)

    def arguments(self) -> list[str]:
        args: list[str] = []
        if self.ports:
            args += ["--ports", ",".join(f"{s:#x}-{e:#x}" for s, e in self.ports)]
        if self.mmio:
            args += ["--mmio", f"{self.mmio[0]:#x}-{self.mmio[1]:#x}"]
        if self.bdf:
            Bdf.parse(self.bdf)  # a bad BDF fails here, not in dom0
            args += ["--bdf", self.bdf]
        if self.vendor is not None:
            args += ["--vendor", f"{self.vendor:04x}"]
        if self.device is not None:
            args += ["--device", f"{self.device:04x}"]
        if self.fault:
            from xenhil.harness.probe_dm.faults import parse_fault
            args += ["--fault", parse_fault(self.fault).text]  # a bad fault fails here, not in dom0
        return args


@dataclass(frozen=True)
class ProbeCounters:
    """One reading of the counters file, with its age on dom0's clock."""

    raw: dict
    age: float                      # seconds since the last heartbeat

    state = property(lambda self: self.raw.get("state"))
    error = property(lambda self: self.raw.get("error"))
    server_id = property(lambda self: self.raw.get("server_id"))
    pid = property(lambda self: self.raw.get("supervisor_pid") or self.raw.get("pid"))
    claimed = property(lambda self: self.raw.get("claimed", {}))
    counts = property(lambda self: self.raw.get("counters", {}))

    def by_type(self, kind: str) -> int:
        return self.counts.get("by_type", {}).get(kind, 0)

    def window(self, name: str) -> dict:
        return self.counts.get("windows", {}).get(name, {})

    @property
    def invalidations(self) -> int:
        return self.by_type("invalidate")

    @property
    def stale_after(self) -> float:
        return max(5.0, 5 * float(self.raw.get("heartbeat_interval", 1.0)))


@dataclass
class ProbeHandle:
    host: object
    domid: int
    spec: ProbeSpec
    directory: str
    counters_path: str
    stderr_path: str
    log_path: str | None = None
    last: ProbeCounters | None = field(default=None, repr=False)

    # -- reading ------------------------------------------------------------------------
    def counters(self) -> ProbeCounters | None:
        """The counters file now (None if it does not exist yet)."""
        q = shlex.quote(self.counters_path)
        result = self.host.ssh.run(f"cat {q} 2>/dev/null; echo; date +%s.%N", timeout=30)
        text, _, now = result.stdout.rstrip("\n").rpartition("\n")
        if not text.strip():
            return None
        try:
            raw = json.loads(text)
        except ValueError:
            return None  # cannot happen with the atomic rename, but never crash on it
        self.last = ProbeCounters(raw, float(now) - float(raw.get("heartbeat", 0)))
        return self.last

    def stderr_tail(self, lines: int = 30) -> str:
        result = self.host.ssh.run(["tail", "-n", str(lines), self.stderr_path], timeout=30)
        return result.stdout

    def dump(self) -> ProbeCounters:
        """Ask for a fresh rewrite (SIGUSR1) and read it."""
        before = self.counters()
        if before is not None and before.pid:
            self.host.ssh.run(["kill", "-USR1", str(before.pid)], timeout=30)
            time.sleep(0.3)
        return self.counters()

    def wait_for_state(self, states: tuple[str, ...], timeout: float) -> ProbeCounters | None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.counters()
            if seen is not None and seen.state in states:
                return seen
            time.sleep(0.5)
        return seen

    @step("check the probe of domain {self.domid} is serving")
    def check_alive(self) -> ProbeCounters:
        """The counters, if the probe is enabled with a fresh heartbeat; else
        reap its server (so the guest cannot block on it) and raise ProbeStale."""
        seen = self.counters()
        if seen is not None and seen.state == "enabled" and seen.age <= seen.stale_after:
            return seen
        what = ("no counters file" if seen is None else
                f"state {seen.state!r}, heartbeat {seen.age:.1f}s old, error {seen.error!r}")
        self.reap()
        raise ProbeStale(f"probe of domain {self.domid} on {self.host.name}: {what}",
                         evidence={"probe stderr": self.stderr_tail(),
                                   "counters file": self.counters_path})

    # -- control ------------------------------------------------------------------------
    @step("stop the probe of domain {self.domid}")
    def stop(self, timeout: float = 30.0) -> ProbeCounters | None:
        """SIGTERM, wait for a final state; SIGKILL and reap if it does not come."""
        seen = self.counters()
        if seen is None or seen.state not in LIVE_STATES:
            return seen
        pid = seen.pid
        self.host.ssh.run(["kill", "-TERM", str(pid)], timeout=30)
        final = self.wait_for_state(("stopped", "domain-gone", "failed", "crashed"), timeout)
        if final is None or final.state in LIVE_STATES:
            log.warning("probe %s of domain %d ignored SIGTERM: killing it", pid, self.domid)
            self.host.ssh.run(f"kill -KILL {int(pid)} 2>/dev/null; true", timeout=30)
            self.reap()
            final = self.counters()
        return final

    def reap(self) -> None:
        """Destroy the probe's server if still there (the probe died without it)."""
        server = self.last.server_id if self.last else None
        if server is None:
            return
        self.host.ssh.run(
            f"cd {shlex.quote(self.directory)} && python3 -m xenhil.harness.probe_dm "
            + shlex.join(["--domid", str(self.domid), "--reap", str(server),
                          "--counters", self.counters_path]), timeout=60)

    def reattach(self, domid: int, timeout: float = START_TIMEOUT) -> "ProbeHandle":
        """A probe for the restored domain (after ``xl restore -p``, before
        unpause), carrying over this one's guest-visible state."""
        return start_probe(self.host, domid, self.spec.ports, self.spec.mmio, self.spec.bdf,
                           vendor=self.spec.vendor, device=self.spec.device,
                           fault=self.spec.fault, restore_state=self.counters_path,
                           log=self.log_path is not None, timeout=timeout)


@step("start the probe device model for domain {domid} on {host.name}")
def start_probe(host, domid: int, ports=(), mmio: tuple[int, int] | None = None,
                bdf: str | None = None, *, vendor: int | None = None, device: int | None = None,
                fault: str | None = None, restore_state: str | None = None, log: bool = False,
                timeout: float = START_TIMEOUT) -> ProbeHandle:
    """Start the probe in dom0 for ``domid`` and wait until its server is
    enabled.  Call it while the guest is paused (``xl create -p``).
    ``fault``: a planted fault (harness.probe_dm.faults), for mutant runs."""
    spec = ProbeSpec(tuple(tuple(p) for p in ports), tuple(mmio) if mmio else None, bdf,
                     vendor, device, fault)
    directory = install(host)
    # One name per probe: several probes may serve one domain, and a restored
    # guest's new probe must not overwrite the old one's file (its state source).
    tag = f"{int(domid)}-{secrets.token_hex(3)}"
    base = f"/run/xenhil-probe-{tag}"
    handle = ProbeHandle(host, int(domid), spec, directory, f"{base}.json", f"{base}.stderr",
                         f"/var/log/xenhil-probe-{tag}.log" if log else None)
    args = ["--domid", str(int(domid)), "--counters", handle.counters_path, *spec.arguments()]
    if handle.log_path:
        args += ["--log", handle.log_path]
    if restore_state:
        args += ["--restore-state", restore_state]
    q = shlex.quote
    host.ssh.run(["rm", "-f", handle.counters_path], timeout=30, check=True)
    host.ssh.run(f"cd {q(directory)} && (setsid nohup python3 -m xenhil.harness.probe_dm "
                 f"{shlex.join(args)} >{q(handle.stderr_path)} 2>&1 </dev/null &)",
                 timeout=30, check=True)
    seen = handle.wait_for_state(("enabled", "failed", "crashed", "stopped"), timeout)
    if seen is None or seen.state != "enabled":
        what = "no counters file" if seen is None else f"state {seen.state!r}: {seen.error}"
        if seen is not None and seen.state in LIVE_STATES and seen.pid:
            host.ssh.run(f"kill -TERM {int(seen.pid)} 2>/dev/null; true", timeout=30)
        raise ProbeStartFailed(f"probe for domain {domid} on {host.name} did not start "
                               f"within {timeout:.0f}s ({what})",
                               evidence={"probe stderr": handle.stderr_tail()})
    return handle
