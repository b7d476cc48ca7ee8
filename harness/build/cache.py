"""The build cache: content-addressed, size-limited, never half-complete.

Layout under ``<cache>/build-cache/``:

- ``builds/<key>/``: a finished build (``dist/``, ``manifest.json``,
  ``timings.json``).  It is made in ``builds/.tmp-<key>-<pid>/`` and renamed
  into place as the last step, so an interrupted build leaves only a dot
  folder that nothing reads; the next prune removes it once its process is
  gone.
- ``components/<name>-<key>/``: one component's install tree, made the
  same way; several builds share it.
- ``work/<name>-<key>/``: a kept object tree per component and options
  (sources, configure output, objects), so a one-patch change rebuilds only
  what make finds out of date.  Guarded by a lock file (flock).
- ``logs/<key>/``: build logs, kept also when a build fails.

Every entry has a ``last-used`` file whose mtime is its last use; the cache
is pruned least-recently-used first down to its size limit.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# $XENHIL_BUILD_CACHE_GB overrides it; read and checked by `xenhil build`
# (harness.cli.build), not here: a bad value at import broke every verb.
DEFAULT_LIMIT_GB = 25.0
KINDS = ("builds", "components", "work", "logs")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    path: Path
    size: int
    last_used: float

    @property
    def manifest(self) -> dict | None:
        path = self.path / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else None


def cache_root(cache: Path) -> Path:
    return cache / "build-cache"


def _size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def touch(entry: Path) -> None:
    (entry / "last-used").touch()


def entries(cache: Path, kinds=KINDS) -> list[Entry]:
    out = []
    for kind in kinds:
        folder = cache_root(cache) / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            marker = path / "last-used"
            used = marker.stat().st_mtime if marker.exists() else path.stat().st_mtime
            out.append(Entry(kind, path.name, path, _size(path), used))
    return out


@contextmanager
def staging(final: Path):
    """A temporary folder beside ``final``, renamed to it on success and
    removed on any failure: ``final`` appears complete or not at all."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        touch(tmp)
        if final.exists():      # another process finished the same inputs first
            shutil.rmtree(tmp)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` (a lock file), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(cache: Path) -> list[Path]:
    """Temporary folders of builds whose process is gone."""
    out = []
    for kind in KINDS:
        folder = cache_root(cache) / kind
        for path in folder.glob(".tmp-*") if folder.is_dir() else ():
            try:
                pid = int(path.name.rsplit("-", 1)[1])
            except ValueError:
                continue
            if not _pid_alive(pid):
                out.append(path)
    return out


def prune(cache: Path, limit_bytes: int, *, keep: set[Path] = frozenset(),
          remove_all: bool = False) -> list[Entry]:
    """Remove stale temporaries, then least recently used entries until the
    cache holds at most ``limit_bytes`` (everything but ``keep`` when
    ``remove_all``).  Returns what was removed."""
    for tmp in stale_temporaries(cache):
        shutil.rmtree(tmp, ignore_errors=True)
    all_entries = sorted(entries(cache), key=lambda e: e.last_used)
    total = sum(e.size for e in all_entries)
    removed = []
    for entry in all_entries:
        if not remove_all and total <= limit_bytes:
            break
        if entry.path in keep:
            continue
        if entry.kind == "work":
            # A kept object tree in use by a running build is locked: skip it.
            lock = entry.path.parent / f".{entry.name}.lock"
            with open(lock, "a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                fcntl.flock(fh, fcntl.LOCK_UN)
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
        total -= entry.size
        removed.append(entry)
    return removed


def age(seconds: float) -> str:
    seconds = max(0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"
