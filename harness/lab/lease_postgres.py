"""The lease store in PostgreSQL, for a lab shared by several machines.

Same tables and SQL as the SQLite store (:class:`SQLLeaseStore`).  Each change
runs in a transaction that first takes one transaction-scoped advisory lock,
so changes are serialised exactly as SQLite's ``BEGIN IMMEDIATE`` serialises
them; reads take no lock.  Time is the server's clock
(``clock_timestamp()``), so holders on machines with skewed clocks still agree
on when a lease expires.

Needs psycopg 3 (``pip install 'xenhil[postgres]'``).  The URL may hold a
password; it is never shown (``url`` is redacted), but prefer a ~/.pgpass
file or PGPASSWORD.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from xenhil.harness.dburl import POSTGRES_LOCK_KEY
from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.leases import LeaseStoreError, SQLLeaseStore

# pg_advisory_xact_lock key of every xenhil store (they share xenhil_schema).
LOCK_KEY = POSTGRES_LOCK_KEY


def redact(url: str) -> str:
    """The URL without its password (user:PASSWORD@, to the last '@', and
    password=...): harness.secrets.redact_inline."""
    from xenhil.harness.secrets import redact_inline
    return redact_inline(url)


class PostgresLeaseStore(SQLLeaseStore):
    placeholder = "%s"
    ticket_column_ddl = "ticket BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    event_column_ddl = "event BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"

    def __init__(self, url: str, connect_timeout: float = 10.0):
        try:
            import psycopg
            import psycopg.errors  # noqa: F401
        except ImportError:
            raise ConfigError(f"lease store {redact(url)} needs psycopg 3, which is not installed",
                              help="pip install 'xenhil[postgres]' (psycopg[binary]), or use a "
                                   "sqlite:/// lease store") from None
        self._dsn = url
        self.url = redact(url)
        self.connect_timeout = connect_timeout
        self._local = threading.local()
        self.read_only = self._opened = False
        try:
            with self._write() as cur:   # the advisory lock also serialises creation and upgrades
                self._upgrade(cur)
                self.read_only = not self._may_change_rows(cur)
        except psycopg.errors.InsufficientPrivilege:
            self.read_only = True
        if self.read_only:
            # A role that may only read (a lab's viewers): `xenhil lab status`
            # still reads the store; taking a lease says why it cannot.
            self._check_read_only()
        self._opened = True

    #: What taking, renewing and releasing leases (and quarantining hosts)
    #: does to each table.
    NEEDED = {"leases": ("INSERT", "UPDATE", "DELETE"), "grants": ("INSERT", "UPDATE"),
              "waiters": ("INSERT", "UPDATE", "DELETE"),
              "quarantine": ("INSERT", "UPDATE", "DELETE"), "host_events": ("INSERT",),
              "guests": ("INSERT", "UPDATE", "DELETE"),
              "host_builds": ("INSERT", "UPDATE", "DELETE")}
    TABLES = "leases, grants, waiters, quarantine, host_events, guests, host_builds, xenhil_schema"

    def _may_change_rows(self, cur: Any) -> bool:
        checks = [(table, privilege) for table, privileges in self.NEEDED.items()
                  for privilege in privileges]
        cur.execute("SELECT " + ", ".join(["has_table_privilege(%s, %s)"] * len(checks)),
                    [x for check in checks for x in check])
        return all(cur.fetchone())

    def _check_read_only(self) -> None:
        import psycopg
        try:
            with self._read() as cur:
                found = self._schema_version(cur)
                cur.execute("SELECT count(*) FROM leases, grants, waiters WHERE false")
                if found >= 2:
                    cur.execute("SELECT count(*) FROM quarantine, host_events WHERE false")
                if found >= 3:
                    cur.execute("SELECT count(*) FROM guests, host_builds WHERE false")
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable) as exc:
            raise ConfigError(f"lease store {self.url}: this role can neither create the lease "
                              f"tables nor read them ({str(exc).splitlines()[0]})",
                              help=f"GRANT SELECT, INSERT, UPDATE, DELETE ON {self.TABLES} "
                                   "(or CREATE on the schema) to this role, or use another "
                                   "--lab-db") from None
        self._check_schema_version(found)
        self.schema_found = found

    def _read_only_error(self) -> ConfigError:
        return ConfigError(
            f"lease store {self.url} is read-only for this role: a lease cannot be taken, "
            f"renewed or released (`xenhil lab status` still reads it)",
            help=f"GRANT SELECT, INSERT, UPDATE, DELETE ON {self.TABLES} to this role, or use "
                 "a --lab-db URL with a role that may write")

    #: The schema version lives in a table of its own, one row per store kind.
    SCHEMA_TABLE = ("CREATE TABLE IF NOT EXISTS xenhil_schema "
                    "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)")

    def _schema_version(self, cur: Any) -> int:
        cur.execute("SELECT to_regclass('xenhil_schema') IS NOT NULL")
        if not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT version FROM xenhil_schema WHERE component = 'leases'")
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def _set_schema_version(self, cur: Any, version: int) -> None:
        cur.execute(self.SCHEMA_TABLE)
        cur.execute("INSERT INTO xenhil_schema (component, version) VALUES ('leases', %s) "
                    "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                    (int(version),))

    def _connect(self) -> Any:
        import psycopg
        try:
            return psycopg.connect(self._dsn, autocommit=True,
                                   connect_timeout=max(1, int(self.connect_timeout)))
        except psycopg.Error as exc:
            raise LeaseStoreError(f"cannot connect to lease store {self.url}: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
                                  ) from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        import psycopg
        if getattr(self, "read_only", False):
            raise self._read_only_error()
        with self._connection() as conn:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                    yield cur
            except psycopg.errors.InsufficientPrivilege:
                if not self._opened:
                    raise        # while opening: the role may still read it (__init__)
                raise self._read_only_error() from None
            except psycopg.OperationalError as exc:
                self.close()   # the connection may be dead; the next call reconnects
                raise LeaseStoreError(f"lease store {self.url}: {exc}") from None

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        import psycopg
        with self._connection() as conn:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    # One snapshot for the statements of the block.
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    yield cur
            except psycopg.OperationalError as exc:
                self.close()
                raise LeaseStoreError(f"lease store {self.url}: {exc}") from None

    def _now_in(self, cur: Any) -> float:
        cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
        return float(cur.fetchone()[0])

    def __repr__(self) -> str:
        return f"PostgresLeaseStore({self.url!r})"
