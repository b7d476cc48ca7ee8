"""Benchmark of the virtual lab (needs root, QEMU, debootstrap; ~10 minutes).

Measures, in one run on this machine:

- ``build_scratch_s``: image build with an empty cache (debootstrap + image);
  the .deb download cache is shared, so the network is not measured;
- ``build_cached_s``: the same build again (hash check only);
- ``cold_start_to_ssh_s``: `lab up` of one host to dom0 sshd answering;
- ``rss_mb``: the QEMU process's resident memory once dom0 is up, and its
  peak (VmHWM) - target <= 3.5 GB per host;
- ``guest_create_to_shell_s``: `xl create` of the suites' guest (split
  single, ``harness.xen.testguest.guest_model``) to its shell answering on
  `xl console`.

Speed is relative to this machine's load (2 shared cores): the ratios
``build_cached_s / build_scratch_s`` and ``guest / cold start`` are the
figures to compare across runs.  Writes benchmarks/results/virtual_lab.json.

    sudo .venv/bin/python benchmarks/bench_virtual_lab.py [--skip-scratch] [--skip-guest]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from xenhil.harness.lab.virtual import builder, launcher, quirks
from xenhil.harness.xen.catalog import load_catalog
from xenhil.harness.xen.testguest import guest_model

RESULTS = Path(__file__).parent / "results" / "virtual_lab.json"


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _timed(fn, *args, **kw):
    t0 = time.monotonic()
    result = fn(*args, **kw)
    return result, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-scratch", action="store_true", help="do not time a from-scratch build")
    parser.add_argument("--skip-guest", action="store_true", help="do not boot a guest")
    args = parser.parse_args(argv)
    quiet = lambda _m: None  # noqa: E731
    results: dict[str, object] = {"machine_cpus": os.cpu_count(), "tb_size": quirks.ACCEL,
                                  "memory_mb": quirks.MEMORY_MB,
                                  "load_avg_at_start": os.getloadavg()[0]}
    cache = builder.cache_dir()
    if not args.skip_scratch:
        with tempfile.TemporaryDirectory(prefix="xenhil-bench-cache-") as tmp:
            (Path(tmp) / "debs").symlink_to(cache / "debs")
            os.environ["XENHIL_CACHE"] = tmp
            _, results["build_scratch_s"] = _timed(builder.build, progress=quiet)
            del os.environ["XENHIL_CACHE"]
    image, results["build_cached_s"] = _timed(builder.build, progress=quiet)
    if "build_scratch_s" in results:
        results["cached_over_scratch"] = results["build_cached_s"] / results["build_scratch_s"]

    state = Path(tempfile.mkdtemp(prefix="xenhil-bench-lab-"))
    try:
        hosts, results["cold_start_to_ssh_s"] = _timed(
            launcher.up, 1, state, inventory=state / "virtual.yaml", image=image,
            address_base=60, progress=quiet)
        host = hosts[0]
        qemu_pid = int(host.machine_pidfile.read_text())
        results["rss_mb"], results["rss_peak_mb"] = _rss_mb(qemu_pid)
        if not args.skip_guest:
            results["guest_create_to_shell_s"] = _guest_create_to_shell(state / "virtual.yaml")
            results["rss_peak_with_guest_mb"] = _rss_mb(qemu_pid)[1]
            results["guest_over_cold_start"] = (results["guest_create_to_shell_s"]
                                                / results["cold_start_to_ssh_s"])
    finally:
        launcher.down(state, progress=quiet)
        shutil.rmtree(state, ignore_errors=True)
    results = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in results.items()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


def _guest_create_to_shell(inventory: Path) -> float:
    from xenhil.harness.access.console import Console
    from xenhil.harness.access.ssh import SSHConnection
    from xenhil.harness.lab.inventory import load_inventory

    spec = load_inventory(inventory).host("vhost1")
    conn = SSHConnection(spec.ssh, name=spec.name, connect_timeout=30)
    try:
        # The suites' guest of split single (one description: its disk, its
        # QEMU trace), so the figure is what each suite's guest boot costs.
        model = guest_model("bench", load_catalog().get("single"), spec.profile,
                            "/root/bench.img")
        conn.run(["truncate", "-s", "64M", "/root/bench.img"], check=True, timeout=60)
        conn.put_bytes(model.render(), "/root/bench.cfg")
        t0 = time.monotonic()
        conn.run(["xl", "create", "/root/bench.cfg"], check=True, timeout=300)
        with Console.channel("bench-guest", conn.open_interactive("xl console bench"),
                             Path(tempfile.gettempdir()) / "xenhil-bench-guest.log") as console:
            console.wait_for_shell(timeout=quirks.GUEST_BOOT_TIMEOUT_S, poll_interval=10)
        return time.monotonic() - t0
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
