"""The guest's NIC workload (`NIC_TRAFFIC_COMMAND`) moves frames both ways
on every NIC of the guest, not only on the one with the guest's address.

The map-cache check needs each model that owns a NIC to have done DMA before
and after the invalidates; on the split qnet1+qnet2+qall the old command
(a ping from eth0) left eth1, and with it qnet2, silent, and the check failed
the split (catalog run 2026-12-02).  Here the command runs, with busybox's
applets as in the guest kit, in a network namespace made by the test: a
"guest" with eth0 (the guest's address) and eth1 (none), both down as after
boot, each a veth whose peer is on a bridge in a "dom0" namespace that holds
dom0's bridge address.  Both namespaces are deleted at the end."""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from xenhil.harness.lab.virtual.guestkit import DOM0_BRIDGE_ADDRESS, GUEST_ADDRESS, NIC_TRAFFIC_COMMAND

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root "
                                                           "(CI and scripts/test-framework run as root)")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _counter(netns: str, nic: str, name: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", netns, "cat", f"/sys/class/net/{nic}/statistics/{name}"],
                         check=True, capture_output=True, text=True).stdout
    return int(out)


@pytest.fixture
def guest_and_dom0(tmp_path: Path):
    """(guest netns, dom0 netns, busybox, a PATH folder of its applets)."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox is missing: scripts/setup installs busybox-static (the guest kit's shell)"
    tag = uuid.uuid4().hex[:6]
    guest, dom0 = f"xh-guest-{tag}", f"xh-dom0-{tag}"
    _ip("netns", "add", guest)
    try:
        _ip("netns", "add", dom0)
        try:
            _ip("-n", dom0, "link", "add", "xenbr0", "type", "bridge")
            _ip("-n", dom0, "addr", "add", f"{DOM0_BRIDGE_ADDRESS}/24", "dev", "xenbr0")
            _ip("-n", dom0, "link", "set", "xenbr0", "up")
            # No IPv6 in the guest: its autoconfiguration would send frames
            # of its own on every NIC that comes up.
            for key in ("all", "default"):
                subprocess.run(["ip", "netns", "exec", guest, "sh", "-c",
                                f"echo 1 > /proc/sys/net/ipv6/conf/{key}/disable_ipv6"], check=True)
            for index in (0, 1):
                _ip("-n", guest, "link", "add", f"eth{index}", "type", "veth",
                    "peer", "name", f"vif{index}", "netns", dom0)
                _ip("-n", dom0, "link", "set", f"vif{index}", "master", "xenbr0")
                _ip("-n", dom0, "link", "set", f"vif{index}", "up")
            _ip("-n", guest, "addr", "add", f"{GUEST_ADDRESS}/24", "dev", "eth0")
            applets = tmp_path / "bin"
            applets.mkdir()
            for applet in ("ip", "ping", "arping"):
                (applets / applet).symlink_to(busybox)
            yield guest, dom0, busybox, str(applets)
        finally:
            _ip("netns", "del", dom0)
    finally:
        _ip("netns", "del", guest)


def test_the_nic_workload_moves_frames_both_ways_on_every_nic(guest_and_dom0):
    guest, dom0, busybox, applets = guest_and_dom0
    before = {(nic, c): _counter(guest, nic, c) for nic in ("eth0", "eth1")
              for c in ("tx_packets", "rx_packets")}
    done = subprocess.run(["ip", "netns", "exec", guest, "env", f"PATH={applets}", busybox, "sh", "-c",
                           NIC_TRAFFIC_COMMAND], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for nic in ("eth0", "eth1"):
        sent = _counter(guest, nic, "tx_packets") - before[nic, "tx_packets"]
        received = _counter(guest, nic, "rx_packets") - before[nic, "rx_packets"]
        assert sent > 0 and received > 0, (
            f"{nic}: {sent} frame(s) sent, {received} received: the NIC's model would do no DMA "
            f"for the map-cache check")
