"""What keeps a run from passing without having tested anything (issue 14,
item 2): a skip of a test that must run fails it (--require-run), a
capability probe that errors is a failure rather than "capability missing",
a run that tests the series fails instead of skipping its splits, a device
model that died between tests is a counted warning (pytest's summary, the
results store and the triage summary), and scripts/test-framework's
selection rules."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from xenhil.harness.errors import CapabilityProbeFailed, ConfigError, ProductError

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


# --- --require-run: a skip of a required test fails the run -------------------------------

REQUIRED = """
    import pytest

    @pytest.fixture
    def lab_host():
        pytest.skip("needs a running lab")

    @pytest.mark.real_xen
    def test_skips_in_its_body():
        pytest.skip("no host with device_models")

    @pytest.mark.real_xen
    def test_skips_in_a_fixture(lab_host):
        pass

    @pytest.mark.real_xen
    def test_runs():
        pass

    @pytest.mark.real_xen
    @pytest.mark.xfail(reason="known")
    def test_expected_failure():
        assert False

    def test_plain_skip():
        pytest.skip("not required")
"""


def test_a_required_test_that_skips_fails_the_run_with_its_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(REQUIRED)
    result = pytester.runpytest("-rfEs", "--require-run", "real_xen")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines([
        "*xenhil: tests marked real_xen must run: a skip of one fails it*",
        "*a test marked real_xen skipped during setup*", "skip reason: needs a running lab",
        "*a test marked real_xen skipped during call*", "skip reason: no host with device_models",
        "SKIPPED*not required*"])


def test_without_require_run_the_same_tests_only_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(REQUIRED)
    result = pytester.runpytest("-rs")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_require_run_under_xdist_fails_the_run_too(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(REQUIRED)
    result = pytester.runpytest("-n", "2", "--require-run", "real_xen")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)


# --- capability probes: an answer, or a failure --------------------------------------------

class _SSH:
    """Answers one command with (exit status, stdout, stderr)."""

    def __init__(self, status: int, stdout: str = "", stderr: str = ""):
        self.answer = SimpleNamespace(exit_status=status, stdout=stdout, stderr=stderr)
        self.commands: list = []

    def put_bytes(self, data, path, mode=None):
        self.commands.append(("put", path))

    def run(self, command, timeout=None, check=False, input=None):
        self.commands.append(command)
        return self.answer


DRY_RUN = 'Parsing config from /tmp/xenhil-capability-probe.cfg\n{\n    "c_info": {"type": "hvm", ' \
          '"name": "xenhil-capability-probe"},\n    "b_info": {"max_memkb": 65536}%s\n}\n'


def _supports(ssh) -> bool:
    from xenhil.harness.xen.toolstack import Toolstack
    return Toolstack(ssh, "vhost1").supports_device_models()


def test_xl_that_ignores_device_models_lacks_it_and_one_that_keeps_it_has_it() -> None:
    assert _supports(_SSH(0, DRY_RUN % "")) is False
    kept = ',\n    "device_models": [{"name": "qa"}, {"name": "qb"}]'
    assert _supports(_SSH(0, DRY_RUN % kept)) is True


@pytest.mark.parametrize("status,output,why", [
    (1, "Parsing config from /tmp/x.cfg\nFailed to parse config: Invalid argument\n", "exited 1"),
    (127, "bash: line 1: xl: command not found\n", "exited 127"),
    (0, "Parsing config from /tmp/x.cfg\n", "printed no domain config"),
    (0, "Parsing config from /tmp/x.cfg\n{ \"c_info\": ", "printed no domain config"),
])
def test_a_dry_run_that_says_nothing_about_the_option_is_a_failure(status, output, why) -> None:
    with pytest.raises(CapabilityProbeFailed, match=why) as info:
        _supports(_SSH(status, output))
    assert info.value.failure_class == "infrastructure" and output.strip()[:20] in str(info.value)


def _probe_answer(monkeypatch, status: int, stderr: str = "") -> str | None:
    from xenhil.harness.probe_dm import companion
    monkeypatch.setattr(companion, "install", lambda host: "/var/lib/xenhil/probe/x")
    host = SimpleNamespace(name="vhost1", ssh=_SSH(status, "", stderr))
    return companion.probe_unavailable(host)


# Written by hand, in the shape of the probe's stderr in a dom0 without
# Xen's libraries (the bundle's files live under xenhil/, as installed).
MISSING_LIB = """Traceback (most recent call last):
  File "<string>", line 1, in <module>
  File "/var/lib/xenhil/probe/x/xenhil/harness/probe_dm/xenlibs.py", line 195, in __init__
xenhil.harness.probe_dm.xenlibs.XenLibraryMissing: [test-bug] cannot load libxendevicemodel.so.1 (libxendevicemodel.so.1: cannot open shared object file: No such file or directory); it ships in the Debian package libxendevicemodel1
  how to fix: Run the probe in a Xen dom0 with Xen's tool libraries installed (Debian: apt-get install xen-utils-4.17, which pulls them in).
"""


def test_the_probe_capability_is_there_or_truly_missing(monkeypatch) -> None:
    assert _probe_answer(monkeypatch, 0) is None
    assert _probe_answer(monkeypatch, 127, "bash: python3: command not found") == \
        "python3 is not installed in dom0"
    why = _probe_answer(monkeypatch, 1, MISSING_LIB)
    assert why.startswith("xenhil.harness.probe_dm.xenlibs.XenLibraryMissing: [test-bug] cannot load "
                          "libxendevicemodel.so.1"), why


def test_a_probe_check_that_crashes_otherwise_is_a_failure(monkeypatch) -> None:
    crash = "Traceback (most recent call last):\n  ...\nSyntaxError: invalid syntax\n"
    with pytest.raises(CapabilityProbeFailed, match="SyntaxError: invalid syntax"):
        _probe_answer(monkeypatch, 1, crash)


def test_a_probe_that_cannot_be_copied_to_dom0_is_a_failure(monkeypatch) -> None:
    from xenhil.harness.errors import RemoteCommandFailed
    from xenhil.harness.probe_dm import companion

    def broken(host):
        raise RemoteCommandFailed("tar -xzf -", 2, "", "tar: write error: No space left", host="vhost1")

    monkeypatch.setattr(companion, "install", broken)
    with pytest.raises(RemoteCommandFailed):
        companion.probe_unavailable(SimpleNamespace(name="vhost1", ssh=_SSH(0)))


# --- a run that tests the series fails instead of skipping its splits ----------------------

def _build(patches: dict, components: tuple[str, ...]):
    from xenhil.harness.xen.build import XenBuild, _manifest_fields
    manifest = {"xenhil_build": "k", "components": {c: {} for c in components}, "patches": patches,
                "sources": {}, "packaged": []}
    return XenBuild("dist", None, "boot/xen.gz", **_manifest_fields("m.json", manifest))


def test_only_a_build_with_toolstack_or_qemu_patches_carries_the_series() -> None:
    from xenhil.harness.xen.build import XenBuild
    assert not XenBuild("debian-default", None, "").carries_series
    assert not _build({"xen": [], "qemu": []}, ("xen",)).carries_series
    assert not _build({"xen": [{"name": "hello"}], "qemu": []}, ("xen",)).carries_series   # hypervisor only
    assert _build({"xen": [{"name": "libxl"}], "qemu": []}, ("xen", "tools")).carries_series
    assert _build({"xen": [], "qemu": [{"name": "ioreq"}]}, ("xen", "qemu")).patched_components == ("qemu",)


def test_a_missing_capability_skips_unless_the_run_tests_the_series() -> None:
    from xenhil.fixtures.guest import capability_missing_in_series_run
    from xenhil.harness.xen.build import XenBuild
    debian = XenBuild("debian-default", None, "")
    reason = "split qnet+qall needs device_models, which vhost1's Xen (debian-default-x) does not have"
    assert capability_missing_in_series_run(None, debian, reason) is None
    told = capability_missing_in_series_run("https://lists.example/series", debian, reason)
    assert isinstance(told, ConfigError) and "--series https://lists.example/series" in str(told)
    series_build = _build({"xen": [{"name": "libxl"}], "qemu": []}, ("xen", "tools"))
    carried = capability_missing_in_series_run(None, series_build, reason)
    assert isinstance(carried, ProductError) and reason in str(carried)


# --- a device model that died between tests: a counted warning -----------------------------

class _Xl:
    def qemu_pids(self, domid):
        return []

    def domain(self, name):
        return None


def test_a_guest_whose_device_model_died_is_replaced_with_a_counted_warning(monkeypatch, tmp_path) -> None:
    import xenhil.fixtures.guest as guest_fixtures
    monkeypatch.setattr(guest_fixtures, "guest_emulation_crashes", lambda guest: ["qemu segfault at 0"])
    pool = guest_fixtures.GuestPool("gw0", tmp_path)
    guest = SimpleNamespace(name="xh-gw0-single-1", domid=3, xl=_Xl(), host=SimpleNamespace(name="vhost1"))
    with pytest.warns(guest_fixtures.DeviceModelDied, match="lost its device model.*qemu segfault at 0"):
        assert pool._alive(guest) is False
    assert len(pool.model_deaths) == 1


DIED = """
    import warnings
    from xenhil.fixtures.guest import DeviceModelDied, GuestBootRetried

    def test_first():
        pass

    def test_second():
        warnings.warn(DeviceModelDied("guest g1 on vhost1 lost its device model(s) between tests"))

    def test_third():
        warnings.warn(GuestBootRetried("guest g2 crashed while booting; booted again"))
        warnings.warn(UserWarning("not ours"))
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_counted_warnings_reach_the_summary_the_store_and_the_triage(pytester: pytest.Pytester,
                                                                      tmp_path: Path, workers) -> None:
    from xenhil.harness.report import triage_summary
    from xenhil.harness.results.store import ResultsStore
    db = f"sqlite:///{tmp_path / 'results.sqlite'}"
    pytester.makepyfile(test_died=DIED)
    result = pytester.runpytest(f"--results-db={db}", "--run-id=run-w", *workers)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*xenhil warnings*", "1 DeviceModelDied", "1 GuestBootRetried"])
    store = ResultsStore(db)
    try:
        rows = store.warnings("run-w")
        text = triage_summary(store, "run-w")
    finally:
        store.close()
    assert sorted(r["kind"] for r in rows) == ["DeviceModelDied", "GuestBootRetried"]
    assert [r["test"] for r in rows if r["kind"] == "DeviceModelDied"] == ["test_died.py::test_second"]
    section = text.split("Warnings (counted, not failures):")[1]
    assert "  DeviceModelDied: 1" in section and "test_died.py::test_second: guest g1 on vhost1 lost" in section
    assert "  GuestBootRetried: 1" in section and "not ours" not in text


# --- the lab's address base -------------------------------------------------------------------

def test_lab_up_takes_an_address_base(monkeypatch) -> None:
    import argparse

    from xenhil.harness.lab.virtual import cli, launcher
    parser = argparse.ArgumentParser()
    cli.add_up_arguments(parser)
    assert parser.parse_args(["--virtual", "1"]).address_base == launcher.ADDRESS_BASE == 10
    seen = {}
    monkeypatch.setattr(launcher, "up", lambda n, state, **kw: seen.update(kw) or [])
    cli.up_command(parser.parse_args(["--virtual", "1", "--address-base", "50"]))
    assert seen["address_base"] == 50


def test_the_smoke_finds_the_virtual_lab_behind_an_inventory(tmp_path) -> None:
    from xenhil.harness.lab.virtual import launcher
    from tests.test_virtual_lab import _virtual_lab_behind
    state = tmp_path / "state"
    state.mkdir()
    inventory = state / "virtual.yaml"
    [host] = launcher.plan_hosts(1, state, address_base=50)
    inventory.write_text(f"lease_db: sqlite://{state / 'leases.sqlite'}\nhosts: []\n")
    assert _virtual_lab_behind(str(inventory)) is None                 # no lab recorded there
    launcher._write_state(state, [host], None, inventory)
    found_state, found = _virtual_lab_behind(str(inventory))
    assert (found_state, found.name, found.address) == (state, "vhost1", "127.0.0.51")
    other = tmp_path / "other.yaml"
    other.write_text(inventory.read_text())
    assert _virtual_lab_behind(str(other)) is None                     # the lab wrote another inventory
    assert _virtual_lab_behind(None) is None


# --- scripts/test-framework: what it runs, and when an empty real-Xen layer fails ------------

def _fake_pytest(tmp_path: Path, collect_status: int) -> dict:
    """A PATH whose pytest logs its arguments and answers --collect-only with
    ``collect_status``, and whose xenhil logs its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "pytest").write_text(
        "#!/bin/bash\nprintf '%s\\n' \"pytest $*\" >> " + str(log) + "\n"
        f"case \" $* \" in *' --collect-only '*) echo 'tests/test_x.py::test_real'; exit {collect_status};; esac\n"
        "exit 0\n")
    (bin_dir / "xenhil").write_text("#!/bin/bash\nprintf '%s\\n' \"xenhil $*\" >> " + str(log) + "\nexit 0\n")
    for tool in ("pytest", "xenhil"):
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "log": log}


def _test_framework(tmp_path: Path, collect_status: int, *args: str):
    fake = _fake_pytest(tmp_path, collect_status)
    # A copy of the script whose .venv/bin is the fake one.
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts/test-framework").write_bytes((ROOT / "scripts/test-framework").read_bytes())
    (root / ".venv").mkdir()
    (root / ".venv/bin").symlink_to(tmp_path / "bin")
    env = {**os.environ, "PATH": fake["PATH"], "XENHIL_TF_STATE_DIR": str(tmp_path / "lab"),
           "XENHIL_TF_ADDRESS_BASE": "50"}
    done = subprocess.run(["bash", str(root / "scripts/test-framework"), *args], capture_output=True,
                          text=True, env=env, timeout=60)
    calls = fake["log"].read_text().splitlines() if fake["log"].exists() else []
    return done, calls


def test_test_framework_runs_the_real_layer_against_its_own_host_and_stops_it(tmp_path) -> None:
    done, calls = _test_framework(tmp_path, 0)
    assert done.returncode == 0, done.stdout + done.stderr
    lab = tmp_path / "lab"
    assert calls[0].startswith("pytest tests -m not real_xen -n 2") and "-rfEs" in calls[0]
    assert calls[1].startswith("pytest tests -m real_xen --collect-only")
    assert calls[2] == (f"xenhil lab up --virtual 1 --state-dir {lab} --inventory {lab}/virtual.yaml "
                        "--address-base 50")
    assert calls[3].startswith("pytest tests -m real_xen -q") and "-rfEs" in calls[3]
    assert f"--lab {lab}/virtual.yaml --require-run real_xen" in calls[3]
    assert calls[4] == f"xenhil lab down --state-dir {lab}" and len(calls) == 5


def test_test_framework_fails_when_no_real_xen_test_is_collected(tmp_path) -> None:
    done, calls = _test_framework(tmp_path, 5)
    assert done.returncode == 1
    assert "no real_xen test was collected, and nothing deselected them" in done.stdout
    assert not any(c.startswith("xenhil lab up") for c in calls)


def test_test_framework_accepts_an_empty_real_layer_the_caller_deselected(tmp_path) -> None:
    done, calls = _test_framework(tmp_path, 5, "-m", "not slow")
    assert done.returncode == 0, done.stdout
    assert calls[0].startswith("pytest tests -m not real_xen and (not slow) ")
    assert calls[1].startswith("pytest tests -m real_xen and (not slow) --collect-only")
    assert len(calls) == 2 and "deselected them" in done.stdout
