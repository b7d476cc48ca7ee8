"""Helpers for lease tests and the lease benchmark: inventories built in code,
and the bodies of child processes (module-level, so ``spawn`` can import them).

Children talk to the parent only through the lease store itself and through
multiprocessing queues/events; none of them is a fake: each is a real process
with its own SQLite connection to the same file.
"""
from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from xenhil.harness.lab.leases import Heartbeat, Holder, Pool, open_store, release_all_on_exit
from xenhil.harness.lab.model import HostSpec, Inventory, PowerConfig, SSHConfig

# name -> (tags, capabilities)
HostTable = dict[str, tuple[tuple[str, ...], dict]]


def make_inventory(path: str | Path, hosts: HostTable | list[str]) -> Inventory:
    if isinstance(hosts, list):
        hosts = {name: ((), {}) for name in hosts}
    specs = {}
    for i, (name, (tags, caps)) in enumerate(hosts.items()):
        address = f"127.0.0.{10 + i}"
        specs[name] = HostSpec(name=name, address=address, ssh=SSHConfig(address=address),
                               serial=None, power=PowerConfig(kind="none"),
                               tags=frozenset(tags), capabilities=dict(caps))
    return Inventory(path=Path(path), hosts=specs)


def make_pool(db: str, hosts: HostTable | list[str], ttl: float, **kw) -> Pool:
    """A pool over ``hosts`` in the store ``db`` (a SQLite path or a store URL)."""
    return Pool(open_store(db), make_inventory("lab/test.yaml", hosts), ttl=ttl, **kw)


def stress_worker(db: str, hosts: list[str], index: int, iterations: int, short_ttl: float,
                  marker_dir: str, start, violations) -> None:
    """Claim and release ``iterations`` times.  While holding a host, own an
    O_EXCL marker file for it: a second concurrent holder could not create it,
    an independent check of mutual exclusion besides the grants log.  One
    claim in ten takes a short TTL and stalls past it without a heartbeat
    (dropping the marker first: the lease will lapse), so expiry and reclaim
    race with the normal claims (whose 60 s TTL never lapses)."""
    pool = make_pool(db, hosts, ttl=60, poll_interval=0.01)
    holder = Holder.current(run_id=f"stress-{index}", worker=f"gw{index}")
    rng = random.Random(index)
    start.wait()
    for _ in range(iterations):
        stall = rng.random() < 0.1
        lease = pool.claim(holder, timeout=120, ttl=short_ttl if stall else None)
        if stall:
            time.sleep(short_ttl * 1.5)   # the lease expires meanwhile
            pool.release(lease)           # may find it taken: returns False
            continue
        marker = os.path.join(marker_dir, lease.host)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            violations.put(f"{holder} got {lease.host} while its marker existed")
            pool.release(lease)
            continue
        time.sleep(rng.uniform(0, 0.005))
        os.unlink(marker)
        pool.release(lease)


def hold_until_killed(db: str, hosts: list[str], ttl: float, run_id: str, report, mode: str) -> None:
    """Claim a host, report the lease, then (by ``mode``):
    "sleep": sleep until killed; "sigterm": install release_all_on_exit and
    sleep until SIGTERM; "heartbeat": the same with the lease's heartbeat
    thread running; "exit": return without releasing (atexit releases)."""
    if mode in ("sigterm", "exit"):
        release_all_on_exit()
    pool = make_pool(db, hosts, ttl=ttl)
    lease = pool.claim(Holder.current(run_id=run_id), timeout=30)
    if mode == "heartbeat":
        release_all_on_exit()
        Heartbeat(pool, lease, interval=3600).start()
    report.put(lease)
    if mode == "exit":
        return
    # Short sleeps, like the harness's own waits: CPython runs a signal
    # handler only between bytecodes, so a SIGTERM arriving just before a
    # one-hour sleep began would wait for its end (seen under load in CI).
    while True:
        time.sleep(0.2)


def queued_waiter(db: str, hosts: list[str], name: str, host: str | None, report, release_event,
                  waiter_ttl: float = 10.0) -> None:
    """Wait for a host (FIFO tests), report (name, host), hold it until
    ``release_event`` is set (None: release at once)."""
    pool = make_pool(db, hosts, ttl=60, waiter_ttl=waiter_ttl, poll_interval=0.02)
    lease = pool.claim(Holder.current(run_id=name), host=host, timeout=120)
    report.put((name, lease.host))
    if release_event is not None:
        release_event.wait(120)
    else:
        time.sleep(0.05)
    pool.release(lease)


def bench_worker(db: str, hosts: list[str], cycles: int, ready, start, results) -> None:
    """Say ``ready``, then claim+release ``cycles`` times after ``start``; put
    the latencies (s)."""
    pool = make_pool(db, hosts, ttl=60)   # the shipped poll interval and waiter TTL
    holder = Holder.current(run_id="bench")
    pool.store.leases()                   # connection open before the clock starts
    ready.put(os.getpid())
    start.wait()
    latencies = []
    for _ in range(cycles):
        began = time.perf_counter()
        lease = pool.claim(holder, timeout=600)
        pool.release(lease)
        latencies.append(time.perf_counter() - began)
    results.put(latencies)


def kill_quietly(process) -> None:
    """Stop a child we started, by its pid, if it still runs."""
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
    process.join(10)
