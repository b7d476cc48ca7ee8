"""One SSHConnection used by several threads at once, against a real sshd.

The stability benchmark boots guests at once from threads of one process,
and the host's connection is shared by name (``connection_for``); two
threads writing their guests' configs through its one SFTP session took
each other's replies and both waited for ever."""
from __future__ import annotations

import os
import struct
import threading

from paramiko.common import MSG_CHANNEL_CLOSE, MSG_CHANNEL_EOF

from xenhil.harness.access.ssh import SSHConnection
from tests.support.sshd import sshd_factory, sshd_server  # noqa: F401  (fixtures)

THREADS = 4
WRITES = 15


def test_threads_writing_files_through_one_connection_all_finish(sshd_server, tmp_path):
    conn = SSHConnection(sshd_server.ssh_config(), name="shared")
    errors: list[BaseException] = []
    written: dict[str, bytes] = {}

    def writer(n: int) -> None:
        try:
            for i in range(WRITES):
                data = os.urandom(200 + 997 * i + n)
                remote = str(tmp_path / f"t{n}-{i}.bin")
                conn.put_bytes(data, remote)
                assert conn.read_bytes(remote) == data
                written[remote] = data
        except BaseException as exc:  # reported below, with the thread's number
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        stuck = [t.name for t in threads if t.is_alive()]
        assert not stuck, f"threads still waiting for their SFTP replies after 120 s: {stuck}"
        # (sshd's own log says whether it ended the session: seen once in CI's
        # fast layer as "Server connection dropped" in two threads)
        assert not errors, f"{errors!r}\n--- sshd log ---\n{sshd_server.log_tail(60)}"
        assert len(written) == THREADS * WRITES
        for remote, data in written.items():
            assert (tmp_path / os.path.basename(remote)).read_bytes() == data
    finally:
        conn.close()


def test_a_host_takes_a_new_connection_when_another_host_object_closed_the_shared_one(
        sshd_server, tmp_path):
    """Host objects of one lab host share the process's connection to it
    (connection_for); one of them closing it at its end must not leave the
    others with a closed connection (CI: after the smoke test closed its Host,
    the next test's host failed every command with "used after close()")."""
    from xenhil.harness.host import Host
    from xenhil.harness.lab.model import HostSpec, PowerConfig

    spec = HostSpec(name="shared-host", address="127.0.0.1", ssh=sshd_server.ssh_config(),
                    serial=None, power=PowerConfig(kind="none"))
    pooled, other = Host(spec, tmp_path / "a"), Host(spec, tmp_path / "b")
    try:
        assert pooled.ssh.run(["echo", "one"]).stdout == "one\n"
        assert other.ssh is pooled.ssh           # one connection per host per process
        other.close()
        assert pooled.ssh.run(["echo", "two"]).stdout == "two\n"
    finally:
        pooled.close()


def test_a_command_that_ends_at_once_leaves_the_other_channels_running(sshd_server):
    """sshd ends the whole connection when a channel EOF arrives after the
    channel's CLOSE ("ieof packet referred to nonexistent channel").  paramiko
    sends a message after releasing the channel's lock, so an EOF a command's
    thread sent on its own could leave after the CLOSE paramiko's reader
    thread sent once the (quick) command had exited: under load, one thread's
    `mv` ended the connection and every other thread's command and SFTP
    transfer on it.  Here the transport holds any EOF sent on its own until
    its channel's CLOSE has left, the worst order the race allows, and a
    channel of another user (`cat`) must still answer afterwards."""
    conn = SSHConnection(sshd_server.ssh_config(), name="eof-order")
    try:
        conn.connect()
        transport = conn._client.get_transport()
        send = transport._send_user_message
        closed: set[int] = set()  # server-side channel ids whose CLOSE has left
        cond = threading.Condition()
        held: list[int] = []

        def worst_order(message) -> None:
            data = message.asbytes()
            kind = data[0]
            if kind in (MSG_CHANNEL_EOF, MSG_CHANNEL_CLOSE):
                remote_id = struct.unpack(">I", data[1:5])[0]
                owner = [c for c in transport._channels.values() if c.remote_chanid == remote_id]
                if kind == MSG_CHANNEL_EOF and owner and not owner[0].closed:
                    held.append(remote_id)  # an EOF of its own, not the one before a CLOSE
                    with cond:  # bounded: sshd closes a channel whose command exited
                        cond.wait_for(lambda: remote_id in closed, timeout=30)
                    # One round trip after that CLOSE: sshd frees a closed
                    # channel at the start of its next loop, so the EOF then
                    # finds it gone (without it, 1 run in 3 let both arrive
                    # in one read and the EOF went unnoticed).
                    transport.global_request("keepalive@openssh.com", wait=True)
            send(message)
            if kind == MSG_CHANNEL_CLOSE:
                with cond:
                    closed.add(remote_id)
                    cond.notify_all()

        console = conn.open_interactive("cat")
        console.settimeout(30)  # a guard against a hang, not a measure
        transport._send_user_message = worst_order
        for _ in range(3):
            assert conn.run(["true"]).exit_status == 0
        def lost() -> str:  # read when failing, so sshd's log has its reason by then
            return (f"the other channel was closed (EOFs sent on their own for channels "
                    f"{held}); sshd log:\n{sshd_server.log_tail(20)}")

        assert not console.closed, lost()
        console.sendall(b"still here\n")
        seen = b""
        while b"still here" not in seen:
            chunk = console.recv(4096)
            assert chunk, lost()
            seen += chunk
        assert conn._client.get_transport() is transport  # no reconnect either
        transport._send_user_message = send
        # With input the shell drains its stdin before exiting (so sshd's
        # CLOSE cannot overtake our EOF); the command's own status still counts.
        assert conn.run("exit 3", input=b"never read\n").exit_status == 3
        assert conn.run(["cat"], input=b"read\n").stdout == "read\n"
        assert conn._client.get_transport() is transport
        console.close()
    finally:
        conn.close()
