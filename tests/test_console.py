"""xenhil.harness.access.console against real TCP console servers (tests/support/console_server.py):
scripted byte streams, a real shell behind a pty with kernel/Xen noise, socat, a local command."""
from __future__ import annotations

import os
import re
import socket
import sys
import textwrap
import threading
import time

import paramiko
import pexpect
import pytest

from xenhil.harness.access.console import (
    Console,
    ConsoleClosed,
    ConsoleStalled,
    ConsoleState,
    TelnetFilter,
    console_for,
    strip_console_noise,
)
from xenhil.harness import budgets
from xenhil.harness.errors import (
    ConfigError,
    ConsoleTimeout,
    FatalConsoleOutput,
    InfrastructureError,
    TestBugError,
)
from xenhil.harness.lab.model import CredentialRef, HostSpec, PowerConfig, SerialConfig, SSHConfig
from tests.support.console_server import (  # noqa: F401
    KERNEL_NOISE,
    XEN_NOISE,
    console_server_factory,
    noisy_shell,
    one_per_connection,
    scripted,
    socat_shell_server,
)

BOOT = (b"Loading Xen 4.17 ...\r\n"
        b"(XEN) Xen version 4.17.3 (Debian)\r\n"
        b"[    0.000000] Linux version 6.1.0-18-amd64\r\n"
        b"\r\nDebian GNU/Linux 12 host1 hvc0\r\n\r\nhost1 login: ")

PANIC = (b"(XEN) ****************************************\r\n"
         b"(XEN) Panic on CPU 0:\r\n"
         b"(XEN) Assertion 'v->domain == d' failed at arch/x86/hvm/ioreq.c:123\r\n"
         b"(XEN) ****************************************\r\n")


@pytest.fixture
def transcript(tmp_path):
    return tmp_path / "console" / "host1.console.log"


def tcp_console(server, transcript, **kw) -> Console:
    return Console.tcp("host1", "127.0.0.1", server.port, transcript, **kw)


# --- scripted streams --------------------------------------------------------------

def test_slow_stream_one_byte_at_a_time_is_matched(console_server_factory, transcript):
    server = console_server_factory(scripted(BOOT, byte_delay=0.001))
    with tcp_console(server, transcript) as console:
        m = console.expect(r"(\S+) login: ", timeout=30)
        assert m.group(1) == "host1"
        assert "Debian GNU/Linux 12" in m.string[:m.start()]
    assert transcript.read_bytes() == BOOT


def test_expect_returns_earliest_match_and_consumes_up_to_it(console_server_factory, transcript):
    server = console_server_factory(scripted(b"first: A\r\nsecond: B\r\n"))
    with tcp_console(server, transcript) as console:
        m = console.expect([r"second: (\w)", r"first: (\w)"], timeout=10)
        assert m.group(1) == "A"
        assert console.expect([r"second: (\w)", r"first: (\w)"], timeout=10).group(1) == "B"


def test_timeout_reports_patterns_tail_and_transcript_and_keeps_every_byte(
        console_server_factory, transcript):
    lines = [f"line {i:02d} of the boot".encode() for i in range(30)]
    # binary junk a serial line produces: NUL, 0xff, a broken UTF-8 sequence
    stream = b"\r\n".join(lines) + b"\r\n\x00\xff\xfe\xc3(garbage)\r\nlast words"
    server = console_server_factory(scripted(stream))
    with tcp_console(server, transcript) as console:
        assert server.script_done.wait(10)
        with pytest.raises(ConsoleTimeout) as caught:
            console.expect(r"never printed", timeout=0.5)
    message = str(caught.value)
    assert "never printed" in message
    assert str(transcript) in message
    assert "line 29 of the boot" in message and "last words" in message
    assert "line 05 of the boot" not in message      # only the tail, not the whole log
    assert isinstance(caught.value, InfrastructureError)
    assert transcript.read_bytes() == bytes(server.sent) == stream


def test_fatal_pattern_fails_the_wait_at_once(console_server_factory, transcript):
    # The login prompt never comes; the server holds the connection open, so
    # without fatal patterns this would end in ConsoleTimeout after 120 s.
    server = console_server_factory(scripted(BOOT[:60], PANIC, b"(XEN) Reboot in five seconds...\r\n"))
    with tcp_console(server, transcript) as console:
        with pytest.raises(FatalConsoleOutput) as caught:
            console.expect(r"login:", timeout=120)
    message = str(caught.value)
    assert "(XEN) Panic on CPU 0:" in message
    assert "Assertion 'v->domain == d' failed" in message   # read after the panic line
    assert str(transcript) in message
    assert transcript.read_bytes() == bytes(server.sent)


def test_fatal_pattern_split_over_single_byte_reads_is_seen(console_server_factory, transcript):
    server = console_server_factory(scripted(b"booting\r\n[   3.1] Kernel pa", b"nic - not syncing: VFS\r\n",
                                             byte_delay=0.002))
    with tcp_console(server, transcript) as console:
        with pytest.raises(FatalConsoleOutput, match="Kernel panic - not syncing"):
            console.expect(r"login:", timeout=120)


def test_watch_keeps_text_for_expect_and_stops_on_a_dom0_crash(console_server_factory, transcript):
    # Xen 4.17's words when dom0 dies under 'noreboot' (xen/common/shutdown.c).
    crash = (b"(XEN) Hardware Dom0 crashed: 'noreboot' set - not rebooting.\r\n")
    server = console_server_factory(scripted(b"dom0 boots\r\n", ("await", rb"go\n"), crash))
    with tcp_console(server, transcript) as console:
        console.watch(1.0)                       # quiet or not, watching never raises by itself
        console.expect(r"dom0 boots", timeout=5)  # what watch() read is still there to expect
        console.sendline("go")
        started = time.monotonic()
        with pytest.raises(FatalConsoleOutput, match="Hardware Dom0 crashed"):
            console.watch(60)
        assert time.monotonic() - started < 30


def test_silence_after_output_while_polling_is_a_stall(console_server_factory, transcript):
    # Boot text, then nothing, whatever is typed: the relay is stuck.
    server = console_server_factory(scripted(b"[    1.000000] booting\r\n", ("await", rb"never\n")))
    with tcp_console(server, transcript) as console:
        started = time.monotonic()
        with pytest.raises(ConsoleStalled, match=r"nothing received for \d+s while polling"):
            console.wait_for_shell(timeout=60, poll_interval=0.5, stall_timeout=2)
        assert time.monotonic() - started < 20
        assert isinstance(ConsoleStalled("x"), ConsoleClosed)  # callers attach again


def test_a_quiet_boot_before_the_prompt_is_not_a_stall(console_server_factory, transcript):
    # A guest kernel at loglevel=4 prints a line or two, then nothing until its
    # shell: with the prompt as the arming text only the overall timeout applies.
    server = console_server_factory(scripted(b"[    0.5] an early error\r\n", ("await", rb"never\n")))
    with tcp_console(server, transcript) as console:
        with pytest.raises(ConsoleTimeout, match="no shell answered"):
            console.wait_for_shell(timeout=4, poll_interval=0.5, stall_timeout=1,
                                   stall_armed_by="guest# ")


def test_silence_after_the_prompt_is_a_stall(console_server_factory, transcript):
    # The shell showed its prompt, then the relay passed nothing on.
    server = console_server_factory(scripted(b"booted\r\nguest# ", ("await", rb"never\n")))
    with tcp_console(server, transcript) as console:
        with pytest.raises(ConsoleStalled, match=r"nothing received for \d+s while polling"):
            console.wait_for_shell(timeout=60, poll_interval=0.5, stall_timeout=1,
                                   stall_armed_by="guest# ")


def test_command_line_not_echoed_in_time_is_a_stall(console_server_factory, transcript):
    server = console_server_factory(scripted(b"guest# ", ("await", rb"never\n")))
    with tcp_console(server, transcript) as console:
        console.expect("guest# ", timeout=5)
        with pytest.raises(ConsoleStalled, match=r"did not echo command 'uname -a' within 1s"):
            console.run("uname -a", timeout=30, start_timeout=1)


def test_silence_before_any_output_is_not_a_stall(console_server_factory, transcript):
    # Firmware says nothing for a while; only the overall timeout applies.
    server = console_server_factory(scripted(("await", rb"never\n")))
    with tcp_console(server, transcript) as console:
        with pytest.raises(ConsoleTimeout):
            console.wait_for_shell(timeout=3, poll_interval=0.5, stall_timeout=1)


def test_fatal_check_can_be_turned_off_for_one_wait(console_server_factory, transcript):
    server = console_server_factory(scripted(PANIC, b"recovered\r\nlogin: "))
    with tcp_console(server, transcript) as console:
        console.expect(r"login: ", timeout=10, check_fatal=False)


def test_markers_slice_what_arrived_between_them(console_server_factory, transcript):
    transcript.parent.mkdir(parents=True)
    transcript.write_bytes(b"an earlier run\n")      # reopening appends, offsets stay valid
    server = console_server_factory(scripted(b"boot done\r\n", ("await", rb"go\n"),
                                             b"after go\r\n", ("await", rb"stop\n"), b"end\r\n"))
    with tcp_console(server, transcript) as console:
        begin = console.mark("test start")
        console.expect(r"boot done\r\n", timeout=10)
        middle = console.mark("middle")
        console.sendline("go")
        console.expect(r"after go\r\n", timeout=10)
        end = console.mark("end")
        console.sendline("stop")
        console.expect(r"end\r\n", timeout=10)
        assert console.slice(begin, middle) == "boot done\r\n"
        assert console.slice(middle, end) == "after go\r\n"
        assert console.slice(middle) == "after go\r\nend\r\n"
        assert middle.label == "middle"
    assert transcript.read_bytes() == b"an earlier run\n" + bytes(server.sent)
    # the transcript holds received bytes only; sends are in the sent log with their offset
    sent_log = transcript.with_name(transcript.name + ".sent").read_text()
    assert f"{middle.offset}\t{b'go' + bytes([10])!r}\n" in sent_log
    assert bytes(server.received) == b"go\nstop\n"


def test_dropped_connection_raises_console_closed_with_tail(console_server_factory, transcript):
    server = console_server_factory(scripted(b"partial output before the drop\r\n", close_after=True))
    console = tcp_console(server, transcript).open()
    with pytest.raises(ConsoleClosed) as caught:
        console.expect(r"login:", timeout=30)
    assert isinstance(caught.value, InfrastructureError)
    assert "partial output before the drop" in str(caught.value)
    assert str(transcript) in str(caught.value)
    assert console.state is ConsoleState.CLOSED
    assert transcript.read_bytes() == b"partial output before the drop\r\n"
    # a closed console can be reopened; the transcript grows
    with console:
        with pytest.raises(ConsoleClosed):
            console.expect(r"login:", timeout=30)
    assert transcript.read_bytes() == b"partial output before the drop\r\n" * 2


def test_using_a_closed_console_is_a_test_bug(transcript):
    console = Console.tcp("host1", "127.0.0.1", 9, transcript)
    with pytest.raises(TestBugError, match="closed"):
        console.expect("x", timeout=1)


def test_a_target_that_died_ends_the_wait_for_its_shell_at_once(console_server_factory, transcript):
    # A crashed guest leaves `xl console` open and silent: the wait asks
    # whether the target still lives at each unanswered poll and stops at the
    # first "no" instead of waiting out the stall (minutes on the lab).
    server = console_server_factory(scripted(b"[    1.0] booting\r\n", hold=60))
    asked = []

    def alive() -> bool:
        asked.append(time.monotonic())
        return len(asked) < 2        # dies between the first and second question

    with tcp_console(server, transcript) as console:
        started = time.monotonic()
        with pytest.raises(ConsoleClosed, match="the target is gone") as caught:
            console.wait_for_shell(timeout=120, poll_interval=0.5, stall_timeout=100,
                                   target_alive=alive)
    assert time.monotonic() - started < 10
    assert len(asked) == 2 and "booting" in str(caught.value)
    assert not isinstance(caught.value, ConsoleStalled)


def test_a_living_target_is_waited_for_until_the_timeout(console_server_factory, transcript):
    server = console_server_factory(scripted(b"[    1.0] booting\r\n", hold=60))
    asked = []
    with tcp_console(server, transcript) as console:
        with pytest.raises(ConsoleTimeout):
            console.wait_for_shell(timeout=3, poll_interval=0.5,
                                   target_alive=lambda: asked.append(1) or True)
    assert len(asked) >= 2


OLD_BOOT = b"(XEN) Xen version 4.17.0 (an earlier boot, never read)\r\n"
NEW_BOOT = b"(XEN) Xen version 4.17.5 (this boot)\r\n"


def test_reconnect_drops_what_the_old_link_queued_and_keeps_one_transcript(
        console_server_factory, transcript):
    # A host console left open and unread since an earlier boot: its queued
    # bytes hold that boot's banner, which must not pass for the next one's.
    server = console_server_factory(one_per_connection(scripted(OLD_BOOT, hold=30),
                                                       scripted(NEW_BOOT, hold=30)))
    console = tcp_console(server, transcript).open()
    try:
        assert server.script_done.wait(10)  # the old banner is on its way to us
        console.reconnect(timeout=10)
        m = console.expect(r"\(XEN\) Xen version (\S+)", timeout=30)
        assert m.group(1) == "4.17.5"
    finally:
        console.close()
    assert transcript.read_bytes() == NEW_BOOT


def test_reconnect_retries_while_the_server_is_down(transcript):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # the machine (and its serial server) restarts...

    def come_back():
        time.sleep(1.5)
        server.bind(("127.0.0.1", port))
        server.listen(1)
        conn, _ = server.accept()
        conn.sendall(NEW_BOOT)
        time.sleep(2)
        conn.close()

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    thread = threading.Thread(target=come_back, daemon=True)
    thread.start()
    console = Console.tcp("host1", "127.0.0.1", port, transcript)
    try:
        console.reconnect(timeout=20, retry_every=0.2)
        console.expect(r"Xen version 4\.17\.5", timeout=10)
    finally:
        console.close()
        thread.join(5)
        server.close()
    with pytest.raises(InfrastructureError, match=f"127.0.0.1:{port}"):
        console.reconnect(timeout=0.5, retry_every=0.2)   # ...and one that stays down is named


def test_waiting_for_xens_banner_survives_the_serial_server_restarting(
        console_server_factory, transcript):
    # A virtual host's power cycle restarts its QEMU: the first link ends
    # with the old system's shutdown, the next one carries the new boot.
    from xenhil.harness.xen.provision import _follow_to_banner
    shutdown = b"[  355.6] reboot: Restarting system\r\n"
    server = console_server_factory(one_per_connection(scripted(shutdown, close_after=True),
                                                       scripted(b"GRUB\r\n", NEW_BOOT, hold=30)))
    console = tcp_console(server, transcript).open()
    try:
        _follow_to_banner(console, timeout=30)
    finally:
        console.close()
    assert transcript.read_bytes() == shutdown + b"GRUB\r\n" + NEW_BOOT


def test_unreachable_console_server_is_infrastructure(transcript):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(InfrastructureError, match=f"127.0.0.1:{port}"):
        Console.tcp("host1", "127.0.0.1", port, transcript).open()


def test_telnet_negotiation_is_answered_and_kept_out_of_the_transcript(
        console_server_factory, transcript):
    IAC, WILL, DO, SB, SE = b"\xff", b"\xfb", b"\xfd", b"\xfa", b"\xf0"
    negotiation = IAC + WILL + b"\x01" + IAC + WILL + b"\x03" + IAC + DO + b"\x18"
    subneg = IAC + SB + b"\x18\x01" + IAC + SE
    server = console_server_factory(scripted(
        negotiation, b"ser2net port 7001\r\n", subneg, b"data \xff\xff byte\r\nlogin: ",
        byte_delay=0.001))   # one byte per read: sequences split across reads
    with Console.telnet("host1", "127.0.0.1", server.port, transcript) as console:
        console.expect(r"login: ", timeout=10)
        console.send(b"\xff")
        console.sendline("root")
        assert _eventually(lambda: bytes(server.received).endswith(b"root\n"))
    assert transcript.read_bytes() == b"ser2net port 7001\r\ndata \xff byte\r\nlogin: "
    received = bytes(server.received)
    assert received.startswith(b"\xff\xfd\x01\xff\xfd\x03\xff\xfc\x18")  # DO ECHO, DO SGA, WONT TTYPE
    assert received.endswith(b"\xff\xffroot\n")                          # 0xff escaped when sent


def test_telnet_filter_handles_escaped_iac_and_two_byte_commands():
    f = TelnetFilter()
    data, replies = f.feed(b"a\xff\xf1b\xff\xffc\xff")   # NOP, escaped 0xff, IAC at chunk end
    assert data == b"ab\xffc" and replies == b""
    data, replies = f.feed(b"\xfd\x1fd")                 # DO NAWS split from its IAC
    assert data == b"d" and replies == b"\xff\xfc\x1f"


# --- shells: noisy pty shell, socat, local command ---------------------------------

def test_noisy_console_run_returns_exact_output(console_server_factory, transcript, tmp_path):
    server = console_server_factory(noisy_shell(noise_every=7, cwd=tmp_path))
    with tcp_console(server, transcript) as console:
        console.wait_for_shell(timeout=30, poll_interval=2)
        status, out = console.run("printf 'alpha\\nbeta gamma\\n'; echo 'delta  [x]'", timeout=30)
        assert (status, out) == (0, "alpha\nbeta gamma\ndelta  [x]\n")
        status, out = console.run("printf 'no newline'; false", timeout=30)
        assert (status, out) == (1, "no newline")
        status, out = console.run("seq 1 200 | tail -n 3", timeout=30)
        assert (status, out) == (0, "198\n199\n200\n")
    raw = transcript.read_bytes()
    # the noise really was interleaved, also in the middle of lines
    assert raw.count(KERNEL_NOISE) > 20 and raw.count(XEN_NOISE) > 20
    assert any(not raw[:i].endswith(b"\n") for i in _find_all(raw, KERNEL_NOISE))
    assert bytes(server.sent).startswith(raw)  # (the last prompt may arrive after close)


def test_a_slow_console_still_delivering_gets_more_time(console_server_factory, transcript,
                                                         tmp_path, monkeypatch):
    """A console that passes output on slowly (the virtual lab's, with the
    machine busy: 40 bytes a second) is given more time while bytes keep
    arriving, up to CONSOLE_SLOW_FACTOR times the command's timeout."""
    monkeypatch.setattr(budgets, "CONSOLE_PROGRESS_S", 1.0)
    server = console_server_factory(noisy_shell(noise_every=0, cwd=tmp_path, byte_delay=0.025))
    with tcp_console(server, transcript) as console:
        console.wait_for_shell(timeout=60, poll_interval=10)
        began = time.monotonic()
        # The typed line's echo and the output: about 140 bytes, 3.5 s at this
        # speed, against a timeout of 2 s (stretched up to 8 s).
        status, out = console.run("seq 1 5", timeout=2.0)
        took = time.monotonic() - began
    assert (status, out) == (0, "1\n2\n3\n4\n5\n")
    assert 2.0 < took < 8.0, took


def test_polls_slower_to_come_back_than_their_interval_leave_none_queued(
        console_server_factory, transcript, tmp_path):
    """A line passing 50 bytes a second (the virtual lab's guest console with
    two emulated hosts on the machine): a poll's echo and answer take longer
    than the poll interval.  The wait types no poll before the last came
    back and drains what it typed, so the next command's line is the next
    the shell reads and comes back within its echo time."""
    server = console_server_factory(noisy_shell(noise_every=0, cwd=tmp_path, byte_delay=0.02))
    with tcp_console(server, transcript) as console:
        console.wait_for_shell(timeout=60, poll_interval=0.2)
        began = time.monotonic()
        # Its line (about 90 bytes) echoed, then the start sentinel: under 3 s;
        # behind 8 s of queued polls the sentinel would come too late.
        status, out = console.run("echo next-command", timeout=30, start_timeout=4)
        took = time.monotonic() - began
    assert (status, out) == (0, "next-command\n")
    assert took < 6, took
    polls = bytes(server.received).count(b"echo __XH_P")
    assert polls <= 3, polls      # at 0.2 s a poll, a wait of 2 s typed ten before


def test_a_shell_that_answers_ends_the_wait_not_its_timeout(
        console_server_factory, transcript, tmp_path):
    """The wait returns once the shell answered its last poll: it does not sit
    out the rest of its timeout (CI, stop 27: every wait took its whole
    timeout, a guest's 900 s ran into the test's limit)."""
    server = console_server_factory(noisy_shell(noise_every=0, cwd=tmp_path))
    with tcp_console(server, transcript) as console:
        began = time.monotonic()
        console.wait_for_shell(timeout=300, poll_interval=1.0)
        took = time.monotonic() - began
        assert took < 60, took
        # Answered once more right after: the last answer was consumed, the
        # next wait types its own poll and is answered.
        console.wait_for_shell(timeout=300, poll_interval=1.0)
        assert console.run("echo after", timeout=30) == (0, "after\n")


def test_a_console_that_falls_silent_mid_command_fails_without_waiting_for_the_stretch(
        console_server_factory, transcript, tmp_path, monkeypatch):
    """Output that stops (here: the command sleeps) is not progress: the wait
    ends one progress window after the timeout, not at the stretched limit,
    and says how long it waited and for how long the console was silent."""
    monkeypatch.setattr(budgets, "CONSOLE_PROGRESS_S", 1.0)
    server = console_server_factory(noisy_shell(noise_every=0, cwd=tmp_path, byte_delay=0.02))
    with tcp_console(server, transcript) as console:
        console.wait_for_shell(timeout=60, poll_interval=10)
        began = time.monotonic()
        with pytest.raises(ConsoleTimeout) as info:
            console.run("echo started; sleep 30; echo done", timeout=2.0)
        took = time.monotonic() - began
    assert took < 2.0 * budgets.CONSOLE_SLOW_FACTOR - 1.0, took
    first_line = str(info.value).splitlines()[0]
    assert re.search(r"timed out after \d+s waiting for the end of command .* \(given 2s, and more "
                     r"while output arrived, up to 8s; silent for the last \d+s\)", first_line), first_line


def _eventually(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _find_all(haystack: bytes, needle: bytes) -> list[int]:
    found, start = [], 0
    while (i := haystack.find(needle, start)) >= 0:
        found.append(i)
        start = i + 1
    return found


def test_strip_console_noise_rejoins_interrupted_lines():
    text = ("he[   12.345678] usb 1-1: new device\r\nllo\r\n"
            "(XEN) HVM d1v0 save\r\n"
            "[    1.5] short timestamp at line start\r\n"
            "price [1.5] stays\r\n"
            "[   99.000001] incomplete at the end")
    assert strip_console_noise(text) == ("hello\r\nprice [1.5] stays\r\n"
                                         "[   99.000001] incomplete at the end")


def test_socat_shell_statuses_and_state(socat_shell_server, transcript):
    console = Console.tcp("host1", socat_shell_server.host, socat_shell_server.port, transcript)
    with console:
        console.wait_for_shell(timeout=30, poll_interval=2)
        assert console.run("echo hi", timeout=30) == (0, "hi\n")
        assert console.run("(echo hi; exit 3)", timeout=30) == (3, "hi\n")
        assert console.run("echo oops >&2; false", timeout=30) == (1, "oops\n")
        assert console.run("XH_VAR=kept; cd /", timeout=30) == (0, "")
        assert console.run('echo "$XH_VAR" "$(pwd)"', timeout=30) == (0, "kept /\n")
        assert console.run("""printf '%s\\n' "it's" '$HOME' "a\\"b" """, timeout=30) == \
            (0, "it's\n$HOME\na\"b\n")
        status, out = console.run("if then", timeout=30)   # syntax error: a status, not a hang
        assert status != 0 and "Syntax error" in out
        assert console.run("echo still here", timeout=30) == (0, "still here\n")


def test_a_shell_left_on_its_continuation_prompt_answers_the_polls_again(socat_shell_server,
                                                                          transcript):
    # A command line that lost its closing quote on the way in (seen after a
    # restore on the virtual lab) leaves the shell waiting for the rest of the
    # string; quote-free polls alone never end it.  A real /bin/sh on a pty.
    with Console.tcp("host1", socat_shell_server.host, socat_shell_server.port, transcript) as console:
        console.wait_for_shell(timeout=30, poll_interval=2)
        console.sendline('echo "a quote never closed')
        console.wait_for_shell(timeout=30, poll_interval=2)
        assert console.run("echo back", timeout=30) == (0, "back\n")


def test_run_timeout_names_the_command(socat_shell_server, transcript):
    with Console.tcp("host1", socat_shell_server.host, socat_shell_server.port, transcript) as console:
        console.wait_for_shell(timeout=30, poll_interval=2)
        with pytest.raises(ConsoleTimeout) as caught:
            console.run("echo started; sleep 30", timeout=1)
    assert "sleep 30" in str(caught.value) and str(transcript) in str(caught.value)
    assert "started" in str(caught.value)


def test_local_command_console_and_exit_of_its_shell(tmp_path, transcript):
    env = {"PS1": "$ ", "TERM": "dumb", "ENV": ""}
    console = Console.command("local", ["/bin/sh", "-i"], transcript, env=env)
    with console:
        console.wait_for_shell(timeout=30, poll_interval=2)
        assert console.run("echo hi; (exit 4)", timeout=30) == (4, "hi\n")
        # exit in run() ends the console's shell itself: the console reports it closed
        with pytest.raises(ConsoleClosed, match="exited with status 3"):
            console.run("echo bye; exit 3", timeout=30)
    assert b"bye" in transcript.read_bytes()   # kept although the run failed


# Echo goes off before the Password: prompt is printed, as login's getpass()
# and busybox's bb_ask_noecho do: with the prompt first, a password sent the
# moment it showed could be echoed before stty ran (seen once on a busy
# machine: the password in the transcript).
GETTY = r"""
while :; do printf 'host1 login: '; read user; [ -n "$user" ] && break; done
stty -echo; printf 'Password: '; read pw; stty echo; echo
[ "$user:$pw" = "root:s3cret-pw" ] || { echo 'Login incorrect'; exit 1; }
PS1='# ' exec /bin/sh -i
"""


def test_login_at_a_getty_prompt_keeps_the_password_out_of_the_logs(transcript, monkeypatch):
    monkeypatch.setenv("XH_TEST_ROOT_PASSWORD", "s3cret-pw")
    with Console.command("host1", ["/bin/sh", "-c", GETTY], transcript, env={"TERM": "dumb"}) as console:
        console.login("root", CredentialRef(env="XH_TEST_ROOT_PASSWORD"), timeout=30, poll_interval=1)
        assert console.run("echo logged in as $(id -u)", timeout=30) == (0, f"logged in as {os.getuid()}\n")
    assert b"s3cret" not in transcript.read_bytes()
    sent_log = transcript.with_name(transcript.name + ".sent").read_text()
    assert "s3cret" not in sent_log and "<secret: 10 bytes>" in sent_log


def test_login_waits_for_a_getty_that_shows_its_prompt_late(transcript, monkeypatch):
    # The prompt comes after several polls (a host still starting its
    # services): each poll that times out presses Enter and waits again.
    monkeypatch.setenv("XH_TEST_ROOT_PASSWORD", "s3cret-pw")
    late = "echo 'Debian GNU/Linux 12 host1 ttyS0'; sleep 3\n" + GETTY
    with Console.command("host1", ["/bin/sh", "-c", late], transcript, env={"TERM": "dumb"}) as console:
        console.login("root", CredentialRef(env="XH_TEST_ROOT_PASSWORD"), timeout=30,
                      poll_interval=0.5, stall_timeout=20)
        assert console.run("echo in", timeout=30) == (0, "in\n")
    sent = transcript.with_name(transcript.name + ".sent").read_text()
    assert sent.count("'\\n'") >= 3, sent   # Enter pressed while the getty was not there


def test_login_reports_a_line_that_went_silent_as_a_stall(transcript):
    # Not even Enter is echoed: the line is stuck, not a getty to come.
    quiet = "stty -echo; echo 'Debian GNU/Linux 12 host1 ttyS0'; exec sleep 60"
    with Console.command("host1", ["/bin/sh", "-c", quiet], transcript, env={"TERM": "dumb"}) as console:
        started = time.monotonic()
        with pytest.raises(ConsoleStalled) as caught:
            console.login("root", timeout=60, poll_interval=0.5, stall_timeout=2)
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "login: prompt" in message and "Enter presses" in message
    assert "Debian GNU/Linux 12 host1 ttyS0" in message   # the tail


def test_command_console_gets_secrets_through_env_not_argv(tmp_path, transcript, monkeypatch):
    monkeypatch.setenv("XH_TEST_BMC_PASSWORD", "s3cret-pw")
    argv = ["/bin/sh", "-c", 'echo "pw=$IPMI_PASSWORD"; exec sleep 30']
    console = Console.command("bmc", argv, transcript,
                              secret_env={"IPMI_PASSWORD": CredentialRef(env="XH_TEST_BMC_PASSWORD")})
    assert "s3cret" not in repr(console) and "s3cret" not in console.describe
    with console:
        console.expect(r"pw=(\S+)", timeout=10)
        pid = console._link.spawn.pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"s3cret" not in f.read()
    assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_missing_console_command_is_reported(transcript):
    with pytest.raises(InfrastructureError, match="no-such-console-tool"):
        Console.command("x", ["no-such-console-tool", "sol", "activate"], transcript).open()


def test_channel_console_over_a_plain_socket(console_server_factory, transcript):
    server = console_server_factory(scripted(b"xl console ready\r\n", ("await", rb"ping\n"), b"pong\r\n"))
    sock = socket.create_connection(("127.0.0.1", server.port))
    with Console.channel("guest1", sock, transcript) as console:
        console.expect("ready", timeout=10)
        console.sendline("ping")
        console.expect("pong", timeout=10)
    assert sock.fileno() == -1   # closing the console closed the channel


def test_channel_console_over_a_paramiko_channel(transcript):
    """A real paramiko SSH session (paramiko server mode on 127.0.0.1) carrying a
    console, as `xl console` over SSH does."""
    host_key = paramiko.ECDSAKey.generate()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    done = threading.Event()

    class Server(paramiko.ServerInterface):
        def check_auth_none(self, username):
            return paramiko.AUTH_SUCCESSFUL

        def get_allowed_auths(self, username):
            return "none"

        def check_channel_request(self, kind, chanid):
            return paramiko.OPEN_SUCCEEDED

        def check_channel_exec_request(self, channel, command):
            return command == b"xl console guest1"

    def serve():
        sock, _ = listener.accept()
        transport = paramiko.Transport(sock)
        transport.add_server_key(host_key)
        transport.start_server(server=Server())
        chan = transport.accept(10)
        chan.sendall(b"guest login: ")
        buf = b""
        while not buf.endswith(b"root\n"):
            buf += chan.recv(100)
        chan.sendall(b"\r\nKernel panic - not syncing: test\r\n")
        done.wait(10)
        transport.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = paramiko.Transport(socket.create_connection(listener.getsockname()))
    try:
        client.start_client(timeout=10)
        client.auth_none("root")
        chan = client.open_session()
        chan.exec_command("xl console guest1")
        with Console.channel("guest1", chan, transcript) as console:
            console.expect("login: ", timeout=10)
            console.sendline("root")
            with pytest.raises(FatalConsoleOutput):
                console.expect("#", timeout=30)
        assert chan.closed
    finally:
        done.set()
        client.close()
        listener.close()
        thread.join(10)
    assert transcript.read_bytes() == b"guest login: \r\nKernel panic - not syncing: test\r\n"


# --- inventory ----------------------------------------------------------------------

def _host(serial: SerialConfig | None, power: PowerConfig | None = None) -> HostSpec:
    return HostSpec(name="host1", address="127.0.0.1", ssh=SSHConfig(address="127.0.0.1"),
                    serial=serial, power=power or PowerConfig(kind="none"))


def test_console_for_tcp_host_talks_to_its_console_server(console_server_factory, tmp_path):
    server = console_server_factory(scripted(BOOT))
    console = console_for(_host(SerialConfig(kind="tcp", host="127.0.0.1", port=server.port)), tmp_path)
    with console:
        console.expect("login: ", timeout=10)
    assert (tmp_path / "host1.console.log").read_bytes() == BOOT


def test_console_for_ipmi_sol_uses_the_bmc_and_keeps_the_password_off_argv(tmp_path):
    # The inventory loader fills serial's BMC fields (from power: when it is ipmi).
    serial = SerialConfig(kind="ipmi-sol", host="127.0.0.1", port=9623, user="admin",
                          password=CredentialRef(env="XH_BMC_PW"))
    console = console_for(_host(serial, PowerConfig(kind="ssh-reboot")), tmp_path)
    assert console.describe == ("command ipmitool -I lanplus -H 127.0.0.1 -p 9623 -U admin "
                                "-E sol activate")


@pytest.mark.parametrize("serial, power, field", [
    (None, None, "no serial console"),
    (SerialConfig(kind="tcp", host="127.0.0.1"), None, "needs host and port"),
    (SerialConfig(kind="ipmi-sol"), PowerConfig(kind="none"), "needs the BMC's host, user and password"),
    (SerialConfig(kind="command"), None, "needs command"),
    (SerialConfig(kind="command", command="ipmitool 'unbalanced"), None, "cannot be parsed"),
    (SerialConfig(kind="serial-over-pigeon"), None, "unknown kind"),
])
def test_console_for_bad_serial_config_names_host_and_field(serial, power, field, tmp_path):
    with pytest.raises(ConfigError, match=field) as caught:
        console_for(_host(serial, power), tmp_path)
    assert "host1" in str(caught.value)


# --- interactive passthrough -------------------------------------------------------

def test_interactive_passthrough_and_ctrl_bracket_leaves(socat_shell_server, tmp_path, transcript):
    script = tmp_path / "attach.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from xenhil.harness.access.console import Console
        from xenhil.harness.cli.console_interactive import interactive
        console = Console.tcp("host1", "127.0.0.1", {socat_shell_server.port}, Path({str(transcript)!r}))
        interactive(console)
        console.close()
        print("AFTER-INTERACTIVE")
    """))
    child = pexpect.spawn(sys.executable, [str(script)], cwd=os.getcwd(), timeout=30)
    try:
        child.expect(r"\$ ")   # the remote shell's prompt came through
        child.sendline("echo zz$((40+2))")
        child.expect("zz42")
        child.send("\x1d")
        child.expect("left the console")
        child.expect("AFTER-INTERACTIVE")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert b"zz42" in transcript.read_bytes()
