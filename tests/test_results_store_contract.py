"""The results store's contract (issue 17, item 1 "Shared history"), run
against SQLite and a real PostgreSQL server (tests/support/postgres.py):
runs, outcomes, latency and warnings read back as written (floats to the
bit), a history that two runners write into one store read by either,
secrets scrubbed, an upgrade from the version-1 tables keeping every row,
two processes opening a new store at once, a newer schema refused
untouched; and on PostgreSQL alone: roles without the privileges, an
unreachable server, psycopg missing, a lost connection, and `xenhil
report` over a PostgreSQL store.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from xenhil.harness.errors import ConfigError, InfrastructureError
from xenhil.harness.results.store import ResultsStore
from tests.support.at_once import errors_of_processes_at_once
from tests.support.postgres import postgres_url  # noqa: F401   (module-scoped fixture)

XENHIL = str(Path(sys.executable).with_name("xenhil"))

# --- the version-1 tables, frozen ----------------------------------------------------
# FROZEN COPY of the results store's DDL at schema version 1 (harness/results/store.py
# before the runner column), as xenhil wrote it into SQLite files: the input of the
# upgrade tests.  Never edit it to follow the current schema.
V1_DDL_SQLITE = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- "run N" in verdicts
    run_id TEXT UNIQUE NOT NULL,
    started REAL NOT NULL,
    build TEXT NOT NULL DEFAULT '',          -- Xen build id under test
    series TEXT NOT NULL DEFAULT '',
    facts TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS outcomes (
    run_id TEXT NOT NULL,
    test TEXT NOT NULL,                      -- pytest node id
    outcome TEXT NOT NULL,                   -- passed | failed | broken | skipped
    failure_class TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '',
    split TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, test)
);
CREATE TABLE IF NOT EXISTS latency (
    run_id TEXT NOT NULL,
    host TEXT NOT NULL,
    split TEXT NOT NULL,
    build TEXT NOT NULL,
    server TEXT NOT NULL,                    -- model name, "probe", or "xen" (baseline)
    port TEXT NOT NULL,
    n INTEGER NOT NULL,
    p50_ns REAL, p90_ns REAL, p99_ns REAL, max_ns REAL,
    samples TEXT NOT NULL DEFAULT '[]',      -- a bounded random subsample, for the statistical test
    PRIMARY KEY (run_id, host, split, server, port)
);
CREATE TABLE IF NOT EXISTS warnings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,                      -- the XenhilWarning subclass: DeviceModelDied, ...
    test TEXT NOT NULL DEFAULT '',           -- pytest node id it was raised in
    message TEXT NOT NULL DEFAULT ''
);
"""
# The same version-1 tables in PostgreSQL's dialect (the types schema 1 would have had
# there: an identity key, 8-byte floats), with the version in xenhil_schema.
V1_DDL_POSTGRES = (V1_DDL_SQLITE
                   .replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                            "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
                   .replace(" REAL", " DOUBLE PRECISION"))

# Rows of a version-1 store: two runs, outcomes, a latency row, a warning.
V1_RUNS = [("v1-a", 1700000000.25, "build-a", "series-a", '{"k": 1}'),
           ("v1-b", 1700000600.5, "build-b", "", "{}")]
V1_OUTCOMES = [("v1-a", "t::x", "passed", "", "h1", "single", ""),
               ("v1-b", "t::x", "failed", "product", "h1", "single", "boom")]
V1_LATENCY = ("v1-a", "h1", "single", "build-a", "qemu", "0x64", 3, 0.1 + 0.2, 1 / 3, 2.5e-7,
              1e300, json.dumps([0.1 + 0.2, 1 / 3]))
V1_WARNING = ("v1-b", "DeviceModelDied", "t::x", "qemu died")


# --- stores -------------------------------------------------------------------------

_databases = itertools.count()


def new_database(server: str, prefix: str = "results") -> str:
    """A new, empty database on the test's PostgreSQL server."""
    import psycopg
    name = f"{prefix}_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store_url(request, tmp_path: Path):
    """A function giving the URL of a new, empty results store of the test's back end."""
    counter = itertools.count()
    if request.param == "sqlite":
        return lambda: f"sqlite://{tmp_path / f'results-{next(counter)}.sqlite'}"
    server = request.getfixturevalue("postgres_url")
    return lambda: new_database(server)


@pytest.fixture
def url(new_store_url) -> str:
    return new_store_url()


def is_pg(url: str) -> bool:
    return url.startswith("postgresql://")


def sql(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    """One statement straight on the database (``?`` placeholders), outside the store."""
    if is_pg(url):
        import psycopg
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(statement.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []
    conn = sqlite3.connect(url.removeprefix("sqlite://"), isolation_level=None)
    try:
        return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def schema_version(url: str) -> int | None:
    """The results store's recorded schema version (None: none recorded)."""
    if is_pg(url):
        if sql(url, "SELECT to_regclass('xenhil_schema') IS NULL") == [(True,)]:
            return None
        rows = sql(url, "SELECT version FROM xenhil_schema WHERE component = 'results'")
        return rows[0][0] if rows else None
    return sql(url, "PRAGMA user_version")[0][0]


def set_schema_version(url: str, version: int) -> None:
    if is_pg(url):
        sql(url, "UPDATE xenhil_schema SET version = ? WHERE component = 'results'", (version,))
    else:
        sql(url, f"PRAGMA user_version = {version}")


def build_version_1_store(url: str, recorded_version: int) -> None:
    """A store as a xenhil of schema 1 left it, from the frozen DDL, with rows;
    ``recorded_version`` 0: written before stores carried a version."""
    if is_pg(url):
        import psycopg
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(V1_DDL_POSTGRES)
            if recorded_version:
                conn.execute("CREATE TABLE xenhil_schema (component TEXT PRIMARY KEY, "
                             "version INTEGER NOT NULL)")
                conn.execute("INSERT INTO xenhil_schema VALUES ('results', %s)",
                             (recorded_version,))
    else:
        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        conn.executescript(V1_DDL_SQLITE)
        conn.execute(f"PRAGMA user_version = {recorded_version}")
        conn.commit()
        conn.close()
    for run in V1_RUNS:
        sql(url, "INSERT INTO runs (run_id, started, build, series, facts) VALUES (?,?,?,?,?)", run)
    for outcome in V1_OUTCOMES:
        sql(url, "INSERT INTO outcomes VALUES (?,?,?,?,?,?,?)", outcome)
    sql(url, "INSERT INTO latency VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", V1_LATENCY)
    sql(url, "INSERT INTO warnings (run_id, kind, test, message) VALUES (?,?,?,?)", V1_WARNING)


SUMMARY = {"n": 5, "p50_ns": 1000.0, "p90_ns": 2000.0, "p99_ns": 3000.0, "max_ns": 4000.0}


# --- the contract, on both back ends ---------------------------------------------------

def test_runs_outcomes_and_warnings_read_back_as_written(url):
    store = ResultsStore(url)
    started = 1796045483.7358902
    seq = store.record_run("r1", build="b1", series="s1", facts={"xenhil.split": "single"},
                           started=started, runner="runner-a")
    assert store.record_run("r1", build="other", runner="runner-b") == seq   # recorded once
    assert store.record_run("r2") == store.run_seq("r2") > seq
    assert store.run("r1") == {"seq": seq, "run_id": "r1", "started": started, "build": "b1",
                               "series": "s1", "facts": '{"xenhil.split": "single"}',
                               "runner": "runner-a"}
    assert store.run("r2")["runner"] == socket.gethostname()
    assert store.latest_run_id() == "r2"

    store.record_outcome("r1", "t::b", "failed", "product", "h1", "single", "first")
    store.record_outcome("r1", "t::b", "broken", "infrastructure", "h2", "qnet", "again")
    store.record_outcome("r1", "t::a", "passed")
    store.record_outcome("r1", "t::nul", "failed", message="a\x00b")
    outcomes = store.outcomes("r1")
    assert [o["test"] for o in outcomes] == ["t::a", "t::b", "t::nul"]
    assert outcomes[1] == {"run_id": "r1", "test": "t::b", "outcome": "broken",
                           "failure_class": "infrastructure", "host": "h2", "split": "qnet",
                           "message": "again"}
    # PostgreSQL's text holds no NUL: the message is kept with it escaped.
    assert outcomes[2]["message"] == ("a\\x00b" if is_pg(url) else "a\x00b")
    assert store.outcomes("r2") == []

    store.record_warning("r1", "DeviceModelDied", "t::b", "qemu-dm 1 died")
    store.record_warning("r1", "GuestBootRetried", "t::a", "boot 2 of 3")
    assert store.warnings("r1") == [
        {"kind": "DeviceModelDied", "test": "t::b", "message": "qemu-dm 1 died"},
        {"kind": "GuestBootRetried", "test": "t::a", "message": "boot 2 of 3"}]
    with pytest.raises(KeyError):
        store.run("nope")
    with pytest.raises(KeyError):
        store.history("t::a", "nope")
    store.close()


def test_repeated_run_records_use_up_no_run_numbers(url):
    # The controller and every xdist worker record the run: "run N" must not skip.
    store = ResultsStore(url)
    for run in ("r1", "r2", "r3"):
        for _ in range(3):
            store.record_run(run)
    assert [store.run_seq(run) for run in ("r1", "r2", "r3")] == [1, 2, 3]
    store.close()


FLOATS = [0.1 + 0.2, 1 / 3, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
          123456789.12345679, -0.0, 2.0 ** 53 + 2]


def test_latency_figures_round_trip_to_the_bit(url):
    store = ResultsStore(url)
    store.record_run("r1", build="b1")
    summary = {"n": 8, "p50_ns": FLOATS[0], "p90_ns": FLOATS[1], "p99_ns": FLOATS[2],
               "max_ns": FLOATS[4]}
    store.record_latency("r1", "h1", "single", "b1", "qemu", "0x64", summary, FLOATS)
    store.record_latency("r1", "h1", "single", "b1", "xen", "0x40", SUMMARY, [1.5])
    [row] = [r for r in store.latency_rows("r1") if r["server"] == "qemu"]
    assert [row[k] for k in ("n", "p50_ns", "p90_ns", "p99_ns", "max_ns")] == \
        [8, FLOATS[0], FLOATS[1], FLOATS[2], FLOATS[4]]
    assert all(type(row[k]) is float for k in ("p50_ns", "p90_ns", "p99_ns", "max_ns"))
    assert [v.hex() for v in row["samples"]] == [v.hex() for v in FLOATS]
    # Recording the same row again replaces it.
    store.record_latency("r1", "h1", "single", "b2", "qemu", "0x64", SUMMARY, [7.25])
    [row] = [r for r in store.latency_rows("r1") if r["server"] == "qemu"]
    assert (row["build"], row["p50_ns"], row["samples"]) == ("b2", 1000.0, [7.25])
    assert len(store.latency_rows("r1")) == 2
    store.close()


def history_runs(store, run_id, host="h1", split="single", build_class="built", limit=10):
    return [h["run_id"] for h in store.latency_history(run_id, host, split, build_class, limit)]


def test_latency_history_is_the_newest_earlier_runs_of_the_same_host_split_and_build_class(url):
    store = ResultsStore(url)
    builds = {"r1": "tarball-1", "r2": "debian-default-2", "r3": "dist-3", "r4": "tarball-4",
              "r5": "tarball-5"}
    for run, build in builds.items():
        store.record_run(run, build=build)
        p50 = float(run[1])
        store.record_latency(run, "h1", "single", build, "qemu", "0x64",
                             {**SUMMARY, "p50_ns": p50}, [p50], emulated=True)
        store.record_latency(run, "h1", "single", build, "xen", "0x40", SUMMARY, [0.5],
                             emulated=True)
        store.record_latency(run, "h2", "single", build, "qemu", "0x64", SUMMARY, [9.0])
    [newest, *_] = history = store.latency_history("r5", "h1", "single", "built", 10)
    assert [h["run_id"] for h in history] == ["r4", "r3", "r1"]     # r2 ran Debian's build
    assert newest["build"] == "tarball-4"
    rows = {r["server"]: r for r in newest["rows"]}
    assert set(rows) == {"qemu", "xen"} and rows["qemu"]["samples"] == [4.0]
    assert rows["qemu"]["emulated"] == 1 and rows["qemu"]["host"] == "h1"
    assert history_runs(store, "r5", limit=2) == ["r4", "r3"]
    assert [h["run_id"] for h in store.latency_history("r5", "h1", "single", "built", 10,
                                                       emulated=False)] == []
    assert [h["run_id"] for h in store.latency_history("r5", "h1", "single", "built", 10,
                                                       emulated=True)] == ["r4", "r3", "r1"]
    assert history_runs(store, "r5", build_class="debian") == ["r2"]
    assert history_runs(store, "r1") == []
    assert history_runs(store, "r5", split="qnet") == []
    store.close()


def test_a_mutant_run_is_never_the_latency_history_of_another_run(url):
    """The delay mutant (lab/mutants) slows a server on purpose: a run after
    it compares with the clean runs before it (issue 14 item 1)."""
    store = ResultsStore(url)
    faults = {"r1": "none", "r2": "delay=200", "r3": "ignore-invalidate", "r4": "none"}
    for run, fault in faults.items():
        store.record_run(run, facts={"xenhil.probe_fault": fault})
        store.record_latency(run, "h1", "single+probe", "tarball-b", "probe", "0x6100",
                             {**SUMMARY, "p50_ns": float(len(run) + int(run[1]))}, [1.0])
    assert history_runs(store, "r4", split="single+probe") == ["r1"]
    # The mutant run itself is compared with the clean history too.
    assert history_runs(store, "r3", split="single+probe") == ["r1"]
    assert history_runs(store, "r2", split="single+probe") == ["r1"]
    assert history_runs(store, "r1", split="single+probe") == []
    store.close()


def test_a_mutant_runs_outcomes_are_no_history_of_another_run(url):
    """A test a mutant run failed on purpose must not make a later failure
    of the same test "fails like run N" instead of a regression."""
    store = ResultsStore(url)
    test = "suites/mapcache/test_mapcache.py::test_x[split=single+probe]"
    for run, fault, outcome in (("r1", "none", "passed"), ("r2", "ignore-invalidate", "failed"),
                                ("r3", "none", "failed")):
        store.record_run(run, build="b", facts={"xenhil.probe_fault": fault})
        store.record_outcome(run, test, outcome, "product" if outcome == "failed" else "")
    assert [h.run_id for h in store.history(test, "r3")] == ["r1"]
    store.close()


def test_two_runners_share_one_history(url):
    """Runs written by two runners, interleaved, into one store: each reads
    the other's outcomes and latency as its history, in the order the runs
    were recorded, and each run says which runner wrote it."""
    import random

    from xenhil.harness.results.latency import latency_regressions, summarize
    from xenhil.harness.results.verdicts import verdict

    runner_a, runner_b = ResultsStore(url), ResultsStore(url)
    rng = random.Random(11)

    def run(store, run_id, runner, build, outcome, qemu_mean):
        store.record_run(run_id, build=build, runner=runner)
        store.record_outcome(run_id, "suites/pci/test_bars.py::t", outcome,
                             "product" if outcome == "failed" else "")
        for server, port, mean in (("xen", "0x40", 1000.0), ("0", "0x64", qemu_mean)):
            samples = [rng.gauss(mean, 300) for _ in range(2000)]
            store.record_latency(run_id, "vhost1", "single", build, server, port,
                                 summarize(samples), samples)

    run(runner_a, "a-1", "runner-a", "build-1", "passed", 10000)
    run(runner_b, "b-1", "runner-b", "build-1", "passed", 10050)
    run(runner_a, "a-2", "runner-a", "build-2", "failed", 12000)   # +20 %, and the test fails

    for reader in (runner_a, runner_b):
        history = reader.history("suites/pci/test_bars.py::t", "a-2")
        assert [(h.run_id, h.outcome) for h in history] == [("b-1", "passed"), ("a-1", "passed")]
        assert verdict("suites/pci/test_bars.py::t", "failed", "build-2", history).text == \
            f"regression vs run {reader.run_seq('b-1')}"
        [regression] = latency_regressions(reader, "a-2")
        assert "REGRESSION" in regression and "newest b-1" in regression
        assert [reader.run(r)["runner"] for r in ("a-1", "b-1", "a-2")] == \
            ["runner-a", "runner-b", "runner-a"]
        assert reader.latest_run_id() == "a-2"
    assert runner_a.run_seq("a-1") < runner_b.run_seq("b-1") < runner_a.run_seq("a-2")
    runner_a.close()
    runner_b.close()


def test_secrets_never_reach_the_store(url):
    from xenhil.harness.secrets import register_secret
    secret = "contract-secret-" + os.urandom(6).hex()
    register_secret(secret)
    store = ResultsStore(url)
    store.record_run("r1", build=f"build {secret}", series=f"series {secret}",
                     facts={"password": secret}, runner=f"runner-{secret}")
    store.record_outcome("r1", "t::a", "failed", "product",
                         message=f"login with {secret} refused")
    store.record_warning("r1", "GuestBootRetried", "t::a", f"retried after {secret!r}")
    assert store.outcomes("r1")[0]["message"] == "login with *** refused"
    assert store.run("r1")["build"] == "build ***"
    values = list(store.text_values())
    assert "login with *** refused" in values       # every table was read
    assert not [v for v in values if secret in v]
    store.close()
    everything = []
    for table in ("runs", "outcomes", "latency", "warnings"):
        everything += [str(v) for row in sql(url, f"SELECT * FROM {table}") for v in row]
    assert not [v for v in everything if secret in v]


@pytest.mark.parametrize("recorded_version", [1, 0], ids=["version-1", "no-version"])
def test_a_version_1_store_is_upgraded_keeping_every_row(url, recorded_version):
    build_version_1_store(url, recorded_version)
    assert schema_version(url) == (recorded_version if recorded_version or not is_pg(url)
                                   else None)

    store = ResultsStore(url)
    assert schema_version(url) == ResultsStore.SCHEMA_VERSION == 4
    for (run_id, started, build, series, facts), seq in zip(V1_RUNS, (1, 2)):
        assert store.run(run_id) == {"seq": seq, "run_id": run_id, "started": started,
                                     "build": build, "series": series, "facts": facts,
                                     "runner": ""}      # written before runners were recorded
    assert [tuple(o.values()) for o in store.outcomes("v1-a") + store.outcomes("v1-b")] == \
        V1_OUTCOMES
    [latency] = store.latency_rows("v1-a")
    assert tuple(latency.values())[:11] == V1_LATENCY[:11]
    assert latency["samples"] == json.loads(V1_LATENCY[11])
    assert store.warnings("v1-b") == [dict(zip(("kind", "test", "message"), V1_WARNING[1:]))]
    assert [(h.run_id, h.outcome) for h in store.history("t::x", "v1-b")] == [("v1-a", "passed")]
    # The upgraded store takes new runs after the old ones, with their runner.
    assert store.record_run("v2-c", runner="runner-c") == 3
    [history] = store.latency_history("v2-c", "h1", "single", "built", 10)
    assert history["run_id"] == "v1-a" and history["rows"][0]["emulated"] == 0   # not recorded then
    assert history["rows"][0]["emulator_cpu_wait"] is None                        # nor watched
    store.close()
    ResultsStore(url).close()       # a second open finds it current
    assert schema_version(url) == 4
    assert sql(url, "SELECT run_id, runner FROM runs ORDER BY seq") == \
        [("v1-a", ""), ("v1-b", ""), ("v2-c", "runner-c")]


def open_and_record(url: str, runner: str, barrier, results) -> None:
    """A runner's first open of a new store, at the moment every sibling opens it
    (run in a child process: module-level, so ``spawn`` can import it)."""
    barrier.wait()
    try:
        store = ResultsStore(url)
        store.record_run(f"run-of-{runner}", runner=runner)
        store.close()
        results.put(None)
    except Exception as exc:      # reported to the parent, which asserts on it
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_store_at_once_all_succeed(new_store_url):
    processes, rounds = 4, 3
    for _ in range(rounds):
        url = new_store_url()
        errors = errors_of_processes_at_once(open_and_record,
                                             [(url, f"runner-{i}") for i in range(processes)])
        assert errors == []
        assert schema_version(url) == 4
        runs = sql(url, "SELECT seq, run_id, runner FROM runs ORDER BY seq")
        assert sorted(runner for _, _, runner in runs) == [f"runner-{i}" for i in range(processes)]
        assert [seq for seq, _, _ in runs] == list(range(1, processes + 1))


def test_a_store_of_a_newer_xenhil_is_refused_untouched(url):
    store = ResultsStore(url)
    store.record_run("r1", runner="runner-a")
    store.close()
    set_schema_version(url, 5)
    for create in (True, False):
        with pytest.raises(ConfigError, match=r"schema version 5, newer than this xenhil "
                                              r"knows \(4\)") as info:
            ResultsStore(url, create=create)
        assert "upgrade xenhil" in info.value.help
    assert schema_version(url) == 5
    assert sql(url, "SELECT run_id, runner FROM runs") == [("r1", "runner-a")]


# --- PostgreSQL only -------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]      # nothing listens on it once the socket is closed


@pytest.mark.parametrize("user", ["xenhil", "xenhil:Pw-never-shown-0451"])
def test_an_unreachable_postgres_server_is_infrastructure_with_the_fix(user):
    pytest.importorskip("psycopg")
    port = _closed_port()
    url = f"postgresql://{user}@127.0.0.1:{port}/results"
    with pytest.raises(InfrastructureError) as info:
        ResultsStore(url)
    text = str(info.value)
    assert f"cannot connect to results store postgresql://xenhil{':***' if ':' in user else ''}" \
           f"@127.0.0.1:{port}/results" in text
    assert "Connection refused" in text
    assert f"pg_isready -h 127.0.0.1 -p {port}" in info.value.help
    assert "Pw-never-shown-0451" not in text + info.value.help


def test_a_wrong_database_name_is_bad_input_with_the_fix(postgres_url):
    url = postgres_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(ConfigError, match='database "no_such_database" does not exist') as info:
        ResultsStore(url, create=False)
    assert "check the user and database of --results-db" in info.value.help


def test_without_psycopg_a_postgres_store_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)     # import psycopg fails
    with pytest.raises(ConfigError, match="needs psycopg 3, which is not installed") as info:
        ResultsStore("postgresql://xenhil:Pw-never-shown-0452@db.example/results")
    assert "pip install 'xenhil[postgres]'" in info.value.help
    assert "Pw-never-shown-0452" not in str(info.value)


def test_postgres_roles_get_what_their_grants_allow(postgres_url):
    import psycopg
    owner_url = new_database(postgres_url, "roles")
    owner = ResultsStore(owner_url)
    owner.record_run("r1", runner="runner-a")
    owner.record_outcome("r1", "t::a", "passed")
    owner.close()
    suffix = f"{os.getpid()}_{next(_databases)}"
    roles = {name: f"{name}_{suffix}" for name in ("viewer", "recorder", "stranger", "builder")}
    with psycopg.connect(owner_url, autocommit=True) as conn:
        for role in roles.values():
            conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {roles['viewer']}")
        conn.execute("GRANT SELECT ON xenhil_schema TO " + roles["recorder"])
        conn.execute(f"GRANT SELECT, INSERT, UPDATE ON runs, outcomes, latency, warnings "
                     f"TO {roles['recorder']}")
    as_role = {name: owner_url.replace("xenhil@", f"{role}@", 1) for name, role in roles.items()}

    # May only read: the report reads it; recording a run says which GRANTs are missing.
    viewer = ResultsStore(as_role["viewer"], create=False)
    assert viewer.read_only and viewer.run("r1")["runner"] == "runner-a"
    viewer.close()
    with pytest.raises(ConfigError, match="this role may not record runs "
                                          r"\(missing INSERT on runs") as info:
        ResultsStore(as_role["viewer"])
    assert info.value.help.startswith("GRANT SELECT ON xenhil_schema and SELECT, INSERT, UPDATE")

    # Row privileges without CREATE: records into a current store (no DDL on opening).
    recorder = ResultsStore(as_role["recorder"])
    assert not recorder.read_only
    assert recorder.record_run("r2", runner="runner-b") == 2
    recorder.record_outcome("r2", "t::a", "failed", "product")
    assert [h.run_id for h in recorder.history("t::a", "r2")] == ["r1"]
    recorder.close()

    # No privileges at all: named, with the GRANT.
    for create in (True, False):
        with pytest.raises(ConfigError, match="this role may not read the store's schema "
                                              "version") as info:
            ResultsStore(as_role["stranger"], create=create)
        assert "GRANT SELECT ON xenhil_schema" in info.value.help

    # A new database and a role that may not create tables in it (PostgreSQL 15:
    # only the owner of the public schema may).
    empty = new_database(postgres_url, "empty")
    with pytest.raises(ConfigError, match="this role may not create or upgrade the results "
                                          "tables") as info:
        ResultsStore(empty.replace("xenhil@", f"{roles['builder']}@", 1))
    assert "CREATE on the schema" in info.value.help
    assert sql(empty, "SELECT to_regclass('runs') IS NULL") == [(True,)]


def test_the_report_reads_an_older_postgres_store_it_may_not_upgrade(postgres_url):
    import psycopg
    url = new_database(postgres_url, "older")
    build_version_1_store(url, 1)
    role = f"reader_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    reader = ResultsStore(url.replace("xenhil@", f"{role}@", 1), create=False)
    assert reader.read_only
    assert reader.run("v1-b")["runner"] == "" and reader.outcomes("v1-b")[0]["message"] == "boom"
    reader.close()
    assert schema_version(url) == 1             # left as it was


def test_a_lost_connection_is_named_and_the_next_statement_reconnects(postgres_url):
    import psycopg
    url = new_database(postgres_url, "lost")
    store = ResultsStore(url)
    store.record_run("r1")
    pid = store.db.info.backend_pid
    with psycopg.connect(url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    with pytest.raises(InfrastructureError, match=r"results store postgresql://xenhil@") as info:
        store.record_outcome("r1", "t::a", "passed")
    assert "PostgreSQL server is up" in info.value.help
    store.record_outcome("r1", "t::a", "passed")
    assert store.db.info.backend_pid != pid
    assert [o["outcome"] for o in store.outcomes("r1")] == ["passed"]
    store.close()


def open_lease_or_results_store(url: str, kind: str, barrier, results) -> None:
    """The first open of one xenhil store in a new database, at the moment a
    sibling opens the other kind (module-level, for ``spawn``)."""
    barrier.wait()
    try:
        if kind == "leases":
            from xenhil.harness.lab.lease_postgres import PostgresLeaseStore
            PostgresLeaseStore(url).close()
        else:
            ResultsStore(url).close()
        results.put(None)
    except Exception as exc:      # reported to the parent, which asserts on it
        results.put(f"{kind}: {type(exc).__name__}: {exc}")


def test_the_lease_and_results_stores_create_one_database_at_once(postgres_url):
    # Both create the shared xenhil_schema table: two CREATE TABLE IF NOT
    # EXISTS of it at once fail in PostgreSQL unless both take one lock.
    for _ in range(4):
        url = new_database(postgres_url, prefix="shared")
        errors = errors_of_processes_at_once(open_lease_or_results_store,
                                             [(url, "leases"), (url, "results")])
        assert errors == []
        assert sorted(sql(url, "SELECT component FROM xenhil_schema")) == [("leases",), ("results",)]


def test_results_db_option_takes_postgres_urls_without_a_password():
    from xenhil.harness.options import check_pytest_options, check_store_url
    assert check_store_url("--results-db", "postgresql://ci@db.example/results") == \
        "postgresql://ci@db.example/results"
    with pytest.raises(ConfigError, match="the URL holds a password") as info:
        check_store_url("--results-db", "postgresql://ci:Pw-never-shown-0453@db.example/r")
    assert "Pw-never-shown-0453" not in str(info.value) and "~/.pgpass" in info.value.help
    with pytest.raises(ConfigError, match="unknown scheme") as info:
        check_store_url("--results-db", "mysql://db.example/r")
    assert "postgresql://USER@HOST/DATABASE" in info.value.help
    checked = check_pytest_options({"--lease-ttl": 60, "--reserve-timeout": 60,
                                    "--results-db": "postgres://ci@db.example/results",
                                    "--artifacts": "artifacts"})
    assert checked["--results-db"] == "postgres://ci@db.example/results"


INVENTORY = """\
hosts:
  - name: h1
    address: 192.0.2.10
    ssh: none
    power: {kind: ipmi, address: 192.0.2.110, user: ADMIN, password: {env: XENHIL_CONTRACT_PW}}
"""


def test_xenhil_report_reads_and_scans_a_postgres_store(postgres_url, tmp_path):
    url = new_database(postgres_url, "report")
    runner_a, runner_b = ResultsStore(url), ResultsStore(url)
    runner_a.record_run("run-1", build="b1", runner="runner-a")
    runner_a.record_outcome("run-1", "test_x.py::test_flips", "passed")
    runner_b.record_run("run-2", build="b2", runner="runner-b")
    runner_b.record_outcome("run-2", "test_x.py::test_flips", "failed", "product",
                            message="ownership differs")
    runner_a.close()
    runner_b.close()
    allure = tmp_path / "allure"
    allure.mkdir()
    (allure / "x-result.json").write_text(json.dumps({"name": "test_flips", "status": "failed"}))
    (allure / "environment.properties").write_text("xenhil.run_id=run-2\n")
    lab = tmp_path / "lab.yaml"
    lab.write_text(INVENTORY)
    secret = "contract-report-" + os.urandom(6).hex()
    env = dict(os.environ, XENHIL_CONTRACT_PW=secret)

    def report(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([XENHIL, "report", str(allure), "-o", str(tmp_path / "out"),
                               "--results-db", url, "--scan-secrets", str(lab), *extra],
                              capture_output=True, text=True, timeout=300, env=env)

    clean = report()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "test_x.py::test_flips  [product]  regression vs run 1" in clean.stdout, clean.stdout
    assert f"the results store {url}" in clean.stdout and "secret scan: none of" in clean.stdout

    # A secret that reached the store behind its back (raw SQL, no scrubbing) is found.
    sql(url, "UPDATE outcomes SET message = ? WHERE run_id = 'run-1'", (f"pw {secret}",))
    leaked = report()
    assert leaked.returncode == 1, leaked.stdout + leaked.stderr
    assert f"SECRET LEAK: the results store {url} holds the" in leaked.stdout, leaked.stdout
    assert secret not in leaked.stdout + leaked.stderr

    missing = subprocess.run([XENHIL, "report", str(allure), "-o", str(tmp_path / "out2"),
                              "--results-db", url.rsplit("/", 1)[0] + "/postgres"],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "holds no results (no runs table)" in missing.stderr


def test_xenhil_report_scans_a_postgres_lease_store_through_its_rows(postgres_url, tmp_path):
    """The run writes into the lab's lease store too (holders, quarantine
    reasons, guests' failures); on PostgreSQL it is no file, so the scan
    reads its rows, and a secret that reached it is a leak."""
    from xenhil.harness.lab.leases import Holder, open_store
    results_url = new_database(postgres_url, "report")
    store = ResultsStore(results_url)
    store.record_run("run-1", build="b1", runner="runner-a")
    store.close()
    lease_url = new_database(postgres_url, "leases")
    leases = open_store(lease_url)
    leases.quarantine("h1", "BMC did not answer", Holder.current(run_id="run-1"))
    leases.close()
    allure = tmp_path / "allure"
    allure.mkdir()
    (allure / "x-result.json").write_text(json.dumps({"name": "test_x", "status": "passed"}))
    (allure / "environment.properties").write_text("xenhil.run_id=run-1\n")
    lab = tmp_path / "lab.yaml"
    lab.write_text(INVENTORY + f"lease_db: {lease_url}\n")
    secret = "contract-lease-" + os.urandom(6).hex()
    env = dict(os.environ, XENHIL_CONTRACT_PW=secret)

    def report(out: str) -> subprocess.CompletedProcess:
        return subprocess.run([XENHIL, "report", str(allure), "-o", str(tmp_path / out),
                               "--results-db", results_url, "--scan-secrets", str(lab)],
                              capture_output=True, text=True, timeout=300, env=env)

    clean = report("out1")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"the lease store {lease_url}" in clean.stdout, clean.stdout
    # Written behind the store's back (raw SQL: the store itself scrubs).
    sql(lease_url, "UPDATE quarantine SET reason = ? WHERE host = 'h1'", (f"ipmitool -P {secret}",))
    leaked = report("out2")
    assert leaked.returncode == 1, leaked.stdout + leaked.stderr
    assert f"SECRET LEAK: the lease store {lease_url} holds the" in leaked.stdout, leaked.stdout
    assert secret not in leaked.stdout + leaked.stderr
