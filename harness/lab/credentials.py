"""Every secret an inventory references, found, resolved and registered.

A run registers them all when it starts (harness.plugin, in the controller
and in every xdist worker; the CLI before its verb runs), before any test
code can print one: masking (harness.secrets) then covers them from the
first line of output.  The end-of-job scan (harness.results.secret_scan)
resolves the same list and fails when one of them cannot be resolved.

Only :class:`Credential.what` and ``field`` are ever printed, never a value.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError
from harness.lab.model import CredentialRef, Inventory

#: Lines of a private key file shorter than this are not secrets (the PEM
#: BEGIN/END lines, blank lines); each longer body line is one.
KEY_LINE_MIN = 16


@dataclass(frozen=True)
class Credential:
    what: str                        # "power password of vhost1"
    field: str                       # "hosts[vhost1].power.password"
    ref: CredentialRef | None = None
    key_file: Path | None = None     # an SSH private key (its body lines are the secrets)

    def resolve(self) -> dict[str, str]:
        """Secret value -> what it is; ConfigError (one line, no value) when
        the reference cannot be resolved here."""
        if self.ref is not None:
            value = self.ref.resolve()
            return {value: self.what} if value else {}
        from harness.safeio import read_text
        from harness.secrets import register_private_key
        text = read_text(self.key_file, "key file",
                         fix=f"make {self.key_file} readable here, or fix {self.field}")
        register_private_key(text)
        return {line.strip(): self.what for line in text.splitlines()
                if len(line.strip()) >= KEY_LINE_MIN and not line.strip().startswith("-----")}


def referenced(inventory: Inventory) -> list[Credential]:
    """Every credential reference and key file of ``inventory``, in host order."""
    found: list[Credential] = []
    for host in inventory.hosts.values():
        at = f"hosts[{host.name}]"
        if host.power is not None and host.power.password is not None:
            found.append(Credential(f"power password of {host.name}", f"{at}.power.password",
                                    ref=host.power.password))
        if host.serial is not None and host.serial.password is not None \
                and host.serial.password != getattr(host.power, "password", None):
            found.append(Credential(f"serial password of {host.name}", f"{at}.serial.password",
                                    ref=host.serial.password))
        if host.ssh is not None:
            if host.ssh.passphrase is not None:
                found.append(Credential(f"SSH key passphrase of {host.name}",
                                        f"{at}.ssh.passphrase", ref=host.ssh.passphrase))
            if host.ssh.key_file is not None:
                found.append(Credential(f"private key {host.ssh.key_file} of {host.name}",
                                        f"{at}.ssh.key_file", key_file=Path(host.ssh.key_file)))
    return found


def resolve_all(inventory: Inventory) -> tuple[dict[str, str], list[str]]:
    """(secret value -> what it is, one line per reference that cannot be
    resolved here: the field and why, never a value).  Every resolved value
    is registered with harness.secrets as a side effect."""
    values: dict[str, str] = {}
    unresolved: list[str] = []
    for credential in referenced(inventory):
        try:
            values.update(credential.resolve())
        except ConfigError as exc:
            reason = str(exc.args[0]) if exc.args else str(exc)
            unresolved.append(f"{credential.field} ({credential.what}): {reason}; fix: {exc.help}")
    return values, unresolved


def register_inventory_secrets(inventory: Inventory) -> list[str]:
    """Resolve and register every secret of ``inventory`` for masking; the
    lines of those that cannot be resolved in this process (a host using one
    fails when it first needs it, with the same reason)."""
    return resolve_all(inventory)[1]


__all__ = ["Credential", "referenced", "resolve_all", "register_inventory_secrets"]
