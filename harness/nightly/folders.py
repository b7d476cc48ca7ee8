"""The nights' folders under the configuration's ``reports``, shared by
every nightly run that writes there::

    REPORTS/
      .report.lock          held while a run publishes a build's report
                            (history in, allure generate, history out) or prunes
      history/BUILD.jsonl   Allure's history of each build: the newest
                            published report's, replaced whole
      results.sqlite        the results store, unless results_db says otherwise
      latest -> NIGHT       the newest finished night
      NIGHT/                one per run: its UTC start, the runner, 6 random hex digits
        .running            locked by its run for as long as the run lives
        night.json, summary.txt
        BUILD/allure-results/  BUILD/report/ (index.html, triage.txt)
        BUILD/history.jsonl    the copy Allure read and appended to
        BUILD/pytest.log       BUILD/report.log
        artifacts/RUN_ID/

Why both per-run folders and a lock.  Each run writes everything it makes
into a folder no other run can have (created with mkdir, named by start
time, runner and a random part), so runs on one machine or on several
(``reports`` on a shared filesystem) never write into each other's results,
artifacts or reports, and take no lock for the hours their tests run.  The
one thing runs share is each build's Allure history: a run takes the newest
history, Allure appends this run, and the result becomes the newest.  Two
runs doing that at once would each append to the same old history and the
second to finish would drop the first's run from the trend, so that step
(seconds) holds ``.report.lock``; so does pruning, so that a run never
copies the history of a report being deleted.  The locks are flock(2)
locks: the kernel drops them when their process dies, so a killed run
never leaves the folder locked, and a night whose ``.running`` lock is free
has ended.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

from xenhil.harness.errors import InfrastructureError

#: How long a run waits for the report lock.  Its holder does one build's
#: report (allure generate is given 600 s, the secret scan reads the run's
#: files) or one prune: half an hour held means the holder hangs.
LOCK_WAIT_S = 1800.0
#: How often a waiting run says it is still waiting.
LOCK_PROGRESS_S = 30.0

LOCK_FILE = ".report.lock"
RUNNING_FILE = ".running"
HISTORY_FOLDER = "history"
LATEST = "latest"

#: A night's folder name: UTC start, runner, random part.  Only folders of
#: this shape are ever pruned.
NIGHT_NAME = re.compile(r"\d{8}T\d{6}Z-[A-Za-z0-9_.-]{1,24}-[0-9a-f]{6}")


def runner_name() -> str:
    """This machine's name as a night's folder can carry it."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname() or "runner").strip(".-")
    return (name or "runner")[:24]


class Night:
    """One run's folder, created new and locked as running until
    :meth:`close` (or the process's end)."""

    def __init__(self, root: Path, runner: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        runner = runner or runner_name()
        while True:
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            self.id = f"{stamp}-{runner}-{secrets.token_hex(3)}"
            self.path = self.root / self.id
            try:
                self.path.mkdir()       # never a folder another run has
                break
            except FileExistsError:
                continue
        self._running = open(self.path / RUNNING_FILE, "w")
        fcntl.flock(self._running, fcntl.LOCK_EX)
        self._running.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._running.flush()

    def build_folder(self, build: str) -> Path:
        folder = self.path / build
        folder.mkdir(exist_ok=True)
        return folder

    def close(self) -> None:
        if not self._running.closed:
            self._running.close()      # closing drops the flock


def is_running(night: Path) -> bool:
    """Whether the run of ``night`` still lives (holds its ``.running``)."""
    try:
        with open(night / RUNNING_FILE, "r") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return True
                raise
            return False
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def report_lock(root: Path, holder: str, say: Callable[[str], None]) -> Iterator[None]:
    """``REPORTS/.report.lock`` held, waiting at most :data:`LOCK_WAIT_S`
    and saying every :data:`LOCK_PROGRESS_S` who holds it.  ``holder``:
    what this run writes in it for others' messages."""
    path = Path(root) / LOCK_FILE
    with open(path, "a+") as lock:
        started = time.monotonic()
        said = started
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            now = time.monotonic()
            if now - started > LOCK_WAIT_S:
                raise InfrastructureError(
                    f"the report lock {path} stayed held for {LOCK_WAIT_S:.0f} s by {_holder(path)}",
                    help="a nightly run hangs while publishing: stop it (its pid is named), "
                         "then run this night again")
            if now - said >= LOCK_PROGRESS_S:
                say(f"waiting {now - started:.0f} s for the report lock, held by {_holder(path)}")
                said = now
            time.sleep(0.2)
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(holder + "\n")
            lock.flush()
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another run"
    except OSError:
        return "another run"


# --------------------------------------------------------------------------
# History, latest, retention: call these with the report lock held.
# --------------------------------------------------------------------------

def history_file(root: Path, build: str) -> Path:
    return Path(root) / HISTORY_FOLDER / f"{build}.jsonl"


def take_history(root: Path, build: str, into: Path) -> int:
    """The build's newest history copied to ``into`` (nothing when the
    build has none yet); the runs it holds."""
    source = history_file(root, build)
    if not source.is_file():
        into.unlink(missing_ok=True)
        return 0
    shutil.copyfile(source, into)
    return sum(1 for line in into.read_text().splitlines() if line.strip())


def publish_history(root: Path, build: str, source: Path) -> None:
    """``source`` (the history Allure appended this run to) becomes the
    build's newest, replacing the old one whole: a run that dies half-way
    leaves the old one, never half a file."""
    target = history_file(root, build)
    target.parent.mkdir(exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def set_latest(root: Path, night: str) -> None:
    link = Path(root) / LATEST
    temporary = link.with_name(f".{LATEST}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(night)
    os.replace(temporary, link)


def nights(root: Path) -> list[Path]:
    """Every night's folder, oldest first (the UTC start leads the name)."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.is_symlink()
                  and NIGHT_NAME.fullmatch(p.name))


def prune(root: Path, keep: int, current: str) -> list[str]:
    """Deletes the nights beyond the newest ``keep`` that have ended; a
    night whose run still lives is neither counted nor deleted, and the
    current one never is.  The names deleted."""
    ended = [n for n in nights(root) if n.name == current or not is_running(n)]
    doomed = [n for n in ended[:-keep] if n.name != current] if keep else []
    for night in doomed:
        shutil.rmtree(night)
    return [n.name for n in doomed]


def write_json(path: Path, data: object) -> None:
    """``data`` as ``path``, replaced whole (a reader never sees half)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


__all__ = ["Night", "is_running", "report_lock", "history_file", "take_history",
           "publish_history", "set_latest", "nights", "prune", "write_json", "runner_name",
           "LOCK_WAIT_S", "NIGHT_NAME"]
