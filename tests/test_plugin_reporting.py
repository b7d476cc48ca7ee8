"""The plugin's options, markers and failure classes, through pytest itself."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def _results(alluredir: Path) -> dict[str, dict]:
    out = {}
    for path in alluredir.glob("*-result.json"):
        data = json.loads(path.read_text())
        out[data["name"]] = data
    return out


def _labels(result: dict, name: str) -> list[str]:
    return [label["value"] for label in result["labels"] if label["name"] == name]


def test_help_shows_xenhil_option_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["xenhil: Xen multiple-ioreq-server lab tests:", "*--lab=LAB*",
                                 "*--reserve-timeout*", "*--xen-build*", "*--series*"])


def test_unknown_capability_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.requires_capability(iomu=True)
        def test_typo(): pass
    """)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*requires_capability(iomu=...): unknown capability; known:*iommu*"])


def test_capability_marker_value_type_is_checked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.requires_capability(ram_mb="lots")
        def test_bad(): pass
    """)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*requires_capability(ram_mb='lots'): expected a int*"])


def test_host_fixture_without_lab_names_the_fix(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.delenv("XENHIL_LAB", raising=False)
    pytester.makepyfile("def test_needs_host(host): pass")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*[[]test-bug[]] this test needs a lab host*",
                                 "*how to fix: pass --lab lab/NAME.yaml or set XENHIL_LAB*"])


CLASSIFIED = """
    import pytest
    from xenhil.harness.errors import InfrastructureError, ProductError

    @pytest.fixture
    def broken_bringup():
        raise KeyError("guest never answered")

    def test_lab_lost():
        raise InfrastructureError("console of h1 closed")

    def test_check_failed():
        raise ProductError("BDF 00:04.0 owned by qall, expected qnet")

    def test_plain_assert():
        assert 1 == 2, "rangesets differ"

    def test_setup_crash(broken_bringup):
        pass

    def test_body_crash():
        {}["missing"]

    def test_fine():
        pass
"""


def test_failures_land_in_their_class(pytester: pytest.Pytester, tmp_path: Path) -> None:
    alluredir = tmp_path / "allure"
    pytester.makepyfile(test_classes=CLASSIFIED)
    result = pytester.runpytest(f"--alluredir={alluredir}", "--series=https://example.invalid/s")
    result.assert_outcomes(passed=1, failed=4, errors=1)
    results = _results(alluredir)
    expected = {
        "test_lab_lost": "infrastructure",
        "test_check_failed": "product",
        "test_plain_assert": "product",
        "test_setup_crash": "infrastructure",   # unclassified during bring-up
        "test_body_crash": "test-bug",
    }
    for name, cls in expected.items():
        assert _labels(results[name], "failure_class") == [cls], name
        assert f"[{cls}]" in results[name]["statusDetails"]["message"], name
    assert _labels(results["test_fine"], "failure_class") == []
    categories = json.loads((alluredir / "categories.json").read_text())
    assert [c["name"].split(":")[0] for c in categories] == ["Infrastructure", "Product", "Test bug",
                                                              "Not run"]
    env = (alluredir / "environment.properties").read_text()
    assert "xenhil.series=https://example.invalid/s" in env
    assert "xenhil.run_id=" in env
    from xenhil.harness.version import this_code
    assert f"xenhil.code={this_code()}\n" in env and this_code().startswith("xenhil ")


EMULATED_CRASH = """
    import pytest
    from pathlib import Path
    from types import SimpleNamespace
    from xenhil.harness.errors import ProductError
    from xenhil.harness.guest import Guest
    from xenhil.harness.lab.profile import HostProfile

    DMESG = Path(%r).read_text()

    class RecordedSSH:
        def run(self, command, timeout=None, check=False):
            return SimpleNamespace(stdout=DMESG, stderr="", exit_status=0)

    def a_guest(emulated):
        guest = Guest.__new__(Guest)   # no host to boot it on: only what the hook reads
        guest.host = SimpleNamespace(name="vhost1", ssh=RecordedSSH(),
                                     spec=SimpleNamespace(profile=HostProfile(emulated=emulated)))
        guest.dom0_uptime_at_create = 3000.0
        guest.domids_seen = []
        return guest

    @pytest.fixture(params=[True, False], ids=["emulated", "real"])
    def guest(request):
        return a_guest(request.param)

    def test_check(guest):
        raise ProductError("1 QEMU process for split single, seen 0")
"""


def test_product_failures_on_an_emulated_host_whose_dom0_crashed_are_infrastructure(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    """The virtual lab's dom0 crashes (harness.xen.dom0_crashes) file a failed
    check as infrastructure there, naming the crashes; on real hardware the
    same failure stays a product failure."""
    recorded = Path(__file__).parent / "data" / "recorded" / "dom0_dmesg_xl_awk_crashes_417_emulated.txt"
    alluredir = tmp_path / "allure"
    pytester.makepyfile(test_emulated=EMULATED_CRASH % str(recorded))
    result = pytester.runpytest(f"--alluredir={alluredir}")
    result.assert_outcomes(failed=2)
    by_params = {r["parameters"][0]["value"].strip("'"): r for r in _results_all(alluredir)}
    emulated, real = by_params["True"], by_params["False"]
    assert _labels(emulated, "failure_class") == ["infrastructure"]
    message = emulated["statusDetails"]["message"]
    assert "dom0 processes crashed while this guest ran on emulated host vhost1" in message
    assert "xl[3619] segfault at 8" in message
    assert _labels(real, "failure_class") == ["product"]
    assert "dom0 processes crashed" not in real["statusDetails"]["message"]
    import re
    from xenhil.harness.results.categories import CATEGORIES
    first = next(c["name"] for c in CATEGORIES if re.fullmatch(c["messageRegex"], message))
    assert first.startswith("Infrastructure")


def _results_all(alluredir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in alluredir.glob("*-result.json")]


def test_category_patterns_match_only_their_class() -> None:
    import re
    from xenhil.harness.results.categories import CATEGORIES
    messages = {
        "Infrastructure": "ConsoleTimeout: [infrastructure] no prompt\n  tail...",
        "Product": "ProductError: [product] expected qnet\nseen qall",
        "Test bug": "KeyError: 'x'\n[test-bug] failure class (unclassified KeyError during call)",
        "Not run": "[not-run] not run: interrupted by SIGTERM before it started",
    }
    for category in CATEGORIES:
        hits = [k for k, m in messages.items() if re.fullmatch(category["messageRegex"], m)]
        assert hits == [category["name"].split(":")[0]]


def test_xdist_workers_share_the_run_id(pytester: pytest.Pytester, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    pytester.makepyfile("""
        import pytest
        @pytest.mark.parametrize("i", range(4))
        def test_x(i): pass
    """)
    result = pytester.runpytest("-n", "2", f"--artifacts={artifacts}", "--run-id=R1")
    result.assert_outcomes(passed=4)
    runs = sorted(p.name for p in (artifacts / "R1").glob("run-*.json"))
    assert runs == ["run-gw0.json", "run-gw1.json"]
    for path in (artifacts / "R1").glob("run-*.json"):
        assert json.loads(path.read_text())["xenhil.run_id"] == "R1"


EVIDENCE_RUN = """
    import pytest
    from xenhil.harness.errors import InfrastructureError, ProductError

    EVIDENCE = {}

    @pytest.fixture
    def guest_that_never_boots(tmp_path):
        dmesg = tmp_path / "xl-dmesg.txt"
        dmesg.write_text("(XEN) d1v0 Triple fault - invoking HVM shutdown action 1\\n")
        raise InfrastructureError("guest g1 did not boot",
                                  evidence={"xl dmesg": str(dmesg), "artifacts": str(tmp_path),
                                            "save file": "vhost1:/var/lib/xenhil/g1.save"})

    def test_boot_failure(guest_that_never_boots):
        pass

    def test_check_with_a_big_log(tmp_path):
        log = tmp_path / "qemu-dm-g1.log"
        log.write_text("early line\\n" + "x" * (3 << 20) + "\\nlast line: handle_ioreq type=8\\n")
        raise ProductError("map-cache invalidate missing", evidence={"qemu-dm log": str(log)})
"""


def test_failure_evidence_becomes_attachments(pytester: pytest.Pytester, tmp_path: Path) -> None:
    alluredir = tmp_path / "allure"
    pytester.makepyfile(test_evidence=EVIDENCE_RUN)
    pytester.runpytest(f"--alluredir={alluredir}").assert_outcomes(errors=1, failed=1)
    results = _results(alluredir)

    def attachments(name):
        return {a["name"]: (alluredir / a["source"]).read_text()
                for a in results[name].get("attachments", [])}

    boot = attachments("test_boot_failure")
    # Files are attached; a folder and a path on the host stay in the message.
    assert set(boot) - {"log", "stdout", "stderr"} == {"xl dmesg"}
    assert "Triple fault" in boot["xl dmesg"]
    big = attachments("test_check_with_a_big_log")["qemu-dm log"]
    assert big.startswith("[xenhil: last 1048576 of ")  # the tail, where a failure shows
    assert big.rstrip().endswith("last line: handle_ioreq type=8") and "early line" not in big
    assert len(big) < (1 << 20) + 200


def test_a_leased_host_replaces_the_runners_host_label(pytester: pytest.Pytester, tmp_path: Path) -> None:
    import socket
    alluredir = tmp_path / "allure"
    pytester.makepyfile("""
        from xenhil.fixtures.reporting import _label
        def test_on_lab_host():
            _label("host", "vhost9")      # what the host fixture does after its lease
        def test_without_lab_host():
            pass
    """)
    pytester.runpytest(f"--alluredir={alluredir}").assert_outcomes(passed=2)
    results = _results(alluredir)
    assert _labels(results["test_on_lab_host"], "host") == ["vhost9"]
    assert _labels(results["test_without_lab_host"], "host") == [socket.gethostname()]


def _xenhil_build_tree(tree: Path) -> Path:
    """A tree as `xenhil build` makes it: the hypervisor, its manifest (the
    tools left to the host's Debian packages)."""
    install = tree / "install"
    (install / "boot").mkdir(parents=True)
    (install / "boot/xen.gz").write_bytes(b"patched hypervisor")
    (install / "var/lib/xenhil").mkdir(parents=True)
    (install / "var/lib/xenhil/build-manifest.json").write_text(json.dumps({
        "xenhil_build": "0123456789abcdef0123", "format": 1,
        "components": {"xen": {"name": "xen", "key": "k1", "elf_build_id": "5f0e"}},
        "packaged": ["tools", "qemu"],
        "sources": {"xen": {"package": "xen", "version": "4.17.5+23-ga4e5191dc0-1"}},
        "patches": {"xen": [{"name": "0001-hello.patch"}], "qemu": []}}))
    return tree


def _provenance_of_run(pytester: pytest.Pytester, tmp_path: Path, *args: str) -> tuple[dict, dict]:
    """(Allure's environment.properties, the run's run-main.json) of a run."""
    alluredir, artifacts = tmp_path / "allure", tmp_path / "artifacts"
    pytester.makepyfile("def test_x(): pass")
    pytester.runpytest(f"--alluredir={alluredir}", f"--artifacts={artifacts}", "--run-id=R1",
                       *args).assert_outcomes(passed=1)
    env = dict(line.split("=", 1) for line in
               (alluredir / "environment.properties").read_text().splitlines())
    return env, json.loads((artifacts / "R1/run-main.json").read_text())


def test_a_source_builds_results_name_its_manifest(pytester: pytest.Pytester, tmp_path: Path) -> None:
    tree = _xenhil_build_tree(tmp_path / "xen-hello")
    env, run = _provenance_of_run(pytester, tmp_path, f"--xen-build={tree}")
    manifest = str(tree / "install/var/lib/xenhil/build-manifest.json")
    assert env["xenhil.xen_build_manifest"] == run["xenhil.xen_build_manifest"] == manifest
    assert env["xenhil.xen_build"].startswith("dist-")


def test_a_source_build_tarballs_results_name_the_manifest_inside_it(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    import tarfile
    tree = _xenhil_build_tree(tmp_path / "xen-hello")
    tarball = tmp_path / "xen-hello.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree / "install", arcname=".")
    env, run = _provenance_of_run(pytester, tmp_path, f"--xen-build={tarball}")
    assert env["xenhil.xen_build_manifest"] == f"{tarball}:var/lib/xenhil/build-manifest.json"
    assert run["xenhil.xen_build_manifest"] == env["xenhil.xen_build_manifest"]


def test_other_builds_name_no_manifest(pytester: pytest.Pytester, tmp_path: Path) -> None:
    env, run = _provenance_of_run(pytester, tmp_path)
    assert env["xenhil.xen_build"] == "debian-default-" + env["xenhil.xen_build"].split("-")[-1]
    assert env["xenhil.xen_build_manifest"] == run["xenhil.xen_build_manifest"] == ""
