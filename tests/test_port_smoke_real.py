"""CI's smoke of the series itself: our port of `device_models` to Xen 4.17
and QEMU 7.2 (lab/series/device-models) built by `xenhil build` exactly as
README.md gives the command, then the PCI suite on the cover letter's split
`qnet+qall` (two QEMUs: the NIC in qnet, everything else in qall) run by
pytest as a user runs it, against the real-Xen layer's virtual host.  The
host goes back to Debian's build at the end, so the modules after this one
find the host they expect.

Cold, the build takes 8 minutes of two idle cores (2026-12-02 on a fresh
machine: hypervisor 96 s, tools 156 s, QEMU 199 s, the build cache's own
timings; 24 minutes when it shared them with a lab run); from the cache,
seconds.
The suite provisions the build (a reboot), boots the two-model guest and runs
its four tests: about 10 minutes on an emulated host; going back to Debian's
build is another reboot.

    .venv/bin/pytest tests/test_port_smoke_real.py -m real_xen --lab lab/virtual.yaml
"""
from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest

from xenhil.harness.build import engine
from xenhil.harness.build.recipes import all_debs
from xenhil.harness.xen.build import as_booted_on, load_build
from xenhil.harness.xen.provision import provision, running_build
from xenhil.harness.xen.toolstack import Toolstack
from tests.support.lab_host import leased_ready_host
from tests.support.streamed import ROOT, streamed_run

# Cold build plus two reboots, a two-model guest and four tests under TCG:
# well inside this, and well inside CI's 90 minutes with the rest.
pytestmark = [pytest.mark.real_xen, pytest.mark.slow, pytest.mark.timeout(4800)]

PORT = ROOT / "lab/series/device-models"
SPLIT = "qnet+qall"
PCI_TESTS = {
    "test_guest_sees_exactly_the_expected_devices",
    "test_bdfs_no_model_owns_read_all_ones",
    "test_each_bdf_is_in_its_models_pci_rangeset",
    "test_xen_platform_device_answers_from_the_expected_model",
}


@pytest.fixture(scope="module")
def lab_inventory(request) -> str:
    lab = request.config.getoption("--lab")
    if not lab:
        pytest.skip("needs a running lab: `xenhil lab up --virtual 1`, then --lab lab/virtual.yaml")
    if os.geteuid() != 0:
        pytest.skip("building the port installs build packages and writes the build cache: needs root")
    missing = engine.missing_packages(tuple(all_debs()))
    if missing:
        pytest.fail(f"build packages missing ({', '.join(missing)}): run scripts/setup")
    return lab


@pytest.fixture(scope="module")
def port_build(lab_inventory, tmp_path_factory) -> dict:
    """The port's tarball, built with the documented command (cached after the first time)."""
    out = tmp_path_factory.mktemp("port") / "device-models.tar.gz"
    argv = [sys.executable, "-m", "xenhil.harness.cli.main", "build",
            "--xen-series", str(PORT / "xen"), "--qemu-series", str(PORT / "qemu"), "-o", str(out)]
    t0 = time.monotonic()
    status, output = streamed_run(argv, out.with_suffix(".log"), "xenhil build")
    took = time.monotonic() - t0
    assert status == 0, f"xenhil build of the port exited {status}:\n{output[-3000:]}"
    # "build KEY: from the cache ..." or, built, the centred title of its time table.
    key = re.search(r"\bbuild ([0-9a-f]{20}):", output)
    assert key, f"xenhil build named no build:\n{output[-2000:]}"
    # Listed in build order when built, sorted when from the cache.
    built = re.search(r"^components built: ([a-z, ]+);", output, re.M)
    assert built and set(built.group(1).split(", ")) == {"xen", "tools", "qemu"}, \
        "the port patches the hypervisor, the toolstack and QEMU: all three are built"
    print(f"xenhil build {key.group(1)}: {took:.0f} s "
          f"({'from the cache' if 'from the cache' in output else 'built'})")
    return {"tarball": out, "key": key.group(1)}


@pytest.fixture(scope="module")
def debian_again(request, lab, lab_inventory):
    """After the module: the host runs Debian's build again, as the next
    modules expect (they use the host as it is, they do not provision it)."""
    yield
    with leased_ready_host(request) as host:
        debian = as_booted_on(load_build(None), host.spec.profile)
        provision(host, debian)
        assert running_build(host) == debian.build_id, "the host did not go back to Debian's build"
        # Debian's tools are back too (the port's were kept aside and put
        # back, harness/xen/debian_files.py): Debian's xl ignores device_models.
        assert not Toolstack(host.ssh, host.name).supports_device_models(), \
            "back on Debian's build, xl still knows device_models: the port's tools stayed"


def test_the_cover_letters_split_passes_the_pci_suite_on_the_port(port_build, debian_again,
                                                                   lab_inventory, tmp_path):
    results = tmp_path / "allure-results"
    argv = [sys.executable, "-m", "pytest", "suites/pci", "--lab", lab_inventory,
            "--xen-build", str(port_build["tarball"]), "--split", SPLIT,
            "--alluredir", str(results), "--artifacts", str(tmp_path / "artifacts"),
            "-p", "no:cacheprovider", "-rs", "-q"]
    t0 = time.monotonic()
    status, output = streamed_run(argv, tmp_path / "suite.log", f"suites/pci {SPLIT}")
    took = time.monotonic() - t0
    counts = [line for line in output.splitlines()
              if re.search(r"\b\d+ (passed|failed|skipped|errors?)\b|no tests ran", line)]
    summary = counts[-1].strip("= ") if counts else "(no summary line)"
    assert status == 0, f"the PCI suite on {SPLIT} exited {status}: {summary}\n{output[-4000:]}"
    assert not re.search(r"\b(skipped|failed|error|errors)\b", summary), \
        f"every test of the suite runs on the port and passes: {summary}"

    outcomes = {}
    for path in results.glob("*-result.json"):
        result = json.loads(path.read_text())
        outcomes[result["name"]] = result["status"]
    expected = {f"{name}[split={SPLIT}]" for name in PCI_TESTS}
    assert set(outcomes) == expected, f"the report's tests: {sorted(outcomes)}"
    assert set(outcomes.values()) == {"passed"}, outcomes

    environment = (results / "environment.properties").read_text()
    assert f"xenhil.xen_build_manifest={port_build['tarball']}" in environment, \
        f"the run booted the port's build:\n{environment}"
    print(f"suites/pci on {SPLIT} with the port: {summary} in {took:.0f} s")
