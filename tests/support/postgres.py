"""A real PostgreSQL server for lease tests: ``initdb`` into a private folder,
``postgres`` on 127.0.0.1 and a free port, stopped by process id (its process
group) at the end, also when a test fails.

PostgreSQL refuses to run as root; as root, it runs as ``nobody`` (runuser).

    from tests.support.postgres import postgres_url  # noqa: F401   (module-scoped fixture)
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

# Imported here, at collection, on purpose: an in-process pytester run
# (pytester.runpytest) that imports psycopg first drops it from sys.modules
# when it ends, and the next import builds new exception classes while
# psycopg's C core still raises the old ones: `except psycopg.OperationalError`
# then misses "connection refused" while a server starts (seen as
# test_results_store_contract errors after test_results' usage-error run).
import psycopg  # noqa: F401

BIN_DIRS = ["/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"]


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in BIN_DIRS:
        if os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """Yield a postgresql:// URL of a fresh server; stop it afterwards."""
    import psycopg

    initdb, postgres = _binary("initdb"), _binary("postgres")
    if not (initdb and postgres):
        raise RuntimeError("PostgreSQL server binaries (initdb, postgres) not found")
    workdir = Path(tempfile.mkdtemp(prefix="xenhil-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "nobody", "--"]
        os.chmod(workdir, 0o755)
        shutil.chown(workdir, "nobody", "nogroup")
    data = workdir / "data"
    process = None
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-U", "xenhil", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        port = _free_port()
        log = open(workdir / "server.log", "wb")
        process = subprocess.Popen(
            [*prefix, postgres, "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
             "-k", str(workdir), "-c", "fsync=off", "-c", "max_connections=100"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"postgresql://xenhil@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("postgres did not start: "
                                       + (workdir / "server.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        yield url
    finally:
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)   # fast shutdown
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    pytest.importorskip("psycopg", reason="psycopg 3 not installed (pip install 'xenhil[postgres]')")
    if not (_binary("initdb") and _binary("postgres")):
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    with running_postgres() as url:
        yield url


_databases = itertools.count()


def fresh_store_url(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> str:
    """A fresh, empty store for the test's ``request.param``: a SQLite file,
    or a new database on the module's real PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "lab.leases.sqlite")
    import psycopg
    server = request.getfixturevalue("postgres_url")
    name = f"{prefix}_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name
