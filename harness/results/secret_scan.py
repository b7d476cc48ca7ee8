"""Prove that a lab's secrets reached no file of a run: every credential an
inventory references (BMC and SOL passwords, SSH key passphrases) and every
line of its private keys, in every form of harness.secrets.SECRET_FORMS
(as is, repr/JSON/URL escaped, hex, base64, a long prefix), searched for in
every file under the given folders and files, SQLite stores included (their
pages, their write-ahead log, and every value read back through SQLite, so a
value split across pages is found too).

The scan answers "none" only when it checked everything: a reference it
cannot resolve here, a folder or file that does not exist, or a file it
cannot read is an error (:class:`ScanIncomplete`), not a pass.  Only the
file, the kind of secret and the form are ever printed, never a value.
Files are read in chunks: memory stays bounded whatever their size.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from xenhil.harness.errors import ConfigError
from xenhil.harness.secrets import SECRET_FORMS, secret_forms

CHUNK = 4 << 20
SQLITE_MAGIC = b"SQLite format 3\0"


class ScanIncomplete(ConfigError):
    """The scan could not check everything it was asked to: not a pass."""

    help = ("make every secret resolvable where the scan runs (export the variables, make the "
            "files readable) and give folders and files that exist")


@dataclass(frozen=True)
class Leak:
    path: Path
    what: str          # "power password of vhost1 (base64)", never the value


def inventory_secrets(inventory, store_urls: tuple[str | None, ...] = ()) -> dict[str, str]:
    """Secret value -> what it is, for every host of ``inventory`` (and a
    PostgreSQL store's password, its lease_db's or one of ``store_urls``'s).
    Raises :class:`ScanIncomplete` naming each reference that cannot be
    resolved here: a secret the scan cannot know is a secret it cannot look for."""
    from xenhil.harness.lab.credentials import resolve_all
    values, unresolved = resolve_all(inventory, store_urls)
    if unresolved:
        raise ScanIncomplete(f"cannot check {len(unresolved)} secret(s) of {inventory.path}: "
                             + " | ".join(unresolved))
    return values


def needles(secrets: dict[str, str]) -> list[tuple[bytes, str, str]]:
    """(bytes to look for, what it is, its form) for every form of every
    secret, in the order of SECRET_FORMS (the value as is first)."""
    found: dict[bytes, tuple[str, str]] = {}
    for value, what in secrets.items():
        for text, form in secret_forms(value).items():
            found.setdefault(text.encode("utf-8"), (what, form))
    order = {form: i for i, form in enumerate(SECRET_FORMS)}
    return sorted(((n, w, f) for n, (w, f) in found.items()), key=lambda x: (order[x[2]], -len(x[0])))


def _label(what: str, form: str) -> str:
    return what if form == "plain" else f"{what} ({form})"


def _entries(targets: Iterable[Path]) -> Iterator[tuple[Path, bool]]:
    """(path, whether it is a regular file) of every target and of every
    file and folder under the folders among them."""
    for target in targets:
        target = Path(target)
        try:
            mode = target.stat().st_mode
        except FileNotFoundError:
            raise ScanIncomplete(f"secret scan: {target} does not exist, so it cannot be checked",
                                 help="give the folders and files the run wrote (the Allure "
                                      "results, the report, the run's artifacts folder, "
                                      "results.sqlite)") from None
        if stat.S_ISREG(mode):
            yield target, True
            continue
        if not stat.S_ISDIR(mode):
            continue   # a FIFO, socket or device holds no written data
        for root, dirs, names in os.walk(target, onerror=_walk_error):
            dirs.sort()
            for name in dirs:
                yield Path(root) / name, False
            for name in sorted(names):
                path = Path(root) / name
                try:
                    yield path, stat.S_ISREG(path.lstat().st_mode)
                except FileNotFoundError:
                    continue   # removed while walking


def _files(targets: Iterable[Path]) -> Iterator[Path]:
    return (path for path, regular in _entries(targets) if regular)


def _walk_error(exc: OSError) -> None:
    raise ScanIncomplete(f"secret scan: cannot list {exc.filename}: {exc.strerror}",
                         help="make the folder readable by the user running the scan")


def _raw_hits(path: Path, wanted: list[tuple[bytes, str, str]]) -> dict[str, str]:
    overlap = max((len(n) for n, _, _ in wanted), default=1) - 1
    hits: dict[str, str] = {}
    tail = b""
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                data = tail + chunk
                _match(data, wanted, hits)
                tail = data[-overlap:] if overlap else b""
    except OSError as exc:
        raise ScanIncomplete(f"secret scan: cannot read {path}: {exc.strerror}",
                             help="make it readable by the user running the scan") from None
    return hits


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _sqlite_values(path: Path) -> Iterator[bytes]:
    """Every text and blob value of every table, read through SQLite from a
    copy (with its write-ahead log), so the run's own file is not touched."""
    with tempfile.TemporaryDirectory(prefix="xenhil-scan-") as tmp:
        copy = Path(tmp) / "store.sqlite"
        shutil.copyfile(path, copy)
        wal = path.with_name(path.name + "-wal")
        if wal.is_file():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        conn = sqlite3.connect(copy)
        try:
            tables = [row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                quoted = '"' + table.replace('"', '""') + '"'
                for row in conn.execute(f"SELECT * FROM {quoted}"):
                    for value in row:
                        if isinstance(value, str):
                            yield value.encode("utf-8", "surrogatepass")
                        elif isinstance(value, bytes):
                            yield value
        finally:
            conn.close()


def _match(data: bytes, wanted: list[tuple[bytes, str, str]], hits: dict[str, str]) -> None:
    """Record in ``hits`` (what -> form) the first form of each secret in ``data``."""
    for needle, what, form in wanted:
        if what not in hits and needle in data:
            hits[what] = form


def _sqlite_hits(path: Path, wanted: list[tuple[bytes, str, str]]) -> dict[str, str]:
    hits: dict[str, str] = {}
    try:
        for value in _sqlite_values(path):
            _match(value, wanted, hits)
    except (sqlite3.Error, OSError) as exc:
        raise ScanIncomplete(f"secret scan: cannot read the SQLite store {path}: {exc}",
                             help="scan an undamaged copy of the store") from None
    return hits


def scan(targets: Iterable[Path], secrets: dict[str, str]) -> list[Leak]:
    """Every file under ``targets`` (folders or files) holding a form of one
    of ``secrets``.  Raises :class:`ScanIncomplete` when a target is missing
    or a file cannot be read."""
    wanted = needles(secrets)
    leaks: list[Leak] = []
    for path, regular in _entries(targets):
        # A name is written too: a test's dump-PASSWORD.txt, a folder named
        # after a test id that held a secret.
        named: dict[str, str] = {}
        _match(os.fsencode(path.name), wanted, named)
        leaks.extend(Leak(path, f"{_label(what, form)} in its name") for what, form in sorted(named.items()))
        if not regular:
            continue
        hits = _raw_hits(path, wanted)
        if _is_sqlite(path):
            for what, form in _sqlite_hits(path, wanted).items():
                hits.setdefault(what, form)
        leaks.extend(Leak(path, _label(what, form)) for what, form in sorted(hits.items()))
    return leaks


def scanned_files(targets: Iterable[Path]) -> int:
    """How many files :func:`scan` reads under ``targets``."""
    return sum(1 for _ in _files(targets))


__all__ = ["Leak", "ScanIncomplete", "inventory_secrets", "needles", "scan", "scanned_files"]
