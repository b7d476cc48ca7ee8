"""Map-cache invalidation: lowering the guest's memory makes every enabled
server (each QEMU and, in probe splits, the probe) invalidate its map cache, Xen logs no failed invalidate, and data on
the guest's disk survives it."""
import pytest

from xenhil.harness.checks.mapcache import mapcache_cycle

# Two steps down from the guest's 256 MiB: two invalidate events per server.
TARGETS_MIB = [224, 192]


@pytest.mark.disruptive
def test_balloon_down_invalidates_every_server_and_keeps_data(guest, model_logs):
    record = mapcache_cycle(guest, model_logs, TARGETS_MIB, pattern_target="/dev/sda")
    servers = set(model_logs) | {c.name for c in guest.companions}
    assert set(record.invalidates) == servers, "every server's invalidates were counted"
