"""The run configuration (harness/run_config.py) is parsed once and names one
build id; the plugin, the fixtures and the CLI share it and the Lab
(harness/lab/lab.py).  Issue #16 item 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.profile import HostProfile

pytest_plugins = ["pytester"]


def _host(name: str, address: str, **capabilities) -> dict:
    """An inventory entry (hand-written data): no SSH, no power, so nothing
    is ever reached; only its capabilities matter here."""
    return {"name": name, "address": address, "ssh": "none", "power": {"kind": "none"},
            **({"capabilities": capabilities} if capabilities else {})}


def _inventory(tmp_path: Path, *hosts: dict) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump({"lease_db": f"sqlite://{tmp_path / 'leases.sqlite'}",
                                    "hosts": list(hosts)}, sort_keys=False))
    return path


def _parse(tmp_path: Path, **options):
    from xenhil.harness.run_config import parse_run_config
    return parse_run_config({"--reserve-timeout": 60, "--lease-ttl": 60,
                             "--artifacts": str(tmp_path / "artifacts"), **options})


def test_an_emulated_lab_names_the_build_it_boots_everywhere(tmp_path: Path) -> None:
    lab = _inventory(tmp_path, _host("vh1", "127.0.0.11", emulated=True),
                     _host("vh2", "127.0.0.12", emulated=True))
    run = _parse(tmp_path, **{"--lab": str(lab)})
    booted = run.booted_build(HostProfile.of({"emulated": True}))
    # What boots on an emulated host differs from the build as given (its
    # Xen options), and that is the run's one build id.
    assert booted.label != run.build.label
    assert run.build_label == booted.label == run.build_label_on(HostProfile.of({"emulated": True}))
    assert run.booted_build(HostProfile.of({"emulated": True})) is booted        # computed once per kind


def test_a_mixed_lab_names_the_build_as_given_and_each_host_its_own(tmp_path: Path) -> None:
    lab = _inventory(tmp_path, _host("vh1", "127.0.0.11", emulated=True),
                     _host("real1", "127.0.0.12"))
    run = _parse(tmp_path, **{"--lab": str(lab)})
    assert run.build_label == run.build.label == run.build_label_on(HostProfile.of({}))
    assert run.build_label_on(HostProfile.of({"emulated": True})) != run.build_label


def test_the_run_record_carries_the_build_id_the_hosts_record(pytester: pytest.Pytester,
                                                               tmp_path: Path) -> None:
    """On an emulated lab the run record (run-main.json, Allure's
    environment) and the latency rows used to carry two labels of one
    build: the given one and the booted one."""
    lab = _inventory(tmp_path, _host("vh1", "127.0.0.11", emulated=True))
    artifacts, alluredir = tmp_path / "artifacts", tmp_path / "allure"
    pytester.makepyfile("def test_x(): pass")
    pytester.runpytest(f"--lab={lab}", f"--artifacts={artifacts}", f"--alluredir={alluredir}",
                       "--run-id=R1", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    recorded = json.loads((artifacts / "R1/run-main.json").read_text())["xenhil.xen_build"]
    env = dict(line.split("=", 1) for line in
               (alluredir / "environment.properties").read_text().splitlines())
    booted = _parse(tmp_path, **{"--lab": str(lab)}).build_label_on(HostProfile.of({"emulated": True}))
    assert recorded == env["xenhil.xen_build"] == booted


def test_the_catalog_and_the_inventory_are_read_once_per_run(pytester: pytest.Pytester,
                                                             monkeypatch, tmp_path: Path) -> None:
    """They used to be read again for every test module (the split
    parametrisation), every test (catalog_split) and every hook that
    needed the hosts."""
    import xenhil.harness.lab.inventory
    import xenhil.harness.xen.catalog
    reads = {"catalog": 0, "inventory": 0}

    def counting(name, real):
        def read(*args, **kwargs):
            reads[name] += 1
            return real(*args, **kwargs)
        return read
    # Counted where every read passes, however a module imported the loader.
    monkeypatch.setattr(xenhil.harness.xen.catalog.Catalog, "__init__",
                        counting("catalog", xenhil.harness.xen.catalog.Catalog.__init__))
    monkeypatch.setattr(xenhil.harness.lab.inventory, "_check",
                        counting("inventory", xenhil.harness.lab.inventory._check))
    lab = _inventory(tmp_path, _host("vh1", "127.0.0.11", emulated=True))
    test = "def test_{0}(split, catalog_split):\n    assert catalog_split.id == split\n"
    pytester.makepyfile(test_one=test.format("one"), test_two=test.format("two"))
    result = pytester.runpytest_inprocess(f"--lab={lab}", "--split=single", "--split=qnet+qall",
                                          f"--artifacts={tmp_path / 'artifacts'}",
                                          "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    assert reads == {"catalog": 1, "inventory": 1}


def test_a_bad_guests_per_host_names_the_option_and_its_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, **{"--guests-per-host": 0})
    assert str(info.value.args[0]) == "--guests-per-host 0: must be 1 or more"
    assert "give 1 or more" in info.value.help


def test_split_ids_keep_the_catalogs_order_and_every_unknown_one_is_named(tmp_path: Path) -> None:
    run = _parse(tmp_path, **{"--split": ["qnet+qall", "single"]})
    assert run.splits == ("single", "qnet+qall")
    assert _parse(tmp_path).splits == tuple(run.catalog.ids())
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, **{"--split": ["single", "qnett+qall", "nosuch", "nosuch"]})
    assert info.value.args[0].startswith("--split 'qnett+qall', 'nosuch': not splits of the "
                                         "catalog ")
    assert info.value.help.startswith("give a catalog id: single, qnet+qall, ")


def test_the_cli_and_the_plugin_declare_the_lab_options_once(pytester: pytest.Pytester) -> None:
    """`pytest --help` and every `xenhil` verb taking a lab show the same
    --lab and --lab-db, from xenhil.harness.run_config.LAB_OPTIONS."""
    from xenhil.harness.cli.main import build_parser
    from xenhil.harness.run_config import LAB_OPTIONS
    helps = {name: " ".join(d["help"].split()) for name, d in LAB_OPTIONS.items()}
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())
    for name, help_text in helps.items():
        assert f"{name}={name.lstrip('-').upper().replace('-', '_')} {help_text}" in text
    verbs = build_parser()._subparsers._group_actions[0].choices
    for verb in ("reserve", "release"):
        actions = {a.option_strings[0]: a for a in verbs[verb]._actions if a.option_strings}
        assert {name: actions[name].help for name in LAB_OPTIONS} == \
            {name: d["help"] for name, d in LAB_OPTIONS.items()}


def test_a_lab_opens_its_lease_store_only_when_asked(tmp_path: Path) -> None:
    """`xenhil host run` and the budgets need the inventory, not the store:
    a Lab made for them does not create one."""
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.lab.lab import Lab
    lab_file = _inventory(tmp_path, _host("vh1", "127.0.0.11"))
    lab = Lab(load_inventory(lab_file), artifacts=tmp_path / "art")
    assert lab.host_object("vh1").name == "vh1" and lab.host_object("vh1") is lab.reached("vh1")
    assert not (tmp_path / "leases.sqlite").exists()
    assert lab.pool.store.url.endswith("leases.sqlite") and (tmp_path / "leases.sqlite").exists()
    lab.close()
