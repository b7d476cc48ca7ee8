"""Serial console access: one :class:`Console` per host console, whatever carries it.

The package by concern: ``links`` (the byte pipes: TCP raw or telnet, a
local command, a channel), ``stream`` (state, transcript, markers, expect,
send), ``shell`` (run, wait_for_shell, login), ``text`` (fatal patterns,
log noise), ``errors``.  :class:`Console` puts them together.

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

import shlex
from pathlib import Path
from typing import Mapping, Sequence

from xenhil.harness.access.console import links
from xenhil.harness.access.console.errors import ConsoleClosed, ConsoleStalled, ConsoleUnavailable
from xenhil.harness.access.console.links import TelnetFilter
from xenhil.harness.access.console.shell import ShellSession
from xenhil.harness.access.console.stream import TAIL_LINES, ConsoleState, ConsoleStream, Marker
from xenhil.harness.access.console.text import DEFAULT_FATAL_PATTERNS, strip_console_noise
from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.model import CredentialRef, HostSpec


class Console(ShellSession, ConsoleStream):
    """A host's serial console: expect/send/run with a complete transcript.
    One constructor per transport; each gives the stream its connect()."""

    @classmethod
    def tcp(cls, name: str, host: str, port: int, transcript_path: Path, *,
            connect_timeout: float = 10.0, **kw) -> "Console":
        """A raw TCP console server (QEMU chardev socket, ser2net raw, socat)."""
        return cls(name, transcript_path, lambda: links.tcp_link(host, port, connect_timeout),
                   describe=f"tcp {host}:{port}", **kw)

    @classmethod
    def telnet(cls, name: str, host: str, port: int, transcript_path: Path, *,
               connect_timeout: float = 10.0, **kw) -> "Console":
        """A telnet console server: like tcp, with telnet negotiation answered and
        stripped (the transcript holds the console data, not the negotiation)."""
        return cls(name, transcript_path, lambda: links.telnet_link(host, port, connect_timeout),
                   describe=f"telnet {host}:{port}", **kw)

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
            raise ConfigError(f"console {name}: empty command",
                              help="give the console command line")
        return cls(name, transcript_path,
                   lambda: links.command_link(name, argv, env=env, secret_env=secret_env,
                                              close_sequence=close_sequence,
                                              dimensions=dimensions),
                   describe=f"command {shlex.join(argv)}", **kw)

    @classmethod
    def channel(cls, name: str, channel, transcript_path: Path, **kw) -> "Console":
        """A socket-like object that is already connected: a paramiko ``Channel``
        running ``xl console DOMAIN`` (it has recv/sendall/settimeout/fileno),
        or a plain socket.  Closing the console closes the channel."""
        return cls(name, transcript_path, lambda: links.channel_link(channel),
                   describe=f"channel {name}", **kw)


# --- from the inventory --------------------------------------------------------------

def console_for(host: HostSpec, transcript_dir: Path, **kw) -> Console:
    """The console of an inventory host (closed; call open()): built by the
    driver of its serial kind (harness.access.serial)."""
    from xenhil.harness.access.serial import console_for as serial_console_for
    return serial_console_for(host, transcript_dir, **kw)


__all__ = ["Console", "ConsoleClosed", "ConsoleStalled", "ConsoleUnavailable", "ConsoleState",
           "ConsoleStream", "Marker", "TelnetFilter", "TAIL_LINES", "DEFAULT_FATAL_PATTERNS",
           "strip_console_noise", "console_for"]
