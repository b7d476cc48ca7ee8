"""Guests belong to their host (issue 18, items 1 and 2), on real parts: a
real sshd host (127.0.3.x), the real lease store (SQLite, and a real
PostgreSQL server for the store's own operations), the real guest pool and
real pytest-xdist workers.  The guests are stand-ins whose domain is a file
on the sshd host and whose boot is a sleep there
(tests/support/standin_guest.py): what is measured is which process boots,
finds, takes over and destroys which guest.

- two workers (-n 2) on one host boot one guest between them, as one
  worker does, and the run's end destroys it;
- a host keeps --guests-per-host guests and destroys the least recently
  used one to boot another; another process (pool) takes over a guest it
  did not boot, without booting;
- a claim prefers a free host running the guest, then one running its
  build, and never waits for one;
- a lease store of schema 2 is upgraded to 3 in place, keeping its rows.
"""
from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from xenhil.harness.lab.leases import (GUEST_BOOTING, GUEST_READY, GuestRecord, GuestWish, Holder,
                                       SQLLeaseStore, open_store)
from tests.support.child_env import child_env
from tests.support.leases import make_pool
from tests.support.postgres import fresh_store_url, postgres_url  # noqa: F401
from tests.support.sshd import running_sshd
from tests.support.standin_guest import CONFTEST, USES_SUITE as SUITE, StandInGuest
from tests.support.standin_guest import sshd_inventory as _inventory

ROOT = Path(__file__).resolve().parent.parent
ME = Holder.current(run_id="run-g")


@pytest.fixture(scope="module")
def sshd_host(tmp_path_factory):
    with running_sshd(tmp_path_factory.mktemp("sshd"),
                      address=f"127.0.3.{random.randint(10, 250)}") as server:
        yield server


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- two workers, one host, one guest -------------------------------------------------

def _run(tmp_path: Path, server, workers: int, splits=("single",), tests: int = 6,
         *extra: str, suite: str = SUITE, env_extra: dict | None = None, ok: bool = True) -> dict:
    run = tmp_path / f"n{workers}-{len(splits)}"
    (run / "suite").mkdir(parents=True)
    (run / "suite" / "test_suite.py").write_text(suite)
    (run / "suite" / "conftest.py").write_text(CONFTEST)
    lab = _inventory(run / "lab.yaml", server)
    db = run / "leases.sqlite"
    env = child_env(XH_GUESTS=str(run / "guests"), XH_BOOT_S="0.5", XH_BOOTS=str(run / "boots.jsonl"),
                    XH_DESTROYED=str(run / "destroyed.jsonl"), XH_USES=str(run / "uses.jsonl"),
                    XH_LEASE_DB=f"sqlite://{db}", XH_TESTS=str(tests), PYTHONPATH=str(ROOT),
                    **(env_extra or {}))
    xdist = ["-n", str(workers)] if workers > 1 else []
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *xdist, "--lab", str(lab), "--lab-db", f"sqlite://{db}",
         "--run-id", f"share-{workers}", *(f"--split={s}" for s in splits),
         "--artifacts", str(run / "art"), "-p", "no:cacheprovider", "-q", *extra],
        cwd=run / "suite", env=env, capture_output=True, text=True, timeout=300)
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    from xenhil.fixtures.guest import read_boot_records
    return {"boots": _lines(run / "boots.jsonl"), "uses": _lines(run / "uses.jsonl"),
            "recorded": read_boot_records(run / "art" / f"share-{workers}"),
            "destroyed": _lines(run / "destroyed.jsonl"), "db": db, "guests": run / "guests",
            "output": result.stdout}


def test_two_workers_on_one_host_share_one_guest_and_the_run_end_destroys_it(tmp_path, sshd_host):
    alone = _run(tmp_path, sshd_host, 1)
    shared = _run(tmp_path, sshd_host, 2)
    assert len(alone["boots"]) == 1, alone
    # -n 2 boots no more than -n 1: one guest, booted by one worker ...
    [boot] = shared["boots"]
    # ... which is what the run's own boot records say (summed over workers).
    assert [len(r["recorded"]["boots"]) for r in (alone, shared)] == [1, 1]
    assert shared["recorded"]["boots"] == [f"{boot['guest']} on h1"]
    assert shared["recorded"]["boot_retries"] == shared["recorded"]["model_deaths"] == []
    assert ("1 guest boot(s); 0 booted again after a crash; 0 replaced after a device model "
            "died") in shared["output"]
    assert len(shared["uses"]) == 6
    # ... and used by both, the other one taking over a guest it did not boot.
    assert {u["guest"] for u in shared["uses"]} == {boot["guest"]}
    users = {u["pid"] for u in shared["uses"]}
    assert len(users) == 2 and boot["pid"] in users, shared["uses"]
    # The run's end (the xdist controller) destroyed it under the host's
    # lease, and no record or domain of the run is left.
    [destroyed] = shared["destroyed"]
    assert destroyed["guest"] == boot["guest"] and destroyed["pid"] not in users
    assert destroyed["lease_holder_pid"] == destroyed["pid"]
    store = open_store(f"sqlite://{shared['db']}")
    try:
        assert store.guests() == []
        assert all(lease is None or lease.expired() for lease in store.leases().values())
    finally:
        store.close()
    assert not list(shared["guests"].rglob("*.domain"))


def test_two_workers_on_one_host_boot_what_one_boots_with_more_splits_than_the_host_keeps(
        tmp_path, sshd_host):
    """3 splits, a host keeping 2 guests: the host must see the tests in
    one worker's order (split by split), or two workers alternating between
    two parts of the order evict each other's guests."""
    splits = ("single", "qnet+qall", "qide+qall")
    alone = _run(tmp_path, sshd_host, 1, splits, 4, "--guests-per-host=2")
    shared = _run(tmp_path, sshd_host, 2, splits, 4, "--guests-per-host=2")
    assert len(alone["boots"]) == 3, alone["boots"]
    assert len(shared["boots"]) <= 3, shared["boots"]
    assert len({u["pid"] for u in shared["uses"]}) == 2 and len(shared["uses"]) == 12


# --- disruptive tests that prove their guest whole hand it on ----------------------

DISRUPTIVE_SUITE = '''
import json, os, pytest

def _use(guest, name):
    assert guest.run("echo up").strip() == "up"
    with open(os.environ["XH_USES"], "a") as out:
        out.write(json.dumps({"guest": guest.name, "test": name}) + "\\n")
    if name in os.environ.get("XH_FAIL", "").split(","):
        pytest.fail(f"{name} failed on purpose")

@pytest.mark.disruptive
def test_a_balloon(guest):
    _use(guest, "balloon")

@pytest.mark.disruptive(returns_whole_guest=True)
def test_b_save_restore(guest):
    _use(guest, "save_restore")

@pytest.mark.disruptive(returns_whole_guest=True)
def test_c_cycles(guest):
    _use(guest, "cycles")

def test_d_pci(guest):
    _use(guest, "pci")
'''


@pytest.mark.parametrize("xdist", [(), ("-n", "1")], ids=["no-xdist", "n1"])
def test_disruptive_tests_that_prove_their_guest_whole_hand_it_on(tmp_path, sshd_host, xdist):
    """One boot for a split's tests: the shared tests, then the disruptive
    ones that return a whole guest (each hands it to the next), then the
    one that destroys it; alone and as the main job runs (``-n 1``)."""
    run = _run(tmp_path, sshd_host, 1, ("single",), 0, *xdist, suite=DISRUPTIVE_SUITE)
    assert [u["test"] for u in run["uses"]] == ["pci", "save_restore", "cycles", "balloon"]
    [boot] = run["boots"]
    assert {u["guest"] for u in run["uses"]} == {boot["guest"]}
    assert [d["guest"] for d in run["destroyed"]] == [boot["guest"]]
    assert len(run["recorded"]["boots"]) == 1, run["recorded"]    # the run's own count agrees


def test_a_failed_disruptive_test_never_hands_its_guest_on(tmp_path, sshd_host):
    run = _run(tmp_path, sshd_host, 1, ("single",), 0, suite=DISRUPTIVE_SUITE,
               env_extra={"XH_FAIL": "save_restore"}, ok=False)
    uses = {u["test"]: u["guest"] for u in run["uses"]}
    assert len(run["boots"]) == 2 == len(run["recorded"]["boots"]), run["recorded"]
    assert uses["save_restore"] == uses["pci"] and uses["cycles"] != uses["save_restore"]
    assert run["destroyed"][0]["guest"] == uses["save_restore"]
    assert uses["balloon"] == uses["cycles"]


def test_the_disruptive_marker_takes_returns_whole_guest_alone(pytester):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.disruptive(returns_whole=True)
        def test_x(): pass
    """)
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_x: disruptive takes one keyword argument, "
                                 "returns_whole_guest=True or False*"])


# --- eviction, and taking over another pool's guest ---------------------------------

class _Pools:
    """Guest pools on one real sshd host and one real SQLite store, as two
    processes of a run have them (each its own pool and Host object)."""

    def __init__(self, tmp_path: Path, server, monkeypatch):
        from xenhil.harness.host import Host
        from xenhil.harness.lab.inventory import load_inventory
        monkeypatch.setenv("XH_GUESTS", str(tmp_path / "guests"))
        monkeypatch.setenv("XH_BOOTS", str(tmp_path / "boots.jsonl"))
        monkeypatch.setenv("XH_DESTROYED", str(tmp_path / "destroyed.jsonl"))
        self.tmp_path = tmp_path
        self.spec = load_inventory(_inventory(tmp_path / "lab.yaml", server)).host("h1")
        self.store = open_store(tmp_path / "leases.sqlite")
        self.hosts = []
        self.Host = Host

    def pool(self, worker: str, limit: int = 2):
        from xenhil.fixtures.guest import GuestPool
        host = self.Host(self.spec, self.tmp_path / worker)
        self.hosts.append(host)
        pool = GuestPool(worker, self.tmp_path / worker, book=self.store, run_id="run-g",
                         by=worker, guests_per_host=limit, host_object=lambda name: host,
                         guest_type=StandInGuest)
        return pool, host

    def boots(self) -> list[str]:
        return [b["guest"] for b in _lines(self.tmp_path / "boots.jsonl")]

    def destroyed(self) -> list[str]:
        return [d["guest"] for d in _lines(self.tmp_path / "destroyed.jsonl")]

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        self.store.close()


@pytest.fixture
def pools(tmp_path, sshd_host, monkeypatch):
    made = _Pools(tmp_path, sshd_host, monkeypatch)
    yield made
    made.close()


def test_a_host_keeps_its_limit_of_guests_and_destroys_the_least_recently_used(pools):
    from xenhil.harness.xen.catalog import load_catalog
    catalog = load_catalog()
    single, qnet, qserial = (catalog.get(s) for s in ("single", "qnet+qall", "qserial+qnet+qall"))
    gw0, host0 = pools.pool("gw0", limit=2)
    gw1, host1 = pools.pool("gw1", limit=2)

    a = gw0.get(host0, single, "B1")
    b = gw1.get(host1, qnet, "B1")
    assert pools.boots() == [a.name, b.name]
    # gw1 takes over gw0's guest of split single: no boot.
    again = gw1.get(host1, single, "B1")
    assert again.name == a.name and again is not a and pools.boots() == [a.name, b.name]
    # The host is full (2); qnet+qall's guest was used least recently: it goes.
    c = gw0.get(host0, qserial, "B1")
    assert pools.destroyed() == [b.name]
    assert sorted(r.name for r in pools.store.guests("h1")) == sorted([a.name, c.name])
    assert not (Path(os.environ["XH_GUESTS"]) / "h1" / f"{b.name}.domain").exists()
    # Another build's guest of the same split is another guest.
    d = gw1.get(host1, single, "B2")
    assert d.name not in (a.name, c.name) and pools.destroyed() == [b.name, a.name]
    assert [r.state for r in pools.store.guests("h1")] == [GUEST_READY, GUEST_READY]


def test_a_guest_left_booting_by_a_dead_process_is_destroyed_by_the_next_holder(pools):
    from xenhil.harness.xen.catalog import load_catalog
    single = load_catalog().get("single")
    gw0, host0 = pools.pool("gw0")
    pools.store.put_guest(GuestRecord(host="h1", name="xh-gw9-single-1", split="single",
                                      build="B1", state=GUEST_BOOTING, domid=None, run_id="dead",
                                      by="gw9", created_at=0, last_used=0))
    guest = gw0.get(host0, single, "B1")
    assert pools.destroyed() == ["xh-gw9-single-1"] and pools.boots() == [guest.name]
    assert [r.name for r in pools.store.guests("h1")] == [guest.name]


def test_a_disruptive_test_gets_a_guest_of_its_own_destroyed_after_it(pools):
    from xenhil.harness.xen.catalog import load_catalog
    single = load_catalog().get("single")
    gw0, host0 = pools.pool("gw0")
    shared = gw0.get(host0, single, "B1")
    own = gw0.get(host0, single, "B1", exclusive=True)   # the host's, taken over
    assert own.name == shared.name
    assert [r.state for r in pools.store.guests("h1")] == ["private"]
    gw0.discard(own)
    assert pools.store.guests("h1") == [] and pools.destroyed() == [own.name]
    assert gw0.get(host0, single, "B1").name != own.name      # a fresh one for the others


# --- affinity -------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    return fresh_store_url(request, tmp_path, "affinity")


def _ready(store, host: str, split: str, build: str, state: str = GUEST_READY) -> None:
    store.put_guest(GuestRecord(host=host, name=f"xh-{split}-{host}", split=split, build=build,
                                state=state, domid=7, run_id="run-g", by="gw0",
                                created_at=0, last_used=0))


def test_a_claim_prefers_a_host_running_its_guest_then_its_build_and_never_waits_for_one(db):
    pool = make_pool(db, ["h1", "h2", "h3", "h4"], ttl=600)
    store = pool.store
    _ready(store, "h3", "single", "B1")
    _ready(store, "h2", "single", "B1", state=GUEST_BOOTING)    # not ready: no pull
    _ready(store, "h1", "qnet+qall", "B1")                      # another split
    store.record_build("h4", "B1", ME)
    want = GuestWish("single", "B1")
    held = []
    try:
        held.append(pool.claim(ME, timeout=0, prefer=want))
        assert held[-1].host == "h3"                 # runs the guest
        held.append(pool.claim(ME, timeout=0, prefer=want))
        assert held[-1].host == "h4"                 # runs the build
        held.append(pool.claim(ME, timeout=0, prefer=want))
        assert held[-1].host == "h1"                 # neither: inventory order, no waiting
        pool.release(held.pop(0))
        held.append(pool.claim(ME, timeout=0, prefer=GuestWish("single", "B2")))
        assert held[-1].host == "h2"
        held.append(pool.claim(ME, timeout=0))
        assert held[-1].host == "h3"                 # no wish: the free one
    finally:
        for lease in held:          # none left for the process's exit to release
            pool.release(lease)
    # A new build on h1 ends its guests of the old one.
    assert [g.name for g in store.record_build("h1", "B2", ME)] == ["xh-qnet+qall-h1"]
    assert store.host_builds() == {"h1": "B2", "h4": "B1"}


# --- schema 2 -> 3 --------------------------------------------------------------------

def _as_schema_2(db: str) -> None:
    """The store as xenhil wrote it before guests were recorded: the same
    tables without guests and host_builds, version 2."""
    drop = ["DROP TABLE guests", "DROP TABLE host_builds"]
    if db.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            for sql in drop:
                conn.execute(sql)
            conn.execute("UPDATE xenhil_schema SET version = 2 WHERE component = 'leases'")
        return
    conn = sqlite3.connect(db)
    for sql in drop:
        conn.execute(sql)
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()


def test_a_schema_2_store_is_upgraded_in_place_keeping_its_leases_and_quarantines(db):
    pool = make_pool(db, ["h1", "h2"], ttl=600)
    lease = pool.claim(ME, timeout=0)
    pool.quarantine_host("h2", "before the upgrade", ME)
    pool.store.close()
    _as_schema_2(db)

    store = open_store(db)
    assert SQLLeaseStore.SCHEMA_VERSION == 3 and store.schema_found == 3
    assert store.leases()[lease.host].id == lease.id
    assert store.quarantined()["h2"].reason == "before the upgrade"
    assert store.guests() == [] and store.host_builds() == {}
    _ready(store, "h1", "single", "B1")
    assert pool.release(lease)          # none left for the process's exit to release
    store.close()
    again = open_store(db)              # a second open changes nothing
    assert [g.name for g in again.guests()] == ["xh-single-h1"]
    assert again.guests()[0].state == GUEST_READY and again.guests()[0].domid == 7
    again.close()


# --- order and distribution -------------------------------------------------------------

pytest_plugins = ["pytester"]


def test_the_tests_of_a_split_run_together_and_the_others_keep_their_place(pytester):
    pytester.makepyfile("""
        import pytest
        def test_first(): pass
        def test_a(split): pass
        def test_between(): pass
        def test_b(split): pass
        @pytest.mark.disruptive
        def test_c(split): pass
    """)
    result = pytester.runpytest("--collect-only", "-q", "--split", "single", "--split", "qnet+qall")
    names = [line.split("::")[1] for line in result.outlines if "::" in line]
    assert names == ["test_first", "test_a[split=single]", "test_b[split=single]", "test_between",
                     "test_a[split=qnet+qall]", "test_b[split=qnet+qall]",
                     "test_c[split=single]", "test_c[split=qnet+qall]"]


def test_a_run_on_a_lab_under_xdist_runs_a_stretch_per_host_unless_the_user_chose_a_mode(
        pytester, tmp_path, sshd_host):
    from xenhil.fixtures.scheduling import HostStretchScheduling, pytest_xdist_make_scheduler
    lab = _inventory(tmp_path / "lab.yaml", sshd_host)

    def configured(*args):
        from xdist.plugin import pytest_cmdline_main
        config = pytester.parseconfigure("-n", "2", *args)
        pytest_cmdline_main(config)       # pytest-xdist's own: -n 2 -> --dist load, two workers
        return config

    scheduler = pytest_xdist_make_scheduler(configured("--lab", str(lab)), None)
    assert isinstance(scheduler, HostStretchScheduling) and scheduler.hosts == 1
    assert pytest_xdist_make_scheduler(configured("--dist", "load", "--lab", str(lab)), None) is None
    assert pytest_xdist_make_scheduler(configured(), None) is None


class _Worker:
    """What the scheduler sees of a pytest-xdist worker: what it was sent."""

    def __init__(self, name: str):
        from types import SimpleNamespace
        self.name, self.shutting_down, self.sent = name, False, []
        self.gateway = SimpleNamespace(id=name)

    def send_runtest_some(self, indices) -> None:
        self.sent += list(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def _scheduler(pytester, workers: int, hosts: int, tests: int):
    from xdist.plugin import pytest_cmdline_main

    from xenhil.fixtures.scheduling import HostStretchScheduling
    config = pytester.parseconfigure("-n", str(workers))
    pytest_cmdline_main(config)
    scheduler = HostStretchScheduling(config, None, hosts=hosts)
    nodes = [_Worker(f"gw{i}") for i in range(workers)]
    for node in nodes:
        scheduler.add_node(node)
        scheduler.add_node_collection(node, [f"t.py::test[{i}]" for i in range(tests)])
    scheduler.schedule()
    return scheduler, nodes


def test_workers_sharing_one_host_take_the_tests_in_one_order(pytester):
    scheduler, (a, b) = _scheduler(pytester, workers=2, hosts=1, tests=8)
    assert (a.sent, b.sent) == ([0, 1], [2, 3])
    scheduler.mark_test_complete(b, 2)
    scheduler.mark_test_complete(a, 0)
    assert (a.sent, b.sent) == ([0, 1, 5], [2, 3, 4])
    for node, index in ((a, 1), (b, 3), (b, 4), (a, 5)):
        scheduler.mark_test_complete(node, index)
    assert sorted(a.sent + b.sent) == list(range(8)) and not scheduler.pending
    assert scheduler.tests_finished and a.shutting_down and b.shutting_down


def test_a_worker_whose_stretch_is_done_takes_the_back_half_of_the_longest(pytester):
    scheduler, (a, b, c) = _scheduler(pytester, workers=3, hosts=3, tests=30)
    assert (a.sent, b.sent, c.sent) == ([0, 1], [10, 11], [20, 21])
    for index in range(10):          # a runs its whole stretch
        scheduler.mark_test_complete(a, index)
    # b's stretch had 12-19 left; c's 22-29: a took the back half of the first longest.
    assert a.sent[-2:] == [16, 17] and b.sent == [10, 11]
    for index in (10, 11, 12, 13):
        scheduler.mark_test_complete(b, index)
    assert b.sent[-2:] == [14, 15] and 16 not in b.sent      # b stays on its own stretch's front
    for index in (14, 15):           # b's stretch is done: the back half of c's, 26-29
        scheduler.mark_test_complete(b, index)
    assert b.sent[-2:] == [26, 27] and c.sent == [20, 21]
    assert not any(node.shutting_down for node in (a, b, c))
