"""Every secret an inventory references, found, resolved and registered.

A run registers them all when it starts (harness.plugin, in the controller
and in every xdist worker; the CLI before its verb runs), before any test
code can print one: masking (harness.secrets) then covers them from the
first line of output.  The end-of-job scan (harness.results.secret_scan)
resolves the same list and fails when one of them cannot be resolved.

Only :class:`Credential.what` and ``field`` are ever printed, never a value.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.model import CredentialRef, Inventory

#: Lines of a private key file shorter than this are not secrets (the PEM
#: BEGIN/END lines, blank lines); each longer body line is one.
KEY_LINE_MIN = 16


@dataclass(frozen=True)
class Credential:
    what: str                        # "power password of vhost1"
    field: str                       # "hosts[vhost1].power.password"
    ref: CredentialRef | None = None
    key_file: Path | None = None     # an SSH private key (its body lines are the secrets)
    postgres: bool = False           # a PostgreSQL store's password, as libpq finds it

    def resolve(self) -> dict[str, str]:
        """Secret value -> what it is; ConfigError (one line, no value) when
        the reference cannot be resolved here."""
        if self.ref is not None:
            value = self.ref.resolve()
            return {value: self.what} if value else {}
        if self.postgres:
            from xenhil.harness.secrets import register_secret
            return {register_secret(value): f"{self.what} ({where})"
                    for value, where in libpq_passwords().items()}
        from xenhil.harness.safeio import read_text
        from xenhil.harness.secrets import register_private_key
        text = read_text(self.key_file, "key file",
                         fix=f"make {self.key_file} readable here, or fix {self.field}")
        register_private_key(text)
        return {line.strip(): self.what for line in text.splitlines()
                if len(line.strip()) >= KEY_LINE_MIN and not line.strip().startswith("-----")}


def libpq_passwords() -> dict[str, str]:
    """Password -> where libpq would find it: $PGPASSWORD, and every entry of
    the password file ($PGPASSFILE, else ~/.pgpass).  A store URL never
    holds its password (harness.options refuses it); libpq takes it from
    these, so these are the store's secrets.  Every entry counts, not only
    the one matching the URL: each is a database password of this user.
    Nothing found is no secret, not an error: the server may trust the
    user without one (peer or certificate authentication)."""
    found: dict[str, str] = {}
    if os.environ.get("PGPASSWORD"):
        found[os.environ["PGPASSWORD"]] = "$PGPASSWORD"
    path = Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")
    try:
        from xenhil.harness.safeio import read_text
        text = read_text(path, "PostgreSQL password file") if path.is_file() else ""
    except ConfigError:
        text = ""          # libpq would not read it either (not a regular file, too large)
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            fields = _PGPASS_FIELD.findall(line + ":")
            if len(fields) >= 5 and fields[4]:
                found.setdefault(_PGPASS_ESCAPE.sub(r"\1", ":".join(fields[4:])), str(path))
    return found


# hostname:port:database:username:password, ':' and '\' escaped by '\'
# (libpq's passwordFromFile): each field up to an unescaped ':'.
_PGPASS_FIELD = re.compile(r"((?:[^:\\]|\\.)*):")
_PGPASS_ESCAPE = re.compile(r"\\(.)")


def referenced(inventory: Inventory, store_urls: tuple[str | None, ...] = ()) -> list[Credential]:
    """Every credential reference and key file of ``inventory``, in host
    order, and the password of a PostgreSQL store (its ``lease_db``, or one
    of ``store_urls``: a run's --lab-db and --results-db)."""
    from xenhil.harness.dburl import is_postgres
    found: list[Credential] = []
    if any(url and is_postgres(url) for url in (inventory.lease_db, *store_urls)):
        found.append(Credential("PostgreSQL store password", "lease_db / --lab-db / --results-db",
                                postgres=True))
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


def resolve_all(inventory: Inventory, store_urls: tuple[str | None, ...] = ()
                ) -> tuple[dict[str, str], list[str]]:
    """(secret value -> what it is, one line per reference that cannot be
    resolved here: the field and why, never a value).  Every resolved value
    is registered with harness.secrets as a side effect."""
    values: dict[str, str] = {}
    unresolved: list[str] = []
    for credential in referenced(inventory, store_urls):
        try:
            values.update(credential.resolve())
        except ConfigError as exc:
            reason = str(exc.args[0]) if exc.args else str(exc)
            unresolved.append(f"{credential.field} ({credential.what}): {reason}; fix: {exc.help}")
    return values, unresolved


def register_inventory_secrets(inventory: Inventory, store_urls: tuple[str | None, ...] = ()
                               ) -> list[str]:
    """Resolve and register every secret of ``inventory`` (and of a
    PostgreSQL store among ``store_urls``) for masking; the lines of those
    that cannot be resolved in this process (a host using one fails when it
    first needs it, with the same reason)."""
    return resolve_all(inventory, store_urls)[1]


def register_lab_secrets_early(path: str | Path | None, store_urls: tuple[str | None, ...] = ()):
    """Best effort, before any option or argument is checked: every secret
    of the lab at ``path`` registered, so that a check's message masks a
    secret typed into any option.  Whatever is wrong with the lab is left
    to the checks that follow, which say it properly.  Returns the
    inventory read (the run configuration keeps it: read once), or None."""
    if not path:
        return None
    try:
        from xenhil.harness.lab.inventory import load_inventory
        inventory = load_inventory(path)
        register_inventory_secrets(inventory, store_urls)
    except Exception:  # the lab's own check reports it, with its fix
        return None
    return inventory


__all__ = ["Credential", "libpq_passwords", "referenced", "resolve_all", "register_inventory_secrets",
           "register_lab_secrets_early"]
