"""The results history: runs, outcomes per test, latency summaries.

SQLite (``sqlite:///PATH`` or a file path) or PostgreSQL
(``postgresql://USER@HOST/DB``, the password in ~/.pgpass or PGPASSWORD),
by the same URL scheme as the lease store.  Several runner machines may
share one PostgreSQL store: each run records the runner that wrote it, and
the verdicts (harness.results.verdicts) and the latency regression test
(harness.results.latency) read the history whichever runner wrote it.

One set of SQL serves both back ends; :class:`SQLiteResults` and
:class:`PostgresResults` hold what differs: placeholders, two column
types, where the schema version lives, how creating and upgrading the
tables is serialised between processes, and what an error means.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from xenhil.harness.dburl import (POSTGRES_LOCK_KEY, enable_wal, is_postgres, postgres_connect,
                                  postgres_schema_version, redacted, set_postgres_schema_version,
                                  sqlite_path, text_values)
from xenhil.harness.errors import ConfigError, InfrastructureError
from xenhil.harness.secrets import scrub

#: The version of the tables :func:`schema` makes.  A SQLite store keeps its
#: version in ``PRAGMA user_version``, a PostgreSQL one in the
#: ``xenhil_schema`` table (component 'results', beside the lease store's
#: row); 0 is a store written before stores carried one (version 1's tables).
#: Version 2 adds ``runs.runner``: in a history several runners share, which
#: machine wrote each run.  Version 3 adds ``latency.emulated``: the latency
#: rule's floors and history depend on the kind of host that measured.
#: Version 4 adds ``latency.emulator_cpu_wait``: a measurement taken while a
#: virtual host's emulator waited for its machine's CPUs is never history.
SCHEMA_VERSION = 4

TABLES = ("runs", "outcomes", "latency", "warnings")


def schema(serial_key: str, real: str) -> list[str]:
    """The tables at :data:`SCHEMA_VERSION`, in a back end's dialect:
    ``serial_key`` is its auto-numbered primary key, ``real`` its 8-byte
    float (SQLite's REAL is one; PostgreSQL's REAL has 4 bytes, which would
    round timestamps and nanosecond figures)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS runs (
    seq {serial_key},                        -- "run N" in verdicts
    run_id TEXT UNIQUE NOT NULL,
    started {real} NOT NULL,
    build TEXT NOT NULL DEFAULT '',          -- Xen build id under test
    series TEXT NOT NULL DEFAULT '',
    facts TEXT NOT NULL DEFAULT '{{}}',
    runner TEXT NOT NULL DEFAULT ''          -- the machine that wrote the run ('' before schema 2)
)""",
        """CREATE TABLE IF NOT EXISTS outcomes (
    run_id TEXT NOT NULL,
    test TEXT NOT NULL,                      -- pytest node id
    outcome TEXT NOT NULL,                   -- passed | failed | broken | skipped
    failure_class TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '',
    split TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, test)
)""",
        f"""CREATE TABLE IF NOT EXISTS latency (
    run_id TEXT NOT NULL,
    host TEXT NOT NULL,
    split TEXT NOT NULL,
    build TEXT NOT NULL,
    server TEXT NOT NULL,                    -- model name, "probe", or "xen" (baseline)
    port TEXT NOT NULL,
    n INTEGER NOT NULL,
    p50_ns {real}, p90_ns {real}, p99_ns {real}, max_ns {real},
    samples TEXT NOT NULL DEFAULT '[]',      -- an evenly spaced subsample in time order, for the statistical tests
    emulated INTEGER NOT NULL DEFAULT 0,     -- 1: measured on an emulated host (its rule's floors; 0 before schema 3)
    emulator_cpu_wait {real},                -- s per s its emulator waited for a CPU (harness.lab.virtual.contention); NULL: not watched
    PRIMARY KEY (run_id, host, split, server, port)
)""",
        f"""CREATE TABLE IF NOT EXISTS warnings (
    seq {serial_key},
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,                      -- the XenhilWarning subclass: DeviceModelDied, ...
    test TEXT NOT NULL DEFAULT '',           -- pytest node id it was raised in
    message TEXT NOT NULL DEFAULT ''
)""",
    ]


@dataclass(frozen=True)
class AddColumn:
    """An upgrade step: a column a schema version adds to an existing table
    (rows already there get its default).  Skipped where the column is
    already there, so a store whose version was lost upgrades too."""

    table: str
    column: str
    ddl: str                          # "{real}": the back end's 8-byte float (see :func:`schema`)

    def apply(self, backend: "Backend", cur: Any) -> None:
        if self.column not in backend.columns(cur, self.table):
            ddl = self.ddl.format(real=backend.real)
            cur.execute(f"ALTER TABLE {self.table} ADD COLUMN {self.column} {ddl}")


#: version -> the steps that take a store of that version to the next.
MIGRATIONS: dict[int, tuple[AddColumn, ...]] = {
    0: (),                                                   # 0 -> 1: the version is recorded
    1: (AddColumn("runs", "runner", "TEXT NOT NULL DEFAULT ''"),),
    2: (AddColumn("latency", "emulated", "INTEGER NOT NULL DEFAULT 0"),),
    3: (AddColumn("latency", "emulator_cpu_wait", "{real}"),),
}


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
    verdicts, and copied around with the artifacts.

    ``create=False`` (the report) opens an existing store and never creates
    one; a store it may only read is opened read-only."""

    SCHEMA_VERSION = SCHEMA_VERSION
    MIGRATIONS = MIGRATIONS

    def __init__(self, url: str, create: bool = True):
        self.backend: Backend = (PostgresResults(str(url), create) if is_postgres(str(url))
                                 else SQLiteResults(url, create))
        #: Where the store is, as it may be shown (a PostgreSQL URL without its password).
        self.url = self.backend.url
        #: The SQLite file; None for PostgreSQL.
        self.path: Path | None = getattr(self.backend, "path", None)
        self.read_only = self.backend.read_only

    @property
    def db(self) -> Any:
        """The back end's connection (sqlite3 or psycopg)."""
        return self.backend.connection()

    def close(self) -> None:
        self.backend.close()

    def _x(self, sql: str, params: tuple = ()) -> Any:
        """Run one statement written with ``?`` placeholders; its cursor."""
        return self.backend.execute(sql, params)

    # -- writing ------------------------------------------------------------
    def record_run(self, run_id: str, build: str = "", series: str = "",
                   facts: dict | None = None, started: float | None = None,
                   runner: str | None = None) -> int:
        """Record a run once (the controller and every xdist worker call it)
        and return its sequence number.  ``runner``: the machine writing it,
        this one's host name by default."""
        # Inserted only when absent, not "ON CONFLICT DO NOTHING" alone:
        # PostgreSQL would use up a sequence number for every repeated call,
        # and "run N" in the verdicts would skip numbers.
        self._x("INSERT INTO runs (run_id, started, build, series, facts, runner) "
                "SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM runs WHERE run_id = ?) "
                "ON CONFLICT (run_id) DO NOTHING",
                (run_id, started or time.time(), scrub(build), scrub(series),
                 scrub(json.dumps(facts or {})),
                 scrub(socket.gethostname() if runner is None else runner), run_id))
        return self.run_seq(run_id)

    def run_seq(self, run_id: str) -> int:
        row = self._x("SELECT seq FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(run_id)
        return int(row[0])

    def record_outcome(self, run_id: str, test: str, outcome: str, failure_class: str = "",
                       host: str = "", split: str = "", message: str = "") -> None:
        self._x("INSERT INTO outcomes (run_id, test, outcome, failure_class, host, split, message) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, test) DO UPDATE SET "
                "outcome = excluded.outcome, failure_class = excluded.failure_class, "
                "host = excluded.host, split = excluded.split, message = excluded.message",
                (run_id, scrub(test), outcome, failure_class, scrub(host), scrub(split),
                 scrub(message)[:2000]))

    def record_latency(self, run_id: str, host: str, split: str, build: str, server: str,
                       port: str, summary: dict, samples: list[float], emulated: bool = False,
                       emulator_cpu_wait: float | None = None) -> None:
        """``emulator_cpu_wait``: seconds per second the host's emulator
        waited for a CPU of its machine meanwhile (harness.lab.virtual.contention),
        None when nobody watched (a host not emulated here)."""
        self._x("INSERT INTO latency (run_id, host, split, build, server, port, n, p50_ns, "
                "p90_ns, p99_ns, max_ns, samples, emulated, emulator_cpu_wait) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, host, split, server, port) DO UPDATE SET "
                "build = excluded.build, n = excluded.n, p50_ns = excluded.p50_ns, "
                "p90_ns = excluded.p90_ns, p99_ns = excluded.p99_ns, max_ns = excluded.max_ns, "
                "samples = excluded.samples, emulated = excluded.emulated, "
                "emulator_cpu_wait = excluded.emulator_cpu_wait",
                (run_id, scrub(host), scrub(split), scrub(build), scrub(server), port, summary["n"],
                 summary["p50_ns"], summary["p90_ns"], summary["p99_ns"], summary["max_ns"],
                 json.dumps(samples), int(bool(emulated)), emulator_cpu_wait))

    def record_warning(self, run_id: str, kind: str, test: str = "", message: str = "") -> None:
        self._x("INSERT INTO warnings (run_id, kind, test, message) VALUES (?, ?, ?, ?)",
                (run_id, kind, scrub(test), scrub(message)[:2000]))

    # -- reading ------------------------------------------------------------
    def warnings(self, run_id: str) -> list[dict]:
        """The run's counted warnings (harness.errors.XenhilWarning), in order."""
        cur = self._x("SELECT kind, test, message FROM warnings WHERE run_id = ? ORDER BY seq",
                      (run_id,))
        return [dict(zip(("kind", "test", "message"), row)) for row in cur.fetchall()]

    def history(self, test: str, before_run: str) -> list[Outcome]:
        """Earlier outcomes of one test, newest first, whichever runner wrote
        them; mutant runs (a probe fault planted, lab/mutants) left out: a
        test they made fail on purpose is no baseline of another run."""
        seq = self.run_seq(before_run)
        rows = self._x(
            "SELECT r.seq, r.run_id, r.build, o.outcome, o.failure_class, o.message, r.facts "
            "FROM outcomes o JOIN runs r ON r.run_id = o.run_id "
            "WHERE o.test = ? AND r.seq < ? ORDER BY r.seq DESC", (test, seq)).fetchall()
        return [Outcome(int(row[0]), *row[1:6]) for row in rows if not _mutant_run(row[6])]

    def outcomes(self, run_id: str) -> list[dict]:
        cur = self._x("SELECT * FROM outcomes WHERE run_id = ? ORDER BY test", (run_id,))
        return _dicts(cur)

    def run(self, run_id: str) -> dict:
        [item] = _dicts(self._x("SELECT * FROM runs WHERE run_id = ?", (run_id,))) or [None]
        if item is None:
            raise KeyError(run_id)
        item.setdefault("runner", "")     # a version-1 store opened read-only
        return item

    def latest_run_id(self) -> str | None:
        row = self._x("SELECT run_id FROM runs ORDER BY seq DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def latency_rows(self, run_id: str) -> list[dict]:
        rows = _dicts(self._x("SELECT * FROM latency WHERE run_id = ?", (run_id,)))
        for item in rows:
            item["samples"] = json.loads(item["samples"])
        return rows

    def latency_history(self, run_id: str, host: str, split: str, build_class: str,
                        limit: int, emulated: bool | None = None,
                        cpu_wait_above: float | None = None) -> list[dict]:
        """The ``limit`` newest earlier runs that measured latency on the same
        host and split with a build of ``build_class``
        (harness.results.latency.build_class), whichever runner measured
        them, newest first: ``{"run_id", "build", "rows": [latency rows]}``.
        Mutant runs (a probe fault planted, lab/mutants) are never history:
        a run after the delay mutant would be compared with a slowed server.
        ``emulated``: only rows measured on a host of that kind.
        ``cpu_wait_above``: runs whose rows say the host's emulator waited
        longer than this for a CPU (s per s) are not history either: their
        figures are the machine's, and one 5x slower run would widen the
        spread-based tolerance for the next ten."""
        from xenhil.harness.results.latency import build_class as class_of
        seq = self.run_seq(run_id)
        where, params = "", ()
        if emulated is not None:
            where, params = " AND l.emulated = ?", (int(emulated),)
        earlier = self._x(
            "SELECT r.seq, r.run_id, r.facts, l.build, MAX(l.emulator_cpu_wait) FROM latency l "
            "JOIN runs r ON r.run_id = l.run_id WHERE l.host = ? AND l.split = ? AND r.seq < ?"
            + where + " GROUP BY r.seq, r.run_id, r.facts, l.build ORDER BY r.seq DESC",
            (host, split, seq) + params).fetchall()
        chosen: list[tuple[str, str]] = []
        for _, earlier_run, facts, build, waited in earlier:
            if len(chosen) == limit:
                break
            if _mutant_run(facts) or class_of(build) != build_class:
                continue
            if cpu_wait_above is not None and waited is not None and waited > cpu_wait_above:
                continue
            if earlier_run not in (r for r, _ in chosen):
                chosen.append((earlier_run, build))
        history = []
        for earlier_run, build in chosen:
            rows = _dicts(self._x("SELECT * FROM latency WHERE run_id = ? AND host = ? AND split = ?",
                                  (earlier_run, host, split)))
            for item in rows:
                item["samples"] = json.loads(item["samples"])
            history.append({"run_id": earlier_run, "build": build, "rows": rows})
        return history

    def text_values(self) -> Iterator[str]:
        """Every text value in the store (harness.dburl.text_values)."""
        return text_values(TABLES, self._page)

    def _page(self, table: str, offset: int, size: int = 500) -> list[tuple]:
        order = "seq" if table in ("runs", "warnings") else "run_id"
        return self._x(f"SELECT * FROM {table} ORDER BY {order} LIMIT ? OFFSET ?",
                       (size, offset)).fetchall()

    def __repr__(self) -> str:
        return f"ResultsStore({self.url!r})"


def planted_fault(facts: str | None) -> str | None:
    """The fault a run's facts (its provenance, fixtures/run.py) say was
    planted in it (``xenhil.probe_fault``: a mutant run), else None."""
    try:
        fault = json.loads(facts or "{}").get("xenhil.probe_fault")
    except (ValueError, AttributeError):
        return None
    return fault if fault not in (None, "", "none") else None


def _mutant_run(facts: str | None) -> bool:
    return planted_fault(facts) is not None


def _dicts(cur: Any) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


# --- creating and upgrading ---------------------------------------------------

def _upgrade(backend: "Backend", cur: Any) -> None:
    """Inside the back end's serialised transaction: create or upgrade the
    tables to :data:`SCHEMA_VERSION`, keeping every row.  The version is read
    again here, under the lock: another process may have upgraded the store
    since this one looked."""
    found = backend.schema_version(cur)
    backend.check_version(found)
    if found == SCHEMA_VERSION:
        return
    if backend.has_table(cur, "runs"):
        for version in range(found, SCHEMA_VERSION):
            for step in MIGRATIONS[version]:
                step.apply(backend, cur)
    for statement in backend.schema():
        cur.execute(statement)
    backend.set_schema_version(cur, SCHEMA_VERSION)


class Backend:
    """What the SQL of :class:`ResultsStore` needs from a database."""

    placeholder = "?"
    serial_key = ""
    real = ""
    #: How the store is shown in messages.
    url: str = ""
    read_only = False

    def schema(self) -> list[str]:
        return schema(self.serial_key, self.real)

    def execute(self, sql: str, params: tuple = ()) -> Any:
        raise NotImplementedError

    def connection(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def schema_version(self, cur: Any) -> int:
        raise NotImplementedError

    def set_schema_version(self, cur: Any, version: int) -> None:
        raise NotImplementedError

    def has_table(self, cur: Any, table: str) -> bool:
        raise NotImplementedError

    def columns(self, cur: Any, table: str) -> set[str]:
        raise NotImplementedError

    def translate(self, exc: Exception) -> Exception | None:
        """What a failed statement means, with its fix; None when it is not
        about the store (a constraint or a programming error)."""
        raise NotImplementedError

    #: The exceptions :meth:`translate` is asked about.
    errors: tuple[type[Exception], ...] = ()

    def check_version(self, found: int) -> None:
        if found > SCHEMA_VERSION:
            raise ConfigError(f"results store {self.url} has schema version {found}, newer than "
                              f"this xenhil knows ({SCHEMA_VERSION})",
                              help="upgrade xenhil (pip install -U xenhil) on this machine, or "
                                   "pass a --results-db of its own")


# --- SQLite -------------------------------------------------------------------

_DAMAGED_HELP = "move the damaged file aside (a new store is created) or pass the right --results-db"


class SQLiteResults(Backend):
    serial_key = "INTEGER PRIMARY KEY AUTOINCREMENT"
    real = "REAL"
    errors = (sqlite3.DatabaseError,)

    def __init__(self, url: str | Path, create: bool):
        self.path = sqlite_path(url, "results store")
        self.url = str(self.path)
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
                self.check_version(self.schema_version(self.db))
            else:
                self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                enable_wal(self.db, 30.0)
                self._open_for_writing()
        except sqlite3.OperationalError as exc:
            raise ConfigError(f"results store {self.path} cannot be used: {exc}",
                              help=_fix_of(exc, self.path)) from None
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"results store {self.path} cannot be used: {exc}",
                              help=_DAMAGED_HELP) from None

    def _open_for_writing(self) -> None:
        found = self.schema_version(self.db)
        self.check_version(found)
        if found == SCHEMA_VERSION:
            for statement in self.schema():   # idempotent; tables dropped by hand come back
                self.db.execute(statement)
            return
        # BEGIN IMMEDIATE takes the write lock first: concurrent openers wait
        # for it (busy timeout) and then find the store upgraded.
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            _upgrade(self, cur)
            cur.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.rollback()
            raise

    def execute(self, sql: str, params: tuple = ()) -> Any:
        return self.db.execute(sql, params)

    def connection(self) -> sqlite3.Connection:
        return self.db

    def close(self) -> None:
        self.db.close()

    def schema_version(self, cur: Any) -> int:
        return int(cur.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, cur: Any, version: int) -> None:
        cur.execute(f"PRAGMA user_version = {int(version)}")

    def has_table(self, cur: Any, table: str) -> bool:
        return cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                           (table,)).fetchone() is not None

    def columns(self, cur: Any, table: str) -> set[str]:
        return {row[1] for row in cur.execute(f"PRAGMA table_info({table})").fetchall()}

    def translate(self, exc: Exception) -> Exception | None:
        text = str(exc)
        path = self.path
        if type(exc) is sqlite3.DatabaseError:      # a malformed page found past the open
            return ConfigError(f"results store {path} cannot be used: {text}", help=_DAMAGED_HELP)
        if isinstance(exc, sqlite3.OperationalError):
            if "readonly" in text or "read-only" in text:
                return ConfigError(f"results store {path} is read-only here: {text}",
                                   help=_fix_of(exc, path))
            if "disk is full" in text or "disk I/O error" in text:
                return InfrastructureError(f"results store {path}: {text}",
                                           help=_fix_of(exc, path))
        return None


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _open_read_only(path: Path) -> sqlite3.Connection:
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


def _fix_of(exc: sqlite3.OperationalError, path: Path) -> str:
    text = str(exc)
    if "disk I/O error" in text:
        return f"check the disk and file system holding {path} (dmesg), or move the store"
    if "disk is full" in text:
        return f"free space on the file system of {path.parent} (df -h {path.parent}), or pass " \
               f"--results-db on another one"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"make {path} and its folder writable by this user, or pass another --results-db"
    return "check the file system holding the store, or pass another --results-db"


# --- PostgreSQL -----------------------------------------------------------------

#: The privileges recording a run needs on each table (UPDATE: a test's
#: outcome and a latency row are replaced when recorded again).
WRITE_PRIVILEGES = {"runs": ("SELECT", "INSERT"), "outcomes": ("SELECT", "INSERT", "UPDATE"),
                    "latency": ("SELECT", "INSERT", "UPDATE"), "warnings": ("SELECT", "INSERT")}
_GRANT_WRITE = ("GRANT SELECT ON xenhil_schema and SELECT, INSERT, UPDATE ON runs, outcomes, "
                "latency, warnings TO this role (as the tables' owner), or pass another "
                "--results-db")


class PostgresResults(Backend):
    """One autocommit connection per store: each statement is its own
    transaction, as with SQLite.  Creating and upgrading the tables take the
    advisory lock every xenhil store takes (harness.dburl.POSTGRES_LOCK_KEY),
    so runners that open a new database at once all succeed and upgrade it
    once; recording needs no lock (rows are keyed, ``ON CONFLICT``)."""

    placeholder = "%s"
    serial_key = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    real = "DOUBLE PRECISION"
    connect_timeout = 10.0

    def __init__(self, url: str, create: bool):
        self._dsn = url
        self.url = redacted(url)
        try:
            import psycopg
        except ImportError:
            raise ConfigError(f"results store {self.url} needs psycopg 3, which is not installed",
                              help="pip install 'xenhil[postgres]' (psycopg[binary]), or use a "
                                   "sqlite:/// results store") from None
        self._psycopg = psycopg
        self.errors = (psycopg.Error,)
        self._conn: Any = None
        try:
            self._open(create)
        except BaseException:
            self.close()
            raise

    def _open(self, create: bool) -> None:
        errors = self._psycopg.errors
        conn = self.connection()
        try:
            with conn.cursor() as cur:
                try:
                    found = self.schema_version(cur)
                except errors.InsufficientPrivilege as exc:
                    raise ConfigError(f"results store {self.url}: this role may not read the "
                                      f"store's schema version ({_first_line(exc)})",
                                      help="GRANT SELECT ON xenhil_schema TO this role (as its "
                                           "owner), or pass another --results-db") from None
                self.check_version(found)
                if found < SCHEMA_VERSION and not create and not self.has_table(cur, "runs"):
                    raise ConfigError(f"results store {self.url} holds no results (no runs table)",
                                      help="pass the --results-db the run recorded to; "
                                           "`xenhil report` does not create a store")
            if found < SCHEMA_VERSION:
                with self._serialised() as cur:
                    _upgrade(self, cur)
        except errors.InsufficientPrivilege as exc:
            if create:
                raise ConfigError(
                    f"results store {self.url}: this role may not create or upgrade the results "
                    f"tables ({_first_line(exc)})",
                    help="open it once with a role that has CREATE on the schema (the tables' "
                         "owner), then " + _GRANT_WRITE) from None
            # The report reads an older store as it is (the same columns but runner).
        except self._psycopg.OperationalError as exc:
            raise self._lost(exc) from None
        missing = self._missing_privileges(WRITE_PRIVILEGES if create else
                                           {table: ("SELECT",) for table in TABLES})
        if missing and create:
            raise ConfigError(f"results store {self.url}: this role may not record runs "
                              f"(missing {', '.join(missing)})", help=_GRANT_WRITE)
        if missing:
            raise ConfigError(f"results store {self.url}: this role may not read the results "
                              f"(missing {', '.join(missing)})",
                              help="GRANT SELECT ON runs, outcomes, latency, warnings TO this "
                                   "role (as the tables' owner), or pass another --results-db")
        self.read_only = not create and bool(self._missing_privileges(WRITE_PRIVILEGES))

    def _missing_privileges(self, needed: dict[str, tuple[str, ...]]) -> list[str]:
        checks = [(table, privilege) for table, privileges in needed.items()
                  for privilege in privileges]
        with self.connection().cursor() as cur:
            # A table that is not there (dropped by hand) counts as not granted.
            cur.execute("SELECT " + ", ".join(
                ["coalesce(has_table_privilege(to_regclass(%s), %s), false)"] * len(checks)),
                        [x for check in checks for x in check])
            granted = cur.fetchone()
        return [f"{privilege} on {table}" for (table, privilege), ok in zip(checks, granted)
                if not ok]

    @contextlib.contextmanager
    def _serialised(self) -> Iterator[Any]:
        conn = self.connection()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (POSTGRES_LOCK_KEY,))
            yield cur

    def connection(self) -> Any:
        """The connection, made again when the last one was lost (a server
        restart during a run of hours costs the statements in between, not
        the rest of the run)."""
        if self._conn is None or self._conn.closed:
            self._conn = postgres_connect(self._dsn, "results store", "--results-db",
                                          self.connect_timeout)
        return self._conn

    def execute(self, sql: str, params: tuple = ()) -> Any:
        # PostgreSQL's text cannot hold NUL characters (SQLite's can): a
        # failure message with one is recorded with it escaped, not lost.
        params = tuple(p.replace("\x00", "\\x00") if isinstance(p, str) else p for p in params)
        return self.connection().execute(sql.replace("?", "%s"), params)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def schema_version(self, cur: Any) -> int:
        return postgres_schema_version(cur, "results")

    def set_schema_version(self, cur: Any, version: int) -> None:
        set_postgres_schema_version(cur, "results", version)

    def has_table(self, cur: Any, table: str) -> bool:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        return bool(cur.fetchone()[0])

    def columns(self, cur: Any, table: str) -> set[str]:
        cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                    "AND attnum > 0 AND NOT attisdropped", (table,))
        return {row[0] for row in cur.fetchall()}

    def _lost(self, exc: Exception) -> InfrastructureError:
        """The server went away mid-statement: the next statement reconnects."""
        self.close()
        return InfrastructureError(f"results store {self.url}: {_first_line(exc)}",
                                   help="check that the PostgreSQL server is up and reachable "
                                        "from this machine, then rerun")

    def translate(self, exc: Exception) -> Exception | None:
        errors = self._psycopg.errors
        if isinstance(exc, errors.InsufficientPrivilege):
            return ConfigError(f"results store {self.url}: {_first_line(exc)}", help=_GRANT_WRITE)
        if isinstance(exc, errors.ReadOnlySqlTransaction):
            return ConfigError(f"results store {self.url} is read-only (a standby server?): "
                               f"{_first_line(exc)}",
                               help="pass a --results-db URL naming the primary server")
        if isinstance(exc, (errors.DiskFull, errors.OutOfMemory)):
            return InfrastructureError(f"results store {self.url}: {_first_line(exc)}",
                                       help="free space on the PostgreSQL server's data disk")
        if isinstance(exc, self._psycopg.OperationalError):
            return self._lost(exc)
        return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return redacted(text.splitlines()[0] if text else type(exc).__name__)


# --- typed errors for every statement ----------------------------------------------

def _translated(method):
    @functools.wraps(method)
    def wrapper(self: ResultsStore, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except self.backend.errors as exc:
            error = self.backend.translate(exc)
            if error is None:
                raise
            raise error from None
    return wrapper


for _name in ("record_run", "run_seq", "record_outcome", "record_latency", "record_warning",
              "warnings", "history", "outcomes", "run", "latest_run_id", "latency_rows",
              "latency_history", "_page"):
    setattr(ResultsStore, _name, _translated(getattr(ResultsStore, _name)))
