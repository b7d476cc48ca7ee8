"""Which xenhil produced a run: its version and, in a git checkout, the
commit and whether tracked files differ from it.  Recorded with every run
(fixtures.run.provenance), so a report names the code behind its verdicts."""
from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GIT_TIMEOUT_S = 10


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_version(root: Path = PROJECT_ROOT) -> str:
    """``xenhil 0.1.0, git 2ee9c04a1b2c`` (``+ uncommitted changes`` when a
    tracked file differs from that commit), or ``(not a git checkout)``."""
    try:
        version = metadata.version("xenhil")
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    commit = _git(root, "rev-parse", "--short=12", "HEAD")
    if commit is None:
        return f"xenhil {version} (not a git checkout)"
    changed = _git(root, "status", "--porcelain", "--untracked-files=no")
    return f"xenhil {version}, git {commit}" + (" + uncommitted changes" if changed else "")


@functools.lru_cache(maxsize=1)
def this_code() -> str:
    """:func:`code_version` of this checkout, asked once per process."""
    return code_version()
