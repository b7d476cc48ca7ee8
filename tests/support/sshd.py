"""A real OpenSSH ``sshd`` for tests and benchmarks.

Each server runs ``/usr/sbin/sshd -D -e -f <generated sshd_config>`` on its own
127.0.0.x address and a free port, with host and client keys made by
``ssh-keygen`` in a private folder.  Everything it starts is stopped by process
id (the daemon and the per-connection children it forked), also when a test
fails.

Fixtures (import them explicitly into a test module)::

    from tests.support.sshd import sshd_server, sshd_factory, fresh_sshd_server  # noqa: F401

- ``sshd_server``: one shared server per test module; do not kill it.
- ``fresh_sshd_server``: a server for one test, which may ``kill()`` or
  ``restart()`` it.
- ``sshd_factory(**options)``: more servers (e.g. a "guest" reached through
  another), stopped at the end of the module.

Without pytest (benchmarks): ``with running_sshd(workdir) as server: ...``.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from xenhil.harness.lab.model import SSHConfig

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"

_CONFIG_TEMPLATE = """\
ListenAddress {address}:{port}
HostKey {host_key_file}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding {allow_tcp_forwarding}
PermitTTY yes
PrintMotd no
MaxSessions 200
MaxStartups 100
Subsystem sftp internal-sftp
LogLevel {log_level}
# A clean HOME: the login shell must not source this machine's own dotfiles
# (here root's ~/.bashrc runs "pyenv init", 80 ms per command).
SetEnv HOME={home}
"""


def _require_tools() -> None:
    missing = [tool for tool in (SSHD, SSH_KEYGEN) if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"OpenSSH tools missing: {', '.join(missing)} "
                           "(apt-get install openssh-server openssh-client)")


def keygen(path: Path, passphrase: str = "", comment: str = "xenhil-test") -> str:
    """Make an ed25519 key pair at ``path``; return the public key line."""
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", passphrase, "-C", comment,
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
    return path.with_suffix(path.suffix + ".pub").read_text().strip()


def public_key_line(pub_line: str) -> str:
    """'ssh-ed25519 AAAA... comment' -> 'ssh-ed25519 AAAA...'."""
    kind, data = pub_line.split()[:2]
    return f"{kind} {data}"


def _pick_address() -> str:
    # Spread servers over 127.0.0.0/8 so parallel helpers rarely meet.
    return f"127.0.0.{random.randint(10, 250)}"


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _children_of(pid: int) -> list[int]:
    """All descendants of ``pid`` (sshd forks one child per connection, each
    in its own session, so a process-group kill would miss them)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: split after the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class SSHServer:
    """One running sshd; ``kill()`` and ``restart()`` simulate a lost host."""

    def __init__(self, workdir: Path, address: str | None = None, user: str = "root",
                 allow_tcp_forwarding: bool = True, log_level: str = "VERBOSE"):
        _require_tools()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.address = address or _pick_address()
        self.port = 0
        self.user = user
        self.allow_tcp_forwarding = allow_tcp_forwarding
        self.log_level = log_level
        self.host_key_file = self.workdir / "ssh_host_ed25519_key"
        self.client_key = self.workdir / "client_ed25519"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.known_hosts = self.workdir / "known_hosts"
        self.config_file = self.workdir / "sshd_config"
        self.pid_file = self.workdir / "sshd.pid"
        self.log_path = self.workdir / "sshd.log"
        self.home = self.workdir / "home"
        self.home.mkdir(exist_ok=True)
        self.host_key = public_key_line(keygen(self.host_key_file, comment="xenhil-test-host"))
        client_pub = keygen(self.client_key)
        self.authorized_keys.write_text(client_pub + "\n")
        self.proc: subprocess.Popen | None = None

    # -- what clients need ------------------------------------------------
    @property
    def host_key_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def ssh_config(self, **overrides) -> SSHConfig:
        """An inventory SSHConfig for this server, host key pinned inline."""
        values = dict(address=self.address, port=self.port, user=self.user,
                      key_file=self.client_key, host_key=self.host_key)
        values.update(overrides)
        return SSHConfig(**values)

    def authorize(self, pub_line: str) -> None:
        """Also accept another client key (sshd rereads the file per login)."""
        with self.authorized_keys.open("a") as f:
            f.write(pub_line.strip() + "\n")

    def new_client_key(self, name: str, passphrase: str = "") -> Path:
        path = self.workdir / name
        self.authorize(keygen(path, passphrase=passphrase))
        return path

    def openssh_argv(self, *options: str) -> list[str]:
        """Argv prefix for the OpenSSH client to this server, ignoring ~/.ssh."""
        return ["ssh", "-F", "/dev/null", "-i", str(self.client_key), "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-p", str(self.port), *options, f"{self.user}@{self.address}"]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- lifecycle --------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "SSHServer":
        # Debian's sshd refuses to start without its privilege separation folder.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        attempts = 3 if self.port == 0 else 1
        for attempt in range(attempts):
            if self.port == 0 or attempt:
                self.port = _free_port(self.address)
            self._write_config()
            try:
                self._spawn_and_wait(timeout)
                return self
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                self.port = 0  # a port race with another process: pick again
        return self

    def _write_config(self) -> None:
        self.config_file.write_text(_CONFIG_TEMPLATE.format(
            address=self.address, port=self.port, host_key_file=self.host_key_file,
            pid_file=self.pid_file, authorized_keys=self.authorized_keys,
            allow_tcp_forwarding="yes" if self.allow_tcp_forwarding else "no",
            log_level=self.log_level, home=self.home))
        self.known_hosts.write_text(f"{self.host_key_name} {self.host_key}\n")

    def _spawn_and_wait(self, timeout: float) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config_file)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"sshd on {self.address}:{self.port} exited at start:\n"
                                   f"{self.log_tail()}")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"sshd on {self.address}:{self.port} did not accept within "
                           f"{timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """Stop sshd and every connection it serves (as a crashed host would)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for pid in [proc.pid, *_children_of(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)

    stop = kill

    def restart(self) -> None:
        """Kill and start again on the same address, port and host key."""
        self.kill()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        return f"SSHServer({self.address}:{self.port}, running={self.running})"


@contextlib.contextmanager
def running_sshd(workdir: Path, **options) -> Iterator[SSHServer]:
    """Start a server for the block; stop it after, whatever happens."""
    server = SSHServer(workdir, **options)
    try:
        yield server.start()
    finally:
        server.kill()


class _Factory:
    def __init__(self, base: Path):
        self.base = base
        self.servers: list[SSHServer] = []

    def __call__(self, **options) -> SSHServer:
        workdir = self.base / f"sshd{len(self.servers)}"
        server = SSHServer(workdir, **options)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.servers:
            server.kill()


@pytest.fixture(scope="module")
def sshd_factory(tmp_path_factory) -> Iterator[Callable[..., SSHServer]]:
    """``sshd_factory(**SSHServer options) -> SSHServer``; all stopped at module end."""
    factory = _Factory(tmp_path_factory.mktemp("sshd"))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def sshd_server(sshd_factory) -> SSHServer:
    """A shared server for the module.  Tests must not kill or restart it."""
    return sshd_factory()


@pytest.fixture
def fresh_sshd_server(tmp_path) -> Iterator[SSHServer]:
    """A server of this test's own, free to kill() or restart()."""
    with running_sshd(tmp_path / "sshd") as server:
        yield server


__all__ = ["SSHServer", "running_sshd", "keygen", "public_key_line", "sshd_factory",
           "sshd_server", "fresh_sshd_server"]
