"""The lease store in one SQLite file, safe across the processes of one machine.

Why these settings:
- WAL journal: readers (waiters polling, ``xenhil lab status``) never block
  the writer and the writer never blocks them.
- ``BEGIN IMMEDIATE`` for every change: the write lock is taken at the start
  of the transaction, so two claims cannot both read "free" and then both
  write (no lock upgrade, no SQLITE_BUSY deadlock mid-transaction).
- busy_timeout: a process that finds the lock taken waits for it instead of
  failing.
- synchronous=NORMAL: in WAL mode a crash of any process loses nothing; only
  a power cut may lose the last transactions, and it also ends every holder.

The file must be on a local file system: SQLite locking over NFS is unreliable
(use PostgreSQL for a lab shared between machines).
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from harness.dburl import enable_wal
from harness.errors import ConfigError
from harness.lab.leases import LeaseStoreError, SQLLeaseStore


class SQLiteLeaseStore(SQLLeaseStore):
    def __init__(self, path: str | Path, busy_timeout: float = 30.0):
        self.path = Path(path).absolute()
        self.url = f"sqlite://{self.path}"
        self.busy_timeout = float(busy_timeout)
        if not self.path.parent.is_dir():
            raise ConfigError(f"lease store {self.path}: directory {self.path.parent} does not exist",
                              help="create the directory or pass --lab-db sqlite:///EXISTING/DIR/FILE")
        self._local = threading.local()
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:   # not a database, truncated, damaged
            raise ConfigError(f"lease store {self.path} cannot be used: {exc}",
                              help="move the damaged file aside (a new store is created; leases "
                                   "it held are lost) or pass --lab-db with the right store") from None

    def _setup(self) -> None:
        conn = self._connect()
        try:
            self._locked(lambda: enable_wal(conn, self.busy_timeout))
            cur = conn.cursor()
            self._locked(lambda: cur.execute("BEGIN IMMEDIATE"))
            try:
                for statement in self._schema():
                    cur.execute(statement)
                cur.execute("COMMIT")
            except BaseException:
                conn.rollback()
                raise
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as exc:
            raise LeaseStoreError(f"cannot open lease store {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:   # not a database, damaged: bad input, not the lab
            raise ConfigError(f"lease store {self.path} cannot be used: {exc}",
                              help="move the damaged file aside (a new store is created; leases "
                                   "it held are lost) or pass --lab-db with the right store") from None
        return conn

    def _locked(self, action):
        try:
            return action()
        except sqlite3.OperationalError as exc:
            raise LeaseStoreError(f"lease store {self.path}: {exc} "
                                  f"(waited {self.busy_timeout:g}s for the lock)") from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        with self._connection() as conn:
            cur = conn.cursor()
            self._locked(lambda: cur.execute("BEGIN IMMEDIATE"))
            try:
                yield cur
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            self._locked(lambda: cur.execute("COMMIT"))

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        with self._connection() as conn:
            cur = conn.cursor()
            cur.execute("BEGIN")   # one snapshot for the statements of the block
            try:
                yield cur
            finally:
                if conn.in_transaction:
                    conn.rollback()

    def _now_in(self, cur: Any) -> float:
        # All holders are processes of this machine: its clock is the store's.
        return time.time()

    def __repr__(self) -> str:
        return f"SQLiteLeaseStore({str(self.path)!r})"
