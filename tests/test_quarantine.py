"""Quarantine in the lease store (issue 17, item 2), on SQLite and a real
PostgreSQL server: schema 2 adds the quarantine and host_events tables to a
store of schema 1 keeping its rows; claims skip quarantined hosts and fail
at once (also while waiting) when only quarantined hosts could serve them;
infrastructure failures are counted and quarantine a host at the threshold
or at once when it latched broken; a passing health check or an explicit,
logged release returns it."""
from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest

from xenhil.harness.errors import ConfigError, InfrastructureError
from xenhil.harness.lab.leases import (EVENT_HEALTH_FAILED, EVENT_HEALTH_PASSED, EVENT_INFRA_FAILURE,
                                       EVENT_QUARANTINED, EVENT_RELEASED, QUARANTINE_AFTER_INFRA_FAILURES,
                                       Holder, HostsQuarantined, ReservationTimeout, SQLLeaseStore,
                                       open_store)
from tests.support.leases import make_pool
from tests.support.postgres import fresh_store_url, postgres_url  # noqa: F401


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    return fresh_store_url(request, tmp_path, "quarantine")


ME = Holder.current(run_id="run-q")

# The tables of schema 1, as xenhil wrote them before quarantine existed.
_HOLDER = ("holder_user TEXT NOT NULL, holder_machine TEXT NOT NULL, holder_pid INTEGER NOT NULL, "
           "holder_worker TEXT NOT NULL, holder_run TEXT NOT NULL")
V1_TABLES = [
    f"CREATE TABLE leases (host TEXT PRIMARY KEY, lease_id TEXT NOT NULL, {_HOLDER}, "
    "acquired_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL)",
    f"CREATE TABLE grants (lease_id TEXT PRIMARY KEY, host TEXT NOT NULL, {_HOLDER}, "
    "granted_at DOUBLE PRECISION NOT NULL, released_at DOUBLE PRECISION, expired_at DOUBLE "
    "PRECISION, released_by TEXT, forced INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX grants_by_host ON grants (host, granted_at)",
    "CREATE TABLE waiters ({ticket}, " + _HOLDER + ", candidates TEXT NOT NULL, "
    "enqueued_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL)",
]
V1_ROWS = [
    "INSERT INTO leases VALUES ('h1', 'lease-v1', 'ann', 'm1', 42, 'gw0', 'old-run', 100.0, "
    "9999999999.0)",
    "INSERT INTO grants VALUES ('lease-v1', 'h1', 'ann', 'm1', 42, 'gw0', 'old-run', 100.0, NULL, "
    "NULL, NULL, 0)",
]


def _write_v1_store(db: str) -> None:
    if db.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            for sql in V1_TABLES:
                conn.execute(sql.replace("{ticket}", "ticket BIGINT GENERATED ALWAYS AS IDENTITY "
                                                     "PRIMARY KEY"))
            for sql in V1_ROWS:
                conn.execute(sql)
            conn.execute("CREATE TABLE xenhil_schema (component TEXT PRIMARY KEY, "
                         "version INTEGER NOT NULL)")
            conn.execute("INSERT INTO xenhil_schema VALUES ('leases', 1)")
        return
    conn = sqlite3.connect(db)
    for sql in V1_TABLES:
        conn.execute(sql.replace("{ticket}", "ticket INTEGER PRIMARY KEY AUTOINCREMENT"))
    for sql in V1_ROWS:
        conn.execute(sql)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def _tables(db: str) -> set[str]:
    if db.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            return {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_a_schema_1_store_is_upgraded_to_2_keeping_its_rows(db):
    _write_v1_store(db)
    assert "quarantine" not in _tables(db)
    pool = make_pool(db, ["h1", "h2"], ttl=600)
    assert SQLLeaseStore.SCHEMA_VERSION >= 2
    assert {"quarantine", "host_events"} <= _tables(db)
    lease = pool.store.leases()["h1"]
    assert (lease.id, lease.holder.user, lease.holder.run_id) == ("lease-v1", "ann", "old-run")
    assert [g.lease_id for g in pool.store.grants()] == ["lease-v1"]
    assert pool.store.quarantined() == {}
    pool.quarantine_host("h2", "after the upgrade", ME)
    with pytest.raises(HostsQuarantined):           # h1 is held (the old row), h2 quarantined:
        pool.claim(ME, host="h2", timeout=0)
    pool.store.close()
    again = open_store(db)                           # a second open changes nothing
    assert again.quarantined()["h2"].reason == "after the upgrade"
    assert again.leases()["h1"].id == "lease-v1"
    again.close()


def test_a_read_only_schema_1_store_reads_as_nothing_quarantined(tmp_path, monkeypatch):
    # A store of an older xenhil this user may not write (so not upgrade):
    # opened read-only, it has no quarantine table, so nothing is quarantined,
    # and its leases still read (`xenhil lab status`).
    import xenhil.harness.lab.lease_sqlite as lease_sqlite
    db = str(tmp_path / "v1.sqlite")
    _write_v1_store(db)
    monkeypatch.setattr(lease_sqlite, "_writable", lambda path: False)
    store = open_store(db)
    assert store.read_only and store.schema_found == 1
    assert store.quarantined() == {} and store.host_events() == []
    assert store.leases()["h1"].id == "lease-v1"
    assert "quarantine" not in _tables(db)      # untouched


def test_claims_skip_a_quarantined_host_and_fail_at_once_when_only_it_matches(db):
    pool = make_pool(db, {"h1": (("amd",), {}), "h2": (("intel",), {})}, ttl=600)
    q = pool.quarantine_host("h1", "BMC does not answer", ME)
    assert (q.host, q.reason, q.run_id, q.by) == ("h1", "BMC does not answer", "run-q", ME.describe())
    assert abs(q.since - pool.store.now()) < 60
    # Any host: h2, every time (h1 is never handed out).
    for _ in range(3):
        lease = pool.claim(ME, timeout=5)
        assert lease.host == "h2"
        pool.release(lease)
    # Only h1 matches: at once, with its reason and the fix, not after the timeout.
    began = time.monotonic()
    with pytest.raises(HostsQuarantined) as info:
        pool.claim(ME, tags=("amd",), timeout=600)
    assert time.monotonic() - began < 10
    text = str(info.value)
    assert text.startswith("[infrastructure]") and isinstance(info.value, InfrastructureError)
    assert "h1: quarantined since" in text and "BMC does not answer" in text
    assert "xenhil lab health h1" in info.value.help and "xenhil lab unquarantine" in info.value.help
    # A health check (or a person repairing it) may still lease it.
    lease = pool.claim(ME, host="h1", timeout=0, allow_quarantined=True)
    assert lease.host == "h1"
    pool.release(lease)


def test_a_waiter_fails_as_soon_as_every_host_it_waits_for_is_quarantined(db):
    pool = make_pool(db, ["h1"], ttl=600, poll_interval=0.05)
    held = pool.claim(Holder.current(run_id="holder"), timeout=0)
    outcome: dict = {}

    def wait() -> None:
        began = time.monotonic()
        try:
            pool.claim(ME, timeout=300)
        except Exception as exc:  # reported to the test thread
            outcome["error"] = exc
        outcome["waited"] = time.monotonic() - began

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive()                 # h1 is held: it waits
    pool.quarantine_host("h1", "found broken while held", ME)
    waiter.join(30)
    assert not waiter.is_alive()
    assert isinstance(outcome.get("error"), HostsQuarantined), outcome
    assert outcome["waited"] < 15
    pool.release(held)
    assert pool.store.waiters() == []       # its ticket went with it


def test_a_host_quarantined_meanwhile_is_named_in_a_timeout(db):
    pool = make_pool(db, ["h1", "h2"], ttl=600)
    other = Holder.current(run_id="other")
    held = pool.claim(other, host="h1", timeout=0)
    pool.quarantine_host("h2", "flaky NIC", ME)
    with pytest.raises(ReservationTimeout) as info:
        pool.claim(ME, timeout=0.5)             # h1 held, h2 quarantined: wait, then time out
    assert "h2: quarantined since" in str(info.value) and "flaky NIC" in str(info.value)
    pool.release(held)   # a test gives back what it took (no release at exit on a stopped server)


def test_infrastructure_failures_quarantine_at_the_threshold_latches_at_once(db):
    pool = make_pool(db, ["h1", "h2"], ttl=600)
    assert QUARANTINE_AFTER_INFRA_FAILURES == 3
    for n in range(1, 3):
        assert pool.record_infrastructure_failure("h1", f"console timeout {n}", ME,
                                                  latched=False) is None
    q = pool.record_infrastructure_failure("h1", "console timeout 3", ME, latched=False)
    assert q is not None and q.infra_failures == 3
    assert "3 infrastructure failures" in q.reason and "console timeout 3" in q.reason
    # More failures while quarantined raise the count, keep the first reason and time.
    q2 = pool.record_infrastructure_failure("h1", "again", ME, latched=False)
    assert (q2.infra_failures, q2.reason, q2.since) == (4, q.reason, q.since)
    # A latch quarantines at its first failure.
    latched = pool.record_infrastructure_failure("h2", "ensure_ready: power cycle failed", ME,
                                                 latched=True)
    assert latched is not None and latched.reason.startswith("latched broken in run run-q")
    assert latched.infra_failures == 1
    # A passing health check returns h1 and counting starts again from zero.
    ended = pool.store.record_health("h1", True, "passed dom0-ssh", ME, {"steps": {}})
    assert ended is not None and ended.reason == q.reason
    assert "h1" not in pool.store.quarantined()
    assert pool.record_infrastructure_failure("h1", "once more", ME, latched=False) is None
    kinds = [e.kind for e in pool.store.host_events("h1")]
    assert kinds == [EVENT_INFRA_FAILURE] * 3 + [EVENT_QUARANTINED, EVENT_INFRA_FAILURE,
                                                 EVENT_HEALTH_PASSED, EVENT_RELEASED,
                                                 EVENT_INFRA_FAILURE]


def test_a_failing_health_check_quarantines_keeping_the_first_since(db):
    pool = make_pool(db, ["h1"], ttl=600)
    first = pool.store.record_health("h1", False, "dom0-ssh: connection refused", ME,
                                     {"steps": {"dom0-ssh": ["failed", "refused"]}})
    assert first.reason == "health check failed: dom0-ssh: connection refused"
    time.sleep(0.05)
    second = pool.store.record_health("h1", False, "xl-info: xl not found", ME)
    assert second.since == first.since and second.updated_at > first.updated_at
    assert second.reason == "health check failed: xl-info: xl not found"
    events = pool.store.host_events("h1")
    assert [e.kind for e in events] == [EVENT_HEALTH_FAILED, EVENT_QUARANTINED] * 2
    assert events[0].detail == {"steps": {"dom0-ssh": ["failed", "refused"]}}


def test_an_explicit_release_is_logged_with_who_when_and_why(db):
    pool = make_pool(db, ["h1"], ttl=600)
    pool.quarantine_host("h1", "disk errors", ME)
    with pytest.raises(ConfigError, match="a reason is required"):
        pool.unquarantine_host("h1", "  ", ME)
    with pytest.raises(ConfigError, match="no host named"):
        pool.unquarantine_host("h9", "typo", ME)
    person = Holder.current(run_id="interactive")
    ended = pool.unquarantine_host("h1", "replaced the disk", person)
    assert ended is not None and ended.reason == "disk errors"
    assert pool.unquarantine_host("h1", "again", person) is None     # nothing to release
    released = pool.store.host_events("h1")[-1]
    assert (released.kind, released.reason, released.by, released.run_id) == (
        EVENT_RELEASED, "replaced the disk", person.describe(), "interactive")
    assert released.detail["quarantine_reason"] == "disk errors"
    assert abs(released.at - pool.store.now()) < 60
    lease = pool.claim(ME, timeout=0)
    assert lease.host == "h1"
    pool.release(lease)


def test_what_the_store_keeps_is_scrubbed_of_registered_secrets(db):
    """A quarantine reason or an event's detail quotes a failure, which may
    hold a lab secret (a BMC password in an ipmitool command line); the store
    outlives the run and every runner reads it, so the secret goes in
    masked, in every form, and reads back masked."""
    import json as _json

    from xenhil.harness.secrets import register_secret
    secret = "lease-store-pw-" + os.urandom(6).hex()
    register_secret(secret)
    store = open_store(db)
    try:
        store.quarantine("h1", f"ipmitool -P {secret} failed", ME,
                         detail={"command": f"ipmitool -P {secret}", "json": _json.dumps(secret)})
        kept = store.quarantined()["h1"]
        assert secret not in kept.reason and "***" in kept.reason
        values = list(store.text_values())
        assert any("ipmitool -P ***" in v for v in values), values
        assert not any(secret in v for v in values), values
        # Reads with the same text still find the row they wrote.
        assert [e.kind for e in store.host_events("h1")] == [EVENT_QUARANTINED]
    finally:
        store.close()
