"""A source build for real: `xenhil build` of a one-line hypervisor patch
(lab/series/hello's first patch) on Debian's Xen 4.17 source, installed on
a virtual host through the same provisioning a lab host gets, seen on its
console and in `xl info`; provisioning it again is skipped in seconds, and
the host goes back to the Debian build.

The build takes about 80 s of two cores the first time (the hypervisor
only: the tools stay Debian's) and seconds from the cache.  The host is the
lab's (--lab) or, without one, a virtual host of its own on 127.0.0.41
(address base 40: a developer's own `lab up` uses base 10).  Two boots.

    .venv/bin/pytest tests/test_build_real.py -m real_xen [--lab lab/virtual.yaml]
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from xenhil.harness.build import engine
from xenhil.harness.build.series import parse_series
from xenhil.harness.xen.build import as_booted_on, load_build
from xenhil.harness.xen.provision import provision, running_build
from xenhil.harness.xen.toolstack import Toolstack
from tests.support.lab_host import leased_ready_host

pytestmark = [pytest.mark.real_xen, pytest.mark.slow]

HELLO = Path(__file__).resolve().parents[1] / "lab/series/hello"
HELLO_LINE = "xenhil: hello from a patched hypervisor"


def _missing_prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "building the virtual host's image and installing build packages need root"
    if engine.missing_packages(("build-essential", "bison", "flex", "patch")):
        return "build packages missing: run scripts/setup"
    return None


@pytest.fixture(scope="module")
def one_line_build(tmp_path_factory):
    reason = _missing_prerequisites()
    if reason:
        pytest.skip(reason)
    from xenhil.harness.lab.virtual.builder import cache_dir
    series = tmp_path_factory.mktemp("series")
    first = sorted(HELLO.glob("0001-*.patch"))[0]
    shutil.copy(first, series / first.name)
    (series / "series").write_text(first.name + "\n")
    request = engine.Request(xen_series=parse_series(series))
    t0 = time.monotonic()
    result = engine.Builder(cache_dir(), engine.Reporter(show=print)).build(request)
    took = time.monotonic() - t0
    print(f"xenhil build: {'cached' if result.cached else 'built'} in {took:.1f} s: {result.times}")
    t0 = time.monotonic()
    again = engine.Builder(cache_dir()).build(request)
    return {"result": result, "again": again, "cached_s": time.monotonic() - t0}


@pytest.fixture(scope="module")
def build_host(request, one_line_build):
    if request.config.getoption("--lab"):
        with leased_ready_host(request) as host:
            yield host
        return
    from xenhil.harness.host import Host
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.lab.virtual import builder, launcher
    # Not under pytest's basetemp (concurrent runs prune it under a running host).
    state = Path(tempfile.mkdtemp(prefix="xenhil-build-lab-"))
    try:
        image = builder.build(progress=print)
        launcher.up(1, state, inventory=state / "virtual.yaml", image=image, address_base=40,
                    progress=print)
        spec = load_inventory(state / "virtual.yaml").host("vhost1")
        host = Host(spec, state / "artifacts")
        try:
            yield host
        finally:
            host.close()
    finally:
        launcher.down(state, progress=print)


def test_one_line_hypervisor_patch_builds_boots_and_shows(one_line_build, build_host):
    result, again = one_line_build["result"], one_line_build["again"]
    manifest = result.manifest
    assert list(manifest["components"]) == ["xen"] and manifest["packaged"] == ["tools", "qemu"]
    assert [p["files"] for p in manifest["patches"]["xen"]] == [["xen/drivers/char/console.c"]]
    assert again.cached and again.key == result.key
    assert one_line_build["cached_s"] < 15, "the same inputs answer from the cache in seconds"
    elf_id = manifest["components"]["xen"]["elf_build_id"]
    assert elf_id

    build = as_booted_on(load_build(result.dist), build_host.spec.profile)
    assert build.xenhil_build == result.key
    t0 = time.monotonic()
    assert provision(build_host, build) is True
    install_and_boot_s = time.monotonic() - t0
    transcript = build_host.facts["provision_transcript"]   # serial from reboot to dom0
    assert HELLO_LINE in transcript, "the patched banner line is on the serial console"
    info = Toolstack(build_host.ssh, build_host.name).info()
    assert info.fields.get("build_id") == elf_id, "xl info names the build id of the built xen-syms"
    dmesg = build_host.ssh.run("xl dmesg", timeout=120, check=True).stdout
    assert HELLO_LINE in dmesg

    # Again on the same build: skipped.
    t0 = time.monotonic()
    assert provision(build_host, build) is False
    assert time.monotonic() - t0 < 60

    # Back to the host's Debian build.
    debian = as_booted_on(load_build(None), build_host.spec.profile)
    assert provision(build_host, debian) is True
    assert running_build(build_host) == debian.build_id
    assert HELLO_LINE not in build_host.ssh.run("xl dmesg", timeout=120, check=True).stdout
    print(f"install and boot of the source build: {install_and_boot_s:.0f} s")
