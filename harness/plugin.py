"""The xenhil pytest plugin: options, markers, run state, and the fixtures of
``fixtures/``.

State lives in ``config.stash[XENHIL]`` (one :class:`RunState` per process).
Under pytest-xdist the controller makes the run id and hands it to each
worker through ``workerinput``, so every worker's leases and artifacts carry
the same run id and their own worker id.
"""
from __future__ import annotations

import datetime
import getpass
import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.lab.model import KNOWN_CAPABILITIES

pytest_plugins = ["fixtures.lab", "fixtures.guest", "fixtures.reporting"]


@dataclass
class RunState:
    run_id: str
    worker: str                       # "main" or the xdist worker id ("gw0", ...)
    artifacts: Path                   # artifacts/<run id>/
    options: dict = field(default_factory=dict)
    lab: object | None = None         # fixtures.lab.LabSession, made on first use


XENHIL = pytest.StashKey[RunState]()

MARKERS = {
    "requires_capability": "requires_capability(**caps): run only on a host with these "
                           "capabilities, e.g. requires_capability(virt='svm')",
    "requires_tags": "requires_tags(*tags): run only on a host carrying every tag",
    "real_xen": "boots real Xen (minutes per boot under emulation)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xenhil", "xenhil: Xen multiple-ioreq-server lab tests")
    group.addoption("--lab", default=os.environ.get("XENHIL_LAB"),
                    help="lab inventory YAML (default: $XENHIL_LAB)")
    group.addoption("--lab-db", default=None,
                    help="lease store URL: sqlite:///PATH (default: next to the inventory) "
                         "or postgresql://...")
    group.addoption("--reserve-timeout", type=float, default=1800.0,
                    help="seconds a test waits for a matching host before failing (default 1800)")
    group.addoption("--lease-ttl", type=float, default=120.0,
                    help="seconds a lease lives without a heartbeat before others may reclaim it")
    group.addoption("--xen-build", default=None,
                    help="Xen build to install: a `make dist` tree or tarball, or .deb files "
                         "(default: the host's Debian Xen)")
    group.addoption("--series", default=None,
                    help="patch series under test (URL or message id), linked in the report")
    group.addoption("--artifacts", default="artifacts",
                    help="folder for transcripts, logs and evidence (default: artifacts/)")
    group.addoption("--run-id", default=None, help="run id (default: time stamp + random)")


def _new_run_id() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        run_id = workerinput["xenhil_run_id"]
        worker = workerinput["workerid"]
    else:
        run_id = config.getoption("--run-id") or _new_run_id()
        worker = "main"
    artifacts = Path(config.getoption("--artifacts")).resolve() / run_id
    config.stash[XENHIL] = RunState(
        run_id=run_id, worker=worker, artifacts=artifacts,
        options={name: config.getoption(name) for name in (
            "--lab", "--lab-db", "--reserve-timeout", "--lease-ttl",
            "--xen-build", "--series")})


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: every worker gets the controller's run id."""
    node.workerinput["xenhil_run_id"] = node.config.stash[XENHIL].run_id


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
    if problems:
        raise pytest.UsageError("invalid xenhil markers:\n  " + "\n  ".join(problems))


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash[XENHIL]
    lab = state.options["--lab"] or "(none: tests needing a host will fail with a hint)"
    return [f"xenhil: run {state.run_id}, lab {lab}, artifacts {state.artifacts}"]


def provenance(config: pytest.Config) -> dict[str, str]:
    """Who ran what where: recorded with every run's results."""
    state = config.stash[XENHIL]
    return {
        "xenhil.run_id": state.run_id,
        "xenhil.user": getpass.getuser(),
        "xenhil.machine": socket.gethostname(),
        "xenhil.lab": str(state.options["--lab"] or ""),
        "xenhil.xen_build": _build_label(config),
        "xenhil.series": str(state.options["--series"] or ""),
    }


def _build_label(config: pytest.Config) -> str:
    """The build's content identity (kind-hash), or the raw option if it was not loaded."""
    from fixtures.guest import BUILD
    build = config.stash.get(BUILD, None)
    if build is not None:
        return build.label
    return str(config.getoption("--xen-build") or "debian-default")


@pytest.fixture(scope="session", autouse=True)
def xenhil_provenance(request: pytest.FixtureRequest) -> dict[str, str]:
    """Record run provenance: a testsuite property (JUnit XML) and run.json."""
    config = request.config
    facts = provenance(config)
    state = config.stash[XENHIL]
    # record_testsuite_property is not supported under xdist workers; run.json is.
    if state.worker == "main" and config.option.xmlpath:
        record = request.getfixturevalue("record_testsuite_property")
        for key, value in facts.items():
            record(key, value)
    state.artifacts.mkdir(parents=True, exist_ok=True)
    (state.artifacts / f"run-{state.worker}.json").write_text(json.dumps(facts, indent=2))
    return facts
