"""`xenhil qualify` (issue 14 item 1) end to end without Xen: the real
command, real pytest runs (one per mutant and one unmutated, as on the lab),
the real results store, against a STAND-IN suite folder whose tests fail on
purpose when the run plants the fault they stand in for.  What the lab adds
(builds, guests) is the catalog's own business: tests/test_mutant_catalog.py
checks the real catalog, and the lab commands are in lab/mutants/README.md."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xenhil.harness.mutants.catalog import load_mutant_catalog
from xenhil.harness.mutants.qualify import mutant_series

REPO = Path(__file__).resolve().parents[1]

# A stand-in suite (hand-written; no Xen): each test reads the fault the run
# planted in the probe (pytest --probe-fault, the run configuration) and
# fails as the suite it stands in for would.
STAND_IN_SUITE = '''
"""STAND-IN suite for tests/test_qualify.py: not a Xen test."""
from xenhil.harness.errors import InfrastructureError, ProductError


def _fault(catalog_split):
    return catalog_split.probe_settings.fault or ""


def test_stand_in_mapcache(split, catalog_split):
    if _fault(catalog_split) == "ignore-invalidate":
        raise ProductError("stand-in: the probe counted no invalidate")


def test_stand_in_latency(split, catalog_split):
    pass        # never fails: the delay mutant escapes it


def test_stand_in_saverestore(split, catalog_split):
    if _fault(catalog_split) == "skip-reregister-after-restore":
        raise InfrastructureError("stand-in: failed, but as the lab's fault")


def test_stand_in_always_red(split, catalog_split):
    raise ProductError("stand-in: fails on every build, the unmutated one too")
'''

TEST = "suites/standin/test_standin.py::"


def _mutant(mutant_id: str, fault: str, test: str) -> dict:
    return {"id": mutant_id, "breaks": f"stand-in for {fault}", "probe_fault": fault,
            "splits": ["single+probe"], "caught_by": [TEST + test], "failure_class": "product"}


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    """A folder with the stand-in suite, a stand-in catalog (no reference
    series: nothing is built, the runs use the hosts' Debian Xen) and an
    inventory whose one host is never reached (hand-written)."""
    suite = tmp_path / "suites" / "standin"
    suite.mkdir(parents=True)
    (suite / "test_standin.py").write_text(STAND_IN_SUITE)
    catalog = {"version": 1, "mutants": [
        _mutant("caught-one", "ignore-invalidate", "test_stand_in_mapcache"),
        _mutant("escaping-one", "delay=10", "test_stand_in_latency"),
        _mutant("wrong-class-one", "skip-reregister-after-restore", "test_stand_in_saverestore"),
        _mutant("red-unmutated", "claim-qemu-port", "test_stand_in_always_red"),
    ]}
    (tmp_path / "mutants.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump({
        "lease_db": f"sqlite://{tmp_path / 'leases.sqlite'}",
        "hosts": [{"name": "standin1", "address": "127.0.0.1", "ssh": "none",
                   "power": {"kind": "none"}}]}))
    return tmp_path


def qualify(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XENHIL_LAB"}
    return subprocess.run([sys.executable, "-m", "xenhil.harness.cli.main", "qualify",
                           "--catalog", str(folder / "mutants.yaml"), "--suites-root", str(folder),
                           "--lab", str(folder / "lab.yaml"), "--artifacts", str(folder / "artifacts"),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def _row(output: str, name: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(name + " "))
    return line.split()


def test_the_table_names_each_verdict_and_the_exit_status_fails(stand_in: Path) -> None:
    result = qualify(stand_in)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    caught = _row(out, "caught-one")
    assert caught[-4:-2] == ["product", "caught"] and "failed" in caught
    escaped = _row(out, "escaping-one")
    assert "passed" in escaped and "escaped" in escaped
    wrong = _row(out, "wrong-class-one")
    assert "infrastructure" in wrong and "wrong" in wrong and "broken" in wrong
    # The unmutated run's rows: green where its tests pass, red where one fails.
    unmutated = out[out.index("\nunmutated "):out.index("\ncaught-one ")].splitlines()[1:]
    assert [line.split()[-1] if i else line.split()[-3] for i, line in enumerate(unmutated)] == \
        ["green", "green", "green", "red"], unmutated
    # The always-red test fails on its mutant too: caught, but the qualification fails.
    assert "2 of 4 mutants caught; unmutated build red" in out
    # Every run has its own run id and log; the store holds each run's outcomes.
    runs = sorted(p.parent.name for p in (stand_in / "artifacts").glob("q*/run-main.json"))
    assert [r.split("-", 2)[-1] for r in runs] == sorted(
        ["caught-one", "escaping-one", "red-unmutated", "unmutated", "wrong-class-one"])
    # ...in the qualification's own store: the lab's history never sees a mutant run.
    [store] = (stand_in / "artifacts").glob("q*/results.sqlite")
    assert all(run.startswith(store.parent.name + "-") for run in runs)
    assert not (stand_in / "artifacts" / "results.sqlite").exists()


def test_all_caught_and_a_green_unmutated_build_exit_0(stand_in: Path) -> None:
    result = qualify(stand_in, "--mutant", "caught-one")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "green" in _row(result.stdout, "unmutated")
    assert "caught" in _row(result.stdout, "caught-one")
    assert "1 of 1 mutants caught; unmutated build green" in result.stdout


def test_a_repeated_mutant_runs_that_many_times_each_judged_on_its_own(stand_in: Path) -> None:
    # "Five runs with the delay mutant: 5 caught": each repeat is a run of
    # its own (run id, outcomes, row); the unmutated build runs once.
    result = qualify(stand_in, "--mutant", "caught-one", "--mutant", "escaping-one", "--repeat", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "caught" in _row(out, "caught-one.1") and "caught" in _row(out, "caught-one.2")
    assert "escaped" in _row(out, "escaping-one.1") and "escaped" in _row(out, "escaping-one.2")
    assert "2 of 4 mutant runs (2 mutant(s), repeated) caught; unmutated build green" in out
    runs = sorted(p.parent.name.split("-", 2)[-1]
                  for p in (stand_in / "artifacts").glob("q*/run-main.json"))
    assert runs == ["caught-one.1", "caught-one.2", "escaping-one.1", "escaping-one.2", "unmutated"]


def test_a_repeated_patch_mutant_is_built_once(tmp_path: Path) -> None:
    from xenhil.harness.mutants.qualify import Build, Qualification, plan
    catalog = load_mutant_catalog()
    mutant = next(m for m in catalog.mutants if m.patch is not None)
    built = []

    def build(xen, qemu, log, jobs):
        built.append(log.name)
        return Build(f"/builds/{log.name}.tar.gz", seconds=30.0)

    qualification = Qualification(catalog, [mutant], "lab.yaml", tmp_path, REPO, repeat=3,
                                  qualification_id="q1", build=build, say=lambda _: None)
    runs = plan([mutant], 3)
    qualification.builds(runs)
    assert built == ["build-reference.log", f"build-{mutant.id}.log"]
    assert [r.name for r in runs[1:]] == [f"{mutant.id}.{i}" for i in (1, 2, 3)]
    assert {r.build.dist for r in runs[1:]} == {f"/builds/build-{mutant.id}.log.tar.gz"}


def test_bad_input_exits_2_before_any_run(stand_in: Path) -> None:
    result = qualify(stand_in, "--mutant", "no-such")
    assert result.returncode == 2
    assert "--mutant no-such: not in the mutant catalog" in result.stderr
    result = qualify(stand_in, "--repeat", "0")
    assert result.returncode == 2 and "--repeat '0': out of range" in result.stderr and "runs of each mutant" in result.stderr
    (stand_in / "lab.yaml").write_text("hosts: 3\n")
    result = qualify(stand_in)
    assert result.returncode == 2 and "lab.yaml" in result.stderr
    assert not (stand_in / "artifacts").exists()


def test_the_plan_runs_the_unmutated_build_first_then_the_faults_on_its_build() -> None:
    from xenhil.harness.mutants.qualify import plan
    catalog = load_mutant_catalog()
    runs = plan(catalog.mutants)
    assert runs[0].name == "unmutated" and runs[0].mutant is None
    kinds = [r.mutant.kind for r in runs[1:]]
    assert kinds == sorted(kinds, key=lambda k: k == "patch") and len(kinds) == len(catalog.mutants)
    # The unmutated run covers every (test, split) any mutant names, once.
    wanted = {e for m in catalog.mutants for e in m.expected()}
    assert set(runs[0].expected) == wanted and len(runs[0].expected) == len(wanted)
    assert set(runs[0].splits) == {"single+probe", "qnet+qall"}


def test_a_patch_mutants_series_is_the_reference_plus_its_patch(tmp_path: Path) -> None:
    catalog = load_mutant_catalog()
    mutant = next(m for m in catalog.mutants if m.half == "qemu")
    series = mutant_series(catalog, mutant, tmp_path)
    reference = [line for line in (catalog.qemu_series / "series").read_text().splitlines()
                 if line and not line.startswith("#")]
    mutated = [line for line in (series["qemu"] / "series").read_text().splitlines()
               if line and not line.startswith("#")]
    assert mutated == reference + [mutant.patch.name]
    assert (series["qemu"] / mutant.patch.name).read_bytes() == mutant.patch.read_bytes()
    # The other half is the reference's, untouched.
    assert (series["xen"] / "series").read_text() == (catalog.xen_series / "series").read_text()
