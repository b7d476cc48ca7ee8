"""Store URLs shared by the lease store and the results store:
``sqlite:///ABSOLUTE/PATH`` (everything after ``sqlite://`` is the path),
a plain file path, or ``postgresql://...``."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from harness.errors import ConfigError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(url: str) -> bool:
    return str(url).startswith(POSTGRES_SCHEMES)


def sqlite_path(url: str | Path, what: str) -> Path:
    """The SQLite file a URL names; ConfigError naming ``what`` otherwise.
    A URL is only ever shown redacted (it may hold a password), and a libpq
    keyword DSN ("host=... password=...") is refused, not taken for a file
    name."""
    from harness.options import KEYWORD_DSN, shown
    text = str(url)
    if text.startswith("sqlite://"):
        path = text[len("sqlite://"):]
        if not path:
            raise ConfigError(f"{what} URL {shown(text)} names no file",
                              help="write sqlite:///ABSOLUTE/PATH (three slashes)")
        return Path(path)
    postgres = ", or postgresql://USER@HOST/DB" if what == "lease store" else ""
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
