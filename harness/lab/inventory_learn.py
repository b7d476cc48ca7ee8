"""``xenhil lab check --learn``: fetch the host key of a host that has none pinned.

This is trust on first use: the key is whatever answers at the address now,
so every fetch is logged as a WARNING naming the host and the key's
fingerprint, and the key is only *printed* as a line to add to the inventory,
never written into it.  Only the SSH key exchange is done (paramiko
Transport); no login is attempted.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import socket
from dataclasses import dataclass

import paramiko

from xenhil.harness.errors import SSHError
from xenhil.harness.step import step

log = logging.getLogger("xenhil.lab.inventory")

# The key type asked for first: what an inventory should pin.
PREFERRED_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                       "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob (as ``ssh-keygen -lf`` prints)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class LearnedHostKey:
    host: str          # the inventory's host name
    address: str
    port: int
    key_type: str      # "ssh-ed25519", ...
    key_base64: str

    @property
    def host_key(self) -> str:
        """The value for ``host_key:`` in the inventory."""
        return f"{self.key_type} {self.key_base64}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(base64.b64decode(self.key_base64))


@step("fetch the SSH host key of {host} from {address}:{port}")
def fetch_host_key(host: str, address: str, port: int = 22,
                   timeout: float = 10.0) -> LearnedHostKey:
    """Do an SSH key exchange with ``address:port`` and return the host key it shows."""
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        raise SSHError(f"cannot connect to {address}:{port} for host {host!r}: "
                       f"{exc.strerror or exc}",
                       help="check that the host is up and its address and ssh port") from None
    transport = paramiko.Transport(sock)
    try:
        options = transport.get_security_options()
        offered = list(options.key_types)
        options.key_types = ([t for t in PREFERRED_KEY_TYPES if t in offered]
                             + [t for t in offered if t not in PREFERRED_KEY_TYPES])
        try:
            transport.start_client(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SSHError(f"SSH key exchange with {address}:{port} (host {host!r}) failed: "
                           f"{exc}", help="check that an SSH server answers at that port") from None
        key = transport.get_remote_server_key()
    finally:
        transport.close()
        sock.close()
    # paramiko names RSA keys by their signature algorithm; the key itself is ssh-rsa.
    key_type = "ssh-rsa" if key.get_name().startswith("rsa-sha2") else key.get_name()
    learned = LearnedHostKey(host=host, address=address, port=port, key_type=key_type,
                             key_base64=key.get_base64())
    log.warning("trust on first use: host %r at %s:%d presented %s key %s; it is NOT verified: "
                "compare it with the host's own key (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub "
                "on its console) before pinning it", host, address, port, learned.key_type,
                learned.fingerprint)
    return learned


__all__ = ["LearnedHostKey", "fetch_host_key", "fingerprint"]
