"""Stability of the virtual lab: the suites' guest booted again and again on
one host, counting what goes wrong.

    .venv/bin/python -m benchmarks.bench_lab_stability --lab lab/virtual.yaml [--boots 50]
        [--concurrent 2] [--host vhost1] [--split single] [--set KEY=VALUE ...]

Each boot is what the suites do (``harness.xen.testguest.guest_model`` rendered by
``HvmGuest``, ``Guest.create`` then ``Guest.wait_ready``), without the guest
pool's retries, then the guest is destroyed.  ``--concurrent K`` boots K
guests at once in each round (each through its own SSH connection, as K
pytest workers would).  Every boot ends as one of:

- ``ok``: the guest's shell answered;
- ``crash``: Xen ended the domain (a triple fault in ``xl dmesg``, or the
  domain shut down unasked);
- ``timeout``: the boot's time limit ran out with the domain alive;
- ``hang``: dom0 stopped answering (an SSH command to it timed out or the
  connection was lost and could not be made again);
- ``error``: anything else (e.g. ``xl create`` failed: libxl gives a device
  model 60 s to start, which a starved host can miss).

Besides, ``stalls`` counts console relays that went silent and were attached
again during boots that still ended ``ok`` (the suites survive those, but
they cost minutes).  The boot time distribution (xl create to shell) is
reported with its quartiles; the figure to compare across runs and settings
is ``rate`` (failed boots per boot) against the rate measured
before a change (``--label`` names a run; earlier labelled runs stay in the
results file).  ``--set`` adds xl config settings (``--set hap=0``) and
``--cmdline`` replaces the guest kernel's command line, to try a remedy
without editing the suites.

Results: benchmarks/results/lab_stability.json (one entry per label) and a
per-boot log under artifacts/bench-stability/<label>/.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "lab_stability.json"

OUTCOMES = ("ok", "crash", "timeout", "hang", "error")


@dataclass
class Boot:
    round: int
    slot: int
    name: str
    outcome: str = "ok"
    seconds: float | None = None
    domid: int | None = None
    stalls: int = 0
    detail: str = ""


@dataclass
class Tally:
    boots: list[Boot] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, boot: Boot) -> None:
        with self.lock:
            self.boots.append(boot)

    def counts(self) -> dict[str, int]:
        counts = {k: 0 for k in OUTCOMES}
        for boot in self.boots:
            counts[boot.outcome] += 1
        counts["stalls"] = sum(b.stalls for b in self.boots)
        return counts


class _StallCounter(logging.Handler):
    """Counts the guest layer's 'console ... stalled' warnings per guest name."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_guest: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("console of ") and "stalled" in text:
            name = text.split()[2]
            self.by_guest[name] = self.by_guest.get(name, 0) + 1


def _quartiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    if len(values) == 1:
        return {"min": values[0], "p50": values[0], "max": values[0]}
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"min": min(values), "p25": q1, "p50": q2, "p75": q3, "max": max(values)}


def boot_once(host, entry, round_no: int, slot: int, artifacts: Path, settings: dict,
              cmdline: str | None, boot_timeout: float, stalls: _StallCounter) -> Boot:
    """One guest boot on ``host`` (its SSH connection is shared by the
    threads, as the process's connection to a host is); always destroys the
    guest.  A failed boot is a crash when Xen ended the domain, a hang when
    dom0 no longer answers a trivial command, a timeout otherwise."""
    from xenhil.harness.errors import XenhilError
    from xenhil.harness.guest import Guest
    from xenhil.harness.lab.virtual.guestkit import GUEST_PROMPT, READY_CONDITION
    from xenhil.harness.xen.testguest import guest_model

    name = f"xh-stab-{round_no}-{slot}"
    boot = Boot(round_no, slot, name)
    guest = None
    started = time.monotonic()
    try:
        disk = f"/var/lib/xenhil/guests/{name}.img"
        host.ssh.run(["mkdir", "-p", "/var/lib/xenhil/guests"], check=True, timeout=60)
        host.ssh.run(["truncate", "-s", "64M", disk], check=True, timeout=60)
        model = guest_model(name, entry, host.spec.profile, disk).apply_quirks(settings)
        if cmdline is not None:
            model = dataclasses.replace(model, boot=dataclasses.replace(model.boot, cmdline=cmdline))
        guest = Guest(host, model, artifacts / name, ready_condition=READY_CONDITION,
                      prompt=GUEST_PROMPT)
        started = time.monotonic()
        boot.domid = guest.create()
        guest.wait_ready(timeout=boot_timeout)
    except XenhilError as exc:
        boot.outcome, boot.detail = _failed_boot(host, guest, boot, exc, artifacts / name)
    finally:
        boot.seconds = time.monotonic() - started
        boot.stalls = stalls.by_guest.get(name, 0)
        try:
            if guest is not None:
                guest.destroy()
            host.ssh.run(["rm", "-f", f"/var/lib/xenhil/guests/{name}.img",
                          f"/var/lib/xenhil/guests/{name}.cfg"], timeout=60)
        except XenhilError as exc:
            if boot.outcome == "ok":
                boot.outcome, boot.detail = "hang", f"destroy: {type(exc).__name__}: {exc}"
    return boot


def _failed_boot(host, guest, boot: Boot, exc: Exception, evidence: Path) -> tuple[str, str]:
    """(outcome, detail) of a boot that raised ``exc``; xl dmesg kept as evidence."""
    from xenhil.harness.errors import XenhilError
    from xenhil.harness.xen.dom0_crashes import why_boot_ended

    why = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    evidence.mkdir(parents=True, exist_ok=True)
    (evidence / "error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
    try:
        host.ssh.run(["true"], timeout=60, check=True)
        dmesg = host.ssh.run(["xl", "dmesg"], timeout=60).stdout
        (evidence / "xl-dmesg.txt").write_text(dmesg)
        listed = guest.xl.domain(guest.name) if guest is not None else None
        xl_log = ""
        if listed is None and guest is not None:
            xl_log = host.ssh.run(["tail", "-n", "50", f"/var/log/xen/xl-{guest.name}.log"],
                                  timeout=60).stdout
        ended = why_boot_ended(boot.domid, dmesg, listed, xl_log)
        if ended:
            return "crash", f"{ended} (after {why})"
    except XenhilError as exc2:
        return "hang", f"{why}; dom0 then: {type(exc2).__name__}: {str(exc2).splitlines()[0]}"
    from xenhil.harness.errors import TimeLimitExceeded
    return ("timeout" if isinstance(exc, TimeLimitExceeded) else "error"), why


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="lab/virtual.yaml", help="inventory (default lab/virtual.yaml)")
    parser.add_argument("--host", default=None, help="host name (default: the first)")
    parser.add_argument("--boots", type=int, default=50, help="guest boots in all (default 50)")
    parser.add_argument("--concurrent", type=int, default=1, help="guests booting at once (default 1)")
    parser.add_argument("--split", default="single", help="catalog split of the guest (default single)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra xl config setting (repeatable), e.g. hap=0")
    parser.add_argument("--cmdline", default=None, help="replace the guest kernel's command line")
    parser.add_argument("--boot-timeout", type=float, default=None,
                        help="seconds per boot (default: the host's guest boot budget)")
    parser.add_argument("--label", default=None, help="name of this run in the results file")
    parser.add_argument("--stop-after", type=int, default=0,
                        help="stop after this many failed boots (0: never)")
    args = parser.parse_args(argv)
    if args.boots < 1 or args.concurrent < 1:
        parser.error("--boots and --concurrent must be at least 1")

    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.xen.catalog import load_catalog

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    inventory = load_inventory(Path(args.lab))
    spec = inventory.host(args.host) if args.host else next(iter(inventory.hosts.values()))
    entry = load_catalog().get(args.split)
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set {item!r}: give KEY=VALUE, e.g. --set hap=0")
        settings[key] = int(value) if value.isdigit() else value
    label = args.label or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    artifacts = Path("artifacts") / "bench-stability" / label
    artifacts.mkdir(parents=True, exist_ok=True)
    boot_timeout = args.boot_timeout or spec.profile.guest_boot_timeout()
    stalls = _StallCounter()
    logging.getLogger("xenhil.guest").addHandler(stalls)

    from xenhil.harness.host import Host
    host = Host(spec, artifacts / "host")
    tally = Tally()
    t0 = time.monotonic()
    # SIGTERM (a CI or shell time limit) ends the run like Ctrl-C: the boots
    # finished so far are written out, marked interrupted.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    interrupted = False
    try:
        _run_rounds(args, host, entry, artifacts, settings, boot_timeout, stalls, tally, t0)
    except KeyboardInterrupt:
        interrupted = True
        print(f"interrupted after {len(tally.boots)} boot(s); writing what finished", flush=True)
    _write_results(args, spec, label, artifacts, settings, tally, t0, interrupted)
    host.close()
    counts = tally.counts()
    failed = sum(counts[k] for k in OUTCOMES if k != "ok")
    return 0 if not failed and counts["stalls"] == 0 and not interrupted else 1


def _run_rounds(args, host, entry, artifacts: Path, settings: dict, boot_timeout: float,
                stalls: "_StallCounter", tally: Tally, t0: float) -> int:
    done = 0
    rounds = -(-args.boots // args.concurrent)
    for round_no in range(1, rounds + 1):
        width = min(args.concurrent, args.boots - done)
        pool = ThreadPoolExecutor(max_workers=width)
        try:
            futures = [pool.submit(boot_once, host, entry, round_no, slot, artifacts, settings,
                                   args.cmdline, boot_timeout, stalls) for slot in range(1, width + 1)]
            for future in futures:
                boot = future.result()
                tally.add(boot)
                done += 1
                print(f"[{time.monotonic() - t0:7.0f}s] boot {done}/{args.boots} {boot.name}: "
                      f"{boot.outcome} in {boot.seconds:.0f}s"
                      f"{f' ({boot.stalls} stall(s))' if boot.stalls else ''}"
                      f"{f': {boot.detail}' if boot.detail else ''}", flush=True)
        except KeyboardInterrupt:
            # The boots in flight would otherwise run on to their time limit
            # (up to 15 minutes) before the pool lets go of them, which made
            # SIGTERM look ignored: end their domains, so their waits end at
            # the console's next poll.
            for slot in range(1, width + 1):
                _destroy_quietly(host, f"xh-stab-{round_no}-{slot}")
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        failed = sum(1 for b in tally.boots if b.outcome != "ok")
        if args.stop_after and failed >= args.stop_after:
            print(f"stopping: {failed} failed boot(s)", flush=True)
            break
    return done


def _destroy_quietly(host, name: str) -> None:
    """``xl destroy`` of a bench guest that may already be gone."""
    from xenhil.harness.errors import XenhilError
    try:
        host.ssh.run(["xl", "destroy", name], timeout=60)
    except XenhilError as exc:
        print(f"could not destroy {name}: {exc}", flush=True)


def _write_results(args, spec, label: str, artifacts: Path, settings: dict, tally: Tally,
                   t0: float, interrupted: bool) -> None:
    from xenhil.harness.lab.virtual import quirks

    counts = tally.counts()
    booted = len(tally.boots)
    if not booted:
        return
    result = {
        "label": label,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": spec.name,
        "split": args.split,
        "boots": booted,
        "concurrent": args.concurrent,
        "settings": settings,
        "cmdline": args.cmdline,
        "qemu_cpu": quirks.CPU,
        "qemu_accel": quirks.ACCEL,
        "xen_cmdline": quirks.XEN_CMDLINE,
        "counts": counts,
        "rate": round(sum(counts[k] for k in OUTCOMES if k != "ok") / booted, 4),
        "boot_seconds": {k: round(v, 1) for k, v in
                         _quartiles([b.seconds for b in tally.boots if b.outcome == "ok"]).items()},
        "wall_seconds": round(time.monotonic() - t0, 1),
        "interrupted": interrupted,
        "failures": [asdict(b) for b in tally.boots if b.outcome != "ok"],
    }
    (artifacts / "boots.json").write_text(json.dumps([asdict(b) for b in tally.boots], indent=1) + "\n")
    history = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    history[label] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(history, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, indent=1))


if __name__ == "__main__":
    from xenhil.harness.errors import ConfigError, XenhilError
    try:
        sys.exit(main())
    except ConfigError as exc:  # bad input: the message names the field and the fix
        print(f"bench_lab_stability: {exc}", file=sys.stderr)
        sys.exit(2)
    except XenhilError as exc:  # the lab failed before the first boot
        print(f"bench_lab_stability: {str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
