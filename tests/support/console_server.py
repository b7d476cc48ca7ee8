"""Real TCP console servers on 127.0.0.1 for the console tests.

- :class:`ConsoleServer` accepts connections and runs a handler per connection
  in a thread; every byte it sends is kept in ``sent`` (to compare with the
  client's transcript byte for byte), every byte it receives in ``received``.
  With ``one_at_a_time`` it serves like a serial line (QEMU's chardev
  socket, the virtual lab's): the next client is taken only once the
  current one's handler has returned; until then it waits, connected, in
  the listener's backlog.
- :func:`scripted` handlers feed a fixed byte stream, optionally one byte at a
  time, optionally waiting for client input, optionally dropping the connection.
- :func:`noisy_shell` handlers put a real ``/bin/sh -i`` behind a pty and insert
  kernel-log and Xen-log lines into its output every few bytes (also in the
  middle of prompts, command lines and sentinels), as a serial line shared
  with printk does.
- :func:`socat_shell` runs socat with a real shell behind a pty, a separate
  process like a real console server.

Everything started here is stopped by process id (and its descendants), also
when the test fails.
"""
from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

SHELL_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "PS1": "$ ",
    "TERM": "dumb",
    "LC_ALL": "C",
}

KERNEL_NOISE = b"[   12.345678] usb 1-1: new high-speed USB device number 2 using xhci_hcd\r\n"
XEN_NOISE = b"(XEN) d1v0 Unhandled: vec 14, #PF[0000]\r\n"


class Connection:
    """One accepted client, as seen by a handler."""

    def __init__(self, server: "ConsoleServer", sock: socket.socket):
        self.server, self.sock = server, sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._received = bytearray()
        self._cond = threading.Condition()
        self.closed = False

    def send(self, data: bytes, byte_delay: float = 0.0) -> None:
        # Recorded before it goes out: a client may read the bytes before this
        # thread runs again, and tests compare what arrived with ``sent``.
        chunks = [data[i:i + 1] for i in range(len(data))] if byte_delay else [data]
        for chunk in chunks:
            self.server._record_sent(chunk)
            try:
                self.sock.sendall(chunk)
            except OSError:
                self.server._unrecord_sent(len(chunk))
                raise
            if byte_delay:
                time.sleep(byte_delay)

    def pump_input(self) -> None:
        """Read client bytes in the background (for handlers that wait for input)."""
        def loop():
            while True:
                try:
                    data = self.sock.recv(4096)
                except OSError:
                    data = b""
                with self._cond:
                    if not data:
                        self.closed = True
                        self._cond.notify_all()
                        return
                    self._received += data
                    self.server._record_received(data)
                    self._cond.notify_all()
        threading.Thread(target=loop, daemon=True).start()

    def wait_for(self, pattern: bytes, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not re.search(pattern, bytes(self._received)):
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


Handler = Callable[[Connection], None]


@dataclass
class ConsoleServer:
    handler: Handler
    address: str = "127.0.0.1"
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    # set each time a handler has sent all of its script
    script_done: threading.Event = field(default_factory=threading.Event)
    pids: list[int] = field(default_factory=list)
    one_at_a_time: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.address, 0))
        self._listener.listen(4)
        self.port = self._listener.getsockname()[1]
        self._connections: list[Connection] = []
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepter.start()

    def _record_sent(self, data: bytes) -> None:
        with self._lock:
            self.sent += data

    def _unrecord_sent(self, count: int) -> None:
        with self._lock:
            del self.sent[len(self.sent) - count:]

    def _record_received(self, data: bytes) -> None:
        with self._lock:
            self.received += data

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # listener closed by stop()
            conn = Connection(self, sock)
            self._connections.append(conn)
            if self.one_at_a_time:
                self._serve(conn)
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: Connection) -> None:
        with contextlib.suppress(OSError):
            self.handler(conn)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        for conn in self._connections:
            conn.close()
        for pid in self.pids:
            kill_tree(pid)
        for thread in self._threads:
            thread.join(timeout=5)


# --- handlers -------------------------------------------------------------------

def scripted(*steps, byte_delay: float = 0.0, close_after: bool = False,
             hold: float = 60.0) -> Handler:
    """A handler sending ``steps``: bytes are sent, ``("await", regex_bytes)``
    waits for client input.  Then the connection is dropped (``close_after``)
    or held open until the client leaves (at most ``hold`` seconds)."""

    def handler(conn: Connection) -> None:
        conn.pump_input()
        for item in steps:
            if isinstance(item, tuple) and item[0] == "await":
                if not conn.wait_for(item[1]):
                    return
            else:
                conn.send(item, byte_delay=byte_delay)
        conn.server.script_done.set()
        if close_after:
            conn.close()
            return
        deadline = time.monotonic() + hold
        while not conn.closed and time.monotonic() < deadline:
            time.sleep(0.05)

    return handler


def one_per_connection(*handlers: Handler) -> Handler:
    """The n-th connection gets the n-th handler (then the connection is
    dropped): a console server that restarts with its machine, where each
    link sees one stretch of the output."""
    lock = threading.Lock()
    served = []

    def handler(conn: Connection) -> None:
        with lock:
            index = len(served)
            served.append(conn)
        if index < len(handlers):
            handlers[index](conn)
        conn.close()

    return handler


def noisy_shell(noise_every: int = 7, noise: tuple[bytes, ...] = (KERNEL_NOISE, XEN_NOISE),
                cwd: Path | None = None, byte_delay: float = 0.0) -> Handler:
    """A real /bin/sh -i on a pty; after every ``noise_every`` bytes of its output
    a kernel or Xen log line is inserted (0 = no noise).  ``byte_delay``: a
    slow line, each byte of output sent that long after the one before."""

    def handler(conn: Connection) -> None:
        master, slave = pty.openpty()
        proc = subprocess.Popen(["/bin/sh", "-i"], stdin=slave, stdout=slave, stderr=slave,
                                env=SHELL_ENV, cwd=cwd, start_new_session=True)
        os.close(slave)
        conn.server.pids.append(proc.pid)

        def to_shell():
            while True:
                try:
                    data = conn.sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    break
                conn.server._record_received(data)
                try:
                    os.write(master, data)
                except OSError:
                    break
            kill_tree(proc.pid)

        threading.Thread(target=to_shell, daemon=True).start()
        count, which = 0, 0
        try:
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the shell exited
                    break
                if not data:
                    break
                out = bytearray()
                for byte in data:
                    out.append(byte)
                    count += 1
                    if noise_every and count % noise_every == 0:
                        out += noise[which % len(noise)]
                        which += 1
                conn.send(bytes(out), byte_delay=byte_delay)
        finally:
            os.close(master)
            kill_tree(proc.pid)
            with contextlib.suppress(ChildProcessError):
                proc.wait(timeout=5)
            conn.close()

    return handler


# --- process control -------------------------------------------------------------

def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc/PID/stat)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses
        fields = stat[stat.rindex(b")") + 2:].split()
        table[int(entry)] = int(fields[1])
    return table


def _descendants(pid: int) -> list[int]:
    parents = _parents()
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        todo += kids
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants, each by process id (children first,
    so that a still-living parent can reap them)."""
    for victim in reversed([pid] + _descendants(pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


@contextlib.contextmanager
def serve(handler: Handler) -> Iterator[ConsoleServer]:
    server = ConsoleServer(handler)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class SocatShell:
    host: str
    port: int
    process: subprocess.Popen


@contextlib.contextmanager
def socat_shell(workdir: Path) -> Iterator[SocatShell]:
    """socat listening on 127.0.0.1 (a free port it picks), one real
    ``/bin/sh -i`` on a pty per connection."""
    log = workdir / "socat.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            ["socat", "-d", "-d", "TCP-LISTEN:0,bind=127.0.0.1,reuseaddr,fork",
             "EXEC:/bin/sh -i,pty,stderr,setsid,ctty,sigint,sane"],
            stdout=subprocess.DEVNULL, stderr=err, env=SHELL_ENV, cwd=workdir,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        port = None
        while port is None:
            m = re.search(rb"listening on AF=2 127\.0\.0\.1:(\d+)", log.read_bytes())
            if m:
                port = int(m.group(1))
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"socat did not start: {log.read_text(errors='replace')}")
            else:
                time.sleep(0.05)
        yield SocatShell("127.0.0.1", port, proc)
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=10)


# --- pytest fixtures ---------------------------------------------------------------

@pytest.fixture
def console_server_factory():
    """Start ConsoleServers with a handler; all are stopped after the test."""
    servers: list[ConsoleServer] = []

    def start(handler: Handler, one_at_a_time: bool = False) -> ConsoleServer:
        server = ConsoleServer(handler, one_at_a_time=one_at_a_time)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def socat_shell_server(tmp_path):
    with socat_shell(tmp_path) as shell:
        yield shell
