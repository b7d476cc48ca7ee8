"""Interrupted runs (issue 18, item 3): a real pytest run against a lab of
two real sshd hosts is stopped in the middle of its suite by SIGTERM (what
a CI time limit or ``kill`` sends) or Ctrl-C, alone and under pytest-xdist
(``-n 2``), and must end cleanly:

- pytest's exit status is "interrupted" (2), not death by signal, and every
  process of the run (the controller and each worker) is gone;
- no lease is left in the lease store, and each one was released, not left
  to expire;
- the guest each worker had on its host was destroyed while the host was
  still leased (a stand-in for a booted guest, in the real guest pool and
  recorded in the lease store, whose "domain" is a file on its sshd host:
  tests/support/standin_guest.py);
- `xenhil report`, run on the results, renders them: the failure classes'
  categories, the tests that passed before the signal as passed, and the
  tests that never gave a verdict as "not run" (category, triage list).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.child_env import child_env
from tests.support.sshd import running_sshd
from tests.support.standin_guest import CONFTEST as STANDIN_CONFTEST

ROOT = Path(__file__).resolve().parent.parent

SUITE = '''
import os, time, pytest
from xenhil.harness.errors import ProductError

@pytest.mark.parametrize("n", range(3))
def test_quick(host, n):
    assert host.ssh.run("echo ok", check=True).stdout.strip() == "ok"

def test_product_failure(host):
    raise ProductError("device model answered on the wrong port")

@pytest.mark.parametrize("n", range(4))
def test_blocks(guest, n):
    open(os.path.join(os.environ["XH_MARKS"], f"blocking-{os.getpid()}-{n}"), "w").close()
    time.sleep(300)

def test_after():
    pass
'''

# Guests are stand-ins (tests/support/standin_guest.py): a file on their
# sshd host, whose destroy records who held the host then.
CONFTEST = STANDIN_CONFTEST

#: test_quick x3, test_product_failure, test_blocks x4, test_after.
COLLECTED = 9
NOT_RUN = 5            # test_blocks x4 and test_after


@pytest.fixture(scope="module")
def sshd_hosts(tmp_path_factory):
    base = tmp_path_factory.mktemp("sshd")
    with running_sshd(base / "h1") as h1, running_sshd(base / "h2") as h2:
        yield [h1, h2]


@pytest.fixture
def run_dir(tmp_path: Path, sshd_hosts) -> Path:
    hosts = [{"name": f"h{i}", "address": s.address,
              "ssh": {"address": s.address, "port": s.port, "user": s.user,
                      "key_file": str(s.client_key), "host_key": s.host_key},
              "power": {"kind": "none"}}
             for i, s in enumerate(sshd_hosts, 1)]
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump({"hosts": hosts}, sort_keys=False))
    run = tmp_path / "run"
    run.mkdir()
    (run / "test_suite.py").write_text(SUITE)
    (run / "conftest.py").write_text(CONFTEST)
    for name in ("marks", "guests"):
        (tmp_path / name).mkdir()
    return tmp_path


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _as_from_a_terminal() -> None:
    # A shell without job control starts background jobs with SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: start the run
    # as a terminal does (test_lab_end_to_end.py has the story).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _as_a_ci_job() -> None:
    # A CI job's run, started by a shell script in the background: SIGINT
    # ignored (so pytest-xdist's own shutdown, which interrupts a busy
    # worker with SIGINT, cannot stop it); its time limit sends SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupted_run(run_dir: Path, signum: int, to_group: bool, workers: int,
                     ready=None) -> dict:
    """Start the suite, wait until every worker is blocked in a test holding
    a host and a guest (every test before those has ended by then: each
    worker takes its tests in order) or ``ready()`` says so, send the
    signal, wait for the end."""
    marks = run_dir / "marks"
    ready = ready or (lambda: len(list(marks.iterdir())) >= workers)
    xdist = ["-n", str(workers)] if workers > 1 else []
    argv = [sys.executable, "-m", "pytest", *xdist, "--lab", str(run_dir / "lab.yaml"),
            "--lab-db", f"sqlite://{run_dir / 'leases.sqlite'}", "--reserve-timeout", "60",
            "--alluredir", str(run_dir / "allure"), "--artifacts", str(run_dir / "artifacts"),
            "--run-id", "R1", "--split", "single", "-p", "no:cacheprovider", "-q"]
    env = child_env(XH_MARKS=str(marks), XH_GUESTS=str(run_dir / "guests"),
                    XH_DESTROYED=str(run_dir / "destroyed.jsonl"),
                    XH_LEASE_DB=f"sqlite://{run_dir / 'leases.sqlite'}", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(argv, cwd=run_dir / "run", env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_as_a_ci_job if signum == signal.SIGTERM
                            else _as_from_a_terminal)
    try:
        deadline = time.monotonic() + 40
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the run never reached its blocking tests:\n" + proc.communicate()[0])
            time.sleep(0.1)
        processes = [proc.pid, *_descendants(proc.pid)]
        signalled = time.monotonic()
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        try:
            output = proc.communicate(timeout=40)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"the run did not end within 40 s of {signal.Signals(signum).name}:\n"
                        + proc.communicate()[0])
        return {"rc": proc.returncode, "output": output, "processes": processes,
                "seconds": time.monotonic() - signalled}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()



def _report_triage(run_dir: Path) -> str:
    """`xenhil report` of the run (as a user runs it); its triage text."""
    report = subprocess.run([sys.executable, "-m", "xenhil.harness.cli.main", "report",
                             str(run_dir / "allure"), "-o", str(run_dir / "html"),
                             "--artifacts", str(run_dir / "artifacts")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert report.returncode == 0, report.stdout + report.stderr
    return (run_dir / "html" / "triage.txt").read_text()

def _walk(node: dict):
    for child in node.get("children", []):
        yield child
        yield from _walk(child)


CASES = {
    # signal, to the whole process group (a terminal's Ctrl-C) or the pytest
    # process alone, workers.  SIGTERM runs start with SIGINT ignored, as a
    # CI job's: the controller must pass the interruption on to its workers.
    "sigterm": (signal.SIGTERM, False, 1),
    "ctrl-c": (signal.SIGINT, True, 1),
    "sigterm -n 2": (signal.SIGTERM, False, 2),
    "ctrl-c -n 2": (signal.SIGINT, True, 2),
    "sigterm to every process -n 2": (signal.SIGTERM, True, 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_interrupted_run_ends_cleanly_and_its_report_lists_what_did_not_run(
        run_dir: Path, case: str) -> None:
    signum, to_group, workers = CASES[case]
    run = _interrupted_run(run_dir, signum, to_group, workers)
    output = run["output"]

    # pytest's "interrupted", not death by signal; every process of the run gone.
    assert run["rc"] == pytest.ExitCode.INTERRUPTED, output
    assert len(run["processes"]) >= workers
    leftovers = [pid for pid in run["processes"] if _alive(pid)]
    assert not leftovers, f"processes of the run still alive: {leftovers}\n{output}"
    assert "INTERNALERROR" not in output, output

    # No lease held, each one released by its holder (not expired).
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.lab.leases import Pool, open_store
    pool = Pool(open_store(f"sqlite://{run_dir / 'leases.sqlite'}"),
                load_inventory(run_dir / "lab.yaml"))
    assert [lease for _, lease in pool.status(include_expired=True)] == [None, None], output
    grants = pool.store.grants()
    assert len(grants) >= 4 + workers           # the tests before the signal, the blocked ones
    assert all(g.released_at is not None and g.expired_at is None for g in grants), grants

    # Each blocked worker's guest destroyed while its host was still leased to it.
    destroyed = [json.loads(line) for line in
                 (run_dir / "destroyed.jsonl").read_text().splitlines()] \
        if (run_dir / "destroyed.jsonl").exists() else []
    assert len(destroyed) == workers, (destroyed, output)
    for record in destroyed:
        assert record["lease_holder_pid"] == record["pid"], record
    assert not list((run_dir / "guests").rglob("*.domain"))

    # `xenhil report` renders the results.
    triage = _report_triage(run_dir)
    how = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C (SIGINT)"
    assert f"run state: interrupted by {how}: {NOT_RUN} of {COLLECTED} tests not run" in triage
    assert f"3 passed, 1 failed, 0 skipped, {NOT_RUN} not run" in triage, triage
    listed = triage.split("Tests which did not run")[1].split("\n\n")[0].splitlines()[1:]
    assert len(listed) == NOT_RUN, triage
    assert all("test_blocks[" in line or "::test_after " in line for line in listed), triage
    assert sum("while it ran" in line for line in listed) == workers, triage
    assert sum("before it started" in line for line in listed) == NOT_RUN - workers, triage

    # The HTML report's data: the categories with their tests, the passed ones passed.
    html = run_dir / "html" / "data"
    categories = {node["name"].split(":")[0]: {leaf["name"] for leaf in _walk(node) if "status" in leaf}
                  for node in json.loads((html / "categories.json").read_text())["children"]}
    assert categories["Product"] == {"test_product_failure"}, categories
    assert len(categories["Not run"]) == NOT_RUN, categories
    assert all(n.startswith(("test_blocks[", "test_after")) for n in categories["Not run"])
    cases = [json.loads(p.read_text()) for p in (html / "test-cases").glob("*.json")]
    statuses = {c["name"]: c["status"] for c in cases}
    assert len(cases) == COLLECTED, sorted(statuses)
    assert {n: s for n, s in statuses.items() if n.startswith("test_quick")} == \
        {"test_quick[0]": "passed", "test_quick[1]": "passed", "test_quick[2]": "passed"}


@pytest.mark.parametrize("workers", [1, 2], ids=["alone", "-n 2"])
def test_a_run_killed_outright_still_leaves_a_report_of_what_ran_and_what_did_not(
        run_dir: Path, workers: int) -> None:
    """SIGKILL cannot be caught: no session end, its leases end with their
    TTL.  What the run wrote as it went (categories and environment at its
    start, every collected test "not run" until its outcome came) is still a
    report: passed tests passed, the rest listed as not run."""
    run = _interrupted_run(run_dir, signal.SIGKILL, True, workers)
    assert run["rc"] == -signal.SIGKILL
    triage = _report_triage(run_dir)
    assert "run state: running (if this run is over, it was killed before its end" in triage
    assert f"3 passed, 1 failed, 0 skipped, {NOT_RUN} not run" in triage, triage
    listed = triage.split("Tests which did not run")[1].split("\n\n")[0].splitlines()[1:]
    assert sum("the run ended while it ran" in line for line in listed) == workers, triage
    assert sum("the run ended before it started" in line for line in listed) == NOT_RUN - workers
    html = run_dir / "html" / "data"
    categories = {node["name"].split(":")[0]: {leaf["name"] for leaf in _walk(node) if "status" in leaf}
                  for node in json.loads((html / "categories.json").read_text())["children"]}
    assert categories["Product"] == {"test_product_failure"}, categories
    # The tests killed while they ran left no result; the others are there.
    assert len(categories["Not run"]) == NOT_RUN - workers, categories
    statuses = {c["name"]: c["status"] for c in (json.loads(p.read_text())
                                                 for p in (html / "test-cases").glob("*.json"))}
    assert len(statuses) == COLLECTED - workers, sorted(statuses)
    assert [statuses[f"test_quick[{n}]"] for n in range(3)] == ["passed"] * 3


BREAKS_ITS_HOST = """
import os, time, pytest

def test_breaks_its_host(host):
    host.mark_broken("broken on purpose by the test")

@pytest.mark.parametrize("n", range(3))
def test_blocks(host, n):
    open(os.path.join(os.environ["XH_MARKS"], f"blocking-{n}"), "w").close()
    time.sleep(300)
"""


def test_an_interrupted_run_does_not_health_check_the_host_it_quarantined(run_dir: Path) -> None:
    """A host the run latched broken is quarantined when its lease goes; the
    health check a run gives such hosts at its end (power cycle, a guest
    boot: minutes) is not for an interrupted one, and says so.  With -n 2
    on two hosts, one quarantined: gw0 broke its host and then waits for the
    other, which gw1 holds in a blocked test; the controller learns of the
    quarantine only from gw0's end, which it reads while it waits."""
    from xenhil.harness.lab.inventory import load_inventory
    from xenhil.harness.lab.leases import Pool, open_store
    pool = Pool(open_store(f"sqlite://{run_dir / 'leases.sqlite'}"),
                load_inventory(run_dir / "lab.yaml"))
    (run_dir / "run" / "test_suite.py").write_text(BREAKS_ITS_HOST)
    run = _interrupted_run(run_dir, signal.SIGTERM, False, 2, ready=lambda: (
        list((run_dir / "marks").iterdir()) and pool.store.quarantined() and pool.store.waiters()))
    assert run["rc"] == pytest.ExitCode.INTERRUPTED, run["output"]
    assert [lease for _, lease in pool.status(include_expired=True)] == [None, None]
    assert pool.store.waiters() == []          # the claim interrupted while it waited is gone
    [quarantined] = pool.store.quarantined()
    assert (f"{quarantined}: not checked: the run was interrupted; it stays quarantined"
            in run["output"]), run["output"]
