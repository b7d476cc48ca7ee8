"""`xenhil bisect` (issue 17 item 5): the search itself for every position
of the bad patch, and a whole bisection without Xen: real pytest runs (one
per prefix, as on the lab), the real results store, read back as the lab's
runs are, against a STAND-IN suite whose test fails when the prefix it runs
on holds the planted patch, and a STAND-IN build step that only records the
prefix's series (the real one is `xenhil build`, tested in
tests/test_build_*.py).  The lab demonstration (a planted bug of the mutant
catalog in a real series) is in the closing notes of issue 17."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xenhil.harness.bisect import (BAD, GOOD, SAYS_NOTHING, Bisection, max_builds, prefix_series, report,
                                   search)
from xenhil.harness.build.series import parse_series
from xenhil.harness.mutants.qualify import Build

REPO = Path(__file__).resolve().parents[1]
TEST = "suites/standin/test_standin.py::test_stand_in_bisect"


@pytest.mark.parametrize("patches", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
def test_search_names_every_position_of_the_bad_patch_within_its_build_budget(patches):
    for bad in range(1, patches + 1):
        judged = []

        def judge(prefix: int) -> str:
            judged.append(prefix)
            return BAD if prefix >= bad else GOOD

        assert search(patches, judge) == (bad, None)
        assert len(judged) <= max_builds(patches) == 1 + math.ceil(math.log2(patches))
        assert judged[0] == patches, "the whole series is confirmed failing first"
        assert len(set(judged)) == len(judged), "no prefix is built twice"


def test_search_blames_nothing_when_a_run_says_nothing_or_the_series_passes():
    assert search(8, lambda k: GOOD)[0] is None
    assert "passes the test: nothing to bisect" in search(8, lambda k: GOOD)[1]
    first, why = search(8, lambda k: SAYS_NOTHING if k == 4 else (BAD if k >= 6 else GOOD))
    assert first is None and "first 4 patches says nothing" in why and "no patch is blamed" in why


# --------------------------------------------------------------------------
# A whole bisection against a stand-in suite
# --------------------------------------------------------------------------

# STAND-IN suite (hand-written; no Xen): the build step writes the prefix's
# quilt series to $STANDIN_BISECT_STATE/series; the test fails as a product
# bug when it holds a patch named "*planted*", and fails as the lab's fault
# the first time it runs on the prefix named in .../flaky.
STAND_IN_SUITE = '''
"""STAND-IN suite for tests/test_bisect.py: not a Xen test."""
import os
from pathlib import Path

from xenhil.harness.errors import InfrastructureError, ProductError


def test_stand_in_bisect(split):
    state = Path(os.environ["STANDIN_BISECT_STATE"])
    series = (state / "series").read_text()
    flaky = state / "flaky"
    if flaky.exists() and flaky.read_text() == series:
        flaky.unlink()
        raise InfrastructureError("stand-in: the lab lost the host")
    if "planted" in series:
        raise ProductError("stand-in: the planted patch broke the map cache")
'''


def _patch(name: str) -> str:
    """A STAND-IN patch (hand-written): it adds a file of its own."""
    return (f"Subject: [PATCH] {name}\n\n---\n"
            f"--- /dev/null\n+++ b/doc/{name}.txt\n@@ -0,0 +1 @@\n+{name}\n")


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch) -> dict:
    suite = tmp_path / "suites" / "standin"
    suite.mkdir(parents=True)
    (suite / "test_standin.py").write_text(STAND_IN_SUITE)
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump({
        "lease_db": f"sqlite://{tmp_path / 'leases.sqlite'}",
        "hosts": [{"name": "standin1", "address": "127.0.0.1", "ssh": "none",
                   "power": {"kind": "none"}}]}))
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("STANDIN_BISECT_STATE", str(state))
    return {"root": tmp_path, "state": state}


def _series(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / f"{name}.patch").write_text(_patch(name))
    (folder / "series").write_text("".join(f"{name}.patch\n" for name in names))
    return folder


def _bisection(stand_in: dict, names: list[str], built: list[int], bisection_id: str = "b1",
               **kw) -> Bisection:
    patches = parse_series(_series(stand_in["root"] / f"given-{bisection_id}", names))

    def stand_in_build(xen, qemu, log, jobs=None) -> Build:
        """STAND-IN for `xenhil build`: records what the prefix holds."""
        text = (Path(xen) / "series").read_text() if xen else ""
        (stand_in["state"] / "series").write_text(text)
        built.append(text.count(".patch"))
        return Build(None, key=f"standin-{len(built)}", seconds=0.0)

    root = stand_in["root"]
    return Bisection(patches, "xen", None, TEST, "single+probe", str(root / "lab.yaml"),
                     root / "artifacts" / bisection_id, root, bisection_id, build=stand_in_build,
                     say=lambda line: None, **kw)


def test_a_bisection_names_the_planted_patch_from_real_runs_and_their_store(stand_in):
    names = ["0001-one", "0002-two", "0003-three", "0004-planted", "0005-five", "0006-six"]
    built: list[int] = []
    bisection = _bisection(stand_in, names, built)
    outcome = bisection.execute()
    assert outcome.first_bad == 4 and outcome.stopped is None
    assert outcome.builds == len(built) <= max_builds(len(names)) == 4
    assert built[0] == 6 and 3 in built and 4 in built, built
    text = report(bisection, outcome)
    assert "first bad patch: 4 of 6, 0004-planted.patch" in text
    assert "the planted patch broke the map cache" in text       # the failure's own message
    bad = bisection.steps[4].last
    assert bad.failure_class == "product" and bad.log.is_file()
    assert f"and passes without it: run {bisection.steps[3].last.run_id}" in text


def test_a_run_that_fails_as_the_lab_is_run_again_and_never_blames(stand_in):
    names = ["0001-one", "0002-planted", "0003-three", "0004-four"]
    # The prefix of 2 patches (the planted one's) fails as the lab's fault once.
    (stand_in["state"] / "flaky").write_text("0001-one.patch\n0002-planted.patch\n")
    built: list[int] = []
    bisection = _bisection(stand_in, names, built)
    outcome = bisection.execute()
    assert outcome.first_bad == 2
    step = bisection.steps[2]
    assert [(a.outcome, a.failure_class) for a in step.attempts] == \
        [("broken", "infrastructure"), ("failed", "product")]

    # With no retry, the lab's failure stops the bisection: no patch is blamed.
    (stand_in["state"] / "flaky").write_text("0001-one.patch\n0002-planted.patch\n")
    built.clear()
    bisection = _bisection(stand_in, names, built, "b2", retries=0)
    outcome = bisection.execute()
    assert outcome.first_bad is None and "first 2 patches says nothing" in outcome.stopped
    assert "no patch blamed" in report(bisection, outcome)


def test_a_prefix_that_does_not_build_stops_the_bisection(stand_in):
    names = ["0001-one", "0002-two", "0003-planted"]
    bisection = _bisection(stand_in, names, [])
    bisection.build = lambda xen, qemu, log, jobs=None: Build(None, error="patch 0002 does not apply")
    outcome = bisection.execute()
    assert outcome.first_bad is None and outcome.builds == 1
    assert "do not build (patch 0002 does not apply)" in outcome.stopped


def test_prefix_series_writes_the_first_patches_in_order(tmp_path: Path):
    given = parse_series(_series(tmp_path / "given", ["0001-a", "0002-b", "0003-c"]))
    assert prefix_series(given, 0, tmp_path / "p0") is None
    folder = prefix_series(given, 2, tmp_path / "p2")
    assert (folder / "series").read_text() == "0001-a.patch\n0002-b.patch\n"
    assert [p.name for p in parse_series(folder)] == ["0001-a.patch", "0002-b.patch"]


# --------------------------------------------------------------------------
# The command: bad input before anything is built or any host touched
# --------------------------------------------------------------------------

def _xenhil_bisect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XENHIL_LAB"}
    return subprocess.run([sys.executable, "-m", "xenhil.harness.cli.main", "bisect",
                           "--artifacts", str(tmp_path / "artifacts"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("args, said", [
    (["--test", "suites/pci/test_pci.py::test_guest_sees_exactly_the_expected_devices",
      "--split", "single"], "no series to bisect"),
    (["--xen-series", "{series}", "--qemu-series", "{series}",
      "--test", "suites/pci/test_pci.py::test_guest_sees_exactly_the_expected_devices",
      "--split", "single"], "two series given and no --bisect"),
    (["--xen-series", "{series}", "--bisect", "qemu",
      "--test", "suites/pci/test_pci.py::test_guest_sees_exactly_the_expected_devices",
      "--split", "single"], "--bisect qemu: no --qemu-series given"),
    (["--xen-series", "{series}", "--test", "suites/pci/test_pci.py::test_no_such_test",
      "--split", "single"], "--test: suites/pci/test_pci.py has no test test_no_such_test"),
    (["--xen-series", "{series}", "--test", "pci::guest", "--split", "single"],
     "is not a test id"),
    (["--xen-series", "{series}",
      "--test", "suites/pci/test_pci.py::test_guest_sees_exactly_the_expected_devices",
      "--split", "qnet+nope"], "--split 'qnet+nope': not in the split catalog"),
    (["--xen-series", "{series}", "--retries", "-1",
      "--test", "suites/pci/test_pci.py::test_guest_sees_exactly_the_expected_devices",
      "--split", "single"], "--retries"),
    (["--xen-series", "{series}",
      "--test", "suites/pci/test_pci.py::test_guest_sees_exactly_the_expected_devices",
      "--split", "single", "--lab", "{missing}"], "--lab"),
])
def test_bad_input_exits_2_naming_the_option_before_anything_runs(tmp_path, args, said):
    series = _series(tmp_path / "s", ["0001-one"])
    args = [a.format(series=series, missing=tmp_path / "no-lab.yaml") for a in args]
    result = _xenhil_bisect(tmp_path, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr, result.stderr
    assert not (tmp_path / "artifacts").exists(), "nothing was built or run"


def test_the_demo_series_plants_the_catalogs_mutant_as_its_third_patch():
    """README's demonstration (lab/series/bisect-demo) names patch 3: it must
    stay the mutant catalog's planted bug, among hypervisor-only patches
    (cheap builds)."""
    demo = parse_series(REPO / "lab/series/bisect-demo")
    mutant = parse_series(REPO / "lab/mutants/patches/xen-invalidate-one-server.patch")[0]
    assert len(demo) == 4
    assert demo[2].diff_sha256 == mutant.diff_sha256
    assert [p.diff_sha256 for i, p in enumerate(demo) if i != 2].count(mutant.diff_sha256) == 0
    assert all(f.startswith("xen/") for p in demo for f in p.files)
