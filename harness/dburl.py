"""Store URLs shared by the lease store and the results store:
``sqlite:///ABSOLUTE/PATH`` (everything after ``sqlite://`` is the path),
a plain file path, or ``postgresql://...``; and what both stores do the
same way on PostgreSQL (connecting, the schema version table, the lock)."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from xenhil.harness.errors import ConfigError, InfrastructureError, XenhilError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

#: ``pg_advisory_xact_lock`` key ("xenh" in ASCII) every xenhil store takes
#: before it creates or upgrades tables in a PostgreSQL database (the lease
#: store also before each change).  One key for all of them, because they
#: share the ``xenhil_schema`` table: two ``CREATE TABLE IF NOT EXISTS`` of
#: it at once fail in PostgreSQL (a duplicate key in pg_type).
POSTGRES_LOCK_KEY = 0x78656E68

#: Where each store's schema version lives in PostgreSQL: one row per
#: component ("leases", "results").
POSTGRES_SCHEMA_TABLE = ("CREATE TABLE IF NOT EXISTS xenhil_schema "
                         "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)")


def is_postgres(url: str) -> bool:
    return str(url).startswith(POSTGRES_SCHEMES)


def sqlite_path(url: str | Path, what: str) -> Path:
    """The SQLite file a URL names; ConfigError naming ``what`` otherwise.
    A URL is only ever shown redacted (it may hold a password), and a libpq
    keyword DSN ("host=... password=...") is refused, not taken for a file
    name."""
    from xenhil.harness.options import KEYWORD_DSN, shown
    text = str(url)
    if text.startswith("sqlite://"):
        path = text[len("sqlite://"):]
        if not path:
            raise ConfigError(f"{what} URL {shown(text)} names no file",
                              help="write sqlite:///ABSOLUTE/PATH (three slashes)")
        return Path(path)
    postgres = ", or postgresql://USER@HOST/DB"
    if "://" in text:
        raise ConfigError(f"{what} URL {shown(text)}: unknown scheme",
                          help="use sqlite:///ABSOLUTE/PATH, a file path" + postgres)
    if KEYWORD_DSN.match(text) or not text.strip():
        raise ConfigError(f"{what}: a keyword DSN or an empty string is not a store URL",
                          help="use sqlite:///ABSOLUTE/PATH, a file path" + postgres)
    return Path(text)


def enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put a SQLite file in WAL mode (once per file; later opens find it set).
    The switch needs an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy wait, when another process opens the
    new file at the same moment (seen with `pytest -n 2` on a fresh store):
    try again until ``timeout``, then let the OperationalError through."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


# --- PostgreSQL -------------------------------------------------------------

def redacted(url: str) -> str:
    """A PostgreSQL URL as it may be shown: without its password."""
    from xenhil.harness.secrets import redact_inline
    return redact_inline(str(url))


def postgres_connect(url: str, what: str, option: str, connect_timeout: float = 10.0) -> Any:
    """An autocommit psycopg connection to the ``what`` store at ``url``.
    A store that cannot be reached is infrastructure; one the URL names
    wrongly (no such role or database, refused login) is bad input.  Both
    name the redacted URL and the fix."""
    import psycopg
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(connect_timeout)))
    except psycopg.Error as exc:
        raise postgres_connect_error(exc, url, what, option) from None


#: What libpq says when the URL, not the server, is wrong.
_REFUSED_LOGIN = ("password authentication failed", "authentication failed", "does not exist",
                  "no pg_hba.conf entry", "no password supplied", "invalid dsn",
                  "invalid connection option", "invalid integer value", "invalid port")


def postgres_connect_error(exc: Exception, url: str, what: str, option: str) -> XenhilError:
    from urllib.parse import urlsplit
    shown = redacted(url)
    text = _first_line(exc, url)
    if any(words in text for words in _REFUSED_LOGIN):
        return ConfigError(f"cannot connect to {what} {shown}: {text}",
                           help=f"check the user and database of {option} and the password in "
                                f"~/.pgpass or PGPASSWORD (never in the URL), and that the role "
                                f"may log in to that database")
    try:
        parts = urlsplit(str(url))
        server = f"-h {parts.hostname or 'localhost'} -p {parts.port or 5432}"
    except ValueError:
        server = "-d URL"
    return InfrastructureError(f"cannot connect to {what} {shown}: {text}",
                               help=f"check that the PostgreSQL server is up and reachable from "
                                    f"this machine (pg_isready {server}), or pass another {option}")


def _first_line(exc: Exception, url: str) -> str:
    """The first line of a psycopg error, masked: libpq may quote part of the
    connection string, which may hold the password."""
    from urllib.parse import unquote, urlsplit
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    try:
        password = urlsplit(str(url)).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***").replace(unquote(password), "***")
    return redacted(text)


def postgres_schema_version(cur: Any, component: str) -> int:
    """The schema version recorded for ``component`` (0: none recorded)."""
    cur.execute("SELECT to_regclass('xenhil_schema') IS NOT NULL")
    if not cur.fetchone()[0]:
        return 0
    cur.execute("SELECT version FROM xenhil_schema WHERE component = %s", (component,))
    row = cur.fetchone()
    return int(row[0]) if row else 0


def set_postgres_schema_version(cur: Any, component: str, version: int) -> None:
    """Record ``component``'s schema version, in the current transaction."""
    cur.execute(POSTGRES_SCHEMA_TABLE)
    cur.execute("INSERT INTO xenhil_schema (component, version) VALUES (%s, %s) "
                "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                (component, int(version)))


def text_values(tables: Sequence[str], page: Callable[[str, int], list[tuple]]) -> Iterator[str]:
    """Every text value of ``tables``, table by table: what a secret scan of
    a store that is not a file (PostgreSQL) reads.  ``page(table, offset)``
    returns the next rows, each page read whole: the generator's caller may
    run other statements on the store between two values."""
    for table in tables:
        offset = 0
        while rows := page(table, offset):
            offset += len(rows)
            for row in rows:
                yield from (value for value in row if isinstance(value, str))
