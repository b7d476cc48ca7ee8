"""Interactive passthrough to a :class:`~harness.access.console.Console`, for
``xenhil host console HOST``: the local terminal in raw mode talks straight to
the host's serial line; Ctrl-] leaves (as in telnet).

Everything the host prints still goes through the Console, so it is in the
transcript like in a test run.  Keystrokes are not recorded in the sent log
(a human may type a password).
"""
from __future__ import annotations

import os
import select
import sys
import termios
import tty

from xenhil.harness.access.console import Console, ConsoleClosed

ESCAPE = b"\x1d"  # Ctrl-]


def interactive(console: Console, *, stdin_fd: int | None = None, stdout_fd: int | None = None,
                escape: bytes = ESCAPE) -> None:
    """Pass the terminal through to ``console`` until Ctrl-] (or end of input).

    Opens the console if it is closed; leaves it open (the caller closes it).
    """
    in_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    out_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
    if not console.is_open:
        console.open()
    saved = termios.tcgetattr(in_fd) if os.isatty(in_fd) else None
    reason = "left the console"
    try:
        if saved is not None:
            tty.setraw(in_fd, termios.TCSANOW)  # TCSANOW: keep keys typed ahead
        console_fd = console.fileno()
        while True:
            ready, _, _ = select.select([in_fd, console_fd], [], [])
            if console_fd in ready:
                data = console.read_available(0)
                if data:
                    os.write(out_fd, data)
            if in_fd in ready:
                keys = os.read(in_fd, 1024)
                if not keys:
                    reason = "end of input"
                    break
                if escape in keys:
                    before = keys[:keys.index(escape)]
                    if before:
                        console.send(before, record=False)
                    break
                console.send(keys, record=False)
    except ConsoleClosed as exc:
        reason = f"the console closed: {str(exc).splitlines()[0]}"
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        # What the user saw is not for a later expect() to match.
        console.discard_buffer()
    print(f"\r\nxenhil: {reason} (transcript {console.transcript_path})", file=sys.stderr)
