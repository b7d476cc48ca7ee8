"""A guest's SSH route (harness.guest_ssh) against real sshds: one plays the
host (dom0), another the guest on its own loopback address, reached through
the host's connection as a guest on dom0's bridge is.  The kit's files
(dom0's guest key, the guests' host key) are read from the host, as on a
lab host; here they sit in the test's folder."""
from __future__ import annotations

import types
from pathlib import Path

import pytest

from xenhil.harness.access.ssh import SSHConnection
from xenhil.harness.guest import Guest
from xenhil.harness.lab.profile import HostProfile
from xenhil.harness.xen.catalog import load_catalog
from xenhil.harness.xen.testguest import guest_model
from xenhil.harness.guest_ssh import ADDRESS_POOL, GuestRouteLost, GuestShell, NoGuestRoute, free_address
from xenhil.harness.errors import InfrastructureError
from xenhil.harness.secrets import MASK, scrub
from tests.support.sshd import sshd_factory  # noqa: F401  (fixture)


@pytest.fixture
def host(sshd_factory):  # noqa: F811
    server = sshd_factory()
    conn = SSHConnection(server.ssh_config(), name="dom0")
    yield types.SimpleNamespace(name="dom0", ssh=conn)
    conn.close()


@pytest.fixture
def guest_server(sshd_factory):  # noqa: F811
    return sshd_factory()


def _kit(tmp_path: Path, guest_server, name: str) -> dict:
    """The kit's files as dom0 holds them, and the guest's identity file."""
    host_key = tmp_path / "guest_host_key.pub"
    host_key.write_text(f"{guest_server.host_key} xenhil-guest\n")
    identity = tmp_path / "cmdline"
    identity.write_text(f"console=ttyS0,115200 xenhil.addr={guest_server.address} "
                        f"xenhil.name={name}\n")
    return dict(port=guest_server.port, kit_host_key=str(host_key),
                dom0_guest_key=str(guest_server.client_key), identity_file=str(identity))


def test_commands_run_over_the_route_with_their_output_and_status_recorded(
        host, guest_server, tmp_path):
    transcript = tmp_path / "artifacts" / "g1.commands.log"
    shell = GuestShell(host, "g1", guest_server.address, transcript,
                       **_kit(tmp_path, guest_server, "g1"))
    try:
        # stdout and stderr in one text, as the console gives them
        assert shell.run("echo out; echo err >&2; exit 3", timeout=30) == (3, "out\nerr\n")
        assert shell.run("echo again", timeout=30) == (0, "again\n")
    finally:
        shell.close()
    text = transcript.read_text()
    assert "guest# echo out; echo err >&2; exit 3\nout\nerr\n[exit 3 in" in text
    assert "guest# echo again\nagain\n[exit 0 in" in text


def test_a_guest_answering_under_another_name_is_refused(host, guest_server, tmp_path):
    """Two guests given one address look alike (same kit, same host key): the
    kernel command line tells them apart."""
    shell = GuestShell(host, "g1", guest_server.address, tmp_path / "t.log",
                       **_kit(tmp_path, guest_server, "g2"))
    with pytest.raises(NoGuestRoute, match=r"another guest answers at .* not g1"):
        shell.run("true", timeout=30)
    shell.close()


def test_a_guest_whose_sshd_is_gone_has_no_route(host, guest_server, tmp_path):
    shell = GuestShell(host, "g1", guest_server.address, tmp_path / "t.log",
                       **_kit(tmp_path, guest_server, "g1"))
    try:
        assert shell.run("true", timeout=30) == (0, "")
        guest_server.kill()
        with pytest.raises(NoGuestRoute, match=f"guest g1 at {guest_server.address}"):
            shell.run("true", timeout=30)
        with pytest.raises(NoGuestRoute):   # and a new connection is refused
            shell.run("true", timeout=30)
    finally:
        shell.close()


def test_the_key_read_from_the_host_is_a_secret_at_once(host, guest_server, tmp_path):
    """dom0's key for its guests crosses into this process: no log or report
    may show it, whatever the route does next."""
    shell = GuestShell(host, "g1", guest_server.address, tmp_path / "t.log",
                       **_kit(tmp_path, guest_server, "g1"))
    try:
        shell.run("true", timeout=30)
    finally:
        shell.close()
    body = [line for line in guest_server.client_key.read_text().splitlines()
            if line and not line.startswith("-----")]
    assert body and all(scrub(f"seen: {line}") == f"seen: {MASK}" for line in body)


def test_a_host_without_the_guest_kit_has_no_route(host, guest_server, tmp_path):
    kit = _kit(tmp_path, guest_server, "g1")
    kit["kit_host_key"] = str(tmp_path / "no-kit" / "guest_host_key.pub")
    shell = GuestShell(host, "g1", guest_server.address, tmp_path / "t.log", **kit)
    with pytest.raises(NoGuestRoute, match="dom0 has no guest kit key pair"):
        shell.run("true", timeout=30)


def test_free_address_takes_the_first_one_no_guest_has():
    assert free_address(set()) == "192.168.100.10"
    assert free_address({"192.168.100.10", "192.168.100.12", None}) == "192.168.100.11"
    with pytest.raises(InfrastructureError, match="all 200 guest addresses"):
        free_address(set(ADDRESS_POOL))


class _ConsoleRecordingGuest(Guest):
    """A Guest whose console is a list (the console itself is tested against
    real shells in tests/test_console.py): which way each command went."""

    def _run_on_console(self, command: str, timeout: float) -> tuple[int, str]:
        self.on_console.append(command)
        return 0, "from the console\n"


def test_a_guest_runs_its_commands_over_ssh_once_ready_and_on_its_console_after_a_route_failure(
        host, guest_server, tmp_path):
    host.spec = types.SimpleNamespace(profile=HostProfile.of({"emulated": True}))
    model = guest_model("g1", load_catalog().get("single"), host.spec.profile,
                        address=guest_server.address)
    guest = _ConsoleRecordingGuest(host, model, tmp_path / "g1", address=guest_server.address)
    guest.on_console = []
    guest._shell = GuestShell(host, "g1", guest_server.address, tmp_path / "g1.commands.log",
                              **_kit(tmp_path, guest_server, "g1"))
    try:
        # Not known to be up yet (booting): the console.
        assert guest.run("echo a") == "from the console\n"
        guest.adopt(5, guest.record())          # running (booted by another process)
        assert guest.run("echo over-ssh") == "over-ssh\n"
        with pytest.raises(InfrastructureError, match=r"`exit 4` exited 4"):
            guest.run("exit 4")
        assert guest.on_console == ["echo a"]
        guest_server.kill()
        with pytest.warns(GuestRouteLost, match="commands go over the console from now on"):
            assert guest.run("echo b") == "from the console\n"
        assert guest.run("echo c") == "from the console\n"   # no second try per command
        assert guest.on_console == ["echo a", "echo b", "echo c"]
        assert len(guest.route_failures) == 1
        assert "commands go over the console from now on" in guest.route_failures[0]
    finally:
        guest._close_shell()
