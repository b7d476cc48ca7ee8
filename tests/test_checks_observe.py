"""The suites' observations of a guest's ioreq servers are read once per
guest domain: a second test on the same domain reads nothing, a restored
guest (a new domain) is read again, and a failed read is not kept."""
from pathlib import Path

import pytest

from xenhil.harness.checks.observe import observe_rangesets, observe_servers
from xenhil.harness.guest import Guest
from xenhil.harness.xen.parsers.errors import UnexpectedOutput

RECORDED_DUMP = (Path(__file__).parent / "data" / "recorded"
                 / "xl_dmesg_q_qnet_qall_port_417_emulated.txt").read_text()
# Written by hand in QEMU 7.2's trace shape: each model created one server.
TRACES = {"/var/log/xen/qemu-dm-g-qnet.log": "11@1.000001:xen_ioreq_server_create id: 0\n",
          "/var/log/xen/qemu-dm-g-qall.log": "12@1.000001:xen_ioreq_server_create id: 1\n"}


class _Toolstack:
    def __init__(self):
        self.dumps = 0

    def rangesets_text(self) -> str:
        self.dumps += 1
        return RECORDED_DUMP


class _Ssh:
    def __init__(self):
        self.reads: list[str] = []

    def read_text(self, path: str) -> str:
        self.reads.append(path)
        return TRACES[path]


class _Host:
    name = "vhost1"

    def __init__(self):
        self.ssh = _Ssh()


class _RecordedGuest(Guest):
    """A Guest answering from recorded output: no host behind it."""

    def __init__(self, domid: int, artifacts: Path):
        self.domid, self._observed, self.name = domid, {}, "g"
        self.artifacts_dir, self.companions = artifacts, []
        self.xl, self.host = _Toolstack(), _Host()


def test_rangesets_are_dumped_once_per_domain_and_saved(tmp_path):
    guest = _RecordedGuest(1, tmp_path)
    first = observe_rangesets(guest)
    assert sorted(first.servers) == [0, 1] and first.servers[0]["pci"] == [(32, 32)]
    assert Path(first.evidence["xl debug-keys q"]).read_text() == RECORDED_DUMP
    assert observe_rangesets(guest) is first and guest.xl.dumps == 1
    guest.domid = 2            # restored: a new domain, absent from this dump
    with pytest.raises(UnexpectedOutput, match="domain 2 .*domains: \\[1\\]"):
        observe_rangesets(guest)
    with pytest.raises(UnexpectedOutput):
        observe_rangesets(guest)
    assert guest.xl.dumps == 3, "a failed observation is read again, not kept"


def test_server_ids_are_read_from_the_models_traces_once_per_domain(tmp_path):
    guest = _RecordedGuest(1, tmp_path)
    logs = {"qnet": "/var/log/xen/qemu-dm-g-qnet.log", "qall": "/var/log/xen/qemu-dm-g-qall.log"}
    first = observe_servers(guest, logs)
    assert first.models == {0: "qnet", 1: "qall"}
    assert first.evidence["trace log of model qnet"] == "vhost1:/var/log/xen/qemu-dm-g-qnet.log"
    assert observe_servers(guest, logs) is first and len(guest.host.ssh.reads) == 2
    guest.domid = 2
    observe_servers(guest, logs)
    assert len(guest.host.ssh.reads) == 4
