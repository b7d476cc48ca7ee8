"""Links: the byte pipes under a Console (a TCP socket, raw or telnet, a
local command's terminal, a paramiko channel), each with read/write/fileno/
close and one way to say that the far end went away (LinkEOF)."""
from __future__ import annotations

import os
import shlex
import socket
import time
from typing import Mapping, Sequence

import pexpect
import pexpect.socket_pexpect

from xenhil.harness.access.console.errors import ConsoleUnavailable
from xenhil.harness.lab.model import CredentialRef


class LinkEOF(Exception):
    pass


class PexpectLink:
    """A pexpect spawn (pty child, or socket-like via SocketSpawn) as a byte pipe."""

    def __init__(self, spawn, description: str, close_sequence: bytes | None = None):
        self.spawn = spawn
        self.description = description
        self.close_sequence = close_sequence

    def read(self, size: int, timeout: float) -> bytes:
        try:
            return self.spawn.read_nonblocking(size, max(timeout, 0))
        except pexpect.TIMEOUT:
            return b""
        except pexpect.EOF as exc:
            raise LinkEOF(self._eof_reason(exc)) from None
        except (BlockingIOError, InterruptedError):  # a socket polled with timeout 0
            return b""
        except OSError as exc:  # connection reset and the like
            raise LinkEOF(f"{type(exc).__name__}: {exc}") from None

    def _eof_reason(self, exc: Exception) -> str:
        if isinstance(self.spawn, pexpect.spawn):
            deadline = time.monotonic() + 1.0  # let the exiting child be reaped
            while self.spawn.isalive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.spawn.signalstatus is not None:
                return f"console command killed by signal {self.spawn.signalstatus}"
            if self.spawn.exitstatus is not None:
                return f"console command exited with status {self.spawn.exitstatus}"
            return "console command closed its output"
        return "the console server closed the connection"

    def write(self, data: bytes) -> None:
        try:
            self.spawn.send(data)
        except OSError as exc:
            raise LinkEOF(f"cannot send: {type(exc).__name__}: {exc}") from None

    def fileno(self) -> int:
        return self.spawn.child_fd

    def close(self) -> None:
        if self.close_sequence:
            try:
                self.spawn.send(self.close_sequence)
                time.sleep(0.2)  # give e.g. ipmitool time to deactivate the SOL session
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        try:
            if isinstance(self.spawn, pexpect.spawn):
                self.spawn.close(force=True)   # SIGHUP, SIGINT, then SIGKILL to its pid
            else:
                self.spawn.close()
        except OSError:
            pass  # the peer already went away: socket shutdown fails, nothing to free
        if not isinstance(self.spawn, pexpect.spawn):
            try:  # SocketSpawn skips close() when shutdown() raised
                self.spawn.socket.close()
            except Exception:  # noqa: BLE001
                pass


# Telnet (RFC 854) bytes
IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
OPT_ECHO, OPT_SGA = 1, 3


class TelnetFilter:
    """Strips telnet negotiation from a byte stream and produces the replies.

    We refuse every option except that the server may echo and suppress
    go-ahead (what a console server such as ser2net offers).  State survives
    chunk boundaries, so a sequence split across reads is handled.
    """

    def __init__(self) -> None:
        self._state = "data"
        self._verb = 0

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        out, replies = bytearray(), bytearray()
        for byte in data:
            state = self._state
            if state == "data":
                if byte == IAC:
                    self._state = "iac"
                else:
                    out.append(byte)
            elif state == "iac":
                if byte == IAC:
                    out.append(IAC)          # escaped 0xff data byte
                    self._state = "data"
                elif byte in (DO, DONT, WILL, WONT):
                    self._verb, self._state = byte, "option"
                elif byte == SB:
                    self._state = "sb"
                else:
                    self._state = "data"     # two-byte command (NOP, GA, ...)
            elif state == "option":
                if self._verb == DO:
                    replies += bytes((IAC, WONT, byte))
                elif self._verb == WILL:
                    replies += bytes((IAC, DO if byte in (OPT_ECHO, OPT_SGA) else DONT, byte))
                self._state = "data"
            elif state == "sb":
                if byte == IAC:
                    self._state = "sb-iac"
            elif state == "sb-iac":
                self._state = "data" if byte == SE else "sb"
        return bytes(out), bytes(replies)

    @staticmethod
    def escape(data: bytes) -> bytes:
        return data.replace(b"\xff", b"\xff\xff")


class TelnetLink:
    def __init__(self, inner: PexpectLink):
        self.inner = inner
        self.description = inner.description + " (telnet)"
        self.filter = TelnetFilter()

    def read(self, size: int, timeout: float) -> bytes:
        data, replies = self.filter.feed(self.inner.read(size, timeout))
        if replies:
            self.inner.write(replies)
        return data

    def write(self, data: bytes) -> None:
        self.inner.write(TelnetFilter.escape(data))

    def fileno(self) -> int:
        return self.inner.fileno()

    def close(self) -> None:
        self.inner.close()


def connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ConsoleUnavailable(
            f"cannot connect to console server {host}:{port}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# --- one factory per transport: what a Console's connect() calls -------------

def tcp_link(host: str, port: int, connect_timeout: float) -> PexpectLink:
    """A raw TCP console server (QEMU chardev socket, ser2net raw, socat)."""
    sock = connect_tcp(host, port, connect_timeout)
    return PexpectLink(pexpect.socket_pexpect.SocketSpawn(sock), f"tcp {host}:{port}")


def telnet_link(host: str, port: int, connect_timeout: float) -> TelnetLink:
    """A telnet console server: negotiation answered and stripped."""
    return TelnetLink(tcp_link(host, port, connect_timeout))


def command_link(name: str, argv: Sequence[str], *, env: Mapping[str, str] | None,
                 secret_env: Mapping[str, CredentialRef] | None,
                 close_sequence: bytes | None, dimensions: tuple[int, int]) -> PexpectLink:
    """A local command whose terminal is the console; secrets resolved here,
    into its environment, never onto its command line."""
    child_env = dict(os.environ)
    child_env.update(env or {})
    for var, ref in (secret_env or {}).items():
        child_env[var] = ref.resolve()
    try:
        child = pexpect.spawn(argv[0], list(argv[1:]), env=child_env, dimensions=dimensions,
                              encoding=None)
    except pexpect.ExceptionPexpect as exc:
        raise ConsoleUnavailable(f"console {name}: cannot start console command "
                                 f"{shlex.join(argv)}: {exc}",
                                 help=f"install {argv[0]} or fix the serial command "
                                      "in the inventory") from None
    return PexpectLink(child, f"command {shlex.join(argv)} (pid {child.pid})", close_sequence)


def channel_link(channel) -> PexpectLink:
    """A socket-like object that is already connected (paramiko Channel, socket)."""
    return PexpectLink(pexpect.socket_pexpect.SocketSpawn(channel), f"channel {channel!r}")
