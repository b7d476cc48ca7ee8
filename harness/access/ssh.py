"""SSH to lab hosts and guests: one persistent paramiko connection per host.

:class:`SSHConnection` has explicit states (after labgrid's drivers)::

    disconnected --connect()--> connected --close()--> closed
         ^                          |
         +----- connection lost ----+

Rules it keeps, so that results are reproducible and safe:

- The host key is *pinned* (``SSHConfig.host_key`` or ``known_hosts``).  An
  unknown or different key is refused with :class:`~harness.errors.HostKeyMismatch`;
  there is no auto-add.  :func:`fetch_host_key` is the explicit, logged
  trust-on-first-use for ``xenhil lab check --learn``.
- Authentication uses ``SSHConfig.key_file`` only: no agent, no ``~/.ssh`` keys.
- A dropped connection is re-opened transparently before the next command
  (bounded retries); a command that was running when it dropped is never
  re-run, since it may not be idempotent: it raises :class:`~harness.errors.ConnectionLost`.
- Commands given as a list are quoted with :func:`shlex.join`; a string is a
  shell line the caller has quoted.
- A command that outlives its timeout raises :class:`CommandTimeout` and is
  killed on the host, with its children (found by an ``XENHIL_RUN`` token in
  their environment: sshd ignores "signal" requests for root sessions).
- Every wait is bounded (budgets in harness/budgets.py), also those paramiko
  leaves open: the answer to an exec, pty or subsystem request (a hung sshd
  never answers; paramiko would wait forever) and each SFTP reply.

:func:`connection_for` keeps one connection per host per *process*: pytest-xdist
workers and forked children never share their parent's socket.
"""
from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import heapq
import itertools
import logging
import math
import os
import re
import select
import shlex
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, NoReturn, Sequence

import paramiko

from xenhil.harness import budgets
from xenhil.harness.errors import (
    ConfigError,
    ConnectionLost,
    HostKeyMismatch,
    InfrastructureError,
    RemoteCommandFailed,
    SSHError,
    TestBugError,
    TimeLimitExceeded,
)
from xenhil.harness.lab.model import SSHConfig
from xenhil.harness.secrets import register_private_key
from xenhil.harness.step import step, step_context

# paramiko logs a traceback at ERROR for every failed attempt while a host
# reboots; the attempts and their outcome are reported by this module instead.
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

log = logging.getLogger("xenhil.ssh")

TAIL_LINES = 20
_TAIL_CHARS = 4000
_TITLE_CHARS = 160
_RUN_TOKEN = "XENHIL_RUN"
_TOKEN_PREFIX = uuid.uuid4().hex[:8]  # tokens stay unique across client machines
_run_counter = itertools.count(1)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# --- failures ------------------------------------------------------------

class CommandTimeout(TimeLimitExceeded):
    """A remote command did not finish in time."""

    help = ("The command outlived its timeout: read the output tail; raise the timeout if the "
            "work is legitimately slow, or check the host's console if it hung.")

    def __init__(self, command: str, timeout: float, stdout_tail: str, stderr_tail: str,
                 host: str = "", **kw):
        self.command, self.timeout = command, timeout
        self.stdout_tail, self.stderr_tail = stdout_tail, stderr_tail
        where = f" on {host}" if host else ""
        super().__init__(
            f"command{where} did not finish within {timeout:g}s: {command}\n"
            f"--- stdout (tail) ---\n{stdout_tail}\n--- stderr (tail) ---\n{stderr_tail}", **kw)


class SSHUnreachable(ConnectionLost, SSHError):
    """No connection could be made (or re-made) after the allowed attempts."""

    help = ("The host did not accept an SSH connection: check that it is powered and booted "
            "(xenhil power HOST status, its console), and its address/port in the inventory.")


class SFTPTimeout(TimeLimitExceeded):
    """An SFTP request got no answer in time (a hung host or sshd)."""

    help = ("The host stopped answering a file transfer: check that it is alive (power "
            "status, console) and that its disk is not full, then rerun.")


class NoAnswerToRequest(paramiko.SSHException):
    """sshd did not answer a channel request (exec, pty, subsystem) in time.
    An SSHException, so that :meth:`SSHConnection._open` tries again and then
    on a new connection, as for any session that could not be started."""


class _Watchdog:
    """Runs an action when a deadline passes, unless cancelled first; one
    thread for every bounded request of the process (a timer thread per
    command cost 0.25 ms, a tenth of a command's round trip)."""

    def __init__(self) -> None:
        self._seq = itertools.count()
        self._reset()
        # A forked child (an xdist worker, multiprocessing) has no copy of the
        # thread, and its lock may have been held at the fork: start afresh.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, dict, object]] = []
        self._thread: threading.Thread | None = None

    def schedule(self, delay: float, action) -> dict:
        """Call ``action()`` in ``delay`` seconds; the returned handle's
        ``cancelled`` set to True (under the caller's own lock) prevents it."""
        handle = {"cancelled": False}
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="xenhil-ssh-watchdog",
                                                daemon=True)
                self._thread.start()
            entry = (time.monotonic() + delay, next(self._seq), handle, action)
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:  # wake the thread only for a new earliest deadline
                self._cond.notify()
        return handle

    def _loop(self) -> None:
        with self._cond:
            while True:
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, handle, action = self._heap[0]
                left = deadline - time.monotonic()
                if left > 0 and not handle["cancelled"]:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                if not handle["cancelled"]:
                    action()


_WATCHDOG = _Watchdog()


def _answered(chan: paramiko.Channel, request, what: str, timeout: float) -> None:
    """Send a channel request (``request()``, e.g. ``chan.exec_command(line)``)
    and wait at most ``timeout`` s for sshd's answer.

    paramiko waits for that answer without a time limit, so a dom0 whose sshd
    stopped answering (the connection itself alive) held a command forever:
    an `xl list` that waited until the test's own limit, 18 minutes.  When no
    answer came in time the channel is closed, which wakes paramiko's wait."""
    lock = threading.Lock()
    state = {"answered": False, "expired": False}

    def expire() -> None:
        with lock:
            if state["answered"]:
                return
            state["expired"] = True
        # In a thread of its own: closing sends a message, which could block
        # on a wedged connection and hold up every other deadline.
        threading.Thread(target=chan.close, name="xenhil-ssh-close", daemon=True).start()

    handle = _WATCHDOG.schedule(timeout, expire)
    try:
        request()
    except paramiko.SSHException as exc:
        if state["expired"]:
            raise NoAnswerToRequest(f"no answer to {what} within {timeout:g}s") from exc
        raise
    finally:
        with lock:
            state["answered"] = True
            handle["cancelled"] = True
    if state["expired"]:  # answered just as the channel was being closed: unusable
        raise NoAnswerToRequest(f"no answer to {what} within {timeout:g}s")


class TransferVerificationFailed(InfrastructureError):
    """A copied file's sha256 differs on the two ends."""

    help = "The copy was corrupted or changed underneath: check the host's disk space and retry."


# --- results ---------------------------------------------------------------

@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int        # -1 when the command died by a signal or the channel closed early
    stdout: str
    stderr: str
    duration: float         # seconds
    host: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text`` (and at most a few KiB of them)."""
    kept = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    return kept[-_TAIL_CHARS:]


# --- host keys ---------------------------------------------------------------

def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint ("SHA256:...")."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_key_name(address: str, port: int) -> str:
    """How known_hosts names a host: bare on port 22, ``[addr]:port`` otherwise."""
    return address if port == 22 else f"[{address}]:{port}"


def parse_host_key(line: str, where: str = "host_key") -> paramiko.PKey:
    """'ssh-ed25519 AAAA... [comment]' -> PKey; ConfigError naming ``where`` if malformed."""
    parts = line.split()
    if len(parts) < 2:
        raise ConfigError(f"{where}: expected 'TYPE BASE64' (e.g. 'ssh-ed25519 AAAA...'), "
                          f"got {line!r}",
                          help="copy the key from the host's /etc/ssh/ssh_host_ed25519_key.pub")
    kind, data = parts[0], parts[1]
    try:
        return paramiko.PKey.from_type_string(kind, base64.b64decode(data, validate=True))
    except Exception as exc:  # binascii.Error, UnknownKeyType, SSHException...
        raise ConfigError(f"{where}: cannot read {kind} key: {exc}",
                          help="copy the key from the host's /etc/ssh/ssh_host_ed25519_key.pub") from None


def _format_key(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


@step("fetch host key of {address}:{port} (trust on first use)")
def fetch_host_key(address: str, port: int = 22, timeout: float = 10.0,
                   key_type: str | None = "ssh-ed25519") -> str:
    """Ask a server for its host key, *without* verifying it: explicit
    trust-on-first-use.  Returns "TYPE BASE64" for ``SSHConfig.host_key`` and
    logs a warning with the fingerprint, to be checked out of band."""
    sock = socket.create_connection((address, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        if key_type:
            options = transport.get_security_options()
            if key_type in options.key_types:
                options.key_types = [key_type] + [k for k in options.key_types if k != key_type]
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise SSHError(f"cannot read the host key of {address}:{port}: {exc}") from exc
    finally:
        transport.close()
    log.warning("trusting the host key of %s:%d on first use: %s %s; compare it with "
                "`ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub` on the host's console",
                address, port, key.get_name(), fingerprint(key),
                key.get_name().removeprefix("ssh-"))
    return _format_key(key)


class _RejectUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Refuse any key not pinned in the inventory (never auto-add)."""

    def __init__(self, connection: "SSHConnection"):
        self.connection = connection

    def missing_host_key(self, client, hostname, key):
        raise self.connection._key_mismatch(offered=key)


# --- the connection ------------------------------------------------------------

class SSHConnection:
    """A persistent SSH connection to one host (or to a guest through a host)."""

    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    CLOSED = "closed"

    def __init__(self, config: SSHConfig, name: str = "",
                 connect_timeout: float = budgets.SSH_CONNECT_S,
                 retries: int = budgets.SSH_CONNECT_ATTEMPTS,
                 retry_delay: float = budgets.SSH_RETRY_DELAY_S, *,
                 via: "SSHConnection | None" = None, channel_timeout: float | None = None,
                 sftp_timeout: float = budgets.SFTP_REPLY_S,
                 client_key: paramiko.PKey | None = None):
        """``client_key``: the key to log in with, already loaded (one read
        from another host, never written to a file: harness.guest_ssh);
        otherwise ``config.key_file`` is loaded when first needed."""
        if retries < 1:
            raise ConfigError(f"retries must be at least 1, got {retries}")
        self.config = config
        self.name = name or f"{config.user}@{config.address}:{config.port}"
        self.connect_timeout = connect_timeout
        # Opening a session, and sshd's answer to the exec request, may take
        # this long: the host's sshd forks, slowly on a loaded host.
        self.channel_timeout = (max(budgets.SSH_CHANNEL_S, 3 * connect_timeout)
                                if channel_timeout is None else channel_timeout)
        # How long one SFTP request (a chunk of a copy, a stat) may wait for its answer.
        self.sftp_timeout = sftp_timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.via = via
        self.state = self.DISCONNECTED
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._pkey: paramiko.PKey | None = client_key
        self._lock = threading.RLock()
        # One SFTP operation at a time: paramiko's SFTPClient matches each
        # reply to the thread reading, so two threads sharing it (guests
        # created at once through one connection) took each other's replies
        # and both waited for ever on their own.
        self._sftp_busy = threading.Lock()

    def __repr__(self) -> str:
        through = f" via {self.via.name}" if self.via else ""
        return (f"SSHConnection({self.name!r}, {self.config.user}@{self.config.address}:"
                f"{self.config.port}{through}, {self.state})")

    @property
    def where(self) -> str:
        return f"{self.name} ({self.config.address}:{self.config.port})"

    # -- configuration, checked when first needed -----------------------------
    def _pinned_keys(self) -> list[paramiko.PKey]:
        keys: list[paramiko.PKey] = []
        if self.config.host_key:
            keys.append(parse_host_key(self.config.host_key, f"{self.name}: ssh.host_key"))
        if self.config.known_hosts:
            path = Path(self.config.known_hosts)
            try:
                known = paramiko.HostKeys(str(path))
            except OSError as exc:
                raise ConfigError(f"{self.name}: ssh.known_hosts {path} cannot be read: "
                                  f"{exc.strerror}",
                                  help="create it (ssh-keyscan, verified) or pin ssh.host_key") from None
            entry = known.lookup(host_key_name(self.config.address, self.config.port))
            keys.extend((entry or {}).values())
        return keys

    def _client_key(self) -> paramiko.PKey:
        if self._pkey is not None:
            return self._pkey
        key_file = self.config.key_file
        if key_file is None:
            raise ConfigError(f"{self.name}: ssh.key_file is not set",
                              help="give the private key file xenhil logs in with "
                                   "(agents and ~/.ssh keys are not used)")
        # bytes: cryptography's key loaders reject a str password
        passphrase = self.config.passphrase.resolve().encode() if self.config.passphrase else None
        try:
            self._pkey = paramiko.PKey.from_path(Path(key_file), passphrase)
            # Its content must never reach a report, even as one line of a log.
            register_private_key(Path(key_file).read_text(errors="replace"))
        except FileNotFoundError:
            raise ConfigError(f"{self.name}: ssh.key_file {key_file} does not exist",
                              help="fix the path or create the key (ssh-keygen -t ed25519)") from None
        except paramiko.PasswordRequiredException:
            raise ConfigError(f"{self.name}: ssh.key_file {key_file} is encrypted",
                              help="set ssh.passphrase (env: or file: reference)") from None
        except Exception as exc:  # noqa: BLE001 - a wrong passphrase lands here too
            # "from None" and no detail from the loader: the passphrase must
            # not surface in the message or a chained traceback.
            raise ConfigError(f"{self.name}: ssh.key_file {key_file} cannot be loaded "
                              f"({type(exc).__name__})",
                              help="check the key file and ssh.passphrase") from None
        return self._pkey

    def _key_mismatch(self, offered: paramiko.PKey,
                      expected: list[paramiko.PKey] | None = None) -> HostKeyMismatch:
        expected = self._pinned_keys() if expected is None else expected
        wanted = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in expected) or "none pinned"
        pin_where = (f"ssh.known_hosts ({self.config.known_hosts})" if self.config.known_hosts
                     and not self.config.host_key else "ssh.host_key")
        fix = (f"If {self.name} was reinstalled, verify the offered fingerprint on its console "
               f"(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and set {pin_where} to the new "
               f"key (`xenhil lab check --learn` fetches it); otherwise suspect a "
               f"man-in-the-middle.")
        if not expected:
            fix = (f"{self.name} has no pinned host key: verify the offered fingerprint on its "
                   f"console and set ssh.host_key (or ssh.known_hosts); "
                   f"`xenhil lab check --learn` fetches it.")
        return HostKeyMismatch(
            f"{self.where}: host key not trusted: expected {wanted}, "
            f"offered {offered.get_name()} {fingerprint(offered)}", help=fix)

    # -- connecting -------------------------------------------------------------
    def _open_socket(self):
        if self.via is not None:
            return self.via.open_tunnel(self.config.address, self.config.port)
        sock = socket.create_connection((self.config.address, self.config.port),
                                        timeout=self.connect_timeout)
        # Commands are many small request/reply exchanges: do not let Nagle
        # hold a packet back waiting for a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _connect_once(self) -> paramiko.SSHClient:
        pinned = self._pinned_keys()
        pkey = self._client_key()
        client = paramiko.SSHClient()
        # Never load ~/.ssh/known_hosts: only the inventory's pin counts.
        client.set_missing_host_key_policy(_RejectUnknownHostKey(self))
        name = host_key_name(self.config.address, self.config.port)
        for key in pinned:
            client.get_host_keys().add(name, key.get_name(), key)
        sock = self._open_socket()
        try:
            client.connect(self.config.address, port=self.config.port,
                           username=self.config.user, pkey=pkey, sock=sock,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, channel_timeout=self.channel_timeout,
                           allow_agent=False, look_for_keys=False)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise self._key_mismatch(offered=exc.key, expected=pinned) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SSHError(f"{self.where}: login as {self.config.user} with key "
                           f"{self.config.key_file} refused: {exc}",
                           help="check ssh.user and that the key's .pub is in the user's "
                                "authorized_keys on the host") from None
        except BaseException:
            client.close()
            sock.close()
            raise
        transport = client.get_transport()
        # Notice a silently dead peer (host reset) within a minute or so.
        transport.set_keepalive(15)
        return client

    @step("connect to {self.name}")
    def connect(self) -> "SSHConnection":
        """Open the connection now (otherwise the first command does)."""
        with self._lock:
            self._ensure_connected()
        return self

    def _ensure_connected(self) -> paramiko.Transport:
        with self._lock:
            if self.state == self.CLOSED:
                raise TestBugError(f"{self.where}: connection used after close()",
                                   help="get a fresh one with connection_for() or SSHConnection()")
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return transport
                self._drop("transport no longer active")
            last: BaseException | None = None
            for attempt in range(1, self.retries + 1):
                try:
                    self._client = self._connect_once()
                    self.state = self.CONNECTED
                    log.debug("%s: connected (attempt %d)", self.where, attempt)
                    return self._client.get_transport()
                except (paramiko.SSHException, EOFError, OSError, ConnectionLost) as exc:
                    last = exc
                    log.info("%s: connection attempt %d/%d failed: %s",
                             self.where, attempt, self.retries, exc)
                    if attempt < self.retries:
                        time.sleep(self.retry_delay)
            raise SSHUnreachable(
                f"cannot connect to {self.name} at {self.config.address}:{self.config.port} "
                f"after {self.retries} attempts: {type(last).__name__}: {last}") from last

    def _drop(self, why: str) -> None:
        """Forget a broken connection; the next use reconnects."""
        with self._lock:
            log.info("%s: dropping connection: %s", self.where, why)
            client, self._client, self._sftp = self._client, None, None
            if self.state != self.CLOSED:
                self.state = self.DISCONNECTED
            if client is not None:
                try:
                    client.close()
                except Exception:  # already dead; closing is best effort
                    pass

    def _open(self, opener, what: str):
        """Run ``opener(transport)`` to get a channel.

        A failure on a connection that still looks alive is tried once more on
        the same connection; then the connection is dropped and opened afresh
        once (e.g. the host's sshd restarted).  The two are separate
        allowances: a socket that died a moment before paramiko's reader
        thread noticed looks alive at first, and must still end in a
        reconnect (SSHUnreachable when sshd is gone), not in giving up.
        """
        retried_on_live_connection = False
        reconnected = False
        while True:
            transport = self._ensure_connected()
            try:
                return opener(transport)
            except paramiko.ChannelException:
                raise  # the server answered and refused: not a connection problem
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if transport.is_active() and not retried_on_live_connection:
                    # The connection is alive, the server was slow to open a
                    # session (a loaded, emulated dom0 forks slowly).  Dropping
                    # it would also kill the other channels on it (a guest's
                    # `xl console`): try once more on the same connection.
                    retried_on_live_connection = True
                    log.warning("%s: %s failed on a live connection (%r); retrying",
                                self.where, what, exc)
                    continue
                self._drop(f"{what} failed: {exc!r}")
                if reconnected:
                    raise ConnectionLost(f"{self.where}: {what} failed after reconnecting: "
                                         f"{exc!r}") from exc
                reconnected = True

    # -- commands ---------------------------------------------------------------
    @staticmethod
    def _command_line(cmd: str | Sequence[str]) -> str:
        if isinstance(cmd, str):
            return cmd
        if isinstance(cmd, (bytes, bytearray)):
            raise TestBugError("run(): give the command as str or a list of str, not bytes")
        return shlex.join(str(part) for part in cmd)

    @staticmethod
    def _env_prefix(env: Mapping[str, str] | None) -> str:
        # sshd drops "env" requests unless AcceptEnv allows them, so set the
        # variables in the remote shell instead.  They are visible in that
        # shell's argv on the host: pass secrets through ``input``, not env.
        if not env:
            return ""
        for name in env:
            if not _ENV_NAME.match(name):
                raise TestBugError(f"run(): {name!r} is not a valid environment variable name")
        return "export " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items()) + "; "

    def run(self, cmd: str | Sequence[str], timeout: float = 60.0, check: bool = False,
            input: bytes | str | None = None, env: Mapping[str, str] | None = None) -> CommandResult:
        """Run a command and wait for it.

        ``cmd``: a list is quoted with shlex.join; a string is a shell line.
        ``input``: sent to the command's stdin (then EOF; without it stdin is
        at EOF at once).  ``env``: variables exported for the command (names
        only reach the logs).  ``check``: raise RemoteCommandFailed on a
        non-zero exit.  Raises CommandTimeout after ``timeout`` seconds, and
        ConnectionLost if the connection drops while the command runs.
        """
        if not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
            # Every wait is bounded: a command without a limit could hold a
            # test until its own limit, with no stage to blame.
            raise TestBugError(f"run(): timeout must be a finite number of seconds, got {timeout!r}")
        line = self._command_line(cmd)
        shown = line if not env else f"[env {','.join(env)}] {line}"
        title = f"{self.name}$ {shown}"
        if len(title) > _TITLE_CHARS:
            title = title[:_TITLE_CHARS - 3] + "..."
        # A stage, so that when the test's own limit runs out in here the
        # report names this command (its own timeout names it otherwise).
        with step_context(title), budgets.stage(f"ssh command `{_short(shown)}` on {self.name}",
                                                budgets.ssh_command_s(timeout),
                                                names_failures=False):
            result = self._run(self._env_prefix(env) + line, shown, timeout, input)
            log.debug("%s: exit %d in %.3fs: %s", self.name, result.exit_status,
                      result.duration, shown)
            if check and not result.ok:
                raise RemoteCommandFailed(shown, result.exit_status, tail(result.stdout),
                                          tail(result.stderr), host=self.name)
            return result

    def _run(self, line: str, shown: str, timeout: float,
             input: bytes | str | None) -> CommandResult:
        started = time.monotonic()
        deadline = started + timeout
        # Closing the channel does not stop a command without a pty, and sshd
        # refuses "signal" requests for root sessions; so tag the command's
        # environment with a token its descendants inherit, to kill them by it.
        token = f"{_TOKEN_PREFIX}.{os.getpid()}.{next(_run_counter)}"
        line = f"{_RUN_TOKEN}={token}; export {_RUN_TOKEN}; {_stdin_before_close(line, input)}"

        def opener(transport: paramiko.Transport) -> paramiko.Channel:
            chan = transport.open_session(timeout=self.channel_timeout)
            try:
                _answered(chan, lambda: chan.exec_command(line), "the exec request",
                          self.channel_timeout)
            except BaseException:
                chan.close()
                raise
            return chan

        chan = self._open(opener, "starting a command")
        out, err = bytearray(), bytearray()
        try:
            self._feed_stdin(chan, input)
            self._collect(chan, out, err, deadline, shown, timeout, token)
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                self._timed_out(chan, shown, timeout, out, err, token)
            if chan.exit_status == -1 and not chan.get_transport().is_active():
                self._drop("lost while a command ran")
                raise ConnectionLost(
                    f"{self.where}: connection lost while running: {shown}\n"
                    f"--- stdout (tail) ---\n{tail(_text(out))}\n"
                    f"--- stderr (tail) ---\n{tail(_text(err))}",
                    help="The command may or may not have completed; check the host "
                         "(power status, console) before rerunning.")
            status = chan.exit_status
        finally:
            chan.close()
        return CommandResult(shown, status, _text(out), _text(err),
                             time.monotonic() - started, self.name)

    @staticmethod
    def _feed_stdin(chan: paramiko.Channel, input: bytes | str | None) -> None:
        if input is None:
            # No EOF of our own: the command's stdin is /dev/null already
            # (_stdin_before_close); the channel's EOF goes with its CLOSE.
            return
        data = input.encode() if isinstance(input, str) else bytes(input)

        # A thread, so a command that writes a lot before reading all its
        # input cannot deadlock against us.
        def feed() -> None:
            try:
                chan.sendall(data)
                chan.shutdown_write()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the command exited without reading everything

        threading.Thread(target=feed, name="ssh-stdin", daemon=True).start()

    def _collect(self, chan: paramiko.Channel, out: bytearray, err: bytearray,
                 deadline: float, shown: str, timeout: float, token: str) -> None:
        """Drain stdout and stderr together until EOF (both share one flow
        control window, so reading only one could stall the other)."""
        fd = chan.fileno()  # readable while either stream has data, EOF or close
        while True:
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if (chan.eof_received or chan.closed) and not (chan.recv_ready()
                                                           or chan.recv_stderr_ready()):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._timed_out(chan, shown, timeout, out, err, token)
            select.select([fd], [], [], min(remaining, 1.0))

    def _timed_out(self, chan: paramiko.Channel, shown: str, timeout: float,
                   out: bytearray, err: bytearray, token: str) -> NoReturn:
        chan.close()
        self._kill_by_token(token)
        raise CommandTimeout(shown, timeout, tail(_text(out)), tail(_text(err)), host=self.name)

    def _kill_by_token(self, token: str) -> None:
        """Best effort: SIGKILL every process whose environment carries ``token``."""
        pattern = shlex.quote(f"{_RUN_TOKEN}={token}")
        killer = (f"pids=$(grep -lzx {pattern} /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); "
                  f'[ -z "$pids" ] || kill -KILL $pids 2>/dev/null; true')
        try:
            self._run(killer, "(stop timed-out command)", budgets.SSH_KILL_S, None)
        except Exception:  # noqa: BLE001 - the timeout is what gets reported
            log.info("%s: could not stop a timed-out command", self.where, exc_info=True)

    # -- interactive and tunnels ------------------------------------------------
    def open_interactive(self, cmd: str, term: str = "vt100", width: int = 200,
                         height: int = 50) -> paramiko.Channel:
        """Start ``cmd`` on a pty (e.g. ``xl console DOMAIN``); the caller reads and
        writes the channel (pexpect wraps it) and closes it."""

        def opener(transport: paramiko.Transport) -> paramiko.Channel:
            chan = transport.open_session(timeout=self.channel_timeout)
            try:
                _answered(chan, lambda: chan.get_pty(term=term, width=width, height=height),
                          "the pty request", self.channel_timeout)
                _answered(chan, lambda: chan.exec_command(cmd), "the exec request",
                          self.channel_timeout)
            except BaseException:
                chan.close()
                raise
            return chan

        with step_context(f"{self.name}: interactive {cmd}"[:_TITLE_CHARS]):
            return self._open(opener, f"starting {cmd!r} on a pty")

    def open_tunnel(self, dest_host: str, dest_port: int) -> paramiko.Channel:
        """A TCP connection to ``dest_host:dest_port`` made *by this host*
        (SSH direct-tcpip), e.g. to a guest on the dom0 bridge."""

        def opener(transport: paramiko.Transport) -> paramiko.Channel:
            return transport.open_channel("direct-tcpip", (dest_host, dest_port),
                                          ("127.0.0.1", 0), timeout=self.connect_timeout)

        try:
            return self._open(opener, f"tunnel to {dest_host}:{dest_port}")
        except paramiko.ChannelException as exc:
            raise SSHError(f"{self.where} refused to connect to {dest_host}:{dest_port}: "
                           f"{exc.text} (code {exc.code})",
                           help="check that the destination listens, is reachable from the "
                                "host, and that the host's sshd has AllowTcpForwarding yes") from None

    def guest(self, config: SSHConfig, name: str = "", *,
              client_key: paramiko.PKey | None = None,
              connect_timeout: float | None = None) -> "SSHConnection":
        """A connection to a guest whose ``config.address`` this host can reach;
        it travels inside this connection and pins the guest's own host key.
        ``client_key``: a loaded key instead of ``config.key_file``."""
        return SSHConnection(config, name=name,
                             connect_timeout=connect_timeout or self.connect_timeout,
                             retries=self.retries, retry_delay=self.retry_delay, via=self,
                             channel_timeout=self.channel_timeout, sftp_timeout=self.sftp_timeout,
                             client_key=client_key)

    # -- files ---------------------------------------------------------------------
    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is not None and not self._sftp.get_channel().get_transport().is_active():
                self._drop("SFTP session lost")
            if self._sftp is None:
                self._sftp = self._open(self._open_sftp, "opening SFTP")
            return self._sftp

    def _open_sftp(self, transport: paramiko.Transport) -> paramiko.SFTPClient:
        """paramiko's SFTPClient.from_transport, with every wait bounded."""
        chan = transport.open_session(timeout=self.channel_timeout)
        try:
            _answered(chan, lambda: chan.invoke_subsystem("sftp"), "the sftp subsystem request",
                      self.channel_timeout)
            # Every later SFTP reply (and the version exchange now) waits at
            # most this long; paramiko raises socket.timeout then.
            chan.settimeout(self.sftp_timeout)
            return paramiko.SFTPClient(chan)
        except BaseException:
            chan.close()
            raise

    @contextlib.contextmanager
    def _sftp_waits(self, what: str) -> Iterator[None]:
        """An SFTP reply that did not come within sftp_timeout is a typed
        failure, and the session is dropped (its request stream is out of step).
        Holds the connection's SFTP for the whole operation."""
        try:
            with self._sftp_busy:
                yield
        except TimeoutError as exc:  # socket.timeout
            with self._lock:
                sftp, self._sftp = self._sftp, None
            if sftp is not None:
                with contextlib.suppress(Exception):
                    sftp.close()
            raise SFTPTimeout(f"{self.where}: {what}: no SFTP answer within "
                              f"{self.sftp_timeout:g}s") from exc

    def remote_sha256(self, remote: str) -> str:
        result = self.run(["sha256sum", "--", remote], timeout=600, check=True)
        return result.stdout.split()[0]

    def verify_remote(self, remote: str, expected_sha256: str) -> None:
        """Raise TransferVerificationFailed unless ``remote`` has that sha256."""
        seen = self.remote_sha256(remote)
        if seen != expected_sha256:
            raise TransferVerificationFailed(
                f"{self.where}: {remote} has sha256 {seen}, expected {expected_sha256}")

    @step("{self.name}: put {local} -> {remote}")
    def put(self, local: str | os.PathLike, remote: str, mode: int | None = None) -> str:
        """Copy a local file to the host, verified by sha256; returns the digest.
        The file appears under its name only once complete and verified."""
        local = Path(local)
        expected = sha256_file(local)
        partial = f"{remote}.xenhil-part"
        with self._sftp_waits(f"copying {local} to {partial}"):
            sftp = self._sftp_client()
            sftp.put(str(local), partial)
            if mode is not None:
                sftp.chmod(partial, mode)
        self.verify_remote(partial, expected)
        self.run(["mv", "-f", "--", partial, remote], check=True)
        return expected

    @step("{self.name}: get {remote} -> {local}")
    def get(self, remote: str, local: str | os.PathLike) -> str:
        """Copy a file from the host, verified by sha256; returns the digest."""
        local = Path(local)
        expected = self.remote_sha256(remote)
        with self._sftp_waits(f"copying {remote} to {local}"):
            self._sftp_client().get(remote, str(local))
        seen = sha256_file(local)
        if seen != expected:
            raise TransferVerificationFailed(
                f"{self.where}: {remote} copied to {local} has sha256 {seen}, expected {expected}")
        return expected

    def put_bytes(self, data: bytes | str, remote: str, mode: int | None = None) -> str:
        """Write ``data`` to a remote file (verified like put); returns the sha256."""
        data = data.encode() if isinstance(data, str) else bytes(data)
        expected = hashlib.sha256(data).hexdigest()
        partial = f"{remote}.xenhil-part"
        with step_context(f"{self.name}: write {len(data)} bytes to {remote}"):
            with self._sftp_waits(f"writing {partial}"):
                sftp = self._sftp_client()
                with sftp.open(partial, "wb") as f:
                    f.write(data)
                if mode is not None:
                    sftp.chmod(partial, mode)
            self.verify_remote(partial, expected)
            self.run(["mv", "-f", "--", partial, remote], check=True)
        return expected

    def read_bytes(self, remote: str) -> bytes:
        with self._sftp_waits(f"reading {remote}"):
            sftp = self._sftp_client()
            with sftp.open(remote, "rb") as f:
                data = f.read()
            # paramiko's read() takes a request it could not send on a closed
            # channel for the end of the file and returns what it had, b''
            # for a whole file (seen when the connection ended mid-read).
            if sftp.get_channel().closed:
                # Only the SFTP session is forgotten: other threads' commands
                # may still be running on a live connection.
                with self._lock:
                    if self._sftp is sftp:
                        self._sftp = None
                raise ConnectionLost(f"{self.where}: connection lost while reading {remote}",
                                     help="check that the host is up (power status, console), "
                                          "then rerun")
        return data

    def read_text(self, remote: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(remote).decode(encoding, errors="replace")

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self.state == self.CLOSED:
                return
            self._drop("closed")
            self.state = self.CLOSED
        _forget(self)

    def __enter__(self) -> "SSHConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_RC_VAR = "XENHIL_RC"


def _stdin_before_close(line: str, input: bytes | str | None) -> str:
    """``line`` arranged so that this client never sends a channel EOF or
    data after sshd may have closed the channel.

    paramiko builds a channel message under the channel's lock but sends it
    after releasing it.  An EOF sent separately (``shutdown_write``) by the
    thread that started a quick command (``mv``) could therefore leave after
    the CLOSE that paramiko's reader thread sent on seeing sshd's CLOSE for
    the exited command; sshd then frees the channel, takes the late EOF for a
    protocol error ("ieof packet referred to nonexistent channel") and ends
    the whole connection, with every other thread's commands and SFTP on it.
    So without input the command reads /dev/null and no EOF is sent before
    the channel's own CLOSE (paramiko sends the two together, in order).
    With input the shell reads its stdin to the end before exiting, so sshd
    cannot close the channel before our data and EOF have arrived."""
    if input is None:
        return f"exec </dev/null; {line}"
    # A subshell, so that an `exit` in the line still leaves the draining to do.
    return f"(\n{line}\n); {_RC_VAR}=$?; cat >/dev/null; exit ${_RC_VAR}"


def _short(command: str, limit: int = 60) -> str:
    """A command as a stage names it: its first line, cut."""
    first = command.splitlines()[0] if command else command
    return first if len(first) <= limit and first == command else first[:limit - 3] + "..."


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a local file, read in 1 MiB chunks (builds can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- one connection per host per process ------------------------------------------

_registry: dict[tuple[int, str, SSHConfig], SSHConnection] = {}
_registry_lock = threading.Lock()


def connection_for(name: str, config: SSHConfig, **options) -> SSHConnection:
    """The process's connection to host ``name`` (made on first use).  Keyed by
    pid: a forked child (xdist worker, multiprocessing) gets its own socket."""
    key = (os.getpid(), name, config)
    with _registry_lock:
        conn = _registry.get(key)
        if conn is None or conn.state == SSHConnection.CLOSED:
            conn = _registry[key] = SSHConnection(config, name=name, **options)
        return conn


def _forget(conn: SSHConnection) -> None:
    with _registry_lock:
        for key, value in list(_registry.items()):
            if value is conn:
                del _registry[key]


@atexit.register
def _close_all() -> None:
    # Only this process's connections: a child must not close its parent's.
    pid = os.getpid()
    for key, conn in list(_registry.items()):
        if key[0] == pid:
            try:
                conn.close()
            except Exception:  # interpreter shutdown: best effort
                pass
