"""The code a run names in its provenance (harness/version.py), against
real git repositories made here."""
from __future__ import annotations

import subprocess
from pathlib import Path

from xenhil.harness.version import code_version


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


def test_a_checkout_names_its_commit_and_says_when_tracked_files_changed(tmp_path: Path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    commit = _git(tmp_path, "rev-parse", "--short=12", "HEAD")
    clean = code_version(tmp_path)
    assert clean.startswith("xenhil ") and clean.endswith(f", git {commit}"), clean
    (tmp_path / "notes.txt").write_text("untracked files are not the code\n")
    assert code_version(tmp_path) == clean
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) == f"{clean} + uncommitted changes"


def test_a_folder_outside_git_says_so(tmp_path: Path):
    assert code_version(tmp_path).endswith(" (not a git checkout)")
