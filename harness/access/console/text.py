"""What a console's text means: the fatal patterns that end a wait at once,
the kernel/Xen log lines a serial line interleaves into program output, and
a shell's continuation prompt."""
from __future__ import annotations

import re

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


def strip_console_noise(text: str) -> str:
    """Remove complete kernel-log and Xen-log lines from console text.

    An incomplete noise line at the end is kept (its end has not arrived yet).
    """
    return _NOISE_RE.sub("", text)


# A POSIX shell's PS2 ("> "), possibly followed by terminal queries
# (busybox ash sends ESC[6n) and the echo of a poll it swallowed.
_CONTINUATION_PROMPT = re.compile(r"(?:^|\n)> (?:\x1b\[[0-9;]*[A-Za-z]|[^\n])*$")


def at_continuation_prompt(tail: str) -> bool:
    """The last line received is a shell's continuation prompt."""
    return bool(_CONTINUATION_PROMPT.search(tail.replace("\r", "")))

