"""pytest --probe-fault (issue 14 item 1): a mutant run's fault reaches the
probe of every probe split, is refused before any host when it is bad or
would plant nothing, and is named in everything the run writes (Allure's
environment, run-main.json, the results store's run record, the triage
summary), so that no report takes a mutant run for a clean one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from xenhil.harness.errors import ConfigError

pytest_plugins = ["pytester"]


def _parse(tmp_path: Path, **options):
    from xenhil.harness.run_config import parse_run_config
    return parse_run_config({"--reserve-timeout": 60, "--lease-ttl": 60,
                             "--artifacts": str(tmp_path / "artifacts"), **options})


def test_the_fault_is_planted_in_the_probe_of_every_probe_split_only(tmp_path: Path) -> None:
    run = _parse(tmp_path, **{"--probe-fault": "delay=0200", "--split": ["single+probe", "single"]})
    assert run.probe_fault == "delay=200"                          # canonical
    assert run.catalog.get("single+probe").probe_settings.fault == "delay=200"
    assert run.catalog.get("single").probe_settings is None
    clean = _parse(tmp_path, **{"--split": ["single+probe"]})
    assert clean.probe_fault is None and clean.catalog.get("single+probe").probe_settings.fault is None


def test_the_companion_starts_the_probe_with_the_runs_fault(tmp_path: Path) -> None:
    from xenhil.harness.probe_dm.companion import ProbeCompanion
    from xenhil.harness.probe_dm.host import ProbeSpec
    run = _parse(tmp_path, **{"--probe-fault": "ignore-invalidate", "--split": ["single+probe"]})
    companion = ProbeCompanion(run.catalog.get("single+probe").probe_settings)
    s = companion.settings
    args = ProbeSpec(s.ports, s.mmio, s.bdf, s.vendor, s.device, s.fault).arguments()
    assert args[-2:] == ["--fault", "ignore-invalidate"]


def test_a_bad_fault_is_refused_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, **{"--probe-fault": "delay=soon", "--split": ["single+probe"]})
    assert info.value.args[0].startswith("--probe-fault delay='soon'")
    assert "e.g. delay=200" in info.value.help


def test_a_fault_no_split_of_the_run_would_carry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, **{"--probe-fault": "ignore-invalidate", "--split": ["qnet+qall"]})
    assert info.value.args[0] == "--probe-fault ignore-invalidate: none of the run's splits has the probe"
    assert "single+probe" in info.value.help


@pytest.mark.parametrize("fault, named", [("claim-qemu-port", "claim-qemu-port=0x170-0x177"),
                                          (None, "none")])
def test_every_record_of_the_run_names_its_fault(pytester: pytest.Pytester, tmp_path: Path,
                                                 fault, named) -> None:
    artifacts, alluredir = tmp_path / "artifacts", tmp_path / "allure"
    pytester.makepyfile("def test_x(split, catalog_split):\n"
                        "    assert catalog_split.probe_settings.fault == "
                        f"{None if fault is None else named!r}\n")
    result = pytester.runpytest(f"--artifacts={artifacts}", f"--alluredir={alluredir}", "--run-id=R1",
                                "--split=single+probe", "-p", "no:cacheprovider",
                                *([f"--probe-fault={fault}"] if fault else []))
    result.assert_outcomes(passed=1)
    env = dict(line.split("=", 1) for line in
               (alluredir / "environment.properties").read_text().splitlines())
    assert env["xenhil.probe_fault"] == named
    assert json.loads((artifacts / "R1/run-main.json").read_text())["xenhil.probe_fault"] == named
    from xenhil.harness.results.store import ResultsStore
    store = ResultsStore(f"sqlite://{artifacts / 'results.sqlite'}", create=False)
    try:
        assert json.loads(store.run("R1")["facts"])["xenhil.probe_fault"] == named
        from xenhil.harness.report import triage_summary
        triage = triage_summary(store, "R1").splitlines()
    finally:
        store.close()
    mutant_line = f"MUTANT RUN: probe fault {named} planted on purpose (lab/mutants)"
    assert (triage[1].startswith(mutant_line)) == (fault is not None), triage[:3]


def test_a_bad_fault_stops_pytest_before_any_test(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(f"--artifacts={tmp_path / 'artifacts'}", "--probe-fault=nope",
                                "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--probe-fault 'nope': no such fault" in result.stderr.str()
    assert not (tmp_path / "artifacts").exists()


def test_a_mutant_runs_guests_are_never_shared_with_a_clean_run(tmp_path: Path) -> None:
    """Guests are shared by split and build (fixtures/guest.py GuestPool):
    a clean run must not take over a guest whose probe carries a fault."""
    from xenhil.harness.strategy import guest_build
    clean = _parse(tmp_path, **{"--split": ["single+probe"]}).catalog
    mutant = _parse(tmp_path, **{"--probe-fault": "delay=200", "--split": ["single+probe"]}).catalog
    assert guest_build("b1", clean.get("single+probe")) == "b1"
    assert guest_build("b1", mutant.get("single+probe")) == "b1 probe-fault=delay=200"
    assert guest_build("b1", mutant.get("qnet+qall")) == "b1"       # no probe, nothing planted


class _ProbeHandleStandIn:
    """Stands in for a ProbeHandle's two reads (a probe in dom0 is not what
    this test is about: the folder the evidence goes to is)."""
    def counters(self):
        return None

    def stderr_tail(self, lines: int) -> str:
        return "probe: serving\n"


def test_the_probes_evidence_is_kept_when_the_checks_folder_does_not_exist_yet(tmp_path: Path) -> None:
    # The catalog run of 2026-12-02 lost it: "probe evidence incomplete:
    # [Errno 2] No such file or directory: .../mapcache/probe-counters.json".
    from xenhil.harness.probe_dm.companion import ProbeCompanion
    run = _parse(tmp_path, **{"--split": ["single+probe"]})
    companion = ProbeCompanion(run.catalog.get("single+probe").probe_settings)
    companion.handle = _ProbeHandleStandIn()
    folder = tmp_path / "guests" / "g" / "mapcache"
    evidence = companion.evidence(None, folder)
    assert set(evidence) == {"probe counters", "probe stderr"}
    assert (folder / "probe-stderr.txt").read_text() == "probe: serving\n"
