"""The console as a stream of bytes: its link's state (closed -> open ->
closed), the transcript every received byte goes to, markers into it, expect
with fatal patterns checked on every read, and send with its sent log."""
from __future__ import annotations

import codecs
import enum
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from xenhil.harness.access.console.errors import ConsoleClosed, ConsoleUnavailable
from xenhil.harness.access.console.links import LinkEOF
from xenhil.harness.access.console.text import DEFAULT_FATAL_PATTERNS, strip_console_noise
from xenhil.harness.errors import ConsoleTimeout, FatalConsoleOutput, TestBugError
from xenhil.harness.step import step

TAIL_LINES = 20
_TAIL_CHARS = 16 * 1024
_BUFFER_CHARS = 1024 * 1024       # unconsumed text kept for expect()
_FATAL_LINE_CHARS = 4096


class ConsoleState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True)
class Marker:
    """A point in a console transcript (byte offset of what was received so far)."""

    label: str
    offset: int
    wallclock: float


class ConsoleStream:
    """A console's byte stream: open/close over a link, the transcript, markers,
    expect with fatal patterns, send.  Transport-independent: ``connect``
    returns a link (harness.access.console.links)."""

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

    # -- state ---------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state is ConsoleState.OPEN

    @step("console {self.name}: open")
    def open(self) -> "ConsoleStream":
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
    def reconnect(self, timeout: float = 60.0, retry_every: float = 1.0) -> "ConsoleStream":
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

    def __enter__(self) -> "ConsoleStream":
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

    def tail_block(self) -> str:
        """The last lines received, framed, as every failure message ends."""
        return f"--- last {TAIL_LINES} lines seen ---\n{self.tail()}\n--- end ---"

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
        except LinkEOF as exc:
            self.close()
            raise ConsoleClosed(
                f"console {self.name} ({self.describe}) closed: {exc}\n"
                + self.tail_block(),
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
            + self.tail_block(),
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
                    + self.tail_block(),
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
        except LinkEOF as exc:
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

