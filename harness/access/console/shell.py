"""A shell on a console: commands bracketed by sentinels (run), polling until
a shell answers (wait_for_shell), and logging in at a getty (login).  A
mixin over ConsoleStream: it only expects and sends."""
from __future__ import annotations

import re
import secrets
import shlex
import time
from typing import Callable

from xenhil.harness.access.console.errors import ConsoleClosed, ConsoleStalled
from xenhil.harness.access.console.text import at_continuation_prompt, strip_console_noise
from xenhil.harness import budgets
from xenhil.harness.errors import ConsoleTimeout
from xenhil.harness.lab.model import CredentialRef
from xenhil.harness.step import step


#: A poll's answer (wait_for_shell); its echo, with ${XH_EMPTY} in it, never matches.
_ANY_POLL_ANSWER = re.compile(r"__XH_P([0-9a-f]{12})__")


class ShellSession:
    """run / wait_for_shell / login, for a class that is also a ConsoleStream."""

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
        Either time limit is stretched while output is still arriving when it
        runs out (:meth:`_expect_while_receiving`): a slow console gets up to
        ``CONSOLE_SLOW_FACTOR`` times as long, a silent one no more.
        """
        nonce = secrets.token_hex(6)
        start_shell, start_re = self._tag("S", nonce)
        end_shell, end_re = self._tag("E", nonce)
        # `command eval`: a syntax error in cmd then fails eval alone instead of
        # abandoning the whole line (and the end sentinel) in an interactive
        # dash/bash/busybox shell.
        self.sendline(f'echo {start_shell}__"; command eval {shlex.quote(cmd)}; '
                      f'echo {end_shell}_$?__"')
        began = time.monotonic()
        what = f"the end of command {cmd!r} (sentinel {end_re}_<status>__)"
        first_wait = timeout if start_timeout is None else min(timeout, start_timeout)
        try:
            self._expect_while_receiving([re.compile(re.escape(start_re) + r"__\r*\n")],
                                         f"the start of command {cmd!r} (sentinel {start_re}__)",
                                         check_fatal, began=began, timeout=first_wait)
        except ConsoleTimeout as exc:
            if first_wait >= timeout:
                raise
            raise ConsoleStalled(f"console {self.name}: the shell did not echo command {cmd!r} "
                                 f"within {time.monotonic() - began:.0f}s\n"
                                 f"{str(exc).partition(chr(10))[2]}",
                                 evidence=self._evidence()) from None
        m = self._expect_while_receiving([re.compile(re.escape(end_re) + r"_(\d+)__")], what,
                                         check_fatal, began=began, timeout=timeout)
        output = re.sub(r"\r+\n", "\n", m.string[:m.start()])
        return int(m.group(1)), output

    def _expect_while_receiving(self, compiled: list[re.Pattern], what: str, check_fatal: bool, *,
                                began: float, timeout: float) -> re.Match:
        """Wait until ``timeout`` seconds after ``began`` (the command's start)
        for one of ``compiled``, and longer while the console is still
        delivering: when the time is up and a byte arrived since ``began`` and
        within the last ``CONSOLE_PROGRESS_S``, go on, up to
        ``CONSOLE_SLOW_FACTOR`` times ``timeout``.  A console silent that long
        when the time is up fails as before."""
        progress_s = budgets.CONSOLE_PROGRESS_S
        most = budgets.CONSOLE_SLOW_FACTOR * timeout
        limit = timeout
        while True:
            try:
                return self._expect(compiled, max(began + limit - time.monotonic(), 0), what,
                                    check_fatal, True)
            except ConsoleTimeout:
                now = time.monotonic()
                silent = now - self.last_received
                # Progress is output of this command: bytes that arrived after
                # it was typed, the last of them recently.
                receiving = self.last_received > began and silent < progress_s
                if not receiving or now - began >= most:
                    if limit <= timeout:
                        raise
                    raise ConsoleTimeout(
                        f"console {self.name}: timed out after {now - began:.0f}s waiting for "
                        f"{what} (given {timeout:g}s, and more while output arrived, up to "
                        f"{most:g}s; silent for the last {silent:.0f}s)\n" + self.tail_block(),
                        evidence=self._evidence()) from None
                limit = min(most, now - began + progress_s)

    @step("console {self.name}: wait for a shell")
    def wait_for_shell(self, timeout: float = 300.0, poll_interval: float = 5.0, *,
                       check_fatal: bool = True, ready_condition: str | None = None,
                       stall_timeout: float | None = None,
                       stall_armed_by: str | None = None,
                       target_alive: Callable[[], bool] | None = None) -> None:
        """Poll until a shell answers: type a no-op echo at most every
        ``poll_interval`` seconds and wait for an answer (any poll's counts,
        an earlier wait's or attachment's too: it is a shell answering now).

        A console can be slower than the polls: the virtual lab's guest
        console passes on about 50 bytes a second, fewer when two hosts share
        the machine, and a poll's echo and answer are some 80.  Polls typed
        faster than they come back queue up in the shell's input, and every
        later command waits behind them (seen: a wait answered by an old poll
        while newer ones kept coming, then commands timing out behind the
        queue).  So the next poll is typed only once the last one came back
        (its echo or answer) or the line has been silent for a poll interval
        (typed while nothing listened: lost), and after the first answer the
        wait goes on until the last poll typed is answered too.

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
        typed_at = float("-inf")
        armed = stall_armed_by is None
        while True:
            now = time.monotonic()
            if now - typed_at >= poll_interval and (
                    not nonces or self._came_back(nonces[-1])
                    or now - max(self.last_received, typed_at) >= poll_interval):
                nonces.append(secrets.token_hex(6))
                # No quotes in a poll: polls typed while the target still boots can
                # lose characters, and a lost quote would leave the shell on a
                # continuation line that swallows every later poll.  ${XH_EMPTY}
                # (unset) splits the literal so the echoed command cannot match.
                # ready_condition (quote-free too): answer only once it holds.
                condition = f"{ready_condition} && " if ready_condition else ""
                self.sendline(f"{condition}echo __XH_P${{XH_EMPTY}}{nonces[-1]}__")
                typed_at = time.monotonic()
            left = deadline - time.monotonic()
            try:
                answer = self._expect([_ANY_POLL_ANSWER], min(poll_interval, max(left, 0)),
                                      "a shell answer", check_fatal, True)
                if answer.group(1) != nonces[-1]:
                    self._drain_polls(nonces[-1], poll_interval, check_fatal)
                return
            except ConsoleTimeout:
                silent = time.monotonic() - self.last_received
                if target_alive is not None and silent >= poll_interval and not target_alive():
                    raise ConsoleClosed(
                        f"console {self.name}: the target is gone (silent for {silent:.0f}s, "
                        f"{len(nonces)} polls)\n" + self.tail_block(),
                        evidence=self._evidence()) from None
                armed = armed or stall_armed_by in self._tail
                if (stall_timeout is not None and armed and self.received_bytes
                        and silent > stall_timeout):
                    raise ConsoleStalled(
                        f"console {self.name}: nothing received for {silent:.0f}s while polling "
                        f"({len(nonces)} polls)\n" + self.tail_block(),
                        evidence=self._evidence()) from None
                if at_continuation_prompt(self._tail):
                    # A command line that lost a quote on its way in (typed
                    # while the target was busy, e.g. just restored) leaves
                    # the shell on its continuation prompt, which swallows
                    # every later poll: Ctrl-C abandons that line.
                    self.send(b"\x03")
                if time.monotonic() >= deadline:
                    raise ConsoleTimeout(
                        f"console {self.name}: no shell answered within {timeout:g}s "
                        f"({len(nonces)} polls)\n"
                        + self.tail_block(),
                        evidence=self._evidence()) from None

    def _came_back(self, nonce: str) -> bool:
        """The poll ``nonce`` was echoed or answered: the line took it (kernel
        and Xen log lines can land in the middle of the echo)."""
        return nonce in strip_console_noise(self._tail)

    def _drain_polls(self, last: str, poll_interval: float, check_fatal: bool) -> None:
        """A shell answered an earlier poll: wait for the answer to the last
        poll typed, so no poll is left queued before the next command.  The
        polls behind the answered one are at most a couple (one is typed
        only when the last came back), so the wait is three poll intervals,
        and longer while the console still delivers (a slow line).  One that
        never comes (lost on the way in) ends the wait all the same: the
        shell answers."""
        try:
            self._expect_while_receiving([re.compile(rf"__XH_P{last}__")],
                                         "the answer to the last poll", check_fatal,
                                         began=time.monotonic(), timeout=3 * poll_interval)
        except ConsoleTimeout:
            pass

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
                        + self.tail_block(), evidence=self._evidence()) from None
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

