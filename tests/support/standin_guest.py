"""A stand-in for :class:`harness.guest.Guest` on hosts without Xen: the
hosts are real sshd servers on this machine (tests/support/sshd.py), so a
guest's "domain" is a file in a folder of this machine, reached over the
host's real SSH connection, and its boot is ``sleep BOOT_S`` run there: a
boot of known length.  Everything above it is real -- the guest pool, the
lease store recording guests with their hosts, the claims' affinity,
pytest-xdist's workers -- which is what the guest-sharing tests and
benchmarks/bench_guest_affinity.py measure.

A run uses it by putting the class in the plugin's stash from its conftest::

    def pytest_configure(config):
        from xenhil.fixtures.guest import GUEST_TYPE
        config.stash[GUEST_TYPE] = StandInGuest

and by overriding ``xen_host`` (no Xen to provision: :data:`CONFTEST`).

Environment: XH_GUESTS (the folder of the domain files, one sub-folder per
host), XH_BOOT_S (seconds a boot takes), XH_BOOTS and XH_DESTROYED (JSON
lines appended per boot and per destroy), XH_LEASE_DB (optional: a destroy
records who held the guest's host then).
"""
from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

from xenhil.harness.errors import InfrastructureError, ProductError

#: The conftest of a run on stand-in guests: no Xen to provision, every
#: split runnable; the host's build recorded as provisioning would.
CONFTEST = '''
import pytest
from tests.support.standin_guest import StandInGuest


def pytest_configure(config):
    from xenhil.fixtures.guest import GUEST_TYPE
    config.stash[GUEST_TYPE] = StandInGuest


@pytest.fixture
def xen_host(request, host, lab, xen_build):
    """No Xen on an sshd host: the host as it is, able to run every split."""
    from xenhil.harness.strategy import note_provisioned
    from xenhil.fixtures.guest import strategy_for
    from xenhil.fixtures.run import run_config
    host.facts[f"capabilities:{xen_build.build_id}"] = {"device_models", "probe"}
    booted = run_config(request.config).booted_build(host.spec.profile)
    label = booted.label
    if host.facts.get("standin_build") != label:
        note_provisioned(lab, host.name, label)
        host.facts["standin_build"] = label
    strategy_for(request, host).runs(booted)
    return host
'''


def _append(variable: str, record: dict) -> None:
    path = os.environ.get(variable)
    if not path:
        return
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)      # one write of one line: lines of processes never interleave
    finally:
        os.close(fd)


class _StandInToolstack:
    """What the pool asks xl about a guest: its device models live while
    its domain file exists."""

    def __init__(self, guest: "StandInGuest"):
        self.guest = guest

    def qemu_pids(self, domid: int) -> list[int]:
        return [domid] if self.guest.exists() else []

    def domain(self, name: str):
        return None


class StandInGuest:
    def __init__(self, host, config, artifacts_dir: Path, ready_condition=None, companions=(),
                 prompt=None, address=None):
        self.host = host
        self.config = config
        self.name = config.name
        self.split = config.split
        self.companions = []
        self.artifacts_dir = Path(artifacts_dir)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.domid: int | None = None
        self.xl = _StandInToolstack(self)
        folder = Path(os.environ["XH_GUESTS"]) / host.name
        folder.mkdir(parents=True, exist_ok=True)
        self.file = folder / f"{self.name}.domain"
        self.save_path = str(folder / f"{self.name}.save")
        self.cfg_path = str(folder / f"{self.name}.cfg")

    def exists(self) -> bool:
        result = self.host.ssh.run(["test", "-e", str(self.file)], timeout=30)
        return result.exit_status == 0

    # -- what the pool calls -----------------------------------------------------
    def make_disks(self, size: str) -> None:
        pass

    def create(self) -> int:
        started = time.time()
        boot_s = float(os.environ.get("XH_BOOT_S", "0"))
        self.domid = int(time.time() * 1000) % 1_000_000_000
        self.host.ssh.run(f"sleep {boot_s:g} && echo {self.domid} > {shlex.quote(str(self.file))}",
                          timeout=boot_s + 60, check=True)
        _append("XH_BOOTS", {"guest": self.name, "host": self.host.name, "pid": os.getpid(),
                             "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
                             "started": started, "ended": time.time()})
        return self.domid

    def wait_ready(self) -> None:
        pass

    def record(self) -> dict:
        return {}

    def adopt(self, domid: int, record: dict) -> None:
        self.domid = int(domid)

    def run(self, command: str, timeout: float = 120.0, check: bool = True) -> str:
        result = self.host.ssh.run(f"test -e {shlex.quote(str(self.file))} && {command}",
                                   timeout=timeout)
        if check and result.exit_status != 0:
            raise InfrastructureError(f"stand-in guest {self.name}: `{command}` failed",
                                      help="its domain file is gone")
        return result.stdout

    def detach_console(self) -> None:
        pass

    def destroy(self) -> None:
        holder = None
        if os.environ.get("XH_LEASE_DB"):
            from xenhil.harness.lab.leases import open_store
            store = open_store(os.environ["XH_LEASE_DB"])
            try:
                lease = store.leases().get(self.host.name)
                holder = lease.holder.pid if lease is not None and not lease.expired() else None
            finally:
                store.close()
        self.host.ssh.run(["rm", "-f", str(self.file)], timeout=30, check=True)
        _append("XH_DESTROYED", {"guest": self.name, "host": self.host.name, "pid": os.getpid(),
                                 "lease_holder_pid": holder, "at": time.time()})

    def remove_files(self) -> None:
        pass

    def leak_check(self) -> None:
        if self.file.exists():
            raise ProductError(f"stand-in guest {self.name}: {self.file} survived destroy()")

    def collect_evidence(self, why: str) -> dict[str, str]:
        return {}

    def companion(self, name: str):
        return None


#: A suite of XH_TESTS tests on the stand-in guest of the run's split, each
#: appending which guest it used, from which worker and process, to XH_USES.
USES_SUITE = '''
import json, os, pytest

@pytest.mark.parametrize("n", range(int(os.environ["XH_TESTS"])))
def test_uses_the_guest(guest, n):
    assert guest.run("echo up").strip() == "up"
    with open(os.environ["XH_USES"], "a") as out:
        out.write(json.dumps({"guest": guest.name, "worker": os.environ.get(
            "PYTEST_XDIST_WORKER", "main"), "pid": os.getpid()}) + "\\n")
'''


def sshd_inventory(path: Path, server, name: str = "h1") -> Path:
    """An inventory of one host, the real sshd ``server`` (no power, no serial)."""
    import yaml
    host = {"name": name, "address": server.address,
            "ssh": {"address": server.address, "port": server.port, "user": server.user,
                    "key_file": str(server.client_key), "host_key": server.host_key},
            "power": {"kind": "none"}}
    path.write_text(yaml.safe_dump({"hosts": [host]}, sort_keys=False))
    return path
