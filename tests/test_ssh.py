"""xenhil.harness.access.ssh against a real OpenSSH sshd (tests/support/sshd.py)."""
from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import subprocess
import threading
import time
import warnings

import paramiko
import pytest

from xenhil.harness.access.ssh import (
    CommandResult,
    CommandTimeout,
    SSHConnection,
    SSHUnreachable,
    TransferVerificationFailed,
    connection_for,
    fetch_host_key,
)
from xenhil.harness.errors import (
    ConfigError,
    ConnectionLost,
    HostKeyMismatch,
    InfrastructureError,
    RemoteCommandFailed,
    SSHError,
    TestBugError,
)
from xenhil.harness.lab.model import CredentialRef
from tests.support.sshd import (  # noqa: F401  (fixtures)
    fresh_sshd_server,
    keygen,
    public_key_line,
    sshd_factory,
    sshd_server,
)


@pytest.fixture(scope="module")
def conn(sshd_server):
    connection = SSHConnection(sshd_server.ssh_config(), name="testhost")
    try:
        yield connection
    finally:
        connection.close()


def openssh_fingerprint(pub_line: str, tmp_path) -> str:
    """The SHA256 fingerprint as ssh-keygen prints it (the reference)."""
    path = tmp_path / "fp.pub"
    path.write_text(pub_line + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


# --- commands ----------------------------------------------------------------

def test_exit_status_of_true_and_false(conn):
    ok = conn.run("true")
    failed = conn.run(["false"])
    assert isinstance(ok, CommandResult)
    assert (ok.exit_status, ok.ok) == (0, True)
    assert (failed.exit_status, failed.ok) == (1, False)
    assert conn.run("exit 42").exit_status == 42
    assert conn.state == SSHConnection.CONNECTED


def test_stdout_and_stderr_are_kept_apart(conn):
    result = conn.run("echo to-out; echo to-err >&2; echo more-out")
    assert result.stdout == "to-out\nmore-out\n"
    assert result.stderr == "to-err\n"
    assert result.command == "echo to-out; echo to-err >&2; echo more-out"
    assert result.host == "testhost"


AWKWARD = [
    "",
    "plain",
    "two  spaces and\ttab",
    "single ' quote",
    'double " quote',
    "$HOME $(id) `id` ${PATH}",
    "line1\nline2\n",
    "semi; pipe | amp & and && or || redirect > /tmp/x < /etc/passwd",
    "glob * ? [a-z] ~root",
    "unicode ✓ Grüße 日本語 🐟",
    "backslash \\ \\n \\'",
    "-n",
    "--",
    "%s %d %%",
]


@pytest.mark.parametrize("text", AWKWARD, ids=range(len(AWKWARD)))
def test_list_arguments_round_trip_unchanged(conn, text):
    assert conn.run(["printf", "%s", text]).stdout == text


def test_env_and_input_round_trip_unchanged(conn):
    text = "'\"$x;|&\n✓"
    assert conn.run('printf %s "$XENHIL_T"', env={"XENHIL_T": text}).stdout == text
    assert conn.run("cat", input=text).stdout == text
    assert conn.run(["cat"], input=text.encode() * 1000).stdout == text * 1000
    # Without input, stdin is at EOF at once (a command reading it must not hang).
    assert conn.run("cat", timeout=20).stdout == ""


def test_bad_env_name_is_refused_before_running(conn):
    with pytest.raises(TestBugError, match="not a valid environment variable name"):
        conn.run("true", env={"A;rm -rf /": "x"})


def test_ten_megabytes_on_both_streams_do_not_deadlock(conn):
    size = 10 * 1024 * 1024
    # Interleave the two streams so each fills while the other is waiting.
    result = conn.run(f"for i in 1 2 3 4 5 6 7 8 9 10; do head -c {size // 10} /dev/zero | "
                      f"tr '\\0' o; head -c {size // 10} /dev/zero | tr '\\0' e >&2; done",
                      timeout=300)
    assert result.ok
    assert len(result.stdout) == size and set(result.stdout) == {"o"}
    assert len(result.stderr) == size and set(result.stderr) == {"e"}


def test_timeout_raises_with_partial_output_and_stops_the_command(conn, sshd_server):
    marker = f"987.{os.getpid()}"
    with pytest.raises(CommandTimeout) as info:
        conn.run(f"echo started; echo warn >&2; sleep {marker}; echo never", timeout=1)
    exc = info.value
    assert isinstance(exc, InfrastructureError)
    assert exc.command == f"echo started; echo warn >&2; sleep {marker}; echo never"
    assert exc.stdout_tail == "started" and exc.stderr_tail == "warn"
    assert "testhost" in str(exc) and "1s" in str(exc)
    # The remote command (and its children) were stopped, not left running.
    for _ in range(100):
        if conn.run(["pgrep", "-f", f"sleep {marker}"]).exit_status == 1:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"'sleep {marker}' still runs on the host after the timeout")
    # The connection stays usable.
    assert conn.run("echo again").stdout == "again\n"


def test_check_raises_with_command_status_tails_and_host(conn):
    with pytest.raises(RemoteCommandFailed) as info:
        conn.run("seq 1 50; echo oops >&2; exit 3", check=True)
    exc = info.value
    assert exc.exit_status == 3
    assert exc.command == "seq 1 50; echo oops >&2; exit 3"
    assert exc.stdout_tail.splitlines() == [str(n) for n in range(31, 51)]
    assert exc.stderr_tail == "oops"
    assert "on testhost exited 3" in str(exc)
    assert conn.run("true", check=True).ok


def test_interactive_command_gets_a_pty(conn):
    chan = conn.open_interactive("tty; echo interactive-done")
    try:
        data = b""
        while b"interactive-done" not in data:
            chunk = chan.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        chan.close()
    assert b"/dev/pts/" in data
    assert b"interactive-done" in data


# --- host keys -----------------------------------------------------------------

def test_unknown_host_key_is_refused(sshd_server, tmp_path):
    bare = SSHConnection(sshd_server.ssh_config(host_key=None), name="nopin")
    with pytest.raises(HostKeyMismatch) as info:
        bare.run("true")
    text = str(info.value)
    assert "none pinned" in text
    assert openssh_fingerprint(sshd_server.host_key, tmp_path) in text
    assert "ssh.host_key" in text  # the fix names the field
    assert bare.state == SSHConnection.DISCONNECTED


def test_mismatched_host_key_is_refused(sshd_server, tmp_path):
    other = public_key_line(keygen(tmp_path / "impostor"))
    pinned = SSHConnection(sshd_server.ssh_config(host_key=other), name="wrongpin")
    with pytest.raises(HostKeyMismatch) as info:
        pinned.run("true")
    text = str(info.value)
    assert f"expected ssh-ed25519 {openssh_fingerprint(other, tmp_path)}" in text
    assert f"offered ssh-ed25519 {openssh_fingerprint(sshd_server.host_key, tmp_path)}" in text
    assert "reinstalled" in text


def test_known_hosts_file_pins_the_key(sshd_server, tmp_path):
    config = sshd_server.ssh_config(host_key=None, known_hosts=sshd_server.known_hosts)
    with SSHConnection(config, name="kh") as good:
        assert good.run("echo pinned").stdout == "pinned\n"
    # Hashed entries (ssh-keygen -H, HashKnownHosts) are understood too.
    hashed = tmp_path / "hashed_known_hosts"
    hashed.write_text(sshd_server.known_hosts.read_text())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(hashed)], check=True,
                   capture_output=True)
    assert sshd_server.address not in hashed.read_text()
    config = sshd_server.ssh_config(host_key=None, known_hosts=hashed)
    with SSHConnection(config, name="kh-hashed") as good:
        assert good.run("echo hashed").stdout == "hashed\n"
    # An entry for another port of the same address does not count.
    elsewhere = tmp_path / "known_hosts"
    elsewhere.write_text(f"[{sshd_server.address}]:1 {sshd_server.host_key}\n")
    with pytest.raises(HostKeyMismatch):
        SSHConnection(sshd_server.ssh_config(host_key=None, known_hosts=elsewhere)).run("true")


def test_missing_known_hosts_and_bad_host_key_are_config_errors(sshd_server, tmp_path):
    with pytest.raises(ConfigError, match="known_hosts .*nowhere.*cannot be read"):
        SSHConnection(sshd_server.ssh_config(known_hosts=tmp_path / "nowhere")).run("true")
    with pytest.raises(ConfigError, match="ssh.host_key"):
        SSHConnection(sshd_server.ssh_config(host_key="ssh-ed25519")).run("true")
    with pytest.raises(ConfigError, match="ssh.key_file is not set"):
        SSHConnection(sshd_server.ssh_config(key_file=None)).run("true")


def test_fetch_host_key_is_explicit_and_logged(sshd_server, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="xenhil.ssh")
    line = fetch_host_key(sshd_server.address, sshd_server.port, timeout=10)
    assert line == sshd_server.host_key
    assert openssh_fingerprint(line, tmp_path) in caplog.text
    assert "first use" in caplog.text


# --- dropped connections -----------------------------------------------------------

def test_reconnects_after_sshd_restart(fresh_sshd_server):
    with SSHConnection(fresh_sshd_server.ssh_config(), name="bouncy",
                       retry_delay=0.2) as connection:
        first = connection.run("echo $PPID").stdout
        assert connection.read_text("/proc/self/comm")  # opens an SFTP session too
        fresh_sshd_server.restart()
        second = connection.run("echo $PPID").stdout
        assert connection.state == SSHConnection.CONNECTED
        assert first != second  # a new sshd session process, not the old socket
        assert connection.read_text("/proc/self/comm")  # SFTP reopened as well


def test_gives_up_after_sshd_is_gone(fresh_sshd_server):
    server = fresh_sshd_server
    connection = SSHConnection(server.ssh_config(), name="doomed", retries=2, retry_delay=0.1)
    connection.run("true")
    server.kill()
    with pytest.raises(SSHUnreachable) as info:
        connection.run("true")
    exc = info.value
    assert isinstance(exc, ConnectionLost) and isinstance(exc, SSHError)
    assert f"{server.address}:{server.port}" in str(exc)
    assert "after 2 attempts" in str(exc)
    assert connection.state == SSHConnection.DISCONNECTED
    connection.close()


def test_a_session_failing_twice_on_a_live_connection_is_opened_on_a_new_one(fresh_sshd_server,
                                                                            monkeypatch):
    # CI hit the window where sshd is gone but paramiko's reader thread has not
    # noticed yet: the send fails while the transport still looks alive.  That
    # timing cannot be produced on demand, so the first two session opens fail
    # as paramiko's send does then (EOFError); the third must go through on a
    # fresh connection, not give up because the same-connection retry was used.
    connection = SSHConnection(fresh_sshd_server.ssh_config(), name="racy", retry_delay=0.1)
    connection.run("true")
    original = connection._client.get_transport()
    real_open_session = paramiko.Transport.open_session
    transports = []

    def fake_send_failure_while_transport_looks_alive(transport, *args, **kwargs):
        transports.append(transport)
        if len(transports) <= 2:
            assert transport.is_active()
            raise EOFError()
        return real_open_session(transport, *args, **kwargs)

    monkeypatch.setattr(paramiko.Transport, "open_session",
                        fake_send_failure_while_transport_looks_alive)
    result = connection.run("echo still here")
    monkeypatch.undo()
    assert result.stdout.strip() == "still here"
    assert transports[:2] == [original, original]
    assert transports[2] is not original and connection.state == SSHConnection.CONNECTED
    connection.close()


def test_drop_during_a_command_is_connection_lost(fresh_sshd_server, tmp_path):
    server = fresh_sshd_server
    marker = tmp_path / "command-started"
    connection = SSHConnection(server.ssh_config(), name="dropped", retries=1)
    outcome: dict = {}

    def runner():
        try:
            outcome["result"] = connection.run(f"touch {marker}; sleep 60", timeout=120)
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    thread = threading.Thread(target=runner)
    thread.start()
    for _ in range(200):
        if marker.exists():
            break
        time.sleep(0.05)
    server.kill()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), ConnectionLost), outcome
    assert "sleep 60" in str(outcome["error"])
    connection.close()


# --- files -----------------------------------------------------------------------------

def test_put_and_get_are_checksum_verified(conn, tmp_path):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    local = tmp_path / "payload.bin"
    local.write_bytes(payload)
    remote = str(tmp_path / "remote dir with space")
    conn.run(["mkdir", "-p", remote], check=True)
    remote_file = f"{remote}/payload.bin"

    digest = conn.put(local, remote_file, mode=0o640)
    assert digest == hashlib.sha256(payload).hexdigest()
    assert conn.run(["sha256sum", remote_file]).stdout.split()[0] == digest
    assert conn.run(["stat", "-c", "%a", remote_file]).stdout.strip() == "640"
    assert conn.run(["ls", remote]).stdout.split() == ["payload.bin"]  # no partial left

    back = tmp_path / "back.bin"
    assert conn.get(remote_file, back) == digest
    assert back.read_bytes() == payload

    with pytest.raises(TransferVerificationFailed, match="expected 0000"):
        conn.verify_remote(remote_file, "0" * 64)


def test_put_bytes_and_read_text(conn, tmp_path):
    remote = str(tmp_path / "note.txt")
    conn.put_bytes("Grüße\n", remote)
    assert conn.read_text(remote) == "Grüße\n"
    assert conn.read_bytes(remote) == "Grüße\n".encode()


# --- guests through a host ------------------------------------------------------------

def test_guest_is_reached_through_the_host(conn, sshd_factory):
    guest_server = sshd_factory()
    guest = conn.guest(guest_server.ssh_config(), name="guest1")
    try:
        assert guest.run("echo from-guest").stdout == "from-guest\n"
        # The guest's SSH runs inside a direct-tcpip channel of the host connection.
        assert isinstance(guest._client.get_transport().sock, paramiko.Channel)
        # and it pins the guest's own key, not the host's
        impostor = conn.guest(guest_server.ssh_config(host_key=conn.config.host_key), "g2")
        with pytest.raises(HostKeyMismatch):
            impostor.run("true")
    finally:
        guest.close()


def test_tunnel_refused_by_host_names_destination(sshd_factory, sshd_server):
    strict = sshd_factory(allow_tcp_forwarding=False)
    with SSHConnection(strict.ssh_config(), name="strict") as host:
        with pytest.raises(SSHError) as info:
            host.open_tunnel(sshd_server.address, sshd_server.port)
    assert f"{sshd_server.address}:{sshd_server.port}" in str(info.value)
    assert "AllowTcpForwarding" in str(info.value)


# --- one connection per host per process --------------------------------------------

def _child_check(config, parent_conn, queue):
    mine = connection_for("reghost", config)
    queue.put({
        "is_parents": mine is parent_conn,
        "stable": connection_for("reghost", config) is mine,
        "runs": mine.run("echo child").stdout,
        "parent_untouched": parent_conn.state,
    })


def test_registry_is_per_host_and_per_process(sshd_server):
    config = sshd_server.ssh_config()
    parent = connection_for("reghost", config)
    try:
        assert connection_for("reghost", config) is parent
        assert connection_for("otherhost", config) is not parent
        parent.run("true")

        context = multiprocessing.get_context("fork")  # the case xdist/fork creates
        queue = context.Queue()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: intended
            child = context.Process(target=_child_check, args=(config, parent, queue))
            child.start()
        report = queue.get(timeout=60)
        child.join(timeout=60)
        assert child.exitcode == 0
        assert report == {"is_parents": False, "stable": True, "runs": "child\n",
                          "parent_untouched": SSHConnection.CONNECTED}
        # The parent's socket still works after the child used and left its own.
        assert parent.run("echo parent").stdout == "parent\n"
    finally:
        connection_for("otherhost", config).close()
        parent.close()
    assert connection_for("reghost", config) is not parent  # closed ones are replaced
    connection_for("reghost", config).close()


def test_closed_connection_refuses_use(sshd_server):
    connection = SSHConnection(sshd_server.ssh_config(), name="closing")
    connection.run("true")
    connection.close()
    assert connection.state == SSHConnection.CLOSED
    with pytest.raises(TestBugError, match="after close"):
        connection.run("true")


# --- secrets ----------------------------------------------------------------------------

def test_passphrase_never_reaches_logs_or_errors(sshd_server, monkeypatch, caplog):
    secret = "correct-horse-7f3e91"
    key = sshd_server.new_client_key("encrypted_key", passphrase=secret)
    monkeypatch.setenv("XENHIL_TEST_SSH_PASSPHRASE", secret)
    caplog.set_level(logging.DEBUG)
    config = sshd_server.ssh_config(key_file=key,
                                    passphrase=CredentialRef(env="XENHIL_TEST_SSH_PASSPHRASE"))
    with SSHConnection(config, name="secretive") as connection:
        assert connection.run("echo unlocked").stdout == "unlocked\n"
        assert secret not in repr(connection)

    monkeypatch.setenv("XENHIL_TEST_SSH_PASSPHRASE", secret + "-wrong")
    with pytest.raises(ConfigError) as info:
        SSHConnection(config, name="secretive").run("true")
    assert secret not in str(info.value)
    assert "ssh.passphrase" in str(info.value)

    monkeypatch.delenv("XENHIL_TEST_SSH_PASSPHRASE")
    with pytest.raises(ConfigError, match="XENHIL_TEST_SSH_PASSPHRASE"):
        SSHConnection(config, name="secretive").run("true")
    assert secret not in caplog.text
    assert "step start: secretive$ echo unlocked" in caplog.text  # logging did happen
