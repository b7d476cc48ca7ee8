"""The probe's ioreq server: lifecycle, event loop, counters file.

Lifecycle (states, as written to the counters file)::

    starting --start()--> enabled --stop()--> stopped
        |                    |
        +--> failed          +--> domain-gone   (domain destroyed, saved or our
                                                 server destroyed by someone else)

``start()`` creates the server (no buffered ioreq page), maps its ioreq page,
claims the port ranges, the PCI function and (when decoded) the MMIO window,
enables it, then binds one event channel per vCPU (``vp_eport`` of each slot
is only valid once enabled).  The guest fixture runs this between
``xl create -p`` and ``xl unpause`` (or ``xl restore -p`` and unpause), so the
guest's firmware already sees the probe's PCI function.

The loop, per event: ``xenevtchn_pending``, unmask, then for the vCPU of that
port: if its slot's state is READY, mark it INPROCESS, serve it, write
``data``, set IORESP_READY and notify.  x86 orders loads with loads and stores
with stores (TSO), and every ctypes access is a separate call, so reading
``state`` before the fields and writing ``data`` before ``state`` is the
barrier QEMU's ``xen_rmb``/``xen_wmb`` provide (the probe is x86-only, as are
ioreq servers for HVM guests).

Every ``heartbeat`` seconds (1 s by default) the server checks that the
domain and its server still exist (``get_ioreq_server_info`` without gfns:
ESRCH/ENOENT mean gone) and rewrites the counters file.  A domain that dies
is noticed within a heartbeat, so the probe never keeps a dead domain's pages
(which would leave a zombie domain behind).

What Xen does with a request for a server whose process died: nothing.  The
server belongs to the domain, not to the process, so it stays enabled and
keeps its ranges; a vCPU that touches them blocks in Xen (``wait_for_io``,
``_VPF_blocked_in_xen``) until an event arrives on its channel.  Destroying
the server alone does not wake it (xen/common/ioreq.c frees the channels
without a notification), so :func:`reap_server` first answers every pending
slot (all ones for a read) and notifies, then destroys the server.  The
supervisor in ``__main__`` reaps when the serving process dies, and the
heartbeat lets a check notice a probe that cannot (both processes killed):
see :meth:`harness.probe_dm.host.ProbeHandle.check_alive` and ``--reap``.

Counters file (JSON, rewritten atomically: written to a temporary file in the
same directory, then renamed; on every heartbeat, on SIGUSR1, and on every
state change)::

    {
      "format": "xenhil-probe-counters/1",
      "state": "starting|enabled|stopped|domain-gone|failed|crashed",
      "error": null or "message",         # why failed/crashed
      "pid": 1234, "supervisor_pid": 1233,
      "domid": 5, "server_id": 1, "vcpus": 1,
      "started": 1764086400.1,             # dom0 wall clock, seconds
      "heartbeat": 1764086460.9,           # last rewrite (dom0 wall clock)
      "heartbeat_interval": 1.0,
      "claimed": {"port": [["0x6100", "0x610f"]], "memory": [["0xf0000000", "0xf0000fff"]],
                  "pci": ["0000:00:05.0"]},  # what Xen routes to the probe now
      "fault": null or "delay=200",       # a planted fault (harness.probe_dm.faults)
      "counters": {
        "total": 12,                       # requests served
        "by_type": {"pio": 4, "mmio": 2, "pci_config": 5, "invalidate": 1},
        "by_vcpu": {"0": 12},
        "windows": {"port0": {"kind": "port", "size": 16, "start": "0x6100", "end": "0x610f",
                              "reads": 3, "writes": 1}, "bar0": {...}},
        "pci": {"bdf": "0000:00:05.0", "sbdf": 40, "vendor": "5853", "device": "c0de",
                "command": "0x6", "bar0": "0xf0000000", "reads": 4, "writes": 1,
                "bar_size_probes": 1} or null,
        "outside": 0,                      # requests for addresses the probe never claimed
        "unsupported": 0                   # data_is_ptr (string I/O): answered, not emulated
      },
      "snapshot": {"scratch": {"port0": "hex", ...}, "pci": {"config": "hex"}}
    }
"""
from __future__ import annotations

import errno
import json
import logging
import os
import select
import signal
import tempfile
import time
from pathlib import Path

from xenhil.harness.errors import InfrastructureError, XenhilError
from xenhil.harness.probe_dm import COUNTERS_FORMAT
from xenhil.harness.probe_dm.emulation import Bdf, ProbeDevice
from xenhil.harness.probe_dm.faults import ProbeFault, registrations
from xenhil.harness.probe_dm.xenlibs import (
    IOREQ_READ,
    STATE_IOREQ_INPROCESS,
    STATE_IOREQ_READY,
    STATE_IORESP_READY,
    SLOTS_PER_PAGE,
    DeviceModel,
    EventChannels,
    ForeignMemory,
    XenCallFailed,
    XenLibs,
    ioreq_slots,
)

log = logging.getLogger("xenhil.probe_dm")


def write_json_atomically(path: Path, data: dict) -> None:
    """Readers never see a half-written file: write a sibling, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class ProbeServer:
    def __init__(self, domid: int, ports: list[tuple[int, int]], device: ProbeDevice,
                 counters_path: Path, bdf: Bdf | None = None, heartbeat: float = 1.0,
                 libs: XenLibs | None = None, supervisor_pid: int | None = None,
                 on_created=None, fault: ProbeFault | None = None, restoring: bool = False):
        self.domid = domid
        self.ports = ports
        self.bdf = bdf
        self.device = device
        self.counters_path = Path(counters_path)
        self.heartbeat = heartbeat
        self.libs = libs
        self.supervisor_pid = supervisor_pid
        self.on_created = on_created          # callback(server_id): tell the supervisor
        # What start() registers with Xen: everything, unless a planted fault
        # (harness.probe_dm.faults) says otherwise; ``restoring``: started
        # for a restored guest.
        self.plan = registrations(ports, bdf, fault, restoring)
        self.state = "starting"
        self.error: str | None = None
        self.server_id: int | None = None
        self.vcpus = 0
        self.started = time.time()
        self.dm = self.fm = self.evtchn = None
        self._resource = None
        self._slots = None
        self._local_ports: list[int] = []
        self._vcpu_by_port: dict[int, int] = {}
        self._mmio_claimed: tuple[int, int] | None = None
        self._stop = False
        self._dump = False

    # -- counters ------------------------------------------------------------------------
    def claimed(self) -> dict:
        """What Xen routes to this server now (nothing unless enabled)."""
        live = self.state == "enabled" and self.dm is not None
        return {"port": [[hex(s), hex(e)] for s, e in self.plan.ports] if live else [],
                "memory": [[hex(s), hex(e)] for s, e in [self._mmio_claimed]]
                          if live and self._mmio_claimed else [],
                "pci": [str(self.bdf)] if live and self.plan.pci else []}

    def report(self) -> dict:
        return {"format": COUNTERS_FORMAT, "state": self.state, "error": self.error,
                "pid": os.getpid(), "supervisor_pid": self.supervisor_pid,
                "domid": self.domid, "server_id": self.server_id, "vcpus": self.vcpus,
                "started": self.started, "heartbeat": time.time(),
                "heartbeat_interval": self.heartbeat, "claimed": self.claimed(),
                "fault": self.device.fault.text if self.device.fault else None,
                "counters": self.device.counters(), "snapshot": self.device.snapshot()}

    def write_counters(self) -> None:
        write_json_atomically(self.counters_path, self.report())

    def _set_state(self, state: str, error: str | None = None) -> None:
        self.state = state
        if error is not None:
            self.error = error
        log.info("probe for domain %d: %s%s", self.domid, state, f" ({error})" if error else "")
        self.write_counters()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Create, map, claim, enable, bind.  On failure everything done so far
        is undone and the state is ``failed``."""
        try:
            self.write_counters()
            libs = self.libs or XenLibs()
            self.libs = libs
            self.dm = DeviceModel(libs)
            self.fm = ForeignMemory(libs)
            self.evtchn = EventChannels(libs)
            self.server_id = self.dm.create_ioreq_server(self.domid)
            if self.on_created:
                self.on_created(self.server_id)
            self._resource, address = self.fm.map_ioreq_page(self.domid, self.server_id)
            for start, end in self.plan.ports:
                self.dm.map_io_range(self.domid, self.server_id, False, start, end)
            if self.plan.pci:
                self.dm.map_pcidev(self.domid, self.server_id, self.bdf.segment, self.bdf.bus,
                                   self.bdf.device, self.bdf.function)
            self._sync_mmio()
            self.dm.set_state(self.domid, self.server_id, True)
            self.vcpus = self._count_vcpus(address)
            self._slots = ioreq_slots(address, self.vcpus)
            for vcpu in range(self.vcpus):
                local = self.evtchn.bind_interdomain(self.domid, self._slots[vcpu].vp_eport)
                self._local_ports.append(local)
                self._vcpu_by_port[local] = vcpu
        except BaseException as exc:
            self.error = str(exc)
            self.teardown()
            self._set_state("failed")
            raise
        self._set_state("enabled")

    def _count_vcpus(self, address: int) -> int:
        try:
            return self.dm.nr_vcpus(self.domid)
        except XenCallFailed as exc:
            if exc.errno != errno.EOPNOTSUPP and exc.errno != errno.ENOSYS:
                raise
        # Older Xen: every vCPU's slot carries its event channel once enabled
        # (port 0 is never a valid event channel).
        slots = ioreq_slots(address, SLOTS_PER_PAGE)
        count = 0
        while count < SLOTS_PER_PAGE and slots[count].vp_eport:
            count += 1
        if not count:
            raise InfrastructureError(f"domain {self.domid}: no vCPU slot of the ioreq page "
                                      "has an event channel")
        return count

    def _sync_mmio(self) -> None:
        """Claim from Xen exactly the MMIO window the device decodes now (the
        guest moves it by writing BAR0 and the command register)."""
        wanted = self.device.mmio_range() if self.plan.mmio else None
        if wanted == self._mmio_claimed:
            return
        if self._mmio_claimed is not None:
            self.dm.unmap_io_range(self.domid, self.server_id, True, *self._mmio_claimed)
            self._mmio_claimed = None
        if wanted is not None:
            self.dm.map_io_range(self.domid, self.server_id, True, *wanted)
            self._mmio_claimed = wanted

    def teardown(self) -> None:
        """Destroy the server and release every handle; safe to call twice and
        after a partial start.  A domain that is already gone is fine."""
        if self.server_id is not None and self.dm is not None:
            try:
                self.dm.destroy_ioreq_server(self.domid, self.server_id)
            except XenCallFailed as exc:
                if exc.errno not in (errno.ESRCH, errno.ENOENT):
                    log.warning("destroying server %s of domain %d: %s",
                                self.server_id, self.domid, exc)
        if self.evtchn is not None:
            for port in self._local_ports:
                self.evtchn.unbind(port)
            self._local_ports.clear()
            self.evtchn.close()
        if self.fm is not None:
            self.fm.unmap(self._resource)
            self._resource = None
            self.fm.close()
        if self.dm is not None:
            self.dm.close()
        self.evtchn = self.fm = self.dm = None
        self._slots = None
        self._mmio_claimed = None

    # -- serving -----------------------------------------------------------------------------
    def service(self, vcpu: int) -> bool:
        """Serve vCPU ``vcpu``'s slot if it holds a request; True if it did."""
        slot = self._slots[vcpu]
        if slot.state != STATE_IOREQ_READY:
            return False
        slot.state = STATE_IOREQ_INPROCESS
        try:
            self.device.handle_ioreq(slot, vcpu)
            if self.plan.mmio and self.device.mmio_range() != self._mmio_claimed:
                self._sync_mmio()
        finally:
            # Always answer: a vCPU left waiting blocks in Xen for good.
            slot.state = STATE_IORESP_READY
            self.evtchn.notify(self._local_ports[vcpu])
        return True

    def request_stop(self) -> None:
        self._stop = True

    def request_dump(self) -> None:
        self._dump = True

    def serve(self, wakeup_fd: int | None = None) -> str:
        """Serve until stopped or the domain is gone; the final state."""
        fd = self.evtchn.fd()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if wakeup_fd is not None:
            poller.register(wakeup_fd, select.POLLIN)
        next_beat = time.monotonic() + self.heartbeat
        while not self._stop:
            timeout_ms = max(0, int((next_beat - time.monotonic()) * 1000))
            for ready_fd, _ in poller.poll(timeout_ms):
                if ready_fd == fd:
                    self._on_event()
                elif ready_fd == wakeup_fd:
                    try:
                        os.read(wakeup_fd, 512)
                    except BlockingIOError:
                        pass
            if self._dump:
                self._dump = False
                self.write_counters()
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.heartbeat
                if not self.dm.server_exists(self.domid, self.server_id):
                    self.teardown()  # the destroy fails quietly: nothing is left
                    self._set_state("domain-gone")
                    return self.state
                self.write_counters()
        return self.state

    def _on_event(self) -> None:
        port = self.evtchn.pending()
        self.evtchn.unmask(port)
        vcpu = self._vcpu_by_port.get(port)
        if vcpu is not None:
            self.service(vcpu)
        else:  # not ours (cannot happen with a private handle): look at every slot
            for v in range(self.vcpus):
                self.service(v)

    def stop(self) -> None:
        self.teardown()
        self._set_state("stopped")


def reap_server(domid: int, server_id: int, libs: XenLibs | None = None) -> str:
    """Answer the requests a dead probe left pending, then destroy its server;
    what was done ("reaped: N pending answered" or "already gone")."""
    libs = libs or XenLibs()
    dm = DeviceModel(libs)
    fm = evtchn = resource = None
    answered = 0
    try:
        if not dm.server_exists(domid, server_id):
            return "already gone"
        try:
            fm, evtchn = ForeignMemory(libs), EventChannels(libs)
            resource, address = fm.map_ioreq_page(domid, server_id)
            slots = ioreq_slots(address, dm.nr_vcpus(domid))
            for slot in slots:
                if slot.state in (STATE_IOREQ_READY, STATE_IOREQ_INPROCESS):
                    if slot.dir == IOREQ_READ:
                        slot.data = (1 << 64) - 1
                    slot.state = STATE_IORESP_READY
                    port = evtchn.bind_interdomain(domid, slot.vp_eport)
                    evtchn.notify(port)
                    evtchn.unbind(port)
                    answered += 1
        except XenCallFailed as exc:  # still destroy: the ranges must go
            log.warning("answering pending requests of server %d: %s", server_id, exc)
        try:
            dm.destroy_ioreq_server(domid, server_id)
        except XenCallFailed as exc:
            if exc.errno not in (errno.ESRCH, errno.ENOENT):
                raise
            return "already gone"
        return f"reaped: {answered} pending request(s) answered"
    finally:
        if fm is not None:
            fm.unmap(resource)
            fm.close()
        if evtchn is not None:
            evtchn.close()
        dm.close()


def install_signal_handlers(server: ProbeServer) -> int:
    """SIGTERM/SIGINT/SIGHUP stop the server, SIGUSR1 rewrites the counters
    file; a self-pipe wakes the poll loop at once.  The pipe's read end."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)

    def stop(signum, frame):
        server.request_stop()

    def dump(signum, frame):
        server.request_dump()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    signal.signal(signal.SIGUSR1, dump)
    return read_fd


def run_server(server: ProbeServer) -> int:
    """Start, serve, tear down; the process exit status."""
    wakeup = install_signal_handlers(server)
    try:
        server.start()
    except XenhilError as exc:
        log.error("%s", exc)
        return 2 if exc.failure_class == "test-bug" else 1
    try:
        state = server.serve(wakeup)
        if state != "domain-gone":
            server.stop()
        return 0
    except BaseException as exc:
        server.error = f"{type(exc).__name__}: {exc}"
        server.teardown()
        server._set_state("failed")
        raise
