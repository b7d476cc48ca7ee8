"""Reading a file a user named, in bounded time and memory.

Every input file (inventory, credential file, split catalog, known issues,
save file, Xen build) is opened here first: a FIFO would block the read
forever, ``/dev/zero`` never ends, a directory or a socket is not a file,
and a 4 GiB "inventory" would be read whole.  Each is refused with one
line naming the file, what it is, and the fix.  The limits are in
:data:`LIMITS`, with their reasons.

No harness import but errors: every layer may use it.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from xenhil.harness.errors import ConfigError

KiB, MiB = 1 << 10, 1 << 20

#: The largest file of each kind read whole, with why.
LIMITS: dict[str, int] = {
    # A 1000-host lab is about 300 KiB of YAML.
    "inventory": 4 * MiB,
    # A password or passphrase; a private key is under 16 KiB (RSA 16384).
    "credential file": 64 * KiB,
    "key file": 64 * KiB,
    "known_hosts file": 16 * MiB,
    "split catalog": 4 * MiB,
    "known issues file": 4 * MiB,
    # ~/.pgpass: a line per database a user reaches.
    "PostgreSQL password file": 1 * MiB,
    # A patch series (xenhil build): a long series' mbox is a few MiB.
    "patch series": 64 * MiB,
    "quilt series file": 1 * MiB,
    # A manifest written by `xenhil build`.
    "build manifest": 4 * MiB,
}

#: What each non-regular file type is, for the message.
_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def file_type(mode: int) -> str | None:
    """What a non-regular file is ("a FIFO (named pipe)", ...), None for a regular file."""
    for test, name in _FILE_TYPES:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def open_regular(path: str | Path, what: str, fix: str = "") -> BinaryIO:
    """``path`` opened for reading in binary, refused with a ConfigError (one
    line, naming ``what`` and the fix) unless it is a readable regular file.
    Opened without blocking (a FIFO is found by fstat, never waited on)."""
    path = Path(path)
    fix = fix or f"give the path of the {what} itself"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} cannot be read: it does not exist", help=fix) from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a file", help=fix) from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:   # a socket, or a FIFO with no writer on some systems
            raise ConfigError(f"{what} {path} is not a regular file", help=fix) from None
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}",
                          help="make it readable by the user running xenhil, or " + fix) from None
    try:
        kind = file_type(os.fstat(fd).st_mode)
        if kind is not None:
            raise ConfigError(f"{what} {path} is {kind}, not a regular file", help=fix)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path, what: str, limit: int | None = None, fix: str = "") -> bytes:
    """The whole of a regular file, at most ``limit`` bytes (default
    :data:`LIMITS` of ``what``); a longer one is refused, never read whole."""
    limit = LIMITS.get(what, 16 * MiB) if limit is None else limit
    with open_regular(path, what, fix) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}",
                              help=fix or "check the file") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is larger than {_size(limit)}, too large for a {what}",
                          help=fix or f"give the path of the {what} itself")
    return data


def read_text(path: str | Path, what: str, limit: int | None = None, fix: str = "") -> str:
    """:func:`read_bytes` decoded as UTF-8 (a file that is not is refused, by byte offset)."""
    data = read_bytes(path, what, limit, fix)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                          help=f"save the {what} as UTF-8 text") from None


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


__all__ = ["LIMITS", "file_type", "open_regular", "read_bytes", "read_text"]
