"""The results history: runs, outcomes per test, latency summaries.

SQLite by default (``sqlite:///PATH``, the same URL scheme as the lease
store).  The verdicts (harness.results.verdicts) and the latency regression
test (harness.results.latency) read their history from here.
"""
from __future__ import annotations

import functools
import json
import sqlite3
import time
from dataclasses import dataclass

from harness.dburl import enable_wal, sqlite_path
from harness.errors import ConfigError, InfrastructureError
from harness.secrets import scrub

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- "run N" in verdicts
    run_id TEXT UNIQUE NOT NULL,
    started REAL NOT NULL,
    build TEXT NOT NULL DEFAULT '',          -- Xen build id under test
    series TEXT NOT NULL DEFAULT '',
    facts TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS outcomes (
    run_id TEXT NOT NULL,
    test TEXT NOT NULL,                      -- pytest node id
    outcome TEXT NOT NULL,                   -- passed | failed | broken | skipped
    failure_class TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '',
    split TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, test)
);
CREATE TABLE IF NOT EXISTS latency (
    run_id TEXT NOT NULL,
    host TEXT NOT NULL,
    split TEXT NOT NULL,
    build TEXT NOT NULL,
    server TEXT NOT NULL,                    -- model name, "probe", or "xen" (baseline)
    port TEXT NOT NULL,
    n INTEGER NOT NULL,
    p50_ns REAL, p90_ns REAL, p99_ns REAL, max_ns REAL,
    samples TEXT NOT NULL DEFAULT '[]',      -- a bounded random subsample, for the statistical test
    PRIMARY KEY (run_id, host, split, server, port)
);
CREATE TABLE IF NOT EXISTS warnings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,                      -- the XenhilWarning subclass: DeviceModelDied, ...
    test TEXT NOT NULL DEFAULT '',           -- pytest node id it was raised in
    message TEXT NOT NULL DEFAULT ''
);
"""


@dataclass(frozen=True)
class Outcome:
    run_seq: int
    run_id: str
    build: str
    outcome: str
    failure_class: str
    message: str


class ResultsStore:
    """Everything written here is scrubbed of the registered secrets
    (harness.secrets) first: the store is read by the triage text and the
    verdicts, and copied around with the artifacts."""

    #: The version of the tables SCHEMA makes, kept in ``PRAGMA user_version``;
    #: 0 is a store written before stores carried one (the same tables as 1).
    #: Opening a store for writing upgrades it in place, keeping every row.
    SCHEMA_VERSION = 1
    #: version -> SQL that takes a store of that version to the next.
    MIGRATIONS: dict[int, str] = {0: ""}   # 0 -> 1: the version is recorded

    def __init__(self, url: str, create: bool = True):
        self.path = sqlite_path(url, "results store")
        if not create and not self.path.is_file():
            raise ConfigError(f"results store {self.path} does not exist",
                              help="pass the run's --artifacts folder or --results-db")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # A store this user may only read (`xenhil report` over a run someone
        # else made) is opened read-only instead of failing.
        self.read_only = not create and not _writable(self.path)
        try:
            if self.read_only:
                self.db = _open_read_only(self.path)
                self._check_version(self._version())
            else:
                self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                enable_wal(self.db, 30.0)
                self._upgrade()
        except sqlite3.OperationalError as exc:
            raise ConfigError(f"results store {self.path} cannot be used: {exc}",
                              help=_fix_of(exc, self.path)) from None
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"results store {self.path} cannot be used: {exc}",
                              help="move the damaged file aside (a new store is created) or "
                                   "pass the right --results-db") from None

    def _version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self, found: int) -> None:
        if found > self.SCHEMA_VERSION:
            raise ConfigError(f"results store {self.path} has schema version {found}, newer than "
                              f"this xenhil knows ({self.SCHEMA_VERSION})",
                              help="upgrade xenhil (pip install -U xenhil), or pass a "
                                   "--results-db of its own")

    def _upgrade(self) -> None:
        """Create or upgrade the tables to SCHEMA_VERSION in one transaction."""
        found = self._version()
        self._check_version(found)
        steps = "".join(self.MIGRATIONS[v] for v in range(found, self.SCHEMA_VERSION))
        if found == self.SCHEMA_VERSION:
            self.db.executescript(SCHEMA)     # idempotent; tables dropped by hand come back
            return
        # executescript commits first: BEGIN IMMEDIATE makes the upgrade one
        # transaction, which concurrent openers wait for (busy timeout).
        self.db.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\n{steps}\n"
                              f"PRAGMA user_version = {self.SCHEMA_VERSION};\nCOMMIT;")

    def close(self) -> None:
        self.db.close()

    # -- writing ------------------------------------------------------------
    def record_run(self, run_id: str, build: str = "", series: str = "",
                   facts: dict | None = None, started: float | None = None) -> int:
        self.db.execute(
            "INSERT OR IGNORE INTO runs (run_id, started, build, series, facts) VALUES (?,?,?,?,?)",
            (run_id, started or time.time(), scrub(build), scrub(series),
             scrub(json.dumps(facts or {}))))
        return self.run_seq(run_id)

    def run_seq(self, run_id: str) -> int:
        row = self.db.execute("SELECT seq FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(run_id)
        return row[0]

    def record_outcome(self, run_id: str, test: str, outcome: str, failure_class: str = "",
                       host: str = "", split: str = "", message: str = "") -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO outcomes VALUES (?,?,?,?,?,?,?)",
            (run_id, test, outcome, failure_class, host, split, scrub(message)[:2000]))

    def record_latency(self, run_id: str, host: str, split: str, build: str, server: str,
                       port: str, summary: dict, samples: list[float]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO latency VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, host, split, build, server, port, summary["n"], summary["p50_ns"],
             summary["p90_ns"], summary["p99_ns"], summary["max_ns"], json.dumps(samples)))

    def record_warning(self, run_id: str, kind: str, test: str = "", message: str = "") -> None:
        from harness.secrets import scrub
        self.db.execute("INSERT INTO warnings (run_id, kind, test, message) VALUES (?,?,?,?)",
                        (run_id, kind, test, scrub(message)[:2000]))

    # -- reading ------------------------------------------------------------
    def warnings(self, run_id: str) -> list[dict]:
        """The run's counted warnings (harness.errors.XenhilWarning), in order."""
        cur = self.db.execute("SELECT kind, test, message FROM warnings WHERE run_id=? ORDER BY seq",
                              (run_id,))
        return [dict(zip(("kind", "test", "message"), row)) for row in cur.fetchall()]

    def history(self, test: str, before_run: str) -> list[Outcome]:
        """Earlier outcomes of one test, newest first."""
        seq = self.run_seq(before_run)
        rows = self.db.execute(
            "SELECT r.seq, r.run_id, r.build, o.outcome, o.failure_class, o.message "
            "FROM outcomes o JOIN runs r ON r.run_id = o.run_id "
            "WHERE o.test=? AND r.seq < ? ORDER BY r.seq DESC", (test, seq)).fetchall()
        return [Outcome(*row) for row in rows]

    def outcomes(self, run_id: str) -> list[dict]:
        cur = self.db.execute("SELECT * FROM outcomes WHERE run_id=? ORDER BY test", (run_id,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def run(self, run_id: str) -> dict:
        cur = self.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,))
        row = cur.fetchone()
        if row is None:
            raise KeyError(run_id)
        return dict(zip([d[0] for d in cur.description], row))

    def latest_run_id(self) -> str | None:
        row = self.db.execute("SELECT run_id FROM runs ORDER BY seq DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def latency_rows(self, run_id: str) -> list[dict]:
        cur = self.db.execute("SELECT * FROM latency WHERE run_id=?", (run_id,))
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            item = dict(zip(names, row))
            item["samples"] = json.loads(item["samples"])
            out.append(item)
        return out

    def previous_latency(self, run_id: str, host: str, split: str, server: str,
                         port: str) -> dict | None:
        """The newest earlier run's latency for the same host, split, server and port."""
        seq = self.run_seq(run_id)
        cur = self.db.execute(
            "SELECT l.*, r.seq FROM latency l JOIN runs r ON r.run_id = l.run_id "
            "WHERE l.host=? AND l.split=? AND l.server=? AND l.port=? AND r.seq < ? "
            "ORDER BY r.seq DESC LIMIT 1", (host, split, server, port, seq))
        row = cur.fetchone()
        if row is None:
            return None
        item = dict(zip([d[0] for d in cur.description], row))
        item["samples"] = json.loads(item["samples"])
        return item


def _writable(path) -> bool:
    import os
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _open_read_only(path) -> sqlite3.Connection:
    """The store read-only; as it is on disk (``immutable``) when SQLite
    cannot share its write-ahead-log index read-only (no -shm file, a folder
    this user cannot write)."""
    from urllib.parse import quote
    for mode in ("mode=ro", "immutable=1"):
        db = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True, timeout=30,
                             isolation_level=None)
        try:
            db.execute("SELECT count(*) FROM runs").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
            if mode == "immutable=1":
                raise
    raise AssertionError("unreachable")


def _fix_of(exc: sqlite3.OperationalError, path) -> str:
    text = str(exc)
    if "disk I/O error" in text:
        return f"check the disk and file system holding {path} (dmesg), or move the store"
    if "disk is full" in text:
        return f"free space on the file system of {path.parent} (df -h {path.parent}), or pass " \
               f"--results-db on another one"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"make {path} and its folder writable by this user, or pass another --results-db"
    return "check the file system holding the store, or pass another --results-db"


def _store_error(exc: sqlite3.DatabaseError, path) -> Exception:
    """What a failed statement of the results store means, with its fix;
    ``exc`` itself when it is not about the store's file."""
    text = str(exc)
    if type(exc) is sqlite3.DatabaseError:      # a malformed page found past the open
        return ConfigError(f"results store {path} cannot be used: {text}",
                           help="move the damaged file aside (a new store is created) or "
                                "pass the right --results-db")
    if isinstance(exc, sqlite3.OperationalError):
        if "readonly" in text or "read-only" in text:
            return ConfigError(f"results store {path} is read-only here: {text}",
                               help=_fix_of(exc, path))
        if "disk is full" in text or "disk I/O error" in text:
            return InfrastructureError(f"results store {path}: {text}", help=_fix_of(exc, path))
    return exc


def _translated(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            error = _store_error(exc, self.path)
            if error is exc:
                raise
            raise error from None
    return wrapper


for _name in ("record_run", "run_seq", "record_outcome", "record_latency", "record_warning",
              "warnings", "history", "outcomes", "run", "latest_run_id", "latency_rows",
              "previous_latency"):
    setattr(ResultsStore, _name, _translated(getattr(ResultsStore, _name)))
