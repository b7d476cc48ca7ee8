"""xenhil installs under its own name (issue #16): its packages are
``xenhil.harness`` and ``xenhil.fixtures`` (from the checkout's harness/ and
fixtures/), so installing it beside PyPI's ``fixtures`` (a common test
dependency) leaves both working, from a wheel and from an editable install.

Each install goes into a new virtual environment (made here, removed with
tmp_path) with PyPI's ``fixtures`` beside xenhil, built by pip as a user's
``pip install`` would (PyPI for the build's setuptools).  The environment
reaches xenhil's own dependencies (pytest, paramiko, ...) through a ``.pth``
line to this interpreter's site-packages, after its own, so that nothing of
this checkout's install is imported but what the new environment installed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("harness", "fixtures")

pytestmark = pytest.mark.slow


def installed_packages() -> list[str]:
    """The packages pyproject.toml installs."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["packages"]


def packages_in_tree(root: Path) -> list[str]:
    """Every package of harness/ and fixtures/, by the name it is installed as."""
    return sorted("xenhil." + ".".join(init.parent.relative_to(root).parts)
                  for source in SOURCES for init in (root / source).rglob("__init__.py"))


def test_every_package_of_the_tree_is_installed_under_xenhil():
    missing = sorted(set(packages_in_tree(ROOT)) - set(installed_packages()))
    assert not missing, ("packages not installed (a wheel would lack them): add "
                         + ", ".join(f'"{name}"' for name in missing)
                         + " to [tool.setuptools] packages in pyproject.toml")
    assert all(name.startswith("xenhil.") for name in installed_packages())


def test_a_package_missing_from_pyproject_is_named(tmp_path):
    """The check above names a package that pyproject.toml forgot."""
    for source in SOURCES:
        shutil.copytree(ROOT / source, tmp_path / source,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "harness" / "newpart").mkdir()
    (tmp_path / "harness" / "newpart" / "__init__.py").write_text("")
    missing = set(packages_in_tree(tmp_path)) - set(installed_packages())
    assert missing == {"xenhil.harness.newpart"}


def _source_copy(tmp_path: Path) -> Path:
    """What pip needs to build xenhil, copied, so that the build leaves the
    checkout as it was (egg-info, build/)."""
    src = tmp_path / "src"
    for source in SOURCES:
        shutil.copytree(ROOT / source, src / source, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", src / "pyproject.toml")
    return src


def _pip(*args: str, python: Path | None = None) -> None:
    target = ["--python", str(python)] if python else []
    done = subprocess.run([sys.executable, "-m", "pip", *target, *args, "--disable-pip-version-check",
                           "-q"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def _environment(tmp_path: Path) -> Path:
    """A new virtual environment with PyPI's fixtures; its python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # After the environment's own packages: xenhil's dependencies, not xenhil.
    Path(purelib, "zz_xenhil_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _pip("install", "fixtures", python=python)
    return python


PROBE = """
import importlib.metadata, importlib.util, json, sys
import fixtures
import xenhil.harness.plugin, xenhil.fixtures.lab
plugins = [e.value for e in importlib.metadata.entry_points(group="pytest11") if e.name == "xenhil"]
print(json.dumps({
    "fixtures_file": fixtures.__file__,
    "fixtures_has_Fixture": hasattr(fixtures, "Fixture"),
    "fixtures_dist": importlib.metadata.distribution("fixtures").metadata["Name"],
    "plugin_file": xenhil.harness.plugin.__file__,
    "xenhil_fixtures_file": xenhil.fixtures.lab.__file__,
    "top_level_harness": importlib.util.find_spec("harness") is not None,
    "pytest11": plugins,
}))
"""


def _probe(python: Path, cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(python), "-c", PROBE], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _pytest_help(python: Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(python), "-m", "pytest", "--help", "-p", "no:cacheprovider"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_wheel_installs_only_under_xenhil_and_leaves_pypis_fixtures_working(tmp_path):
    src = _source_copy(tmp_path)
    _pip("wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(src))
    wheel = next((tmp_path / "dist").glob("xenhil-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    strays = [n for n in names if not n.startswith(("xenhil/", "xenhil-"))]
    assert not strays, f"the wheel installs outside xenhil/: {strays[:5]}"
    # Data files travel with their packages (the inventory schema, the catalog).
    assert any(n.startswith("xenhil/harness/") and n.endswith(".json") for n in names)
    assert any(n.startswith("xenhil/fixtures/") and n.endswith(".yaml") for n in names)

    python = _environment(tmp_path)
    _pip("install", "--no-deps", str(wheel), python=python)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = _probe(python, elsewhere)
    site = str(python.parents[1])
    assert found["fixtures_has_Fixture"] and found["fixtures_dist"] == "fixtures"
    assert found["fixtures_file"].startswith(site)
    assert found["plugin_file"].startswith(site) and found["xenhil_fixtures_file"].startswith(site)
    assert found["top_level_harness"] is False
    assert found["pytest11"] == ["xenhil.harness.plugin"]
    # pytest loads the plugin from the wheel: its options are there.
    assert "--lab" in _pytest_help(python, elsewhere)
    # The command line works from the wheel (its data files included).
    done = subprocess.run([str(python.parent / "xenhil"), "split", "check", "name=qnet,vifs=nic1",
                           "name=qall,ui,ide"], cwd=elsewhere, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_editable_install_serves_the_checkout_and_leaves_pypis_fixtures_working(tmp_path):
    src = _source_copy(tmp_path)
    python = _environment(tmp_path)
    _pip("install", "--no-deps", "-e", str(src), python=python)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = _probe(python, elsewhere)
    assert found["fixtures_has_Fixture"] and found["fixtures_dist"] == "fixtures"
    assert found["plugin_file"] == str(src / "harness" / "plugin.py")
    assert found["xenhil_fixtures_file"] == str(src / "fixtures" / "lab.py")
    assert found["top_level_harness"] is False
    assert "--lab" in _pytest_help(python, elsewhere)
