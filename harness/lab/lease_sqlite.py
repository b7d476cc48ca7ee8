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
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

from xenhil.harness.dburl import enable_wal
from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.leases import LeaseStoreError, SQLLeaseStore


_DAMAGED_HELP = ("move the damaged file aside (a new store is created; leases it held are lost) "
                 "or pass --lab-db with the right store")


class SQLiteLeaseStore(SQLLeaseStore):
    def __init__(self, path: str | Path, busy_timeout: float = 30.0):
        self.path = Path(path).absolute()
        self.url = f"sqlite://{self.path}"
        self.busy_timeout = float(busy_timeout)
        if not self.path.parent.is_dir():
            raise ConfigError(f"lease store {self.path}: directory {self.path.parent} does not exist",
                              help="create the directory or pass --lab-db sqlite:///EXISTING/DIR/FILE")
        self._local = threading.local()
        # A store this user may read but not write (a lab's shared store, a
        # read-only mount) still serves `xenhil lab status`: it is opened
        # read-only, and taking or releasing a lease says why it cannot.
        self.read_only = self.path.exists() and not _writable(self.path)
        self._immutable = False
        try:
            if self.read_only:
                self._check_read_only()
            else:
                self._setup()
        except sqlite3.DatabaseError as exc:   # not a database, truncated, damaged
            raise ConfigError(f"lease store {self.path} cannot be used: {exc}",
                              help=_DAMAGED_HELP) from None

    def _setup(self) -> None:
        conn = self._connect()
        try:
            self._locked(lambda: enable_wal(conn, self.busy_timeout))
            cur = conn.cursor()
            self._locked(lambda: cur.execute("BEGIN IMMEDIATE"))
            try:
                self._upgrade(cur)
                self._locked(lambda: cur.execute("COMMIT"))
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        finally:
            conn.close()

    def _check_read_only(self) -> None:
        """Opened read-only: its schema must be one this xenhil reads (an
        older one has the same tables; a newer one is refused)."""
        conn = self._connect()
        try:
            found = self._schema_version(conn.cursor())
            conn.execute("SELECT count(*) FROM leases").fetchone()
        except sqlite3.OperationalError as exc:
            if self._immutable:
                raise LeaseStoreError(f"cannot read lease store {self.path}: {exc}") from None
            # WAL mode read-only needs its -shm file writable or absent-and-
            # creatable; where neither holds, read the file as it is on disk.
            conn.close()
            self._immutable = True
            return self._check_read_only()
        finally:
            conn.close()
        self._check_schema_version(found)
        self.schema_found = found

    def _schema_version(self, cur: Any) -> int:
        return int(cur.execute("PRAGMA user_version").fetchone()[0])

    def _set_schema_version(self, cur: Any, version: int) -> None:
        cur.execute(f"PRAGMA user_version = {int(version)}")

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.read_only:
                mode = "immutable=1" if self._immutable else "mode=ro"
                conn = sqlite3.connect(f"file:{quote(str(self.path))}?{mode}", uri=True,
                                       timeout=self.busy_timeout, isolation_level=None,
                                       check_same_thread=False)
            else:
                conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout,
                                       isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            if not self.read_only:
                conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as exc:
            raise LeaseStoreError(f"cannot open lease store {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:   # not a database, damaged: bad input, not the lab
            raise ConfigError(f"lease store {self.path} cannot be used: {exc}",
                              help=_DAMAGED_HELP) from None
        return conn

    def _locked(self, action):
        try:
            return action()
        except sqlite3.DatabaseError as exc:
            raise self._error_of(exc) from None

    def _error_of(self, exc: sqlite3.DatabaseError) -> Exception:
        """What a failed statement means, with its fix."""
        text = str(exc)
        if type(exc) is sqlite3.DatabaseError:
            # Damage found past the pages opening reads (a malformed page):
            # bad input, like a store that is not a database at all.
            return ConfigError(f"lease store {self.path} cannot be used: {text}", help=_DAMAGED_HELP)
        if not isinstance(exc, sqlite3.OperationalError):
            return exc      # a constraint or a programming error: not the store's state
        if "readonly" in text or "read-only" in text:
            return self._read_only_error()
        if "disk is full" in text:
            return LeaseStoreError(
                f"lease store {self.path}: the file system holding it is full ({text}); "
                f"nothing was changed",
                help=f"free space on the file system of {self.path.parent} (df -h "
                     f"{self.path.parent}), or pass --lab-db with a store on another one")
        if "disk I/O error" in text:
            return LeaseStoreError(f"lease store {self.path}: {text}",
                                   help=f"check the disk and file system holding {self.path} "
                                        f"(dmesg), or move the store")
        return LeaseStoreError(f"lease store {self.path}: {exc} "
                               f"(waited {self.busy_timeout:g}s for the lock)")

    def _read_only_error(self) -> ConfigError:
        return ConfigError(
            f"lease store {self.path} is read-only here: a lease cannot be taken, renewed or "
            f"released (`xenhil lab status` still reads it)",
            help=f"make {self.path} and its folder writable by this user (chmod u+w, or run as "
                 f"the store's owner), or pass --lab-db with a store this user can write")

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        if self.read_only:
            raise self._read_only_error()
        with self._connection() as conn:
            cur = conn.cursor()
            self._locked(lambda: cur.execute("BEGIN IMMEDIATE"))
            try:
                yield cur
            except sqlite3.DatabaseError as exc:
                if conn.in_transaction:
                    conn.rollback()
                raise self._error_of(exc) from None
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            self._locked(lambda: cur.execute("COMMIT"))

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute("BEGIN")   # one snapshot for the statements of the block
                yield cur
            except sqlite3.DatabaseError as exc:
                raise self._error_of(exc) from None
            finally:
                if conn.in_transaction:
                    conn.rollback()

    def _now_in(self, cur: Any) -> float:
        # All holders are processes of this machine: its clock is the store's.
        return time.time()

    def __repr__(self) -> str:
        return f"SQLiteLeaseStore({str(self.path)!r})"


def _writable(path: Path) -> bool:
    """This user may change the store: the file, and its folder (SQLite
    creates its -wal and -shm files beside it)."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)
