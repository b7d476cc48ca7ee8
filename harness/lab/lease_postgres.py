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

from harness.errors import ConfigError
from harness.lab.leases import LeaseStoreError, SQLLeaseStore

# pg_advisory_xact_lock key: "xenh" in ASCII, unlikely to collide with other users of the database.
LOCK_KEY = 0x78656E68


def redact(url: str) -> str:
    """The URL without its password (user:PASSWORD@, to the last '@', and
    password=...): harness.secrets.redact_inline."""
    from harness.secrets import redact_inline
    return redact_inline(url)


class PostgresLeaseStore(SQLLeaseStore):
    placeholder = "%s"
    ticket_column_ddl = "ticket BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"

    def __init__(self, url: str, connect_timeout: float = 10.0):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError(f"lease store {redact(url)} needs psycopg 3, which is not installed",
                              help="pip install 'xenhil[postgres]' (psycopg[binary]), or use a "
                                   "sqlite:/// lease store") from None
        self._dsn = url
        self.url = redact(url)
        self.connect_timeout = connect_timeout
        self._local = threading.local()
        with self._write() as cur:   # the advisory lock also serialises creation and upgrades
            self._upgrade(cur)

    #: The schema version lives in a table of its own, one row per store kind.
    SCHEMA_TABLE = ("CREATE TABLE IF NOT EXISTS xenhil_schema "
                    "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)")

    def _schema_version(self, cur: Any) -> int:
        cur.execute(self.SCHEMA_TABLE)
        cur.execute("SELECT version FROM xenhil_schema WHERE component = 'leases'")
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def _set_schema_version(self, cur: Any, version: int) -> None:
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
        with self._connection() as conn:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                    yield cur
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
