"""Stores that survive damage (issue 15): the lease store (SQLite and a real
PostgreSQL server) and the results store carry a schema version, upgrade an
older store in place keeping its rows, refuse a newer one with the fix, and
a read-only SQLite lease store still serves `xenhil lab status` while taking
a lease says why it cannot; a full disk is named as such.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.leases import Holder, LeaseStoreError, SQLLeaseStore, open_store
from xenhil.harness.results.store import ResultsStore
from tests.support.leases import make_pool
from tests.support.postgres import fresh_store_url, postgres_url  # noqa: F401

XENHIL = str(Path(sys.executable).with_name("xenhil"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path: Path) -> str:
    return fresh_store_url(request, tmp_path, "schema")


def _version(db: str) -> int:
    if db.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass('xenhil_schema')").fetchone()[0]
            if exists is None:
                return 0
            row = conn.execute("SELECT version FROM xenhil_schema WHERE component = 'leases'").fetchone()
            return row[0] if row else 0
    with sqlite3.connect(db) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    return version


def _set_version(db: str, version: int | None) -> None:
    """None: the store as written before stores carried a version."""
    if db.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            if version is None:
                conn.execute("DROP TABLE xenhil_schema")
            else:
                conn.execute("UPDATE xenhil_schema SET version = %s WHERE component = 'leases'",
                             (version,))
        return
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {version or 0}")
    conn.commit()
    conn.close()


def test_a_new_lease_store_carries_the_current_schema_version(db):
    open_store(db).close()
    assert _version(db) == SQLLeaseStore.SCHEMA_VERSION == 3


def test_a_lease_store_without_a_version_is_upgraded_in_place_keeping_its_leases(db, tmp_path):
    pool = make_pool(db, ["h1", "h2"], ttl=600)
    lease = pool.claim(Holder.current(run_id="before-upgrade"), timeout=0)
    pool.store.close()
    _set_version(db, None)             # today's tables, no version: what older xenhil wrote
    assert _version(db) == 0

    store = open_store(db)
    assert _version(db) == 3
    assert store.leases()[lease.host].id == lease.id
    assert [g.lease_id for g in store.grants()] == [lease.id]
    assert store.release(lease.id, lease.host, lease.holder) is True
    store.close()
    open_store(db).close()             # a second open finds it current and changes nothing
    assert _version(db) == 3


def test_a_lease_store_of_a_newer_xenhil_is_refused_untouched(db):
    pool = make_pool(db, ["h1"], ttl=600)
    lease = pool.claim(Holder.current(run_id="newer"), timeout=0)
    pool.store.close()
    _set_version(db, 7)
    with pytest.raises(ConfigError, match="schema version 7, newer than this xenhil knows") as info:
        open_store(db)
    assert "upgrade xenhil" in info.value.help
    assert _version(db) == 7
    _set_version(db, 2)
    assert open_store(db).leases()[lease.host].id == lease.id


def test_a_results_store_that_lost_its_version_is_upgraded_keeping_its_runs(tmp_path):
    # Today's tables with version 0: every upgrade step must find its change
    # already made and skip it.  (Upgrades from the real version-0 and
    # version-1 tables: tests/test_results_store_contract.py.)
    path = tmp_path / "results.sqlite"
    store = ResultsStore(f"sqlite://{path}")
    store.record_run("r1", build="b1", runner="runner-1")
    store.record_outcome("r1", "t::a", "failed", "product", message="boom")
    store.close()
    _set_version(str(path), None)

    store = ResultsStore(f"sqlite://{path}")
    assert _version(str(path)) == ResultsStore.SCHEMA_VERSION == 4
    assert store.run("r1")["build"] == "b1" and store.run("r1")["runner"] == "runner-1"
    assert store.outcomes("r1")[0]["message"] == "boom"
    store.close()

    _set_version(str(path), 9)
    with pytest.raises(ConfigError, match="schema version 9, newer") as info:
        ResultsStore(f"sqlite://{path}", create=False)
    assert "upgrade xenhil" in info.value.help


def test_damaged_stores_are_bad_input_with_the_fix(tmp_path):
    lease_db, results_db = tmp_path / "leases.sqlite", tmp_path / "results.sqlite"
    make_pool(str(lease_db), ["h1"], ttl=60).store.close()
    ResultsStore(f"sqlite://{results_db}").close()
    for path in (lease_db, results_db):
        data = path.read_bytes()
        path.write_bytes(data[:100] + b"\xff" * 4000)     # a header and garbage
    with pytest.raises(ConfigError, match="cannot be used") as info:
        open_store(str(lease_db))
    assert "move the damaged file aside" in info.value.help
    with pytest.raises(ConfigError, match="cannot be used") as info:
        ResultsStore(f"sqlite://{results_db}", create=False)
    assert "move the damaged file aside" in info.value.help


def test_a_full_disk_is_named_with_its_fix(tmp_path, monkeypatch):
    db = str(tmp_path / "leases.sqlite")
    pool = make_pool(db, [f"h{i}" for i in range(40)], ttl=600)
    store = pool.store
    pages = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]
    connect = store._connect

    def full(*args):
        conn = connect()
        conn.execute(f"PRAGMA max_page_count = {pages}")   # no room for one more page
        return conn

    monkeypatch.setattr(store, "_connect", full)
    store.close()
    holder = Holder.current(run_id="full")
    with pytest.raises(LeaseStoreError, match="file system holding it is full") as info:
        for _ in range(200):   # grants fill the last pages, then one more needs a page
            lease = pool.claim(holder, timeout=0)
            pool.release(lease)
    assert "df -h" in info.value.help
    assert "waited" not in str(info.value)


# --- a read-only SQLite lease store ----------------------------------------------------

INVENTORY = """\
hosts:
  - name: h1
    address: 127.0.0.11
    ssh: none
    power: {kind: none}
  - name: h2
    address: 127.0.0.12
    ssh: none
    power: {kind: none}
"""


def _as_unprivileged(argv: list[str]) -> list[str]:
    """Root ignores file modes; without these capabilities it obeys them."""
    if os.geteuid() != 0:
        return argv
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file modes cannot make a store read-only")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *argv]


@pytest.mark.parametrize("what", ["file", "folder", "folder-with-wal"])
def test_a_read_only_lease_store_still_serves_lab_status(tmp_path, what):
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    lab = lab_dir / "lab.yaml"
    lab.write_text(INVENTORY)
    db = lab_dir / ".lab.leases.sqlite"
    pool = make_pool(str(db), ["h1", "h2"], ttl=3600)
    lease = pool.claim(Holder.current(run_id="ro-run"), timeout=0, host="h1")
    keep_open = None
    if what == "folder-with-wal":
        # A holder still has it open: the newest rows may be in the -wal file.
        keep_open = sqlite3.connect(db)
        keep_open.execute("SELECT count(*) FROM leases").fetchone()
        pool.store.renew(lease, 3600)
    pool.store.close()
    modes = {}
    try:
        for path in [db, *db.parent.glob(db.name + "-*")]:
            modes[path] = path.stat().st_mode
            path.chmod(0o444)
        if what.startswith("folder"):
            modes[lab_dir] = lab_dir.stat().st_mode
            lab_dir.chmod(0o555)
        env = dict(os.environ, COLUMNS="200")
        status = subprocess.run(_as_unprivileged([XENHIL, "lab", "status", "--lab", str(lab)]),
                                capture_output=True, text=True, env=env, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        assert lease.id in status.stdout and "leased" in status.stdout, status.stdout
        assert "1 of 2 hosts leased" in status.stdout and "read-only" in status.stdout

        reserve = subprocess.run(_as_unprivileged([XENHIL, "reserve", "--host", "h2", "--lab",
                                                   str(lab)]),
                                 capture_output=True, text=True, env=env, timeout=120)
        assert reserve.returncode == 2, reserve.stdout + reserve.stderr
        assert "is read-only here: a lease cannot be taken" in reserve.stderr, reserve.stderr
        assert "writable" in reserve.stderr, reserve.stderr
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))
        if keep_open is not None:
            keep_open.close()
    assert open_store(str(db)).leases()["h1"].id == lease.id     # nothing was changed


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_results_store_is_read_for_the_report(tmp_path, what):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    path = folder / "results.sqlite"
    store = ResultsStore(f"sqlite://{path}")
    store.record_run("r1", build="b1")
    store.record_outcome("r1", "t::a", "failed", "product", message="boom")
    store.close()
    modes = {path: path.stat().st_mode}
    try:
        path.chmod(0o444)
        if what == "folder":
            modes[folder] = folder.stat().st_mode
            folder.chmod(0o555)
        code = ("import sys; from xenhil.harness.results.store import ResultsStore; "
                "s = ResultsStore(sys.argv[1], create=False); "
                "print(s.read_only, s.outcomes('r1')[0]['message'])")
        proc = subprocess.run(_as_unprivileged([sys.executable, "-c", code, f"sqlite://{path}"]),
                              capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["True", "boom"]
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))


def _damage_pages(path: Path) -> None:
    """Garbage over the start of every page after the first three: the file
    opens (its header and schema are whole), its rows do not read."""
    data = bytearray(path.read_bytes())
    for offset in range(4096 * 3, len(data), 4096):
        data[offset:offset + 100] = b"\xee" * 100
    path.write_bytes(bytes(data))


def test_a_store_damaged_past_its_first_pages_is_bad_input_not_a_bug(tmp_path):
    lab = tmp_path / "lab.yaml"
    lab.write_text(INVENTORY)
    lease_db = tmp_path / ".lab.leases.sqlite"
    pool = make_pool(str(lease_db), ["h1", "h2"], ttl=3600)
    holder = Holder.current(run_id="x" * 300)
    for _ in range(300):
        pool.release(pool.claim(holder, timeout=0))
    pool.store.close()
    _damage_pages(lease_db)
    for argv in (["lab", "status"], ["reserve", "--host", "h1"]):
        proc = subprocess.run([XENHIL, *argv, "--lab", str(lab)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "cannot be used: database disk image is malformed" in proc.stderr, proc.stderr
        assert "move the damaged file aside" in proc.stderr

    results_db = tmp_path / "results.sqlite"
    store = ResultsStore(f"sqlite://{results_db}")
    store.record_run("r1")
    for i in range(2000):
        store.record_outcome("r1", f"t::{i}", "failed", "product", message="m" * 200)
    store.close()
    _damage_pages(results_db)
    store = ResultsStore(f"sqlite://{results_db}", create=False)
    with pytest.raises(ConfigError, match="cannot be used: database disk image is malformed") as info:
        store.outcomes("r1")
    assert "move the damaged file aside" in info.value.help


def test_a_results_store_on_a_full_disk_says_so(tmp_path):
    from xenhil.harness.errors import InfrastructureError
    store = ResultsStore(f"sqlite://{tmp_path / 'results.sqlite'}")
    store.record_run("r1")
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(InfrastructureError, match="database or disk is full") as info:
        for i in range(2000):
            store.record_outcome("r1", f"t::{i}", "failed", "product", message="m" * 500)
    assert "df -h" in info.value.help


def test_postgres_roles_that_may_only_read_or_only_change_rows(postgres_url, tmp_path):
    import psycopg
    server = postgres_url
    name = f"roles_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    db = server.rsplit("/", 1)[0] + "/" + name
    pool = make_pool(db, ["h1", "h2"], ttl=3600)
    lease = pool.claim(Holder.current(run_id="pg-roles"), timeout=0, host="h1")
    pool.store.close()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE ROLE viewer LOGIN")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO viewer")
        conn.execute("CREATE ROLE booker LOGIN")
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO booker")
    owner = db.split("://", 1)[1].split("@", 1)[0]
    viewer, booker = (db.replace(f"{owner}@", f"{role}@", 1) for role in ("viewer", "booker"))

    store = open_store(viewer)                  # cannot create tables nor change rows: reads
    assert store.read_only and store.leases()["h1"].id == lease.id
    with pytest.raises(ConfigError, match="read-only for this role") as info:
        store.try_claim(Holder.current(run_id="viewer"), ["h2"], 60, None, 10)
    assert "GRANT" in info.value.help
    store.close()
    lab = tmp_path / "lab.yaml"
    lab.write_text(INVENTORY)
    status = subprocess.run([XENHIL, "lab", "status", "--lab", str(lab), "--lab-db", viewer],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, COLUMNS="200"))
    assert status.returncode == 0, status.stdout + status.stderr
    assert lease.id in status.stdout and "read-only" in status.stdout, status.stdout

    store = open_store(booker)                  # changes rows of a current store, creates nothing
    assert not store.read_only
    claimed, _ = store.try_claim(Holder.current(run_id="booker"), ["h2"], 60, None, 10)
    assert claimed is not None and claimed.host == "h2"
    store.close()
