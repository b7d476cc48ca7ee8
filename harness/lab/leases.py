"""Host reservations: who may use which lab host, and until when.

Every run, every xdist worker and every interactive user takes a *lease* on a
host before touching it.  Leases live in one shared store (a SQLite file next
to the inventory by default, or PostgreSQL for a lab shared between machines),
so two holders never use one host at the same time.

- A lease has a TTL.  Its holder keeps it alive with a :class:`Heartbeat`; a
  holder that dies (even by SIGKILL) stops renewing and its host becomes free
  once the TTL has passed.  It is never free before.
- Waiting claims are served in order: each waiter holds a *ticket* in the
  store, and a waiter takes a free host only if no older waiter that could use
  that host is still waiting.  Tickets expire too when their waiter stops
  polling, so a dead waiter blocks nobody for long.
- Every grant is written to the ``grants`` log (host, lease id, holder,
  granted/released/expired times, who released it and whether by force), which
  is what proves that no host was ever held twice at once.
- A host may be *quarantined* (table ``quarantine``: why, since when, by whom
  and which run, how many infrastructure failures): claims skip it, and a
  claim only quarantined hosts could meet fails at once with
  :class:`HostsQuarantined`.  It returns after a passing health check
  (``harness.lab.health``) or an explicit ``xenhil lab unquarantine``; every
  quarantine, release, health check and counted infrastructure failure is a
  row of the ``host_events`` log.
- Booted guests belong to their host (table ``guests``, schema 3): whoever
  holds a host's lease may use the guests recorded on it, whichever process
  booted them (fixtures.guest); ``host_builds`` says which build each host
  last ran.  A claim that names the guest it needs (:class:`GuestWish`)
  prefers a free host already running it, then one running its build
  (affinity: a guest boot costs minutes); it never waits for one.

Layers: :class:`LeaseStore` is the storage interface (atomic operations only);
:class:`SQLLeaseStore` implements its logic in portable SQL for the SQLite and
PostgreSQL back ends (``harness.lab.lease_sqlite`` / ``lease_postgres``);
:class:`Pool` adds host matching, waiting and error messages on top.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import random
import secrets
import signal
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from xenhil.harness.errors import ConfigError, InfrastructureError, ReservationTimeout
from xenhil.harness.lab.model import HostSpec, Inventory, os_user
from xenhil.harness.secrets import scrub as scrub_secrets
from xenhil.harness.step import step

log = logging.getLogger("xenhil.leases")

DEFAULT_TTL = 60.0
DEFAULT_WAITER_TTL = 10.0
DEFAULT_POLL_INTERVAL = 0.05


# --- values ---------------------------------------------------------------

@dataclass(frozen=True)
class Holder:
    """Who holds (or waits for) a lease: enough to find and ask the person."""

    user: str
    machine: str
    pid: int
    worker: str       # the xdist worker id ("gw0", ...) or "main"
    run_id: str

    @classmethod
    def current(cls, run_id: str, worker: str | None = None) -> "Holder":
        """The holder for this process.  ``worker`` defaults to the xdist
        worker id of this process (PYTEST_XDIST_WORKER) or "main"."""
        if worker is None:
            worker = os.environ.get("PYTEST_XDIST_WORKER") or "main"
        # From the operating system, not $LOGNAME: releasing without --force
        # trusts this name.
        return cls(user=os_user(), machine=socket.gethostname(), pid=os.getpid(),
                   worker=worker, run_id=run_id)

    @property
    def person(self) -> str:
        return f"{self.user}@{self.machine}"

    def same_person(self, other: "Holder") -> bool:
        """Same user on the same machine (the test for releasing without --force)."""
        return self.user == other.user and self.machine == other.machine

    def describe(self) -> str:
        return f"{self.person} pid {self.pid} worker {self.worker} run {self.run_id}"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class Lease:
    id: str
    host: str
    holder: Holder
    acquired_at: float     # seconds since the epoch, store clock
    expires_at: float

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


@dataclass(frozen=True)
class Grant:
    """One row of the grants log: one lease from grant to release or expiry."""

    lease_id: str
    host: str
    holder: Holder
    granted_at: float
    released_at: float | None
    expired_at: float | None
    released_by: str | None     # Holder.describe() of whoever released it
    forced: bool                # released by someone else with --force

    @property
    def ended_at(self) -> float | None:
        """When the host stopped being this grant's (None: still held)."""
        return self.released_at if self.released_at is not None else self.expired_at


@dataclass(frozen=True)
class QueuePosition:
    free: bool      # a candidate host is free for this claim now
    ahead: int      # older waiters that want one of its candidate hosts
    quarantined: tuple[str, ...] = ()   # candidates that are quarantined now


#: Infrastructure failures of tests on one host (since it last passed a health
#: check or was released) that quarantine it.  A host the run latched broken
#: (harness.host) is quarantined at its first.  Product failures never count.
QUARANTINE_AFTER_INFRA_FAILURES = 3

# host_events kinds
EVENT_INFRA_FAILURE = "infrastructure-failure"
EVENT_QUARANTINED = "quarantined"
EVENT_RELEASED = "released"
EVENT_HEALTH_PASSED = "health-passed"
EVENT_HEALTH_FAILED = "health-failed"
#: Events after which infrastructure failures are counted from zero again.
_CLEARING_EVENTS = (EVENT_RELEASED, EVENT_HEALTH_PASSED)


@dataclass(frozen=True)
class Quarantine:
    """A quarantined host: claims skip it until it passes a health check or
    someone releases it with ``xenhil lab unquarantine`` (logged)."""

    host: str
    reason: str
    since: float            # store clock
    by: str                 # Holder.describe() of whoever quarantined it (last)
    run_id: str             # that holder's run ("interactive" for a person)
    infra_failures: int     # infrastructure failures counted since it last passed or was released
    updated_at: float       # last change of reason (a failing health check updates it)


@dataclass(frozen=True)
class HostEvent:
    """One row of the ``host_events`` log."""

    id: int
    host: str
    at: float
    kind: str               # EVENT_*
    by: str
    run_id: str
    reason: str
    detail: dict            # e.g. a health check's per-step results


#: Guest states (table ``guests``).  ``booting``: its booter holds the host
#: (seen by anyone else: the booter died, the domain is stray); ``ready``:
#: any holder of the host may use it; ``private``: one test has it (a
#: disruptive one) and destroys it after; ``broken``: its boot failed in
#: run ``run_id`` (no domain left), so that run's other tests of the split
#: on the host fail at once instead of booting again.
GUEST_BOOTING = "booting"
GUEST_READY = "ready"
GUEST_PRIVATE = "private"
GUEST_BROKEN = "broken"


@dataclass(frozen=True)
class GuestWish:
    """The guest a claim's test needs: its split and build (the build's label)."""

    split: str
    build: str


@dataclass(frozen=True)
class GuestRecord:
    """A guest on a host, as every process sees it (table ``guests``)."""

    host: str
    name: str               # the domain's name: unique on its host
    split: str
    build: str
    state: str              # GUEST_*
    domid: int | None
    run_id: str             # the run that booted it
    by: str                 # Holder.describe() of the booter
    created_at: float
    last_used: float
    reason: str = ""        # why it is broken
    detail: dict = field(default_factory=dict)   # e.g. its companions' state (the probe's files)


@dataclass(frozen=True)
class Waiter:
    """A claim waiting in the queue (its ticket orders it)."""

    ticket: int
    holder: Holder
    candidates: tuple[str, ...]
    enqueued_at: float
    expires_at: float


# --- failures -------------------------------------------------------------

class LeaseLost(InfrastructureError):
    """The lease expired and someone else took the host (a stalled heartbeat),
    or it was force-released."""

    help = ("The host's lease was lost (heartbeat stalled past the TTL, or someone ran "
            "`xenhil release --force`): results on that host after the loss are void; rerun, "
            "and raise --lease-ttl if the machine running the tests is overloaded.")


class LeaseStoreError(InfrastructureError):
    help = ("The lease store did not answer: check that the file system holding the SQLite "
            "file is local and writable (or that PostgreSQL is up), then rerun.")


class HostsQuarantined(InfrastructureError):
    """Every host that could serve a claim is quarantined: the claim fails at
    once instead of waiting for hosts that will not come back by themselves."""

    help = ("run `xenhil lab health HOST` (a passing health check returns the host), or, once "
            "you repaired it by hand, `xenhil lab unquarantine HOST --reason TEXT` (logged); "
            "`xenhil lab status` shows why and since when each host is quarantined")


class NotLeaseHolder(ConfigError):
    help = ("Only the holder (same user on the same machine) may release a lease; ask them, "
            "wait for it to expire, or use `xenhil release HOST --force` (the forced release is logged).")


# --- storage interface ----------------------------------------------------

class LeaseStore(ABC):
    """Atomic lease operations.  Implementations must make each method one
    transaction, serialised against every other process using the store."""

    url: str

    @abstractmethod
    def try_claim(self, holder: Holder, candidates: Sequence[str], ttl: float,
                  ticket: int | None, waiter_ttl: float,
                  allow_quarantined: bool = False,
                  prefer: GuestWish | None = None) -> tuple[Lease | None, int | None]:
        """One attempt to take the first free host of ``candidates`` that no
        older waiter could use and that is not quarantined (unless
        ``allow_quarantined``); with ``prefer``, a free host running that
        guest ready comes first, then one running its build.  Returns ``(lease, None)`` on success, else
        ``(None, ticket)``: the caller's ticket, created on the first failed
        attempt and refreshed (kept alive for ``waiter_ttl``) by every attempt."""

    @abstractmethod
    def queue_position(self, candidates: Sequence[str], ticket: int | None,
                       allow_quarantined: bool = False) -> "QueuePosition":
        """Read-only and cheap (waiters poll it and take the write lock only
        when it says ``free``): whether :meth:`try_claim` would succeed now,
        and how many older waiters want one of ``candidates``."""

    @abstractmethod
    def withdraw(self, ticket: int) -> None:
        """Leave the queue (timeout, interrupt)."""

    @abstractmethod
    def renew(self, lease: Lease, ttl: float) -> Lease:
        """Extend the lease to now + ttl.  Raises :class:`LeaseLost` when the
        host is no longer this lease's."""

    @abstractmethod
    def release(self, lease_id: str, host: str, by: Holder, forced: bool = False) -> bool:
        """End the lease; False when it was no longer held (expired or taken)."""

    @abstractmethod
    def leases(self) -> dict[str, Lease]:
        """The current lease row of every host that has one (expired ones included)."""

    @abstractmethod
    def waiters(self) -> list[Waiter]:
        """Live waiters, oldest first."""

    @abstractmethod
    def grants(self, host: str | None = None) -> list[Grant]:
        """The grants log, oldest first."""

    @abstractmethod
    def now(self) -> float:
        """The store's clock (seconds since the epoch)."""

    # --- quarantine ---------------------------------------------------------
    @abstractmethod
    def quarantined(self) -> dict[str, Quarantine]:
        """Every quarantined host."""

    @abstractmethod
    def quarantine(self, host: str, reason: str, by: Holder, detail: dict | None = None) -> Quarantine:
        """Quarantine ``host`` (already quarantined: a new reason, the same
        ``since``); logged."""

    @abstractmethod
    def unquarantine(self, host: str, reason: str, by: Holder) -> Quarantine | None:
        """Return ``host`` to the pool; logged with ``reason``.  The row
        removed, None when it was not quarantined."""

    @abstractmethod
    def record_infrastructure_failure(self, host: str, reason: str, by: Holder, latched: bool,
                                      threshold: int = QUARANTINE_AFTER_INFRA_FAILURES
                                      ) -> Quarantine | None:
        """Count one infrastructure failure on ``host`` and quarantine it when
        ``latched`` (the run gave up on it) or when ``threshold`` failures
        were counted since it last passed a health check.  The quarantine
        row when the host is (now or already) quarantined."""

    @abstractmethod
    def record_health(self, host: str, passed: bool, summary: str, by: Holder,
                      detail: dict | None = None) -> Quarantine | None:
        """Log a health check: a pass returns the host (the row removed, or
        None); a failure quarantines it with ``summary`` (the row)."""

    @abstractmethod
    def host_events(self, host: str | None = None, limit: int | None = None) -> list[HostEvent]:
        """The host_events log, oldest first (the newest ``limit``)."""

    # --- guests (schema 3) ------------------------------------------------------
    @abstractmethod
    def guests(self, host: str | None = None) -> list[GuestRecord]:
        """The guests recorded on ``host`` (every host: None), least recently used first."""

    @abstractmethod
    def put_guest(self, record: GuestRecord) -> GuestRecord:
        """Record a guest (replacing a record of the same host and name);
        ``created_at`` and ``last_used`` are set to the store's clock."""

    @abstractmethod
    def update_guest(self, host: str, name: str, *, state: str | None = None,
                     domid: int | None = None, reason: str | None = None,
                     detail: dict | None = None) -> GuestRecord | None:
        """Change a guest's record and mark it used now; None when it is not recorded."""

    @abstractmethod
    def forget_guest(self, host: str, name: str) -> bool:
        """Drop a guest's record (its domain was destroyed); False when there was none."""

    @abstractmethod
    def host_builds(self) -> dict[str, str]:
        """host -> the label of the build it last ran."""

    @abstractmethod
    def record_build(self, host: str, build: str, by: Holder) -> list[GuestRecord]:
        """``host`` now runs ``build``: the records of its guests of another
        build are dropped (their domains ended with the host's reboot) and
        returned."""

    def close(self) -> None:
        """Close connections held by this process."""


class SQLLeaseStore(LeaseStore):
    """The lease logic in SQL both SQLite and PostgreSQL run.

    Subclasses provide the connection handling: :meth:`_write` (a transaction
    holding the store's single write lock, so attempts are serialised),
    :meth:`_read` (a consistent snapshot), :meth:`_now_in` and the DDL."""

    placeholder = "?"
    ticket_column_ddl = "ticket INTEGER PRIMARY KEY AUTOINCREMENT"
    event_column_ddl = "event INTEGER PRIMARY KEY AUTOINCREMENT"

    #: The version of the tables :meth:`_schema` makes.  A store carries the
    #: version it was last upgraded to (SQLite: ``PRAGMA user_version``;
    #: PostgreSQL: the ``xenhil_schema`` table); 0 is a store written before
    #: stores carried one (the same tables as version 1).  A store is
    #: upgraded in place when it is opened, in the write transaction that
    #: creates the tables, so concurrent openers upgrade it once.
    SCHEMA_VERSION = 3
    #: version -> statements that take a store of that version to the next.
    #: 0 -> 1: the version is recorded.  1 -> 2: the quarantine and
    #: host_events tables; 2 -> 3: the guests and host_builds tables; both
    #: made by :meth:`_schema` (IF NOT EXISTS), so no statement of their own.
    MIGRATIONS: dict[int, tuple[str, ...]] = {0: (), 1: (), 2: ()}
    #: The version the store had when this process opened it: a read-only
    #: store may be older (without the quarantine tables: nothing quarantined).
    schema_found = SCHEMA_VERSION

    def _schema(self) -> list[str]:
        holder_cols = ("holder_user TEXT NOT NULL, holder_machine TEXT NOT NULL, "
                       "holder_pid INTEGER NOT NULL, holder_worker TEXT NOT NULL, "
                       "holder_run TEXT NOT NULL")
        real = "DOUBLE PRECISION"
        return [
            # The current lease of each host; a row whose expires_at has passed is free.
            f"CREATE TABLE IF NOT EXISTS leases (host TEXT PRIMARY KEY, lease_id TEXT NOT NULL, "
            f"{holder_cols}, acquired_at {real} NOT NULL, expires_at {real} NOT NULL)",
            # Every grant ever made, kept after release: the audit log.
            f"CREATE TABLE IF NOT EXISTS grants (lease_id TEXT PRIMARY KEY, host TEXT NOT NULL, "
            f"{holder_cols}, granted_at {real} NOT NULL, released_at {real}, expired_at {real}, "
            f"released_by TEXT, forced INTEGER NOT NULL DEFAULT 0)",
            "CREATE INDEX IF NOT EXISTS grants_by_host ON grants (host, granted_at)",
            # The FIFO queue of waiting claims.
            f"CREATE TABLE IF NOT EXISTS waiters ({self.ticket_column_ddl}, {holder_cols}, "
            f"candidates TEXT NOT NULL, enqueued_at {real} NOT NULL, expires_at {real} NOT NULL)",
            # Schema 2: quarantined hosts (claims skip them), and the log of
            # quarantines, releases, health checks and infrastructure failures.
            f"CREATE TABLE IF NOT EXISTS quarantine (host TEXT PRIMARY KEY, reason TEXT NOT NULL, "
            f"since {real} NOT NULL, by_who TEXT NOT NULL, run_id TEXT NOT NULL, "
            f"infra_failures INTEGER NOT NULL DEFAULT 0, updated_at {real} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS host_events ({self.event_column_ddl}, host TEXT NOT NULL, "
            f"at {real} NOT NULL, kind TEXT NOT NULL, by_who TEXT NOT NULL, run_id TEXT NOT NULL, "
            f"reason TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{{}}')",
            "CREATE INDEX IF NOT EXISTS host_events_by_host ON host_events (host, event)",
            # Schema 3: guests belong to their host, whoever booted them.
            f"CREATE TABLE IF NOT EXISTS guests (host TEXT NOT NULL, name TEXT NOT NULL, "
            f"split TEXT NOT NULL, build TEXT NOT NULL, state TEXT NOT NULL, domid INTEGER, "
            f"run_id TEXT NOT NULL, by_who TEXT NOT NULL, created_at {real} NOT NULL, "
            f"last_used {real} NOT NULL, reason TEXT NOT NULL DEFAULT '', "
            f"detail TEXT NOT NULL DEFAULT '{{}}', PRIMARY KEY (host, name))",
            f"CREATE TABLE IF NOT EXISTS host_builds (host TEXT PRIMARY KEY, build TEXT NOT NULL, "
            f"at {real} NOT NULL, by_who TEXT NOT NULL)",
        ]

    def _upgrade(self, cur: Any) -> None:
        """Inside a write transaction: create or upgrade the tables to
        :data:`SCHEMA_VERSION`, keeping every row; a store written by a newer
        xenhil is refused, not changed."""
        found = self._schema_version(cur)
        self._check_schema_version(found)
        self.schema_found = self.SCHEMA_VERSION
        if found == self.SCHEMA_VERSION:
            return      # no DDL: a role that may change rows but not create tables can use it
        for statement in self._schema():
            cur.execute(statement)
        for version in range(found, self.SCHEMA_VERSION):
            for statement in self.MIGRATIONS[version]:
                cur.execute(statement)
        if found != self.SCHEMA_VERSION:
            self._set_schema_version(cur, self.SCHEMA_VERSION)
            if found:
                log.info("lease store %s upgraded from schema %d to %d", self.url, found,
                         self.SCHEMA_VERSION)

    def _check_schema_version(self, found: int) -> None:
        if found > self.SCHEMA_VERSION:
            raise ConfigError(
                f"lease store {self.url} has schema version {found}, newer than this xenhil "
                f"knows ({self.SCHEMA_VERSION})",
                help="upgrade xenhil (pip install -U xenhil) on this machine, or pass --lab-db "
                     "with a store of its own")

    @abstractmethod
    def _schema_version(self, cur: Any) -> int:
        """The store's schema version (0: none recorded)."""

    @abstractmethod
    def _set_schema_version(self, cur: Any, version: int) -> None:
        """Record the store's schema version (in the current transaction)."""

    # --- to provide ----------------------------------------------------------
    @abstractmethod
    def _connect(self) -> Any:
        """A new connection (autocommit; transactions are explicit)."""

    @abstractmethod
    def _write(self) -> contextlib.AbstractContextManager[Any]:
        """Context manager yielding a cursor inside an exclusive write transaction."""

    @abstractmethod
    def _read(self) -> contextlib.AbstractContextManager[Any]:
        """Context manager yielding a cursor inside a read transaction."""

    @abstractmethod
    def _now_in(self, cur: Any) -> float:
        """The store clock, read inside the current transaction."""

    # --- helpers ---------------------------------------------------------------
    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """This thread's connection (one per thread and process: connections
        must not be shared across threads, nor survive a fork)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.conn, local.pid, local.busy = None, os.getpid(), False
        if local.busy:
            # Re-entered on this thread (a SIGTERM handler releasing leases
            # while the interrupted code is inside a transaction): use a
            # separate connection, which waits for the lock like any other.
            conn = self._connect()
            try:
                yield conn
            finally:
                conn.close()
            return
        if local.conn is None:
            local.conn = self._connect()
        local.busy = True
        try:
            yield local.conn
        finally:
            local.busy = False

    def close(self) -> None:
        local = getattr(self, "_local", None)
        conn = getattr(local, "conn", None)
        if conn is not None and getattr(local, "pid", None) == os.getpid():
            local.conn = None
            conn.close()

    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _x(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        # Every text goes in scrubbed: a reason or a detail may quote a
        # failure that holds a lab secret, and the store outlives the run
        # (`xenhil lab status` shows it to everyone, other runners read it).
        # Parameters of reads are scrubbed alike, so they match what was written.
        cur.execute(self._q(sql), tuple(scrub_secrets(p) if isinstance(p, str) else p
                                        for p in params))
        return cur

    #: Every table of :meth:`_schema`, with the schema version that made it:
    #: what a secret scan reads (a store of an older schema lacks the newer ones).
    ROW_TABLES = {"leases": 1, "grants": 1, "waiters": 1, "quarantine": 2, "host_events": 2,
                  "guests": 3, "host_builds": 3}

    def text_values(self) -> Iterator[str]:
        """Every text value in the store (harness.dburl.text_values)."""
        from xenhil.harness.dburl import text_values
        found = max(self.schema_found, 1)     # 0: written before versions, as 1
        return text_values([t for t, v in self.ROW_TABLES.items() if v <= found], self._page)

    def _page(self, table: str, offset: int, size: int = 500) -> list[tuple]:
        with self._read() as cur:
            return self._x(cur, f"SELECT * FROM {table} ORDER BY 1 LIMIT ? OFFSET ?",
                           (size, offset)).fetchall()

    @staticmethod
    def _holder_params(h: Holder) -> tuple:
        return (h.user, h.machine, h.pid, h.worker, h.run_id)

    @staticmethod
    def _holder_from(row: Sequence[Any], at: int) -> Holder:
        return Holder(user=row[at], machine=row[at + 1], pid=int(row[at + 2]),
                      worker=row[at + 3], run_id=row[at + 4])

    _HOLDER = "holder_user, holder_machine, holder_pid, holder_worker, holder_run"

    def _by_affinity(self, cur: Any, candidates: Sequence[str], prefer: GuestWish | None
                     ) -> Sequence[str]:
        """``candidates`` reordered for a claim that needs ``prefer``'s guest:
        hosts running it ready first, then hosts running its build, then
        the rest (inventory order within each)."""
        if prefer is None:
            return candidates
        with_guest = {row[0] for row in self._x(
            cur, "SELECT host FROM guests WHERE split = ? AND build = ? AND state = ?",
            (prefer.split, prefer.build, GUEST_READY)).fetchall()}
        with_build = {row[0] for row in self._x(
            cur, "SELECT host FROM host_builds WHERE build = ?", (prefer.build,)).fetchall()}
        return sorted(candidates, key=lambda h: (h not in with_guest, h not in with_build))

    def _pick(self, cur: Any, candidates: Sequence[str], ticket: int | None,
              now: float, allow_quarantined: bool = False
              ) -> tuple[str | None, tuple | None, int, tuple[str, ...]]:
        """The host this claim may take now, the expired lease row it
        replaces (if any), how many older waiters want one of the
        candidates, and which candidates are quarantined.  FIFO: hosts an
        older live waiter could use are off limits; so are quarantined hosts
        (unless ``allow_quarantined``: a health check's claim)."""
        quarantined = {row[0] for row in self._x(cur, "SELECT host FROM quarantine").fetchall()}
        held_back = tuple(h for h in candidates if h in quarantined)
        if ticket is None:
            rows = self._x(cur, "SELECT candidates FROM waiters WHERE expires_at >= ?", (now,))
        else:
            rows = self._x(cur, "SELECT candidates FROM waiters WHERE ticket < ? AND expires_at >= ?",
                           (ticket, now))
        wanted_by_older: set[str] = set()
        competitors = 0     # older waiters that want one of our candidates
        for (text,) in rows.fetchall():
            wanted = json.loads(text)
            wanted_by_older.update(wanted)
            competitors += bool(set(wanted).intersection(candidates))
        rows = self._x(cur, "SELECT host, lease_id, expires_at FROM leases").fetchall()
        current = {row[0]: row for row in rows}
        for host in candidates:
            if host in wanted_by_older or (host in quarantined and not allow_quarantined):
                continue
            row = current.get(host)
            if row is None or row[2] <= now:
                return host, row, competitors, held_back
        return None, None, competitors, held_back

    # --- LeaseStore ------------------------------------------------------------
    def try_claim(self, holder, candidates, ttl, ticket, waiter_ttl, allow_quarantined=False,
                  prefer=None):
        with self._write() as cur:
            now = self._now_in(cur)
            self._x(cur, "DELETE FROM waiters WHERE expires_at < ?", (now,))
            if ticket is not None:
                if self._x(cur, "UPDATE waiters SET expires_at = ? WHERE ticket = ?",
                           (now + waiter_ttl, ticket)).rowcount == 0:
                    # Our ticket expired (this process stalled longer than
                    # waiter_ttl): queue again, at the back.
                    log.warning("waiter ticket %s of %s expired; queueing again", ticket, holder)
                    ticket = None
            host, old, _, _ = self._pick(cur, self._by_affinity(cur, candidates, prefer), ticket,
                                         now, allow_quarantined)
            if host is None:
                if ticket is None:
                    ticket = self._x(
                        cur, f"INSERT INTO waiters ({self._HOLDER}, candidates, enqueued_at, expires_at) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING ticket",
                        (*self._holder_params(holder), json.dumps(list(candidates)), now,
                         now + waiter_ttl)).fetchone()[0]
                return None, int(ticket)
            if old is not None:
                # The previous holder stopped renewing: its grant ended at its expiry.
                self._x(cur, "UPDATE grants SET expired_at = ? WHERE lease_id = ? "
                             "AND released_at IS NULL AND expired_at IS NULL", (old[2], old[1]))
                self._x(cur, "DELETE FROM leases WHERE host = ?", (host,))
            lease = Lease(id=secrets.token_hex(8), host=host, holder=holder,
                          acquired_at=now, expires_at=now + ttl)
            self._x(cur, f"INSERT INTO leases (host, lease_id, {self._HOLDER}, acquired_at, expires_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (host, lease.id, *self._holder_params(holder), now, lease.expires_at))
            self._x(cur, f"INSERT INTO grants (lease_id, host, {self._HOLDER}, granted_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (lease.id, host, *self._holder_params(holder), now))
            if ticket is not None:
                self._x(cur, "DELETE FROM waiters WHERE ticket = ?", (ticket,))
            return lease, None

    def queue_position(self, candidates, ticket, allow_quarantined=False):
        with self._read() as cur:
            host, _, ahead, quarantined = self._pick(cur, candidates, ticket, self._now_in(cur),
                                                     allow_quarantined)
        return QueuePosition(free=host is not None, ahead=ahead, quarantined=quarantined)

    def withdraw(self, ticket):
        with self._write() as cur:
            self._x(cur, "DELETE FROM waiters WHERE ticket = ?", (ticket,))

    def renew(self, lease, ttl):
        with self._write() as cur:
            now = self._now_in(cur)
            # Matching on lease_id alone also revives a lease that expired but
            # that nobody took: the host was never anyone else's meanwhile.
            updated = self._x(cur, "UPDATE leases SET expires_at = ? WHERE host = ? AND lease_id = ?",
                              (now + ttl, lease.host, lease.id)).rowcount
            if updated == 1:
                return replace(lease, expires_at=now + ttl)
            row = self._x(cur, f"SELECT lease_id, {self._HOLDER}, expires_at FROM leases WHERE host = ?",
                          (lease.host,)).fetchone()
        if row is None:
            now_holder = "nobody holds it now (it was released)"
        else:
            now_holder = f"it is now held by {self._holder_from(row, 1)} (lease {row[0]})"
        raise LeaseLost(f"lease {lease.id} on {lease.host} held by {lease.holder} was lost "
                        f"(it expired at {format_time(lease.expires_at)} or was force-released); "
                        f"{now_holder}")

    def release(self, lease_id, host, by, forced=False):
        with self._write() as cur:
            now = self._now_in(cur)
            row = self._x(cur, "SELECT expires_at FROM leases WHERE host = ? AND lease_id = ?",
                          (host, lease_id)).fetchone()
            if row is None:
                return False
            self._x(cur, "DELETE FROM leases WHERE host = ?", (host,))
            if row[0] <= now:
                # Expired before this release: the grant ended at its expiry.
                self._x(cur, "UPDATE grants SET expired_at = ? WHERE lease_id = ? AND released_at IS NULL",
                        (row[0], lease_id))
                return False
            self._x(cur, "UPDATE grants SET released_at = ?, released_by = ?, forced = ? "
                         "WHERE lease_id = ?", (now, by.describe(), 1 if forced else 0, lease_id))
            return True

    def leases(self):
        with self._read() as cur:
            rows = self._x(cur, f"SELECT host, lease_id, {self._HOLDER}, acquired_at, expires_at "
                                "FROM leases").fetchall()
        return {r[0]: Lease(id=r[1], host=r[0], holder=self._holder_from(r, 2),
                            acquired_at=r[7], expires_at=r[8]) for r in rows}

    def waiters(self):
        with self._read() as cur:
            now = self._now_in(cur)
            rows = self._x(cur, f"SELECT ticket, {self._HOLDER}, candidates, enqueued_at, expires_at "
                                "FROM waiters WHERE expires_at >= ? ORDER BY ticket", (now,)).fetchall()
        return [Waiter(ticket=int(r[0]), holder=self._holder_from(r, 1),
                       candidates=tuple(json.loads(r[6])), enqueued_at=r[7], expires_at=r[8])
                for r in rows]

    def grants(self, host=None):
        sql = (f"SELECT lease_id, host, {self._HOLDER}, granted_at, released_at, expired_at, "
               "released_by, forced FROM grants")
        params: tuple = ()
        if host is not None:
            sql += " WHERE host = ?"
            params = (host,)
        with self._read() as cur:
            rows = self._x(cur, sql + " ORDER BY granted_at, lease_id", params).fetchall()
        return [Grant(lease_id=r[0], host=r[1], holder=self._holder_from(r, 2), granted_at=r[7],
                      released_at=r[8], expired_at=r[9], released_by=r[10], forced=bool(r[11]))
                for r in rows]

    def now(self):
        with self._read() as cur:
            return self._now_in(cur)

    # --- quarantine (schema 2) ----------------------------------------------------
    _QUARANTINE = "host, reason, since, by_who, run_id, infra_failures, updated_at"

    @staticmethod
    def _quarantine_from(row: Sequence[Any]) -> Quarantine:
        return Quarantine(host=row[0], reason=row[1], since=row[2], by=row[3], run_id=row[4],
                          infra_failures=int(row[5]), updated_at=row[6])

    def _event(self, cur: Any, now: float, host: str, kind: str, by: Holder, reason: str,
               detail: dict | None = None) -> None:
        self._x(cur, "INSERT INTO host_events (host, at, kind, by_who, run_id, reason, detail) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (host, now, kind, by.describe(), by.run_id, reason,
                 json.dumps(detail or {}, sort_keys=True, default=str)))

    def _quarantine_row(self, cur: Any, host: str) -> Quarantine | None:
        row = self._x(cur, f"SELECT {self._QUARANTINE} FROM quarantine WHERE host = ?",
                      (host,)).fetchone()
        return self._quarantine_from(row) if row else None

    def _failures_counted(self, cur: Any, host: str) -> int:
        """Infrastructure failures on ``host`` since it last passed a health
        check or was released."""
        marks = ", ".join("?" * len(_CLEARING_EVENTS))
        return int(self._x(
            cur, "SELECT count(*) FROM host_events WHERE host = ? AND kind = ? AND event > "
                 f"COALESCE((SELECT max(event) FROM host_events WHERE host = ? AND kind IN ({marks})), 0)",
            (host, EVENT_INFRA_FAILURE, host, *_CLEARING_EVENTS)).fetchone()[0])

    def _quarantine_in(self, cur: Any, now: float, host: str, reason: str, by: Holder,
                       detail: dict | None) -> Quarantine:
        failures = self._failures_counted(cur, host)
        old = self._quarantine_row(cur, host)
        if old is None:
            self._x(cur, f"INSERT INTO quarantine ({self._QUARANTINE}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (host, reason, now, by.describe(), by.run_id, failures, now))
        else:
            self._x(cur, "UPDATE quarantine SET reason = ?, by_who = ?, run_id = ?, "
                         "infra_failures = ?, updated_at = ? WHERE host = ?",
                    (reason, by.describe(), by.run_id, failures, now, host))
        self._event(cur, now, host, EVENT_QUARANTINED, by, reason, detail)
        return self._quarantine_row(cur, host)  # type: ignore[return-value]

    def quarantined(self):
        if self.schema_found < 2:
            return {}       # a read-only store of an older xenhil: it has no quarantine
        with self._read() as cur:
            rows = self._x(cur, f"SELECT {self._QUARANTINE} FROM quarantine ORDER BY host").fetchall()
        return {row[0]: self._quarantine_from(row) for row in rows}

    def quarantine(self, host, reason, by, detail=None):
        with self._write() as cur:
            quarantine = self._quarantine_in(cur, self._now_in(cur), host, reason, by, detail)
        log.warning("quarantined %s (by %s): %s", host, by, reason)
        return quarantine

    def unquarantine(self, host, reason, by):
        with self._write() as cur:
            now = self._now_in(cur)
            old = self._quarantine_row(cur, host)
            if old is None:
                return None
            self._x(cur, "DELETE FROM quarantine WHERE host = ?", (host,))
            self._event(cur, now, host, EVENT_RELEASED, by, reason,
                        {"quarantined_since": old.since, "quarantine_reason": old.reason})
        log.warning("released %s from quarantine (by %s): %s", host, by, reason)
        return old

    def record_infrastructure_failure(self, host, reason, by, latched,
                                      threshold=QUARANTINE_AFTER_INFRA_FAILURES):
        with self._write() as cur:
            now = self._now_in(cur)
            self._event(cur, now, host, EVENT_INFRA_FAILURE, by, reason, {"latched": bool(latched)})
            count = self._failures_counted(cur, host)
            old = self._quarantine_row(cur, host)
            if old is not None:
                self._x(cur, "UPDATE quarantine SET infra_failures = ? WHERE host = ?", (count, host))
                return self._quarantine_row(cur, host)
            if not latched and count < threshold:
                return None
            why = ("latched broken" if latched else
                   f"{count} infrastructure failures since its last passing health check")
            quarantine = self._quarantine_in(cur, now, host, f"{why} in run {by.run_id}: {reason}",
                                             by, {"infra_failures": count})
        log.warning("quarantined %s (by %s): %s", host, by, quarantine.reason)
        return quarantine

    def record_health(self, host, passed, summary, by, detail=None):
        with self._write() as cur:
            now = self._now_in(cur)
            self._event(cur, now, host, EVENT_HEALTH_PASSED if passed else EVENT_HEALTH_FAILED,
                        by, summary, detail)
            if not passed:
                return self._quarantine_in(cur, now, host, f"health check failed: {summary}", by,
                                           None)
            old = self._quarantine_row(cur, host)
            if old is not None:
                self._x(cur, "DELETE FROM quarantine WHERE host = ?", (host,))
                self._event(cur, now, host, EVENT_RELEASED, by, "health check passed",
                            {"quarantined_since": old.since, "quarantine_reason": old.reason})
        if old is not None:
            log.warning("released %s from quarantine: its health check passed", host)
        return old

    def host_events(self, host=None, limit=None):
        if self.schema_found < 2:
            return []
        sql = "SELECT event, host, at, kind, by_who, run_id, reason, detail FROM host_events"
        params: tuple = ()
        if host is not None:
            sql += " WHERE host = ?"
            params = (host,)
        sql += " ORDER BY event DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._read() as cur:
            rows = self._x(cur, sql, params).fetchall()
        return [HostEvent(id=int(r[0]), host=r[1], at=r[2], kind=r[3], by=r[4], run_id=r[5],
                          reason=r[6], detail=json.loads(r[7] or "{}")) for r in reversed(rows)]

    # --- guests (schema 3) ------------------------------------------------------
    _GUEST = ("host, name, split, build, state, domid, run_id, by_who, created_at, last_used, "
              "reason, detail")

    @staticmethod
    def _guest_from(row: Sequence[Any]) -> GuestRecord:
        return GuestRecord(host=row[0], name=row[1], split=row[2], build=row[3], state=row[4],
                           domid=None if row[5] is None else int(row[5]), run_id=row[6],
                           by=row[7], created_at=row[8], last_used=row[9], reason=row[10],
                           detail=json.loads(row[11] or "{}"))

    def _guest_row(self, cur: Any, host: str, name: str) -> GuestRecord | None:
        row = self._x(cur, f"SELECT {self._GUEST} FROM guests WHERE host = ? AND name = ?",
                      (host, name)).fetchone()
        return self._guest_from(row) if row else None

    def guests(self, host=None):
        if self.schema_found < 3:
            return []       # a read-only store of an older xenhil: it records no guests
        sql = f"SELECT {self._GUEST} FROM guests"
        params: tuple = ()
        if host is not None:
            sql += " WHERE host = ?"
            params = (host,)
        with self._read() as cur:
            rows = self._x(cur, sql + " ORDER BY last_used, host, name", params).fetchall()
        return [self._guest_from(r) for r in rows]

    def put_guest(self, record):
        with self._write() as cur:
            now = self._now_in(cur)
            self._x(cur, "DELETE FROM guests WHERE host = ? AND name = ?", (record.host, record.name))
            self._x(cur, f"INSERT INTO guests ({self._GUEST}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.host, record.name, record.split, record.build, record.state,
                     record.domid, record.run_id, record.by, now, now, record.reason,
                     json.dumps(record.detail, sort_keys=True, default=str)))
            return self._guest_row(cur, record.host, record.name)

    def update_guest(self, host, name, *, state=None, domid=None, reason=None, detail=None):
        changes = {"state": state, "domid": domid, "reason": reason,
                   "detail": None if detail is None else json.dumps(detail, sort_keys=True,
                                                                    default=str)}
        changes = {column: value for column, value in changes.items() if value is not None}
        with self._write() as cur:
            changes["last_used"] = self._now_in(cur)
            sets = ", ".join(f"{column} = ?" for column in changes)
            self._x(cur, f"UPDATE guests SET {sets} WHERE host = ? AND name = ?",
                    (*changes.values(), host, name))
            return self._guest_row(cur, host, name)

    def forget_guest(self, host, name):
        with self._write() as cur:
            return self._x(cur, "DELETE FROM guests WHERE host = ? AND name = ?",
                           (host, name)).rowcount > 0

    def host_builds(self):
        if self.schema_found < 3:
            return {}
        with self._read() as cur:
            return dict(self._x(cur, "SELECT host, build FROM host_builds").fetchall())

    def record_build(self, host, build, by):
        with self._write() as cur:
            now = self._now_in(cur)
            gone = [self._guest_from(r) for r in self._x(
                cur, f"SELECT {self._GUEST} FROM guests WHERE host = ? AND build <> ?",
                (host, build)).fetchall()]
            self._x(cur, "DELETE FROM guests WHERE host = ? AND build <> ?", (host, build))
            self._x(cur, "DELETE FROM host_builds WHERE host = ?", (host,))
            self._x(cur, "INSERT INTO host_builds (host, build, at, by_who) VALUES (?, ?, ?, ?)",
                    (host, build, now, by.describe()))
        return gone


# --- store URLs -----------------------------------------------------------

def default_store_url(inventory_path: str | Path) -> str:
    """The SQLite store next to the inventory: lab/NAME.yaml -> lab/.NAME.leases.sqlite."""
    path = Path(inventory_path).absolute()
    return f"sqlite://{path.parent / ('.' + path.stem + '.leases.sqlite')}"


def resolve_store_url(explicit: str | None, inventory: Inventory) -> str:
    """--lab-db wins, then the inventory's lease_db (a relative SQLite path is
    taken relative to the inventory file), then the default next to it."""
    if explicit:
        return explicit
    if inventory.lease_db:
        url = inventory.lease_db
        if "://" not in url and not Path(url).is_absolute():
            url = str(Path(inventory.path).absolute().parent / url)
        return url
    return default_store_url(inventory.path)


def open_store(url: str | Path) -> LeaseStore:
    """``sqlite:///abs/path``, a plain file path, or ``postgresql://...``."""
    from xenhil.harness.dburl import is_postgres, sqlite_path
    if is_postgres(str(url)):
        from xenhil.harness.lab.lease_postgres import PostgresLeaseStore
        return PostgresLeaseStore(str(url))
    from xenhil.harness.lab.lease_sqlite import SQLiteLeaseStore
    return SQLiteLeaseStore(sqlite_path(url, "lease store"))


# --- formatting -----------------------------------------------------------

def format_time(t: float, now: float | None = None) -> str:
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    delta = t - now
    if delta >= 0:
        return f"{stamp} (in {format_duration(delta)})"
    return f"{stamp} ({format_duration(-delta)} ago)"


def format_duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def describe_host(spec: HostSpec) -> str:
    tags = ",".join(sorted(spec.tags)) or "-"
    caps = ",".join(f"{k}={v}" for k, v in sorted(spec.capabilities.items())) or "-"
    return f"{spec.name} (tags: {tags}; capabilities: {caps})"


def describe_request(tags: Sequence[str], capabilities: dict | None, host: str | None) -> str:
    parts = []
    if host:
        parts.append(f"host={host}")
    if tags:
        parts.append("tags=" + ",".join(sorted(tags)))
    if capabilities:
        parts.append("capabilities=" + ",".join(f"{k}={v}" for k, v in sorted(capabilities.items())))
    return " ".join(parts) or "any host"


# --- the pool -------------------------------------------------------------

def _require_reason(reason: str) -> None:
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError("a reason is required: it is logged with your name",
                          help="pass --reason TEXT, e.g. --reason 'replaced the BMC cable'")


def _finite_positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# Leases held by this process, for release on exit: lease id -> (pool, lease).
_HELD: dict[str, tuple["Pool", Lease]] = {}


class Pool:
    """The hosts of one inventory, leased through one store."""

    def __init__(self, store: LeaseStore, inventory: Inventory, ttl: float = DEFAULT_TTL, *,
                 waiter_ttl: float = DEFAULT_WAITER_TTL,
                 poll_interval: float = DEFAULT_POLL_INTERVAL):
        if not _finite_positive(ttl):
            raise ConfigError(f"lease TTL must be a finite number of seconds above 0, got {ttl}",
                              help="pass --lease-ttl SECONDS > 0")
        self.store = store
        self.inventory = inventory
        self.ttl = float(ttl)
        self.waiter_ttl = float(waiter_ttl)
        self.poll_interval = float(poll_interval)
        self._heartbeats: dict[str, "Heartbeat"] = {}

    # --- matching -------------------------------------------------------------
    def candidates(self, tags: Sequence[str] = (), capabilities: dict | None = None,
                   host: str | None = None) -> list[str]:
        """Names of the hosts that match, in inventory order.  ConfigError when
        none could ever match (waiting would be pointless)."""
        wanted = frozenset(tags)
        if host is not None:
            spec = self.inventory.host(host)   # ConfigError for an unknown name
            if not spec.matches(wanted, capabilities):
                raise ConfigError(
                    f"{self.inventory.path}: host {host} does not match "
                    f"{describe_request(tags, capabilities, None)}; it has {describe_host(spec)}",
                    help="drop --host, or ask for tags/capabilities that host has")
            return [host]
        names = [name for name, spec in self.inventory.hosts.items() if spec.matches(wanted, capabilities)]
        if not names:
            known = "; ".join(describe_host(s) for s in self.inventory.hosts.values()) or "no hosts"
            raise ConfigError(
                f"{self.inventory.path}: no host matches {describe_request(tags, capabilities, None)}; "
                f"the inventory has: {known}",
                help="ask for tags/capabilities some host has, or add such a host to the inventory")
        return names

    # --- claiming -------------------------------------------------------------
    @step("claim a host for {holder} ({tags} {capabilities} {host})")
    def claim(self, holder: Holder, tags: Sequence[str] = (), capabilities: dict | None = None,
              timeout: float = 600.0, host: str | None = None, ttl: float | None = None,
              allow_quarantined: bool = False, prefer: GuestWish | None = None) -> Lease:
        """Lease a free matching host, waiting (in FIFO order) up to ``timeout`` s.
        Quarantined hosts are skipped; when every matching host is
        quarantined, :class:`HostsQuarantined` at once (also while waiting,
        as soon as the last one is).  ``allow_quarantined``: take one anyway
        (a health check, a person repairing it).  ``prefer``: the guest the
        claim's test needs; among the free hosts it may take, one running it
        comes first, then one running its build (never a reason to wait)."""
        candidates = self.candidates(tags, capabilities, host)
        ttl = self.ttl if ttl is None else float(ttl)
        # inf or nan must never reach the store (a lease that never expires,
        # a deadline no clock reaches).
        if not _finite_positive(ttl):
            raise ConfigError(f"lease TTL must be a finite number of seconds above 0, got {ttl}",
                              help="pass a TTL in seconds, e.g. 120")
        if not (math.isfinite(timeout) and timeout >= 0):
            raise ConfigError(f"reservation timeout must be a finite number of seconds, got {timeout}",
                              help="pass a timeout in seconds, e.g. 600 (0: do not wait)")
        if not allow_quarantined:
            quarantined = self.store.quarantined()
            if all(name in quarantined for name in candidates):
                raise self._quarantined_error(candidates, tags, capabilities, host, quarantined)
        deadline = time.monotonic() + timeout
        ticket: int | None = None
        last_attempt = float("-inf")
        position = QueuePosition(free=False, ahead=0)
        try:
            while True:
                now = time.monotonic()
                # Take the write lock only when the read says it could work, or to
                # keep our ticket alive; the first attempt also creates the ticket.
                if ticket is not None and now - last_attempt < self.waiter_ttl / 4:
                    position = self.store.queue_position(candidates, ticket, allow_quarantined)
                    if not allow_quarantined and len(position.quarantined) == len(candidates):
                        # Quarantined while we waited: they will not come back by themselves.
                        raise self._quarantined_error(candidates, tags, capabilities, host,
                                                      self.store.quarantined())
                if ticket is None or position.free or now - last_attempt >= self.waiter_ttl / 4:
                    lease, ticket = self.store.try_claim(holder, candidates, ttl, ticket,
                                                         self.waiter_ttl, allow_quarantined,
                                                         prefer)
                    last_attempt = time.monotonic()
                    if lease is not None:
                        _HELD[lease.id] = (self, lease)
                        log.info("leased %s to %s until %s", lease.host, holder,
                                 format_time(lease.expires_at))
                        return lease
                if time.monotonic() >= deadline:
                    raise self._timeout_error(candidates, tags, capabilities, host, timeout, ticket)
                interval = self._poll_interval(position, len(candidates))
                time.sleep(min(interval * random.uniform(0.5, 1.5),
                               max(0.0, deadline - time.monotonic())))
        finally:
            if ticket is not None:
                with contextlib.suppress(Exception):
                    self.store.withdraw(ticket)

    def _poll_interval(self, position: QueuePosition, n_candidates: int) -> float:
        """Waiters whose turn may come with the next releases (fewer rivals
        ahead than hosts they could use) poll at a tenth of ``poll_interval``,
        so a released host is taken at once; the further back, the slower, up
        to ``poll_interval``.  A poll is a read: it never takes the write lock."""
        fast = self.poll_interval / 10
        rank = position.ahead - n_candidates + 1
        return min(self.poll_interval, fast * (1 + max(0, rank)))

    def _quarantined_error(self, candidates, tags, capabilities, host,
                           quarantined: dict[str, "Quarantine"]) -> HostsQuarantined:
        now = self.store.now()
        lines = []
        for name in candidates:
            q = quarantined.get(name)
            if q is None:        # released meanwhile: say so rather than invent a reason
                lines.append(f"  {name}: not quarantined any more (claim again)")
                continue
            lines.append(f"  {name}: quarantined since {format_time(q.since, now)} by {q.by} "
                         f"({q.infra_failures} infrastructure failure"
                         f"{'' if q.infra_failures == 1 else 's'} counted): {q.reason}")
        names = " ".join(candidates)
        return HostsQuarantined(
            f"no host matching {describe_request(tags, capabilities, host)} can be claimed: "
            f"every matching host is quarantined:\n" + "\n".join(lines),
            help=(f"run `xenhil lab health {names}` (a passing health check returns a host), or "
                  f"once repaired by hand `xenhil lab unquarantine HOST --reason TEXT` (logged); "
                  f"`xenhil lab status` shows each quarantine"))

    def _timeout_error(self, candidates, tags, capabilities, host, timeout, ticket) -> ReservationTimeout:
        now = self.store.now()
        leases = self.store.leases()
        quarantined = self.store.quarantined()
        lines = []
        for name in candidates:
            lease = leases.get(name)
            if name in quarantined:
                lines.append(f"  {name}: quarantined since "
                             f"{format_time(quarantined[name].since, now)}: "
                             f"{quarantined[name].reason}")
            elif lease is None or lease.expired(now):
                lines.append(f"  {name}: free, but promised to an older waiter")
            else:
                lines.append(f"  {name}: held by {lease.holder} (lease {lease.id}), "
                             f"expires {format_time(lease.expires_at, now)}")
        ahead = [w for w in self.store.waiters()
                 if (ticket is None or w.ticket < ticket) and set(w.candidates) & set(candidates)]
        if ahead:
            lines.append("  waiting ahead of you: " + "; ".join(str(w.holder) for w in ahead))
        return ReservationTimeout(
            f"no host matching {describe_request(tags, capabilities, host)} became free within "
            f"{format_duration(timeout)}; the matching hosts:\n" + "\n".join(lines),
            help=("wait for those holders to finish, ask them to release (`xenhil release HOST`), "
                  "force-release a stale lease with `xenhil release HOST --force` (logged), "
                  "add hosts to the inventory, or wait longer (pytest --reserve-timeout, "
                  "xenhil reserve --timeout)"))

    # --- quarantine -------------------------------------------------------------
    def quarantine_host(self, host: str, reason: str, by: Holder) -> "Quarantine":
        """Take ``host`` out of the pool by hand (logged with ``reason``)."""
        self.inventory.host(host)      # ConfigError for an unknown name
        _require_reason(reason)
        return self.store.quarantine(host, reason.strip(), by)

    def unquarantine_host(self, host: str, reason: str, by: Holder) -> "Quarantine | None":
        """Return ``host`` to the pool by hand, without a health check (logged
        with who, when and ``reason``).  None when it was not quarantined."""
        self.inventory.host(host)
        _require_reason(reason)
        return self.store.unquarantine(host, reason.strip(), by)

    def record_infrastructure_failure(self, host: str, reason: str, by: Holder,
                                      latched: bool) -> "Quarantine | None":
        """An infrastructure failure on ``host`` (see
        :data:`QUARANTINE_AFTER_INFRA_FAILURES`); the quarantine, if any."""
        return self.store.record_infrastructure_failure(host, reason, by, latched)

    @contextlib.contextmanager
    def lease(self, holder: Holder, tags: Sequence[str] = (), capabilities: dict | None = None,
              timeout: float = 600.0, host: str | None = None,
              heartbeat: bool = True, allow_quarantined: bool = False) -> Iterator[Lease]:
        """Hold a host for the block, renewed by a heartbeat, released on any exit
        (normal, exception, KeyboardInterrupt)."""
        lease = self.claim(holder, tags=tags, capabilities=capabilities, timeout=timeout, host=host,
                           allow_quarantined=allow_quarantined)
        try:
            if heartbeat:
                Heartbeat(self, lease).start()
            yield lease
        finally:
            self.release(lease)

    # --- keeping and ending ---------------------------------------------------
    def renew(self, lease: Lease) -> Lease:
        renewed = self.store.renew(lease, self.ttl)
        if lease.id in _HELD:
            _HELD[lease.id] = (self, renewed)
        return renewed

    def check(self, lease: Lease) -> None:
        """Raise :class:`LeaseLost` if the lease's heartbeat found it lost."""
        beat = self._heartbeats.get(lease.id)
        if beat is not None:
            beat.check()

    @step("release {lease.host}")
    def release(self, lease: Lease) -> bool:
        """Release our own lease (stopping its heartbeat first).  False, and a
        warning, when it had already been lost."""
        beat = self._heartbeats.pop(lease.id, None)
        if beat is not None:
            beat.stop()
        _HELD.pop(lease.id, None)
        released = self.store.release(lease.id, lease.host, by=lease.holder)
        if not released:
            log.warning("lease %s on %s was no longer held when released", lease.id, lease.host)
        return released

    @step("release host {host} (force={force})")
    def release_host(self, host: str, by: Holder, force: bool = False) -> Lease | None:
        """Release whatever lease ``host`` has, on behalf of ``by``.  Only the
        holder (same user@machine) may, unless ``force``; a forced release of
        someone else's lease is logged (grants log and warning) with who forced
        it.  Returns the lease released, None if the host was not leased."""
        self.inventory.host(host)  # ConfigError for an unknown name
        lease = self.store.leases().get(host)
        if lease is None or lease.expired(self.store.now()):
            return None
        overriding = not lease.holder.same_person(by)
        if overriding and not force:
            raise NotLeaseHolder(
                f"{host} is leased to {lease.holder} (lease {lease.id}, expires "
                f"{format_time(lease.expires_at)}); you are {by.person}")
        if overriding:
            log.warning("FORCED release of %s: lease %s of %s released by %s",
                        host, lease.id, lease.holder, by)
        if not self.store.release(lease.id, host, by=by, forced=overriding):
            return None
        return lease

    def status(self, include_expired: bool = False) -> list[tuple[HostSpec, Lease | None]]:
        """Every inventory host with its current lease (None: free).  Expired
        leases count as free unless ``include_expired``."""
        now = self.store.now()
        leases = self.store.leases()
        rows = []
        for name, spec in self.inventory.hosts.items():
            lease = leases.get(name)
            if lease is not None and lease.expired(now) and not include_expired:
                lease = None
            rows.append((spec, lease))
        return rows


class Heartbeat:
    """Renews one lease every ``interval`` seconds (default TTL/3) in a daemon
    thread, until :meth:`stop` or the lease's release.  When renewal finds the
    lease lost, it records the :class:`LeaseLost` (``lost``) and stops; the
    owner raises it with :meth:`check` (or :meth:`Pool.check`)."""

    def __init__(self, pool: Pool, lease: Lease, interval: float | None = None):
        self.pool = pool
        self.lease = lease
        self.interval = pool.ttl / 3 if interval is None else float(interval)
        self.lost: LeaseLost | None = None
        self.renewals = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"xenhil-heartbeat-{lease.host}")

    def start(self) -> "Heartbeat":
        self.pool._heartbeats[self.lease.id] = self
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """Still renewing: False as soon as the lease is found lost or the
        heartbeat is stopped, even while its thread is finishing (a caller
        that saw ``lost`` set must not see it alive; CI did, once)."""
        return self._thread.is_alive() and self.lost is None and not self._stopped.is_set()

    def _run(self) -> None:
        # A SIGTERM sent to the process must land on the main thread: Python
        # runs signal handlers only there, and a signal the kernel hands to
        # this thread leaves the main thread's blocking call (a sleep, a read)
        # unaware of it until that call returns, so release_all_on_exit would
        # release nothing for as long.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        while not self._stopped.wait(self.interval):
            try:
                self.lease = self.pool.renew(self.lease)
                self.renewals += 1
            except LeaseLost as exc:
                if not self._stopped.is_set():
                    self.lost = exc
                    log.error("%s", exc)
                return
            except Exception as exc:  # a busy store: retry next beat; expiry is the real limit
                log.warning("renewing lease %s on %s failed (will retry): %s",
                            self.lease.id, self.lease.host, exc)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- release on exit --------------------------------------------------------

def release_all_held() -> int:
    """Release every lease this process still holds; returns how many.  Never
    raises: it runs at exit and from signal handlers."""
    count = 0
    for lease_id, (pool, lease) in list(_HELD.items()):
        if lease.holder.pid != os.getpid():  # inherited through fork: the parent's
            continue
        try:
            pool.release(lease)
            count += 1
        except Exception:
            log.exception("releasing lease %s on %s at exit failed", lease_id, lease.host)
    return count


_exit_hooks_installed = False


def release_all_on_exit() -> None:
    """Release this process's leases at interpreter exit and on SIGTERM (then
    die of SIGTERM as before, or call the previous handler).  Ctrl-C unwinds
    through ``finally`` blocks and reaches the atexit hook.  SIGKILL cannot be
    caught: such a holder loses its hosts when their TTL passes.  Idempotent;
    the signal handler is installed only from the main thread.  Like any
    Python handler it runs when the main thread next executes bytecode, so a
    blocking call without a timeout delays it: the harness waits in bounded
    steps."""
    global _exit_hooks_installed
    if _exit_hooks_installed:
        return
    _exit_hooks_installed = True
    atexit.register(release_all_held)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        release_all_held()
        if callable(previous):
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
