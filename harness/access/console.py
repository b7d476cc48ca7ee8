"""Serial console access: one :class:`Console` per host console, whatever carries it.

A console is a byte stream from a host's serial line.  It reaches us over a
TCP console server (raw or telnet), a local command (``ipmitool ... sol
activate``, ``socat``, ``conserver``), or a socket-like channel (a paramiko
``Channel`` running ``xl console DOMAIN`` on a host).  All of them become the
same object with explicit states (``closed`` -> ``open`` -> ``closed``):

    console = Console.tcp("host1", "127.0.0.1", 7001, Path("out/host1.console.log"))
    with console:                          # open() ... close()
        begin = console.mark("boot")
        console.expect(r"login:", timeout=120)
        status, out = console.run("uname -r", timeout=30)
        text = console.slice(begin)        # this test's part of the transcript

Transcript
    Every byte *received* is appended to ``transcript_path`` (binary, flushed
    at once), including bytes read while waiting and bytes read just before a
    failure; the file is never truncated, so reopening a console appends.
    Sent bytes are NOT mixed into it (the transcript stays a byte-exact
    capture of what the host printed; a shell echoes typed commands anyway).
    They go to a sibling file ``<transcript>.sent``, one line per send:
    ``<transcript offset>\\t<repr of the bytes>``, so one can see where in the
    transcript each send happened.  Secrets (passwords) are recorded as
    ``<secret: N bytes>``.

Markers
    :meth:`Console.mark` records the transcript offset of everything received
    so far (read, whether or not an ``expect`` consumed it yet) and writes
    nothing to the console; :meth:`Console.slice` returns the text between
    two markers.

Failures (all carry the last lines seen and the transcript path as evidence)
    - :class:`harness.errors.ConsoleTimeout`: the awaited text did not come.
    - :class:`harness.errors.FatalConsoleOutput`: a fatal pattern (Xen
      assertion/panic, kernel panic) appeared; checked on every read, so a
      wait fails at once instead of running into its timeout.
    - :class:`ConsoleClosed`: the far end dropped the connection (or the
      console command exited).
    - :class:`ConsoleUnavailable`: the console could not be opened.

Shell commands on a console (:meth:`Console.run`) do not rely on the prompt:
the command is bracketed by sentinels written so that the echo of the command
line cannot match them, and kernel/Xen log lines that the serial line
interleaves into the output (even in the middle of a line) are removed.

A Console is not thread-safe: one user at a time.
"""
from __future__ import annotations

import codecs
import enum
import os
import re
import secrets
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import pexpect
import pexpect.socket_pexpect

from harness.errors import (
    ConfigError,
    ConnectionLost,
    ConsoleTimeout,
    FatalConsoleOutput,
    InfrastructureError,
    TestBugError,
)
from harness.lab.model import CredentialRef, HostSpec
from harness.step import step

# Default fatal patterns: seeing one of these means Xen or the kernel died, so
# waiting any longer is pointless.
DEFAULT_FATAL_PATTERNS: tuple[str, ...] = (
    r"\(XEN\) Assertion",
    r"\(XEN\) \*+ Panic",
    r"\(XEN\) Panic on CPU",
    r"\(XEN\) Xen BUG at",
    r"\(XEN\) FATAL TRAP",
    r"\(XEN\) FATAL PAGE FAULT",
    r"Kernel panic",        # "Kernel panic - not syncing: ..."
    # Xen's own word that dom0 died ('noreboot' keeps the machine there).
    r"\(XEN\) Hardware Dom0 (crashed|halted)",
)

# Kernel printk lines ("[   12.345678] usb 1-1: ...") and Xen console lines
# ("(XEN) ...").  On a serial line they can start in the middle of a line
# printed by a program; the program's line then continues after them.  Mid-line
# we only trust the exact printk timestamp shape (six decimals).
_NOISE_RE = re.compile(
    r"\[\s*\d+\.\d{6}\][^\n]*\n"          # printk record, anywhere
    r"|(?m:^)\[\s*\d+\.\d+\][^\n]*\n"     # printk with other precision, at line start
    r"|\(XEN\)[^\n]*\n"                   # Xen console line, anywhere
)

TAIL_LINES = 20
_TAIL_CHARS = 16 * 1024
_BUFFER_CHARS = 1024 * 1024       # unconsumed text kept for expect()
_FATAL_LINE_CHARS = 4096


def strip_console_noise(text: str) -> str:
    """Remove complete kernel-log and Xen-log lines from console text.

    An incomplete noise line at the end is kept (its end has not arrived yet).
    """
    return _NOISE_RE.sub("", text)


# A POSIX shell's PS2 ("> "), possibly followed by terminal queries
# (busybox ash sends ESC[6n) and the echo of a poll it swallowed.
_CONTINUATION_PROMPT = re.compile(r"(?:^|\n)> (?:\x1b\[[0-9;]*[A-Za-z]|[^\n])*$")


def _at_continuation_prompt(tail: str) -> bool:
    """The last line received is a shell's continuation prompt."""
    return bool(_CONTINUATION_PROMPT.search(tail.replace("\r", "")))


class ConsoleState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"


class ConsoleClosed(ConnectionLost):
    """The console's far end went away (server dropped us, command exited)."""

    help = ("The console connection dropped: check the console server / BMC / host, "
            "then read the tail and the transcript.")


class ConsoleStalled(ConsoleClosed):
    help = ("The console delivered nothing for a long time while the target was being "
            "polled: the relay (e.g. `xl console`) is stuck.  Attach again.")


class ConsoleUnavailable(InfrastructureError):
    """The console could not be opened at all."""

    help = ("The console could not be opened: check the serial: entry of the host in the "
            "inventory and that the console server (or BMC, or command) is reachable.")


@dataclass(frozen=True)
class Marker:
    """A point in a console transcript (byte offset of what was received so far)."""

    label: str
    offset: int
    wallclock: float


# --- links: the byte pipes under a Console ----------------------------------

class _LinkEOF(Exception):
    pass


class _PexpectLink:
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
            raise _LinkEOF(self._eof_reason(exc)) from None
        except (BlockingIOError, InterruptedError):  # a socket polled with timeout 0
            return b""
        except OSError as exc:  # connection reset and the like
            raise _LinkEOF(f"{type(exc).__name__}: {exc}") from None

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
            raise _LinkEOF(f"cannot send: {type(exc).__name__}: {exc}") from None

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


class _TelnetLink:
    def __init__(self, inner: _PexpectLink):
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


def _connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ConsoleUnavailable(
            f"cannot connect to console server {host}:{port}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# --- the console ---------------------------------------------------------------

class Console:
    """A host's serial console: expect/send/run with a complete transcript."""

    def __init__(self, name: str, transcript_path: Path, connect: Callable[[], object], *,
                 describe: str, fatal_patterns: Iterable[str] = DEFAULT_FATAL_PATTERNS,
                 linesep: str = "\n", fatal_grace: float = 2.0):
        self.name = name
        self.describe = describe
        self.transcript_path = Path(transcript_path)
        self.sent_log_path = self.transcript_path.with_name(self.transcript_path.name + ".sent")
        self.linesep = linesep
        self.fatal_patterns = [re.compile(p) for p in fatal_patterns]
        # After a fatal line, keep reading this long (until quiet) so that the
        # reason printed after "Panic on CPU" is in the tail and the transcript.
        self.fatal_grace = fatal_grace
        self.read_size = 4096
        self._connect = connect
        self._link = None
        self._transcript = None
        self._sent_log = None
        self.state = ConsoleState.CLOSED
        try:
            self._offset = self.transcript_path.stat().st_size
        except FileNotFoundError:
            self._offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""           # received text not yet consumed by expect()
        self._tail = ""             # last _TAIL_CHARS of received text
        self._fatal_line = ""       # incomplete last line, rescanned for fatal patterns
        self.received_bytes = 0     # on this console object, across reopenings
        self.last_received = time.monotonic()

    # -- constructors -------------------------------------------------------

    @classmethod
    def tcp(cls, name: str, host: str, port: int, transcript_path: Path, *,
            connect_timeout: float = 10.0, **kw) -> "Console":
        """A raw TCP console server (QEMU chardev socket, ser2net raw, socat)."""

        def connect():
            sock = _connect_tcp(host, port, connect_timeout)
            return _PexpectLink(pexpect.socket_pexpect.SocketSpawn(sock), f"tcp {host}:{port}")

        return cls(name, transcript_path, connect, describe=f"tcp {host}:{port}", **kw)

    @classmethod
    def telnet(cls, name: str, host: str, port: int, transcript_path: Path, *,
               connect_timeout: float = 10.0, **kw) -> "Console":
        """A telnet console server: like tcp, with telnet negotiation answered and
        stripped (the transcript holds the console data, not the negotiation)."""

        def connect():
            sock = _connect_tcp(host, port, connect_timeout)
            return _TelnetLink(_PexpectLink(pexpect.socket_pexpect.SocketSpawn(sock),
                                            f"tcp {host}:{port}"))

        return cls(name, transcript_path, connect, describe=f"telnet {host}:{port}", **kw)

    @classmethod
    def command(cls, name: str, argv: Sequence[str], transcript_path: Path, *,
                env: Mapping[str, str] | None = None,
                secret_env: Mapping[str, CredentialRef] | None = None,
                close_sequence: bytes | None = None,
                dimensions: tuple[int, int] = (50, 250), **kw) -> "Console":
        """A local command whose terminal is the console (``ipmitool ... sol activate``).

        ``secret_env`` maps environment variables to credential references
        resolved only when the console is opened (e.g. IPMI_PASSWORD for
        ``ipmitool -E``): secrets never go on the command line.
        ``close_sequence`` is sent before the command is stopped (``~.`` ends
        an ipmitool SOL session cleanly).
        """
        argv = [str(a) for a in argv]
        if not argv:
            raise ConfigError(f"console {name}: empty command", help="give the console command line")

        def connect():
            child_env = dict(os.environ)
            child_env.update(env or {})
            for var, ref in (secret_env or {}).items():
                child_env[var] = ref.resolve()
            try:
                child = pexpect.spawn(argv[0], argv[1:], env=child_env, dimensions=dimensions,
                                      encoding=None)
            except pexpect.ExceptionPexpect as exc:
                raise ConsoleUnavailable(f"cannot start console command {shlex.join(argv)}: {exc}",
                                         help=f"install {argv[0]} or fix the serial command "
                                              "in the inventory") from None
            return _PexpectLink(child, f"command {shlex.join(argv)} (pid {child.pid})",
                                close_sequence)

        return cls(name, transcript_path, connect, describe=f"command {shlex.join(argv)}", **kw)

    @classmethod
    def channel(cls, name: str, channel, transcript_path: Path, **kw) -> "Console":
        """A socket-like object that is already connected: a paramiko ``Channel``
        running ``xl console DOMAIN`` (it has recv/sendall/settimeout/fileno),
        or a plain socket.  Closing the console closes the channel."""

        def connect():
            return _PexpectLink(pexpect.socket_pexpect.SocketSpawn(channel), f"channel {channel!r}")

        return cls(name, transcript_path, connect, describe=f"channel {name}", **kw)

    # -- state ---------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state is ConsoleState.OPEN

    @step("console {self.name}: open")
    def open(self) -> "Console":
        if self.is_open:
            return self
        self.transcript_path.parent.mkdir(parents=True, exist_ok=True)
        self._link = self._connect()
        self._transcript = open(self.transcript_path, "ab")
        self._offset = self._transcript.tell()
        self._sent_log = open(self.sent_log_path, "a", encoding="utf-8")
        self._decoder.reset()
        self._buffer = ""
        self._fatal_line = ""
        self.state = ConsoleState.OPEN
        return self

    @step("console {self.name}: reconnect")
    def reconnect(self, timeout: float = 60.0, retry_every: float = 1.0) -> "Console":
        """A fresh link: close this one (what it had queued is dropped) and
        connect again, retrying for ``timeout`` seconds while the server
        refuses (a virtual host's power cycle restarts its QEMU and with it
        the serial server; ser2net drops links on port resets).  The
        transcript continues in the same file."""
        self.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.open()
            except ConsoleUnavailable:
                if time.monotonic() + retry_every > deadline:
                    raise
                time.sleep(retry_every)

    def close(self) -> None:
        """Close the link (socket, channel, or stop the command) and the transcript."""
        link, self._link = self._link, None
        self.state = ConsoleState.CLOSED
        try:
            if link is not None:
                link.close()
        finally:
            for f in (self._transcript, self._sent_log):
                if f is not None:
                    f.close()
            self._transcript = self._sent_log = None

    def __enter__(self) -> "Console":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Console {self.name} {self.describe} {self.state.value}>"

    def _require_open(self):
        if not self.is_open:
            raise TestBugError(f"console {self.name} is {self.state.value}",
                               help="open the console first (console.open() or `with console:`)")
        return self._link

    # -- transcript ---------------------------------------------------------

    def mark(self, label: str = "") -> Marker:
        """The current transcript position; writes nothing to the console."""
        return Marker(label, self._offset, time.time())

    def slice_bytes(self, since: Marker, until: Marker | None = None) -> bytes:
        if self._transcript is not None:
            self._transcript.flush()
        end = until.offset if until is not None else self._offset
        try:
            with open(self.transcript_path, "rb") as f:
                f.seek(since.offset)
                return f.read(max(0, end - since.offset))
        except FileNotFoundError:
            return b""

    def slice(self, since: Marker, until: Marker | None = None) -> str:
        """Transcript text received between two markers (until now by default)."""
        return self.slice_bytes(since, until).decode("utf-8", "replace")

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines received (carriage returns removed), for error messages."""
        text = self._tail.replace("\r", "")
        return "\n".join(text.split("\n")[-lines:])

    def _evidence(self) -> dict[str, str]:
        return {"transcript": str(self.transcript_path)}

    def _record(self, data: bytes) -> str:
        self._transcript.write(data)
        self._transcript.flush()
        self._offset += len(data)
        self.received_bytes += len(data)
        self.last_received = time.monotonic()
        text = self._decoder.decode(data)
        self._tail = (self._tail + text)[-_TAIL_CHARS:]
        return text

    def _read_raw(self, timeout: float) -> tuple[bytes, str]:
        """Read once (waits up to ``timeout``); every byte goes to the transcript.
        Returns the bytes and their decoded text."""
        link = self._require_open()
        try:
            data = link.read(self.read_size, timeout)
        except _LinkEOF as exc:
            self.close()
            raise ConsoleClosed(
                f"console {self.name} ({self.describe}) closed: {exc}\n"
                f"--- last {TAIL_LINES} lines seen ---\n{self.tail()}\n--- end ---",
                evidence=self._evidence()) from None
        return (data, self._record(data)) if data else (b"", "")

    def _read(self, timeout: float) -> str:
        return self._read_raw(timeout)[1]

    # -- fatal patterns -----------------------------------------------------

    def _scan_fatal(self, text: str, raise_on_match: bool) -> None:
        pending = self._fatal_line + text
        found = None
        if raise_on_match:
            for pattern in self.fatal_patterns:
                m = pattern.search(pending)
                if m and (found is None or m.start() < found.start()):
                    found = m
        if found is None:
            self._fatal_line = pending[pending.rfind("\n") + 1:][-_FATAL_LINE_CHARS:]
            return
        self._fatal_line = ""
        line_start = pending.rfind("\n", 0, found.start()) + 1
        line_end = pending.find("\n", found.end())
        line = pending[line_start:line_end if line_end >= 0 else len(pending)].strip("\r\n")
        self._read_grace()
        raise FatalConsoleOutput(
            f"console {self.name}: fatal output (pattern {found.re.pattern!r}): {line}\n"
            f"--- last {TAIL_LINES} lines seen ---\n{self.tail()}\n--- end ---",
            evidence=self._evidence())

    def _read_grace(self) -> None:
        deadline = time.monotonic() + self.fatal_grace
        while (left := deadline - time.monotonic()) > 0:
            try:
                text = self._read(min(left, 0.3))
            except ConsoleClosed:
                return
            if not text:
                return  # quiet: the crash report is complete
            self._buffer = (self._buffer + text)[-_BUFFER_CHARS:]

    # -- expect / send --------------------------------------------------------

    def expect(self, patterns: str | re.Pattern | Sequence[str | re.Pattern],
               timeout: float = 30.0, *, check_fatal: bool = True,
               ignore_noise: bool = False) -> re.Match:
        """Wait until one of ``patterns`` (regexes) appears; return its match.

        The earliest match in the stream wins; text up to the match end is
        consumed.  ``ignore_noise`` matches against the text with kernel/Xen
        log lines removed (a prompt split by a printk still matches).
        Raises ConsoleTimeout, FatalConsoleOutput or ConsoleClosed.
        """
        if isinstance(patterns, (str, re.Pattern)):
            patterns = [patterns]
        compiled = [re.compile(p) for p in patterns]
        if not compiled:
            raise TestBugError("expect() needs at least one pattern")
        shown = [p.pattern for p in compiled]
        return self._expect(compiled, timeout, f"{shown!r}", check_fatal, ignore_noise)

    def _expect(self, compiled: list[re.Pattern], timeout: float, what: str,
                check_fatal: bool, ignore_noise: bool) -> re.Match:
        self._require_open()
        deadline = time.monotonic() + timeout
        while True:
            text = strip_console_noise(self._buffer) if ignore_noise else self._buffer
            best = None
            for pattern in compiled:
                m = pattern.search(text)
                if m and (best is None or m.start() < best.start()):
                    best = m
            if best is not None:
                self._buffer = text[best.end():]
                return best
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConsoleTimeout(
                    f"console {self.name}: timed out after {timeout:g}s waiting for {what}\n"
                    f"--- last {TAIL_LINES} lines seen ---\n{self.tail()}\n--- end ---",
                    evidence=self._evidence())
            new = self._read(left)
            if new:
                self._buffer = (self._buffer + new)[-_BUFFER_CHARS:]
                self._scan_fatal(new, check_fatal)

    def send(self, data: bytes | str, *, secret: bool = False, record: bool = True) -> None:
        """Send raw bytes (str is UTF-8 encoded).  ``secret`` keeps the bytes out of
        the sent log; ``record=False`` leaves no entry at all (interactive keys)."""
        link = self._require_open()
        if isinstance(data, str):
            data = data.encode("utf-8")
        if record:
            shown = f"<secret: {len(data)} bytes>" if secret else repr(data)
            self._sent_log.write(f"{self._offset}\t{shown}\n")
            self._sent_log.flush()
        try:
            link.write(data)
        except _LinkEOF as exc:
            self.close()
            raise ConsoleClosed(f"console {self.name} ({self.describe}) closed: {exc}",
                                evidence=self._evidence()) from None

    def sendline(self, text: str = "", *, secret: bool = False) -> None:
        self.send(text + self.linesep, secret=secret)

    # -- interactive support ----------------------------------------------------

    def fileno(self) -> int:
        """File descriptor that becomes readable when console data arrives."""
        return self._require_open().fileno()

    def read_available(self, timeout: float = 0.0) -> bytes:
        """Read what has arrived (for a passthrough): recorded in the transcript
        and checked by nobody (no fatal patterns, not kept for expect())."""
        data, text = self._read_raw(timeout)
        if text:
            self._scan_fatal(text, raise_on_match=False)  # keep the line state coherent
        return data

    def watch(self, timeout: float) -> None:
        """Read what arrives for up to ``timeout`` seconds, keeping it for a
        later expect(); raise FatalConsoleOutput as soon as a fatal pattern
        shows (e.g. while something else, like SSH, is being polled)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            text = self._read(min(left, 0.5))
            if text:
                self._scan_fatal(text, raise_on_match=True)
                self._buffer = (self._buffer + text)[-_BUFFER_CHARS:]

    def discard_buffer(self) -> None:
        """Forget received text not yet consumed (after an interactive session)."""
        self._buffer = ""

    # -- shell on the console -----------------------------------------------------

    @staticmethod
    def _tag(kind: str, nonce: str) -> tuple[str, str]:
        """(shell text that prints the tag, regex of the printed tag).  The empty
        quotes split the literal so the echoed command line cannot match."""
        return f'"__XH_""{kind}{nonce}', f"__XH_{kind}{nonce}"

    @step("console {self.name}: run {cmd}")
    def run(self, cmd: str, timeout: float = 60.0, *, check_fatal: bool = True,
            start_timeout: float | None = None) -> tuple[int, str]:
        """Run ``cmd`` in the console's shell; return (exit status, output).

        The output is what the command printed (CRLF turned into LF), with
        kernel-log (``[  1.234567] ...``) and ``(XEN) ...`` lines removed, even
        when they interrupted a line; so do not use run() to read dmesg or
        ``xl dmesg`` (use SSH).  The command runs via ``eval`` in the shell
        itself (``command eval``): ``cd`` and variables persist, ``exit`` ends
        the shell, and a syntax error gives a non-zero status rather than a hang.
        ``cmd`` must not read the console's input (it would eat the sentinel).
        ``start_timeout``: the shell echoes the typed line at once; when even
        the start sentinel has not come back after this long, raise
        ConsoleStalled (the relay is stuck, the command may not have run).
        """
        nonce = secrets.token_hex(6)
        start_shell, start_re = self._tag("S", nonce)
        end_shell, end_re = self._tag("E", nonce)
        # `command eval`: a syntax error in cmd then fails eval alone instead of
        # abandoning the whole line (and the end sentinel) in an interactive
        # dash/bash/busybox shell.
        self.sendline(f'echo {start_shell}__"; command eval {shlex.quote(cmd)}; '
                      f'echo {end_shell}_$?__"')
        deadline = time.monotonic() + timeout
        what = f"the end of command {cmd!r} (sentinel {end_re}_<status>__)"
        first_wait = timeout if start_timeout is None else min(timeout, start_timeout)
        try:
            self._expect([re.compile(re.escape(start_re) + r"__\r*\n")], first_wait,
                         f"the start of command {cmd!r} (sentinel {start_re}__)",
                         check_fatal, True)
        except ConsoleTimeout as exc:
            if first_wait >= timeout:
                raise
            raise ConsoleStalled(f"console {self.name}: the shell did not echo command {cmd!r} "
                                 f"within {first_wait:g}s\n{str(exc).partition(chr(10))[2]}",
                                 evidence=self._evidence()) from None
        m = self._expect([re.compile(re.escape(end_re) + r"_(\d+)__")],
                         max(deadline - time.monotonic(), 0), what, check_fatal, True)
        output = re.sub(r"\r+\n", "\n", m.string[:m.start()])
        return int(m.group(1)), output

    @step("console {self.name}: wait for a shell")
    def wait_for_shell(self, timeout: float = 300.0, poll_interval: float = 5.0, *,
                       check_fatal: bool = True, ready_condition: str | None = None,
                       stall_timeout: float | None = None,
                       stall_armed_by: str | None = None,
                       target_alive: Callable[[], bool] | None = None) -> None:
        """Poll until a shell answers: send a no-op echo every ``poll_interval``
        seconds and wait for its answer (any earlier poll's answer counts).

        Polling rather than waiting for a boot message, because some consoles
        drop output while nobody is attached (``xl console`` on a pty serial).
        ``stall_timeout``: once the target has said anything, raise
        ConsoleStalled when nothing at all arrives for this long (a shell
        echoes the polls; silence means the relay is stuck).
        ``stall_armed_by``: count silence as a stall only once this text (the
        shell's prompt) has arrived: a target still booting may be quiet for
        longer than any relay stall (a guest kernel at a low loglevel).
        ``target_alive``: asked whenever a poll went unanswered in silence; a
        False ends the wait at once with ConsoleClosed (a guest that crashed
        leaves its relay open and silent: no need to wait for the stall).
        """
        deadline = time.monotonic() + timeout
        nonces: list[str] = []
        armed = stall_armed_by is None
        while True:
            nonce = secrets.token_hex(6)
            nonces.append(nonce)
            # No quotes in a poll: polls typed while the target still boots can
            # lose characters, and a lost quote would leave the shell on a
            # continuation line that swallows every later poll.  ${XH_EMPTY}
            # (unset) splits the literal so the echoed command cannot match.
            # ready_condition (quote-free too): answer only once it holds.
            condition = f"{ready_condition} && " if ready_condition else ""
            self.sendline(f"{condition}echo __XH_P${{XH_EMPTY}}{nonce}__")
            answer = re.compile(r"__XH_P(?:" + "|".join(nonces) + r")__")
            left = deadline - time.monotonic()
            try:
                self._expect([answer], min(poll_interval, max(left, 0)),
                             "a shell answer", check_fatal, True)
                return
            except ConsoleTimeout:
                silent = time.monotonic() - self.last_received
                if target_alive is not None and silent >= poll_interval and not target_alive():
                    raise ConsoleClosed(
                        f"console {self.name}: the target is gone (silent for {silent:.0f}s, "
                        f"{len(nonces)} polls)\n--- last {TAIL_LINES} lines seen ---\n"
                        f"{self.tail()}\n--- end ---", evidence=self._evidence()) from None
                armed = armed or stall_armed_by in self._tail
                if (stall_timeout is not None and armed and self.received_bytes
                        and silent > stall_timeout):
                    raise ConsoleStalled(
                        f"console {self.name}: nothing received for {silent:.0f}s while polling "
                        f"({len(nonces)} polls)\n--- last {TAIL_LINES} lines seen ---\n"
                        f"{self.tail()}\n--- end ---", evidence=self._evidence()) from None
                if _at_continuation_prompt(self._tail):
                    # A command line that lost a quote on its way in (typed
                    # while the target was busy, e.g. just restored) leaves
                    # the shell on its continuation prompt, which swallows
                    # every later poll: Ctrl-C abandons that line.
                    self.send(b"\x03")
                if time.monotonic() >= deadline:
                    raise ConsoleTimeout(
                        f"console {self.name}: no shell answered within {timeout:g}s "
                        f"({len(nonces)} polls)\n"
                        f"--- last {TAIL_LINES} lines seen ---\n{self.tail()}\n--- end ---",
                        evidence=self._evidence()) from None

    @step("console {self.name}: log in as {user}")
    def login(self, user: str, password: CredentialRef | None = None, *,
              timeout: float = 120.0, poll_interval: float = 5.0,
              stall_timeout: float | None = None) -> None:
        """Log in at a getty prompt (pressing Enter until ``login:`` shows), then
        wait for the shell.  The password is resolved here and never recorded.
        ``stall_timeout``: silence longer than this, once something arrived,
        is a stuck line (ConsoleStalled) rather than a getty still to come."""
        deadline = time.monotonic() + timeout
        presses = 0
        while True:
            left = deadline - time.monotonic()
            try:
                self._expect([re.compile(r"login:\s*$")], min(poll_interval, max(left, 0)),
                             "a login: prompt", True, True)
                break
            except ConsoleTimeout:
                silent = time.monotonic() - self.last_received
                if stall_timeout is not None and self.received_bytes and silent > stall_timeout:
                    raise ConsoleStalled(
                        f"console {self.name}: nothing received for {silent:.0f}s while waiting "
                        f"for a login: prompt ({presses} Enter presses)\n"
                        f"--- last {TAIL_LINES} lines seen ---\n"
                        f"{self.tail()}\n--- end ---", evidence=self._evidence()) from None
                if time.monotonic() >= deadline:
                    raise
            self.sendline("")  # no prompt shown (yet): Enter makes getty print it again
            presses += 1
        self.sendline(user)
        if password is not None:
            self._expect([re.compile(r"[Pp]assword:\s*$")],
                         max(deadline - time.monotonic(), 1), "a Password: prompt", True, True)
            self.sendline(password.resolve(), secret=True)
        self.wait_for_shell(timeout=max(deadline - time.monotonic(), poll_interval),
                            poll_interval=poll_interval)


# --- from the inventory --------------------------------------------------------------

def console_for(host: HostSpec, transcript_dir: Path, **kw) -> Console:
    """The console of an inventory host (closed; call open()): built by the
    driver of its serial kind (harness.access.serial)."""
    from harness.access.serial import console_for as serial_console_for
    return serial_console_for(host, transcript_dir, **kw)
