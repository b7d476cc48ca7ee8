"""Releasing a host lets go of its serial console: a serial server serves
one client at a time (QEMU's chardev socket, as the virtual lab's hosts
have), and a link kept by a process that released the host leaves the next
holder's link connected but silent.  CI's real-Xen layer lost a provisioning
that way (the suite of the port smoke, a second process, saw no Xen banner
while pytest still held the link of a host an earlier test had released).

The server here is a real TCP listener serving like such a line
(tests/support/console_server.py, ``one_at_a_time``): the n-th client it
takes is greeted with ``client n`` and served until it hangs up."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xenhil.harness.access.console import Console
from xenhil.harness.errors import ConsoleTimeout
from xenhil.harness.lab.inventory import load_inventory
from xenhil.harness.lab.lab import Lab
from xenhil.harness.lab.leases import Holder
from tests.support.console_server import console_server_factory  # noqa: F401
from tests.support.console_server import one_per_connection, scripted


@pytest.fixture
def serial_server(console_server_factory):
    greetings = [scripted(f"client {n}\r\n".encode(), hold=30) for n in (1, 2, 3)]
    return console_server_factory(one_per_connection(*greetings), one_at_a_time=True)


def test_releasing_a_host_frees_its_serial_line_for_the_next_holder(serial_server, tmp_path):
    lab_file = tmp_path / "lab.yaml"
    lab_file.write_text(yaml.safe_dump({
        "lease_db": f"sqlite://{tmp_path / 'leases.sqlite'}",
        "hosts": [{"name": "h1", "address": "127.0.0.1", "ssh": "none", "power": {"kind": "none"},
                   "serial": {"kind": "tcp", "host": "127.0.0.1", "port": serial_server.port}}]}))
    lab = Lab(load_inventory(lab_file), ttl=60.0, artifacts=tmp_path / "art",
              holder=Holder.current(run_id="run-a", worker="main"))
    try:
        lease = lab.claim(set(), {}, timeout=5)
        host = lab.host_object("h1")
        host.console.reconnect(timeout=5)
        host.console.expect("client 1", timeout=5)
        lab.release(lease)

        # The next holder: another process's link to the same line.
        other = Console.tcp("h1", "127.0.0.1", serial_server.port, tmp_path / "other.console.log")
        other.reconnect(timeout=5)
        try:
            other.expect("client 2", timeout=5)
        finally:
            other.close()

        # The first process leases it again: a new link, the same transcript.
        lease = lab.claim(set(), {}, timeout=5)
        host.console.reconnect(timeout=5)
        host.console.expect("client 3", timeout=5)
        lab.release(lease)
        transcript = Path(tmp_path / "art/hosts/h1/h1.console.log").read_text()
        assert "client 1" in transcript and "client 3" in transcript
    finally:
        lab.close()


def test_a_link_kept_open_leaves_the_next_one_silent(serial_server, tmp_path):
    """The failure the release prevents, shown on the same server."""
    first = Console.tcp("h1", "127.0.0.1", serial_server.port, tmp_path / "first.console.log")
    second = Console.tcp("h1", "127.0.0.1", serial_server.port, tmp_path / "second.console.log")
    first.reconnect(timeout=5)
    try:
        first.expect("client 1", timeout=5)
        second.reconnect(timeout=5)            # connects: the listener's backlog takes it
        with pytest.raises(ConsoleTimeout):
            second.expect("client 2", timeout=2)
    finally:
        first.close()
        second.close()
