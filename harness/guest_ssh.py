"""Commands in a test guest over SSH, through its host (direct-tcpip).

The virtual lab's guest console passes some 55 bytes a second (every byte
to the emulated UART is an ioreq under nested emulation): `echo x` takes
4 s there, a BAR read 6-35 s, a latency run's raw samples minutes.  The
guest kit runs dropbear on eth0, so once a guest is ready its commands go
over SSH instead, inside the host's own connection; the console stays for
booting, crashes and the evidence.

The route is a property of the guest kit installed in dom0: the key dom0
logs in to its guests with (``/root/.ssh/id_ed25519``) and the guests' own
host key (``guest_host_key.pub`` in the kit), both read from the host over
its pinned connection -- nothing to add to the inventory, and a host
without the kit has no route (its guests' commands use the console).  The
private key stays in memory (never a file here) and is registered as a
secret at once, so no log or report shows it.

Every guest of a host has its own address (``xenhil.addr=`` on its kernel
command line, with ``xenhil.name=``): the first command of a connection
reads /proc/cmdline and refuses a guest that is not this one (two guests
given one address answer alike: same kit, same host key).
"""
from __future__ import annotations

import io
import ipaddress
import logging
import time
from pathlib import Path

import paramiko

from xenhil.harness.errors import ConnectionLost, InfrastructureError, SSHError, XenhilWarning
from xenhil.harness.lab.model import SSHConfig
from xenhil.harness.secrets import register_private_key

log = logging.getLogger("xenhil.guest_ssh")

# Where the guest kit keeps what a route needs, in dom0 (harness/lab/virtual/builder.py).
KIT_HOST_KEY = "/var/lib/xenhil/guest/guest_host_key.pub"
DOM0_GUEST_KEY = "/root/.ssh/id_ed25519"
# The guests' addresses on dom0's bridge: 192.168.100.10 upward (.1 is dom0).
ADDRESS_POOL = [str(ipaddress.IPv4Address("192.168.100.10") + i) for i in range(200)]
# Connecting (a key exchange in a guest under nested emulation) may take this long.
CONNECT_TIMEOUT_S = 60.0


class NoGuestRoute(InfrastructureError):
    """The guest cannot be reached over SSH (no kit on the host, no answer
    at its address, another guest answering there): its commands go over
    the console."""

    help = ("The guest's commands use its console instead (slower on an emulated host). "
            "Check that the guest kit is installed in dom0 and that the guest's eth0 came up "
            "(its console shows XENHIL-GUEST-READY with addr=).")


class GuestRouteLost(XenhilWarning):
    """A ready guest's commands went back to its console (NoGuestRoute)."""


def free_address(taken: set[str]) -> str:
    """The first address of the pool that no guest of the host has."""
    for address in ADDRESS_POOL:
        if address not in taken:
            return address
    raise InfrastructureError(f"all {len(ADDRESS_POOL)} guest addresses of the host are taken",
                              help="destroy guests of the host (`xl list` on it shows them)")


class GuestShell:
    """One guest's SSH route: connected on first use, closed by :meth:`close`
    (before a save or a destroy) and connected again on next use."""

    def __init__(self, host, name: str, address: str, transcript: Path, *, port: int = 22,
                 kit_host_key: str = KIT_HOST_KEY, dom0_guest_key: str = DOM0_GUEST_KEY,
                 identity_file: str = "/proc/cmdline"):
        """``kit_host_key``, ``dom0_guest_key``: the kit's files on the host;
        ``identity_file``: the file in the guest whose words name it
        (``xenhil.name=``).  Given otherwise only by tests."""
        self.host = host
        self.name = name
        self.address = address
        self.transcript = transcript
        self.port = port
        self.kit_host_key = kit_host_key
        self.dom0_guest_key = dom0_guest_key
        self.identity_file = identity_file
        self._conn = None

    def _key_pair(self) -> tuple[str, paramiko.PKey]:
        """(the guests' pinned host key, dom0's key for its guests) from the host."""
        try:
            pin = " ".join(self.host.ssh.read_bytes(self.kit_host_key).decode().split()[:2])
            text = self.host.ssh.read_bytes(self.dom0_guest_key).decode()
        except (InfrastructureError, OSError, UnicodeDecodeError) as exc:
            raise NoGuestRoute(f"{self.host.name} has no guest kit key pair "
                               f"({self.kit_host_key}, {self.dom0_guest_key}): {exc}") from None
        register_private_key(text)
        try:
            return pin, paramiko.Ed25519Key.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError) as exc:
            raise NoGuestRoute(f"{self.host.name}:{self.dom0_guest_key} is not an unencrypted "
                               f"ed25519 key ({type(exc).__name__})") from None

    def _connect(self):
        pin, key = self._key_pair()
        config = SSHConfig(address=self.address, port=self.port, user="root", host_key=pin)
        conn = self.host.ssh.guest(config, name=f"{self.host.name}/{self.name}", client_key=key,
                                   connect_timeout=CONNECT_TIMEOUT_S)
        try:
            cmdline = conn.run(["cat", self.identity_file], timeout=CONNECT_TIMEOUT_S,
                               check=True).stdout
        except InfrastructureError as exc:   # refused, lost, or no answer in time
            conn.close()
            raise NoGuestRoute(f"guest {self.name} at {self.address}: {exc}") from None
        if f"xenhil.name={self.name}" not in cmdline.split():
            conn.close()
            raise NoGuestRoute(f"another guest answers at {self.address} (its kernel command "
                               f"line: {cmdline.strip()!r}), not {self.name}",
                               help="two guests of the host were given one address: a xenhil "
                                    "bug (report it with this message)")
        return conn

    def run(self, command: str, timeout: float) -> tuple[int, str]:
        """(exit status, stdout and stderr as one text, as on the console).
        Raises NoGuestRoute when the guest cannot be reached; a command that
        runs out of time raises as on the host (CommandTimeout)."""
        if self._conn is None:
            self._conn = self._connect()
        began = time.monotonic()
        try:
            result = self._conn.run(f"exec 2>&1; {command}", timeout=timeout)
        except (SSHError, ConnectionLost) as exc:
            self.close()
            raise NoGuestRoute(f"guest {self.name} at {self.address}: {exc}") from None
        self._record(command, result.exit_status, result.stdout, time.monotonic() - began)
        return result.exit_status, result.stdout

    def _record(self, command: str, status: int, output: str, took: float) -> None:
        """The guest's commands and their output, as the console transcript
        would have held them (the report's evidence)."""
        self.transcript.parent.mkdir(parents=True, exist_ok=True)
        with self.transcript.open("a", encoding="utf-8") as out:
            out.write(f"guest# {command}\n{output}")
            if output and not output.endswith("\n"):
                out.write("\n")
            out.write(f"[exit {status} in {took:.2f}s over SSH]\n")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - the guest may be gone already
                log.debug("closing the SSH route to %s", self.name, exc_info=True)
            self._conn = None
