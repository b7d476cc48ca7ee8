"""The probe device model on real Xen (issue 7): an HVM guest served by
qemu-xen (ioreq server 0) and the probe (server 1) at once.

Run against a lab (the virtual one works: `xenhil lab up --virtual 1`):

    .venv/bin/pytest tests/test_probe_dm_real.py --lab lab/virtual.yaml -m real_xen

One guest serves the whole module (a boot costs minutes under emulation);
the tests run in file order and the later ones (ballooning, save/restore,
crash) change it.
"""
from __future__ import annotations

import os
import re
import shlex
import time
from dataclasses import dataclass

import pytest

from xenhil.harness.guest import Guest
from xenhil.harness.probe_dm.host import ProbeHandle, start_probe
from xenhil.harness.xen.parsers.lspci import by_bdf, parse_pci_listing
from xenhil.harness.xen.parsers.qemu_trace import iter_trace_events, ioreqs_of_type
from xenhil.harness.xen.toolstack import Toolstack
from tests.support.lab_host import leased_ready_host

pytestmark = [pytest.mark.real_xen, pytest.mark.slow]

PROBE_PORTS = (0x6100, 0x610F)        # below hvmloader's PCI I/O window (0xc000-)
PROBE_MMIO = (0xF0000000, 0xF0000FFF)  # BAR0: 4 KiB; the firmware places it
PROBE_BDF = "00:05.0"                  # after the NIC at 00:04.0
PROBE_SBDF = 0x28
QEMU_PORT = 0x3FB                      # COM1 line control register: QEMU's serial
ID_BYTES = bytes.fromhex("504c4858")   # 0x58484C50 little-endian
IOREQ_TYPE_INVALIDATE = 8


@dataclass
class ProbeGuest:
    guest: Guest
    probe: ProbeHandle
    trace_path: str

    @property
    def host(self):
        return self.guest.host

    @property
    def xl(self) -> Toolstack:
        return self.guest.xl


@pytest.fixture(scope="module")
def probe_host(request):
    if not request.config.getoption("--lab"):
        pytest.skip("needs a running lab: `xenhil lab up --virtual 1`, then --lab lab/virtual.yaml "
                    "(scripts/test-framework brings one up)")
    with leased_ready_host(request) as host:
        yield host


@pytest.fixture(scope="module")
def probe_guest(probe_host, tmp_path_factory):
    from xenhil.harness.lab.virtual.guestkit import GUEST_PROMPT, READY_CONDITION
    from xenhil.harness.xen.catalog import load_catalog
    from xenhil.harness.xen.testguest import guest_model

    name = f"xh-probe-{os.getpid()}"
    trace = f"/var/log/xen/xenhil-{name}.trace"
    # The suites' guest (one description), without a disk, with QEMU's
    # handle_ioreq trace in a file of its own.
    model = guest_model(name, load_catalog().get("single"), probe_host.spec.profile,
                        trace_events=("handle_ioreq",), device_model_args=["-D", trace])
    # Ready as the suites' guests are (the init's network job done): its
    # "XENHIL-GUEST-READY" line, written while a loaded host's UART drains a
    # few characters a second, otherwise lands inside a command's output
    # (CI under load: in the middle of `lspci -n`).
    guest = Guest(probe_host, model, tmp_path_factory.mktemp("probe-guest"),
                  ready_condition=READY_CONDITION, prompt=GUEST_PROMPT)
    holder = ProbeGuest(guest, None, trace)
    try:
        domid = guest.create(paused=True)
        holder.probe = start_probe(probe_host, domid, [PROBE_PORTS], PROBE_MMIO, PROBE_BDF,
                                   log=True)
        guest.unpause()
        # Under emulation the guest kernel's PCI bus scan alone takes minutes.
        guest.wait_ready(timeout=900)
        yield holder
    finally:
        try:
            if holder.probe is not None:
                holder.probe.stop()
            guest.destroy()
            guest.leak_check()
        finally:
            probe_host.ssh.run(["rm", "-f", trace, guest.cfg_path, guest.save_path], timeout=60)


# --- guest-side I/O with busybox: /dev/port (byte accesses) and devmem -------

def port_read(g: ProbeGuest, port: int, count: int) -> bytes:
    out = g.guest.run(f"dd if=/dev/port bs=1 skip={port} count={count} 2>/dev/null "
                      "| od -An -tx1 -v", timeout=120)
    return bytes.fromhex("".join(out.split()))


def port_write(g: ProbeGuest, port: int, data: bytes) -> None:
    octal = "".join(f"\\{b:03o}" for b in data)
    g.guest.run(f"printf '{octal}' | dd of=/dev/port bs=1 seek={port} count={len(data)} "
                "conv=notrunc 2>/dev/null", timeout=120)


def mmio_read(g: ProbeGuest, address: int, width: int = 32) -> int:
    out = g.guest.run(f"devmem {address:#x} {width}", timeout=120)
    return int(out.split()[-1], 16)


def mmio_write(g: ProbeGuest, address: int, value: int, width: int = 32) -> None:
    g.guest.run(f"devmem {address:#x} {width} {value:#x}", timeout=120)


def guest_bar0(g: ProbeGuest) -> int:
    out = g.guest.run(f"cat /sys/bus/pci/devices/0000:{PROBE_BDF}/resource", timeout=60)
    return int(out.splitlines()[0].split()[0], 16)


def qemu_port_accesses(g: ProbeGuest, port: int) -> int:
    """handle_ioreq lines of QEMU's trace for port I/O at ``port``."""
    result = g.host.ssh.run(f"grep -F {shlex.quote(f'port={port:#x} ')} "
                            f"{shlex.quote(g.trace_path)} || true", timeout=120)
    return sum(1 for e in iter_trace_events(result.stdout.splitlines())
               if e.name.startswith("handle_ioreq") and e.args.get("type") == 0)


def qemu_invalidations(g: ProbeGuest) -> int:
    result = g.host.ssh.run(f"grep -F ' type=8 ' {shlex.quote(g.trace_path)} || true",
                            timeout=120)
    return len(ioreqs_of_type(iter_trace_events(result.stdout.splitlines()),
                              IOREQ_TYPE_INVALIDATE))


def servers_of(g: ProbeGuest, domid: int) -> dict:
    sets = g.xl.rangesets()
    assert domid in sets, f"no rangesets for domain {domid} in the dump: {sorted(sets)}"
    return sets[domid]


def assert_disjoint(servers: dict) -> None:
    ids = sorted(servers)
    for kind in ("port", "memory", "pci"):
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                for lo1, hi1 in servers[a].get(kind, []):
                    for lo2, hi2 in servers[b].get(kind, []):
                        assert hi1 < lo2 or hi2 < lo1, (
                            f"{kind} ranges overlap: server {a} {lo1:#x}-{hi1:#x}, "
                            f"server {b} {lo2:#x}-{hi2:#x}")


def contains(ranges, lo: int, hi: int) -> bool:
    return any(a <= lo and hi <= b for a, b in ranges)


# --- the tests ------------------------------------------------------------------

def test_probe_was_enabled_before_unpause_as_server_1(probe_guest):
    seen = probe_guest.probe.check_alive()
    assert seen.server_id == 1, "qemu-xen creates server 0 during xl create; the probe is next"
    assert seen.claimed["port"] == [[hex(PROBE_PORTS[0]), hex(PROBE_PORTS[1])]]
    assert seen.claimed["pci"] == ["0000:00:05.0"]
    # The firmware (hvmloader) found the function before the kernel did.
    assert seen.counts["pci"]["bar_size_probes"] >= 1


def test_guest_lspci_shows_the_probe_function(probe_guest):
    listing = probe_guest.guest.run("lspci -n", timeout=120)
    devices = by_bdf(parse_pci_listing(listing))
    probe = devices.get(PROBE_BDF)
    assert probe is not None, f"00:05.0 missing from the guest's lspci:\n{listing}"
    assert (probe.vendor, probe.device, probe.class_code) == (0x5853, 0xC0DE, 0xFF00)
    assert "00:00.0" in devices, "QEMU's host bridge must still be there"
    bar = guest_bar0(probe_guest)
    seen = probe_guest.probe.counters()
    assert seen.claimed["memory"] == [[hex(bar), hex(bar + 0xFFF)]], \
        "the probe claims its MMIO window where the guest placed BAR0"


def test_xl_debug_keys_q_shows_two_servers_with_disjoint_ranges(probe_guest):
    domid = probe_guest.guest.domid
    servers = servers_of(probe_guest, domid)
    assert sorted(servers) == [0, 1], f"servers of domain {domid}: {servers}"
    probe = servers[1]
    assert contains(probe.get("port", []), *PROBE_PORTS)
    assert probe.get("pci", []) == [(PROBE_SBDF, PROBE_SBDF)]
    bar = guest_bar0(probe_guest)
    assert probe.get("memory", []) == [(bar, bar + 0xFFF)]
    assert not contains(servers[0].get("pci", []), PROBE_SBDF, PROBE_SBDF)
    assert_disjoint(servers)


def test_io_to_each_servers_ports_is_counted_by_that_server_only(probe_guest):
    g = probe_guest
    before = g.probe.counters()
    qemu_before = qemu_port_accesses(g, QEMU_PORT)
    probe_port_in_qemu_before = qemu_port_accesses(g, PROBE_PORTS[0])

    assert port_read(g, PROBE_PORTS[0], 4) == ID_BYTES            # 4 probe reads
    port_write(g, PROBE_PORTS[0] + 8, b"\x11\x22\x33\x44")        # 4 probe writes
    assert port_read(g, PROBE_PORTS[0] + 8, 4) == b"\x11\x22\x33\x44"  # 4 probe reads
    lcr = port_read(g, QEMU_PORT, 1)                              # 1 QEMU read
    assert lcr != b"\xff", "QEMU's serial port must answer, not nobody"
    bar = guest_bar0(g)
    assert mmio_read(g, bar) == 0x58484C50                        # 1 probe MMIO read
    mmio_write(g, bar + 8, 0xA5A5F00D)                            # 1 probe MMIO write
    assert mmio_read(g, bar + 8) == 0xA5A5F00D                    # 1 probe MMIO read

    after = g.probe.dump()
    port0 = (after.window("port0")["reads"] - before.window("port0")["reads"],
             after.window("port0")["writes"] - before.window("port0")["writes"])
    bar0 = (after.window("bar0")["reads"] - before.window("bar0")["reads"],
            after.window("bar0")["writes"] - before.window("bar0")["writes"])
    assert port0 == (8, 4), f"probe port window saw (reads, writes) {port0}"
    assert bar0 == (2, 1), f"probe MMIO window saw (reads, writes) {bar0}"
    assert after.counts["outside"] == 0, "Xen sent the probe something it never claimed"
    assert qemu_port_accesses(g, QEMU_PORT) == qemu_before + 1
    assert qemu_port_accesses(g, PROBE_PORTS[0]) == probe_port_in_qemu_before == 0


FAULT_PORTS = (0x6200, 0x620F)     # a faulty probe's own registers: free in this guest
IDE_SECONDARY = (0x170, 0x177)     # what claim-qemu-port claims by default: QEMU's, no drive


def test_planted_faults_do_on_xen_what_the_mutants_need(probe_guest):
    """The probe's faults (harness/probe_dm/faults.py, lab/mutants), each in a
    second probe of this guest: claim-qemu-port makes Xen hand a range QEMU
    holds to the probe (the newer server), which answers the guest there;
    delay slows every round trip, by a clear part of the delay as the
    guest's clock sees it."""
    from xenhil.harness.checks.latency import time_in_command
    from xenhil.harness.xen.parsers.probe_output import TimeIn, parse_single
    g = probe_guest
    domid = g.guest.domid
    claimer = start_probe(g.host, domid, [FAULT_PORTS], fault="claim-qemu-port")
    try:
        servers = servers_of(g, domid)
        sid = claimer.check_alive().server_id
        assert contains(servers[sid].get("port", []), *IDE_SECONDARY), servers
        assert contains(servers[0].get("port", []), *IDE_SECONDARY), "QEMU holds it too"
        before = claimer.dump().counts.get("outside", 0)
        port_read(g, IDE_SECONDARY[1], 1)               # the secondary channel's status
        assert claimer.dump().counts["outside"] >= before + 1, "the probe did not answer it"
    finally:
        claimer.stop()
    assert_disjoint(servers_of(g, domid))               # its server gone, the overlap too

    def p50_ns(port: int) -> float:
        text = g.guest.run(time_in_command(port, 200, raw=False), timeout=600)
        return parse_single(text, TimeIn).p50_ns

    delay_us = 4000
    delayed = start_probe(g.host, domid, [FAULT_PORTS], fault=f"delay={delay_us}")
    try:
        clean, slow = p50_ns(PROBE_PORTS[0]), p50_ns(FAULT_PORTS[0])
    finally:
        delayed.stop()
    # A quarter of the delay, not all of it: the guest times with its own
    # clock, and under TCG that clock and dom0's (where the probe busy-waits)
    # disagree by up to half: a 2 ms delay showed as 1.68 ms in a CI run and
    # as 0.99 ms on the virtual lab (2026-12-01, clean p50 4.17 ms).  The
    # mutants need the delay to show, not its exact size (the latency suite
    # compares servers measured by the same clock).  Without the delay the
    # two p50s differ by noise, well under a millisecond.
    assert slow - clean >= 0.25 * delay_us * 1000, \
        f"p50 {slow:.0f} ns with delay={delay_us} vs {clean:.0f} ns"


def test_xl_mem_set_invalidates_the_map_cache_of_both_servers(probe_guest):
    g = probe_guest
    probe_before = g.probe.counters().invalidations
    qemu_before = qemu_invalidations(g)
    g.xl.xl("mem-set", g.guest.name, "200m")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if g.probe.counters().invalidations > probe_before and qemu_invalidations(g) > qemu_before:
            break
        time.sleep(3)
    memory = g.xl.domain(g.guest.name)
    assert g.probe.counters().invalidations > probe_before, \
        f"the probe saw no IOREQ_TYPE_INVALIDATE (guest now at {memory}: did it balloon?)"
    assert qemu_invalidations(g) > qemu_before, "QEMU's trace shows no type=8 request"
    assert "Unsuccessful map-cache invalidate" not in g.xl.dmesg()


def test_save_restore_keeps_both_servers(probe_guest):
    """Saved while its balloon driver still gives memory back: a Linux guest
    cannot suspend then (harness/xen/balloon.py; without the wait this
    failed 2 of 2 on the virtual lab, and once in CI), so Guest.save waits
    for the balloon first."""
    g = probe_guest
    bar = guest_bar0(g)
    port_write(g, PROBE_PORTS[0] + 12, b"\x5a\xa5\x0f\xf0")
    old = g.probe
    g.xl.xl("mem-set", g.guest.name, "150m")
    g.guest.save()
    gone = old.wait_for_state(("domain-gone",), timeout=30)
    assert gone is not None and gone.state == "domain-gone", \
        f"the probe did not notice the saved domain went away: {gone and gone.raw}"
    domid = g.guest.restore(paused=True)
    g.probe = old.reattach(domid)
    g.guest.unpause()
    g.guest.run("true", timeout=300)

    servers = servers_of(g, domid)
    assert sorted(servers) == [0, 1], f"servers of restored domain {domid}: {servers}"
    assert_disjoint(servers)
    assert port_read(g, PROBE_PORTS[0] + 12, 4) == b"\x5a\xa5\x0f\xf0", \
        "the probe's scratch register lost its value across save/restore"
    assert guest_bar0(g) == bar
    assert mmio_read(g, bar) == 0x58484C50
    assert port_read(g, QEMU_PORT, 1) != b"\xff", "QEMU must serve the restored guest too"


def test_a_killed_probe_does_not_hang_the_guest(probe_guest):
    """SIGSTOP the serving process, leave a guest read pending in Xen, then
    SIGKILL it: the supervisor answers the pending request and destroys the
    server, and the guest goes on (reading all ones)."""
    g = probe_guest
    seen = g.probe.check_alive()
    server_pid = seen.raw["pid"]
    g.host.ssh.run(["kill", "-STOP", str(server_pid)], check=True)
    try:
        # The sleep lets the shell answer first: once dd's IN is pending, the
        # guest's only vCPU is blocked in Xen and nothing in the guest runs.
        # The marker says dd is about to read: on a loaded emulated host the
        # guest took more than a fixed 10 s to get there, and a read that
        # reached Xen while the supervisor was reaping the server completed
        # with 00 (the request was in no server's hands).  (The typed command
        # does not hold the marker as it prints: "" splits it.)
        g.guest.run(f"(sleep 3; echo XENHIL-READ-""ISSUED; dd if=/dev/port bs=1 "
                    f"skip={PROBE_PORTS[0]} count=1 2>/dev/null | od -An -tx1 > /tmp/pending-read) &",
                    timeout=60)
        g.guest.console.expect(r"XENHIL-READ-ISSUED", timeout=180)
        time.sleep(8)
    finally:
        g.host.ssh.run(["kill", "-KILL", str(server_pid)], check=True)
    crashed = g.probe.wait_for_state(("crashed",), timeout=30)
    assert crashed is not None and crashed.state == "crashed", crashed and crashed.raw
    assert "reaped" in crashed.error, crashed.error
    out = g.guest.run("sleep 1; cat /tmp/pending-read", timeout=180)
    assert out.split() == ["ff"], f"the pending read completed with {out!r}"
    assert port_read(g, PROBE_PORTS[0], 1) == b"\xff", "nobody claims the probe's ports now"
    servers = servers_of(g, g.guest.domid)
    assert sorted(servers) == [0], f"the probe's server survived it: {servers}"
    assert re.search(r"1 pending request", crashed.error), crashed.error
