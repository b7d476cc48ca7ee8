"""The import graph (issue #16): the plugin loads the fixtures, the fixtures
use the rest of harness, and nothing imports back up that chain; nothing
under harness/ but the plugin imports pytest.

The graph is grimp's (every import statement, a function's lazy imports
included) plus the modules ``pytest_plugins`` loads by name
(tests/support/import_graph.py), built in a subprocess from a source tree,
so that the checks are shown to fail on a copy with a planted cycle or a
planted pytest import before they are trusted to pass on this tree.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "support" / "import_graph.py"


def graph_of(root: Path) -> dict:
    """The import-graph report of the tree at ``root`` (``root/xenhil``
    holds its harness/ and fixtures/; first on the path, ahead of the
    installed checkout)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, str(SCRIPT), str(root)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def problems(report: dict) -> list[str]:
    """What the checks refuse, one line each ([] for a good tree)."""
    lines = [f"import cycle between packages: {edge} (by {', '.join(report['layer_cycle_imports'][edge])})"
             for edge in report["layer_cycles"]]
    lines += [f"{module} imports pytest: only harness.plugin may (move the pytest glue to "
              f"fixtures/ or the plugin)" for module in report["harness_pytest_importers"]]
    return lines


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """A copy of harness/ and fixtures/ to plant faults in, laid out as
    installed (xenhil/harness, xenhil/fixtures)."""
    copy = tmp_path_factory.mktemp("tree")
    for package in ("harness", "fixtures"):
        shutil.copytree(ROOT / package, copy / "xenhil" / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    return copy


def _planted(tree_copy: Path, tmp_path: Path, path: str, line: str) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(tree_copy, tree)
    target = tree / "xenhil" / path
    target.write_text(target.read_text() + f"\n\ndef _planted():\n    {line}\n")
    return tree


def test_a_planted_cycle_between_the_plugin_and_the_fixtures_is_found(tree_copy, tmp_path):
    # The import the fixtures had before issue #16 (the plugin's stash key).
    tree = _planted(tree_copy, tmp_path, "fixtures/scheduling.py",
                    "from xenhil.harness.plugin import RUN_OPTIONS")
    found = problems(graph_of(tree))
    assert found == ["import cycle between packages: fixtures -> plugin "
                     "(by fixtures.scheduling -> harness.plugin)",
                     "import cycle between packages: plugin -> fixtures "
                     "(by harness.plugin -> fixtures.guest, harness.plugin -> fixtures.lab, "
                     "harness.plugin -> fixtures.reporting, harness.plugin -> fixtures.run, "
                     "harness.plugin -> fixtures.scheduling)"]


def test_a_planted_cycle_through_the_rest_of_harness_is_found(tree_copy, tmp_path):
    tree = _planted(tree_copy, tmp_path, "harness/lab/lab.py", "import xenhil.fixtures.health")
    found = problems(graph_of(tree))
    assert any(line.startswith("import cycle between packages: harness -> fixtures "
                               "(by harness.lab.lab -> fixtures.health)") for line in found), found


def test_a_planted_pytest_import_in_harness_is_found(tree_copy, tmp_path):
    tree = _planted(tree_copy, tmp_path, "harness/run_config.py", "import pytest")
    assert problems(graph_of(tree)) == [
        "harness.run_config imports pytest: only harness.plugin may (move the pytest glue to "
        "fixtures/ or the plugin)"]


def test_the_tree_has_no_cycle_between_packages_and_no_pytest_below_the_plugin(tmp_path):
    # This checkout's own files, under the namespace they are installed in.
    (tmp_path / "xenhil").mkdir()
    for package in ("harness", "fixtures"):
        (tmp_path / "xenhil" / package).symlink_to(ROOT / package)
    report = graph_of(tmp_path)
    assert problems(report) == []
    # The direction the checks rely on: plugin -> fixtures -> harness.
    assert report["layers"] == {"plugin": ["fixtures", "harness"], "fixtures": ["harness"],
                                "harness": []}
