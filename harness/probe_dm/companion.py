"""The probe device model as a companion of a :class:`harness.guest.Guest`:
started between ``xl create -p`` and unpause, started again for the
restored domain after ``xl restore -p``, stopped before the guest is
destroyed.  The guest drives it through the :class:`harness.guest.Companion`
hooks, so the suites' save/restore and teardown need no probe code.
"""
from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass

from xenhil.harness.checks.failure import save_evidence
from xenhil.harness.errors import XenhilError
from xenhil.harness.probe_dm.host import ProbeCounters, ProbeHandle, ProbeSpec, install, start_probe
from xenhil.harness.step import step

log = logging.getLogger("xenhil.probe_dm.companion")

#: The model name the probe has in topologies, rangeset owners and latency rows.
PROBE_MODEL = "probe"


@dataclass(frozen=True)
class ProbeSettings:
    """What the probe claims (the catalog's ``probe:`` entry).  The defaults
    stay clear of everything QEMU places in the suites' guest: ports below
    hvmloader's PCI I/O window (0xc000-), a BDF after the NIC at 00:04.0, and
    a 4 KiB BAR the firmware moves into its MMIO hole."""

    ports: tuple[tuple[int, int], ...] = ((0x6100, 0x610F),)
    mmio: tuple[int, int] = (0xF0000000, 0xF0000FFF)
    bdf: str = "00:05.0"
    vendor: int = 0x5853
    device: int = 0xC0DE
    class_code: int = 0xFF00      # what the probe's config space reports (emulation.py)
    # A planted fault (harness.probe_dm.faults; pytest --probe-fault): a
    # mutant run's probe misbehaves on purpose.  None: a clean probe.
    fault: str | None = None

    @property
    def id_port(self) -> int:
        """The first port: reads as the probe's ID register (0x58484C50)."""
        return self.ports[0][0]

    @property
    def scratch_port(self) -> int:
        """A scratch register: reads back what was written."""
        return self.ports[0][0] + 8


class ProbeCompanion:
    """One probe serving one guest, across save/restore."""

    name = PROBE_MODEL

    def __init__(self, settings: ProbeSettings = ProbeSettings(), log_requests: bool = False):
        self.settings = settings
        self.log_requests = log_requests
        self.handle: ProbeHandle | None = None

    def attach(self, guest, domid: int) -> None:
        s = self.settings
        self.handle = start_probe(guest.host, domid, s.ports, s.mmio, s.bdf, vendor=s.vendor,
                                  device=s.device, fault=s.fault, log=self.log_requests)

    @step("note the probe saw its domain go")
    def saved(self, guest) -> None:
        """After ``xl save``: the probe exits by itself once the domain is gone."""
        if self.handle is not None:
            self.handle.wait_for_state(("domain-gone", "stopped", "crashed"), timeout=30)

    def reattach(self, guest, domid: int) -> None:
        if self.handle is None:
            self.attach(guest, domid)
        else:
            self.handle = self.handle.reattach(domid)

    def detach(self, guest) -> None:
        if self.handle is not None:
            self.handle.stop()

    def record(self) -> dict:
        """The running probe's files, for another process taking the guest over."""
        h = self.handle
        if h is None:
            return {}
        return {"domid": h.domid, "directory": h.directory, "counters_path": h.counters_path,
                "stderr_path": h.stderr_path, "log_path": h.log_path}

    def adopt(self, guest, record: dict) -> None:
        """Serve as the companion of a probe another process started (its
        :meth:`record`); the probe process itself keeps running in dom0."""
        if not record:
            self.handle = None
            return
        s = self.settings
        spec = ProbeSpec(tuple(tuple(p) for p in s.ports), tuple(s.mmio), s.bdf, s.vendor, s.device,
                         s.fault)
        self.handle = ProbeHandle(guest.host, int(record["domid"]), spec, record["directory"],
                                  record["counters_path"], record["stderr_path"],
                                  record.get("log_path"))

    # -- what the checks read -------------------------------------------------
    def counters(self) -> ProbeCounters:
        """The counters, when the probe is serving (raises ProbeStale otherwise)."""
        if self.handle is None:
            raise RuntimeError("probe companion read before attach")
        return self.handle.check_alive()

    def fresh_counters(self) -> ProbeCounters:
        """Counters rewritten on request (SIGUSR1): every request so far is in them."""
        self.counters()
        return self.handle.dump()

    @property
    def server_id(self) -> int | None:
        last = self.handle.last if self.handle else None
        return last.server_id if last else None

    def evidence(self, guest, directory) -> dict[str, str]:
        """The counters file and stderr tail, saved under ``directory``."""
        if self.handle is None:
            return {}
        out: dict[str, str] = {}
        try:
            # save_evidence makes the folder: the check may ask before it
            # saved anything of its own there (the map-cache check on a guest
            # handed on by save/restore).
            seen = self.handle.counters()
            out["probe counters"] = save_evidence(directory, "probe-counters.json",
                                                  json.dumps(seen.raw if seen else None, indent=1))
            out["probe stderr"] = save_evidence(directory, "probe-stderr.txt",
                                                self.handle.stderr_tail(200))
        except (XenhilError, OSError) as exc:
            log.warning("probe evidence incomplete: %s", exc)
        return out


#: The probe's check in dom0 answers "this host lacks it" with one of these:
#: python3 absent (the shell's exit 127), or a Xen library missing
#: (harness.probe_dm.xenlibs.XenLibraryMissing, naming its Debian package).
_PROBE_ABSENT = ("XenLibraryMissing",)


def probe_unavailable(host) -> str | None:
    """None when dom0 can run the probe (python3 and the three Xen libraries);
    else why not, in one line.  Only a clean "no" is an answer: an SSH
    failure, a failed copy of the probe, or the check crashing in another
    way raises (CapabilityProbeFailed, or the access error itself), since a
    "capability missing" skip would hide that nothing was tested."""
    from xenhil.harness.errors import CapabilityProbeFailed
    directory = install(host)
    check = ("cd " + shlex.quote(directory) + " && python3 -c "
             + shlex.quote("from xenhil.harness.probe_dm.xenlibs import XenLibs; XenLibs()"))
    result = host.ssh.run(check, timeout=60)
    if result.exit_status == 0:
        return None
    output = (result.stderr or "") + (result.stdout or "")
    lines = output.strip().splitlines()
    if result.exit_status == 127:
        return "python3 is not installed in dom0"
    for line in reversed(lines):
        if any(line.startswith(f"{kind}:") or f".{kind}:" in line for kind in _PROBE_ABSENT):
            return line.strip()
    raise CapabilityProbeFailed(
        f"{host.name}: capability probe probe: the check in dom0 exited {result.exit_status} "
        f"without saying what is missing; output (tail):\n" + "\n".join(lines[-20:]))
