"""The xenhil pytest plugin: options, markers, run state, and the fixtures of
``fixtures/``.

Every xenhil option is declared here, in one group, and parsed once at
start-up into the run configuration (harness.run_config.RunConfig: options,
inventory, build, split catalog), kept with the process's run state in
``config.stash`` (fixtures.run.RUN).  The fixtures read it from there; the
import goes one way, this plugin -> fixtures -> the rest of harness
(tests/test_import_graph.py).  Under pytest-xdist the controller makes the
run id and hands it to each worker through ``workerinput``, so every
worker's leases and artifacts carry the same run id and their own worker id.

Interrupted runs (harness.interrupt): SIGTERM stops a run like Ctrl-C, in the
controller and in every xdist worker; the controller passes the interruption
on to its workers and waits until each has released its hosts and destroyed
its guests before pytest-xdist shuts them down (:func:`_stop_workers`).

Time limits: a test on a lab host gets pytest-timeout's limit from
harness/budgets.py (the sum of the stages it may wait in, for the lab's
hosts), unless --timeout, $PYTEST_TIMEOUT or a timeout marker says
otherwise; when a test's limit runs out, its failure names the stage it ran
out in and is infrastructure (:func:`_timed_phase`).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
from pathlib import Path

import pytest

from xenhil.fixtures.run import RUN, RunState, provenance, run_config
from xenhil.harness import budgets
from xenhil.harness.errors import XenhilError
from xenhil.harness.lab.model import KNOWN_CAPABILITIES
from xenhil.harness.run_config import GUESTS_PER_EMULATED_HOST, GUESTS_PER_HOST, LAB_OPTIONS

pytest_plugins = ["xenhil.fixtures.lab", "xenhil.fixtures.guest", "xenhil.fixtures.scheduling", "xenhil.fixtures.reporting"]

log = logging.getLogger("xenhil.plugin")

MARKERS = {
    "requires_capability": "requires_capability(**caps): run only on a host with these "
                           "capabilities, e.g. requires_capability(virt='svm')",
    "requires_tags": "requires_tags(*tags): run only on a host carrying every tag",
    "real_xen": "boots real Xen (minutes per boot under emulation)",
    "disruptive": "disruptive(returns_whole_guest=False): disturbs its guest (save/restore, "
                  "balloon): runs last on a guest of its own, destroyed after it; with "
                  "returns_whole_guest=True a pass proves the guest whole, and the guest goes back "
                  "to its host for the next tests (fixtures/guest.py)",
}

#: The options the run configuration is parsed from (harness.run_config).
RUN_OPTIONS = ("--lab", "--lab-db", "--reserve-timeout", "--lease-ttl", "--xen-build", "--series",
               "--artifacts", "--run-id", "--split", "--guests-per-host", "--saverestore-cycles",
               "--latency-samples", "--results-db", "--probe-fault")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xenhil", "xenhil: Xen multiple-ioreq-server lab tests")
    for name, declaration in LAB_OPTIONS.items():     # as every xenhil verb declares them
        group.addoption(name, **declaration)
    # Numbers are checked at start-up (harness.options): one usage error.
    group.addoption("--reserve-timeout", default=1800.0,
                    help="seconds a test waits for a matching host before failing (default 1800)")
    group.addoption("--lease-ttl", default=120.0,
                    help="seconds a lease lives without a heartbeat before others may reclaim it")
    group.addoption("--xen-build", default=None,
                    help="Xen build to install: a `make dist` tree or tarball, or .deb files "
                         "(default: the host's Debian Xen)")
    group.addoption("--series", default=None,
                    help="patch series under test (URL or message id), linked in the report")
    group.addoption("--artifacts", default="artifacts",
                    help="folder for transcripts, logs and evidence (default: artifacts/)")
    group.addoption("--run-id", default=None, help="run id (default: time stamp + random)")
    group.addoption("--require-run", action="append", default=[], metavar="MARKER",
                    help="tests carrying this marker must run: one that skips fails instead, "
                         "with its skip reason (repeatable; scripts/test-framework passes "
                         "--require-run real_xen)")
    group.addoption("--split", action="append", default=[],
                    help="run only these splits of fixtures/splits.yaml (repeatable; an id "
                         "not in it is refused at start-up)")
    group.addoption("--guests-per-host", type=int, default=None,
                    help=f"booted guests a host keeps for later tests; the least recently used "
                         f"is destroyed first (default {GUESTS_PER_EMULATED_HOST} on an emulated "
                         f"host, {GUESTS_PER_HOST} on others)")
    group.addoption("--saverestore-cycles", type=int, default=3,
                    help="save/restore cycles in a row (nightly: 10 or more)")
    group.addoption("--latency-samples", type=int, default=None,
                    help="timed accesses per port in the latency suite (default 100000; "
                         "5000 on emulated hosts, see harness/lab/virtual/quirks.py)")
    group.addoption("--results-db", default=None,
                    help="results history store: sqlite:///PATH, or postgresql://USER@HOST/DB "
                         "for a history several runners share (default: results.sqlite next "
                         "to the run's artifacts folder)")
    group.addoption("--probe-fault", default=None, metavar="FAULT",
                    help="plant a fault in the probe device model of the probe splits: a mutant "
                         "run, named so in its report (harness/probe_dm/faults.py; "
                         "lab/mutants/)")
    group.addoption("--no-health-check", action="store_true", default=False,
                    help="do not health-check the hosts this run quarantined at its end (they "
                         "stay quarantined until `xenhil lab health` passes)")


def _new_run_id() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    run = _run_config(config)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        run_id = workerinput["xenhil_run_id"]
        worker = workerinput["workerid"]
    else:
        run_id = run.run_id or _new_run_id()
        worker = "main"
    state = RunState(run_id=run_id, worker=worker, artifacts=run.artifacts / run_id, config=run)
    config.stash[RUN] = state
    # Before any test code runs, in the controller and in every worker.
    state.interruption.install()
    config.pluginmanager.register(RunEnd(config), "xenhil-run-end")
    _register_lab_secrets(config, state)


def _run_config(config: pytest.Config):
    """The run configuration (harness.run_config), parsed once before
    anything acts: a bad option, inventory, build or split is one usage
    error naming the option and its fix, not an error per test or an
    INTERNALERROR."""
    from xenhil.harness.lab.credentials import register_lab_secrets_early
    from xenhil.harness.options import one_line
    from xenhil.harness.run_config import lab_option, parse_run_config
    raw = {name: config.getoption(name, None) for name in RUN_OPTIONS}
    # First, so that a secret typed into any option is masked in the error.
    inventory = register_lab_secrets_early(lab_option(raw["--lab"]),
                                           (raw["--lab-db"], raw["--results-db"]))
    try:
        return parse_run_config(raw, inventory)
    except XenhilError as exc:
        raise pytest.UsageError(one_line(exc)) from None


def _register_lab_secrets(config: pytest.Config, state: RunState) -> None:
    """Resolve every credential --lab references and register it for masking
    (harness.lab.credentials), in this process (the controller and each
    xdist worker run this), before any test code runs."""
    run = state.config
    if run.inventory is None:
        return
    from xenhil.harness.lab.credentials import register_inventory_secrets
    state.unresolved = register_inventory_secrets(run.inventory, (run.lab_db, run.results_db))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: every worker gets the controller's run id."""
    state = node.config.stash[RUN]
    node.workerinput["xenhil_run_id"] = state.run_id
    state.workers[node.gateway.id] = node


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    node.config.stash[RUN].workers.pop(node.gateway.id, None)


# --- interrupted runs (harness/interrupt.py; interrupted() is fixtures.run's) ----

class RunEnd:
    """How the run ends, per process (a plugin object: pytest's
    keyboard-interrupt hook is not given the config)."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.state: RunState = config.stash[RUN]

    def pytest_keyboard_interrupt(self, excinfo) -> None:
        """pytest caught the interruption: before the session end tears the
        fixtures down, which read the reason (fixtures.lab, fixtures.guest)."""
        self.state.interruption.note(excinfo.value)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus) -> None:
        """First of the session end: a SIGTERM from now on is ignored (its
        cleanup must not be cut short); an interrupted xdist controller
        stops its workers and waits for their cleanup (:func:`_stop_workers`)."""
        self.state.interruption.finishing = True
        if exitstatus == pytest.ExitCode.INTERRUPTED and self.state.interruption.reason is None:
            self.state.interruption.reason = "interrupted"
        if self.state.interruption.reason is not None and self.state.workers:
            _stop_workers(self.config, self.state)


def _stop_workers(config: pytest.Config, state: RunState) -> None:
    """An interrupted xdist controller: each worker still running gets the
    interruption too (SIGTERM: a signal aimed at the controller alone
    never reaches them), and the controller waits until every worker has
    ended its session -- its leases released, its guests destroyed --
    before pytest-xdist's shutdown, which kills a worker still busy after
    10 s.  Reports the workers send meanwhile (the test each was running)
    are reported and recorded as usual.

    Uses pytest-xdist's event queue and execnet's child process, which
    have no public interface; without them the workers are left to
    pytest-xdist's own shutdown (and SIGINT)."""
    import time
    from queue import Empty

    from xenhil.harness.interrupt import signal_process

    dsession = config.pluginmanager.getplugin("dsession")
    events = getattr(dsession, "queue", None)
    live = dict(state.workers)
    if events is None:
        return

    def drain(deadline: float) -> None:
        while live:
            left = deadline - time.monotonic()
            try:
                name, kwargs = events.get(timeout=max(0.0, min(1.0, left))) if left > 0 \
                    else events.get_nowait()
            except Empty:
                if time.monotonic() >= deadline:
                    return
                continue
            try:
                _worker_event(config, name, kwargs, live)
            except Exception:   # one report that cannot be shown: keep waiting for the cleanup
                log.exception("handling %s from an interrupted worker", name)

    drain(time.monotonic())       # workers that ended already are not signalled
    signalled = [wid for wid, node in live.items() if signal_process(_worker_process(node))]
    for wid in set(live) - set(signalled):
        live.pop(wid)             # no process to wait for
    if not live:
        return
    hosts = state.config.hosts
    budget = max([budgets.seconds("teardown", h.profile) for h in hosts]
                 or [budgets.BUDGETS["teardown"].real_s])
    _say(config, f"xenhil: run interrupted ({state.interruption.reason}): waiting for worker(s) "
                 f"{', '.join(sorted(live))} to release their hosts and destroy their guests "
                 f"(at most {budget:.0f} s; harness/budgets.py teardown)")
    try:
        drain(time.monotonic() + budget)
    except KeyboardInterrupt:   # a second Ctrl-C: stop now
        _say(config, "xenhil: stopped waiting for the workers' cleanup")
        return
    if live:
        _say(config, f"xenhil: worker(s) {', '.join(sorted(live))} still cleaning up after "
                     f"{budget:.0f} s: pytest-xdist stops them now (leases they still hold end "
                     f"when their TTL passes)")


def _worker_event(config: pytest.Config, name: str, kwargs: dict, live: dict) -> None:
    """One event of pytest-xdist's queue, as its controller loop handles it:
    reports go to the usual hooks, a worker that ended leaves ``live``."""
    node = kwargs.get("node")
    if name == "testreport":
        config.hook.pytest_runtest_logreport(report=kwargs["rep"])
    elif name == "logstart":
        config.hook.pytest_runtest_logstart(nodeid=kwargs["nodeid"], location=kwargs["location"])
    elif name == "logfinish":
        config.hook.pytest_runtest_logfinish(nodeid=kwargs["nodeid"], location=kwargs["location"])
    elif name == "warning_recorded":
        config.hook.pytest_warning_recorded.call_historic(kwargs={
            k: kwargs[k] for k in ("warning_message", "when", "nodeid", "location")})
    elif name in ("workerfinished", "errordown") and node is not None:
        # As pytest-xdist's loop tells the plugins (fixtures.health reads
        # the worker's output here).
        config.hook.pytest_testnodedown(node=node, error=kwargs.get("error"))
        live.pop(node.gateway.id, None)
    elif name == "internal_error" and node is not None:
        live.pop(node.gateway.id, None)


def _worker_process(node):
    """The worker's subprocess.Popen (execnet's popen gateway), or None."""
    return getattr(getattr(node.gateway, "_io", None), "popen", None)


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate xenhil markers before any host is touched."""
    problems = []
    for item in items:
        for mark in item.iter_markers("requires_capability"):
            for key, value in mark.kwargs.items():
                want = KNOWN_CAPABILITIES.get(key)
                if want is None:
                    problems.append(f"{item.nodeid}: requires_capability({key}=...): unknown "
                                    f"capability; known: {', '.join(sorted(KNOWN_CAPABILITIES))}")
                elif not isinstance(value, want):
                    problems.append(f"{item.nodeid}: requires_capability({key}={value!r}): "
                                    f"expected a {want.__name__}")
            if mark.args:
                problems.append(f"{item.nodeid}: requires_capability takes keyword arguments "
                                f"only, e.g. requires_capability(virt='svm')")
        for mark in item.iter_markers("requires_tags"):
            if not all(isinstance(t, str) for t in mark.args) or mark.kwargs:
                problems.append(f"{item.nodeid}: requires_tags takes tag strings only")
        for mark in item.iter_markers("disruptive"):
            if mark.args or set(mark.kwargs) - {"returns_whole_guest"} or not isinstance(
                    mark.kwargs.get("returns_whole_guest", False), bool):
                problems.append(f"{item.nodeid}: disruptive takes one keyword argument, "
                                f"returns_whole_guest=True or False")
    if problems:
        raise pytest.UsageError("invalid xenhil markers:\n  " + "\n  ".join(problems))
    _set_time_limits(config, items)


# --- time limits (harness/budgets.py) ------------------------------------------

BUDGET = pytest.StashKey[budgets.ItemBudget]()


def _user_set_timeout(config: pytest.Config) -> bool:
    """--timeout or $PYTEST_TIMEOUT: the user's limit for every test.  (The
    ini file's ``timeout`` is the project's default for tests without a lab
    host; a lab test's derived limit replaces it.)"""
    return (config.getoption("timeout", None) is not None
            or bool(os.environ.get("PYTEST_TIMEOUT")))


def _set_time_limits(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each test on a lab host its budget and, through a timeout marker,
    pytest-timeout's limit: the largest over the inventory's hosts that could
    serve it, so it exceeds the sum of the stages the test may wait in."""
    hosts = run_config(config).hosts
    if not hosts:
        return
    from xenhil.fixtures.lab import wanted_host
    reservation = run_config(config).reserve_timeout
    has_timeout = config.pluginmanager.hasplugin("timeout")
    user_set = _user_set_timeout(config)
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "host" not in names:
            continue
        tags, capabilities = wanted_host(item)
        fitting = [h for h in hosts if h.matches(tags, capabilities)] or hosts
        budget = max((budgets.item_budget(h.profile, reservation,
                                          provisions="xen_host" in names,
                                          boots_guest="guest" in names) for h in fitting),
                     key=lambda b: b.limit_s)
        item.stash[BUDGET] = budget
        if has_timeout and not user_set and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(budget.limit_s))


def _timed_phase(phase: str, budget_s: float | None):
    """Run a phase of a test as a stage.  pytest-timeout's failure when the
    test's limit runs out ("Failed: Timeout (>900.0s)", which the report once
    filed as "unclassified") becomes TestTimeLimitExceeded: infrastructure,
    naming the stages it ran out in and their times (harness.budgets)."""
    try:
        with budgets.stage(phase, budget_s, names_failures=False):
            return (yield)
    except BaseException as exc:
        if budgets.pytest_timeout_limit(exc) is None:
            raise
        raise budgets.time_limit_error(exc) from exc


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item):
    budget = item.stash.get(BUDGET, None)
    return (yield from _timed_phase("setup", budget.setup_s if budget else None))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item):
    budget = item.stash.get(BUDGET, None)
    return (yield from _timed_phase("test body", budget.body_s if budget else None))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem):
    budget = item.stash.get(BUDGET, None)
    return (yield from _timed_phase("teardown", budget.teardown_s if budget else None))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """--require-run MARKER: a skip of a test carrying MARKER becomes a failure
    that keeps the skip's reason (an expected failure, xfail, stays one)."""
    outcome = yield
    report = outcome.get_result()
    required = item.config.getoption("--require-run")
    if not required or not report.skipped or hasattr(report, "wasxfail"):
        return
    marks = [m for m in required if item.get_closest_marker(m) is not None]
    if not marks:
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = (f"xenhil: a test marked {', '.join(marks)} skipped during {call.when}, "
                       f"in a run where such tests must run (--require-run "
                       f"{' --require-run '.join(marks)}).\nskip reason: {reason}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash[RUN]
    lab = state.config.lab or "(none: tests needing a host will fail with a hint)"
    lines = [f"xenhil: run {state.run_id}, lab {lab}, artifacts {state.artifacts}"]
    lines += [f"xenhil: credential not resolvable here (a host using it fails when it needs it): "
              f"{line}" for line in state.unresolved]
    for marker in config.getoption("--require-run"):
        lines.append(f"xenhil: tests marked {marker} must run: a skip of one fails it")
    hosts = state.config.hosts
    if hosts and config.pluginmanager.hasplugin("timeout") and not _user_set_timeout(config):
        reservation = state.config.reserve_timeout
        kinds = {budgets.describe(h.profile, reservation) for h in hosts}
        lines += [f"xenhil: time limit of a test on a lab host (harness/budgets.py), {k}"
                  for k in sorted(kinds)]
    return lines


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's own files, once more at its very end (controller only, after
    the workers): a secret written without passing through the scrubber is
    masked there too (harness.attach.scrub_files).  Every process gives
    SIGTERM back to its previous handler."""
    if RUN not in config.stash:
        return
    config.stash[RUN].interruption.restore()
    if hasattr(config, "workerinput"):
        return
    from xenhil.harness.attach import scrub_files
    state = config.stash[RUN]
    targets = [state.artifacts, getattr(config.option, "allure_report_dir", None),
               getattr(config.option, "log_file", None), getattr(config.option, "xmlpath", None)]
    scrub_files([Path(t) for t in targets if t])


@pytest.fixture(scope="session", autouse=True)
def xenhil_provenance(request: pytest.FixtureRequest) -> dict[str, str]:
    """Record run provenance: a testsuite property (JUnit XML) and run.json."""
    config = request.config
    facts = provenance(config)
    state = config.stash[RUN]
    # record_testsuite_property is not supported under xdist workers; run.json is.
    if state.worker == "main" and config.option.xmlpath:
        record = request.getfixturevalue("record_testsuite_property")
        for key, value in facts.items():
            record(key, value)
    state.artifacts.mkdir(parents=True, exist_ok=True)
    (state.artifacts / f"run-{state.worker}.json").write_text(json.dumps(facts, indent=2))
    return facts
