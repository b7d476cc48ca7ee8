"""The lab inventory as typed, validated values.

``harness.lab.inventory`` builds these from ``lab/*.yaml`` (schema + semantic
checks); everything else in the harness takes these objects, never raw YAML.
Secrets are held only as references (:class:`CredentialRef`) and resolved at
the moment of use, so an inventory object can be logged or reported safely.
"""
from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from xenhil.harness.errors import ConfigError
from xenhil.harness.lab.profile import HostProfile

# Capabilities a host may declare, with their type.  Unknown names are errors
# (a typo such as "iomu: true" must not silently make a host unmatchable).
KNOWN_CAPABILITIES: dict[str, type] = {
    "cpu_vendor": str,      # "intel" | "amd"
    "virt": str,            # "vmx" | "svm"
    "iommu": bool,
    "ram_mb": int,
    "cpus": int,
    # The host is itself emulated (QEMU TCG, nested SVM): guests need the
    # settings of harness.lab.virtual.quirks (e.g. tsc_mode="native").
    "emulated": bool,
}


# The steps of a host's health check (harness.lab.health), in the order they
# run.  A host's inventory may limit its check to some of them (``health:
# {steps: [...]}``): the others are then reported as not applicable, never
# as passed.
HEALTH_STEPS: tuple[str, ...] = ("power-cycle", "xen-banner", "dom0-ssh", "xl-info", "guest",
                                 "leftover-domains", "leftover-device-models", "leftover-files")


def os_user() -> str:
    """The name of the user this process runs as, from the operating system
    (the real uid's passwd entry), never from $LOGNAME/$USER, which anyone
    can set: lease holders and run provenance use it.  The real uid, not the
    effective one: it is the person who started the process, also under a
    set-uid helper, where the effective uid names the helper's owner."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (containers)
        return f"uid{uid}"


@dataclass(frozen=True)
class CredentialRef:
    """Where a secret lives: an environment variable or a file.  Never the value."""

    env: str | None = None
    file: Path | None = None

    def resolve(self) -> str:
        """The secret's value, registered with harness.attach so that it is
        scrubbed from every attachment, Allure result and log record."""
        # Imported here: the lab layer must not pull in allure at import time.
        from xenhil.harness.secrets import register_secret

        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"credential environment variable {self.env} is not set",
                                  help=f"export {self.env}=... before running, or reference a file")
            return register_secret(value)
        if self.file:
            from xenhil.harness.safeio import read_text
            # Bounded and never blocking: a FIFO or /dev/zero is refused, not read.
            return register_secret(read_text(self.file, "credential file",
                                             fix="create the file with the secret (mode 0600) "
                                                 "or fix its path").strip())
        raise ConfigError("empty credential reference", help="give env: or file:")

    def __repr__(self) -> str:  # the reference is safe to show, the value never is
        return f"CredentialRef(env={self.env!r}, file={str(self.file) if self.file else None!r})"


@dataclass(frozen=True)
class SSHConfig:
    address: str
    port: int = 22
    user: str = "root"
    key_file: Path | None = None
    # Pinned host key: "ssh-ed25519 AAAA..." (type and base64), or a known_hosts file.
    host_key: str | None = None
    known_hosts: Path | None = None
    passphrase: CredentialRef | None = None


@dataclass(frozen=True)
class SerialConfig:
    kind: str                       # "tcp" | "telnet" | "ipmi-sol" | "command"
    host: str | None = None         # tcp/telnet: console server address; ipmi-sol: BMC address
    port: int | None = None         # ipmi-sol: BMC port (623)
    command: str | None = None      # kind "command": argv string run locally
    # ipmi-sol: BMC login (taken from power when power is also ipmi and these are not given)
    user: str | None = None
    password: CredentialRef | None = None


#: The UDP port of IPMI over LAN (RMCP+), when the inventory gives none.
DEFAULT_IPMI_PORT = 623


def section_port(value: Any, default: int) -> int | None:
    """An inventory section's port as given (``default`` when absent), None
    when it is not a whole number (the schema reports that)."""
    if value is None:
        return default
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class PowerConfig:
    kind: str                       # a registered power driver's kind (harness.access.power)
    address: str | None = None      # ipmi: BMC address
    port: int = DEFAULT_IPMI_PORT
    user: str | None = None
    password: CredentialRef | None = None
    # kind "command": local command lines per action ({"on": ..., "off": ..., "cycle": ..., "status": ...})
    commands: dict[str, str] = field(default_factory=dict)
    # The fields of another registered kind (harness.access.power), as the inventory gives them.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str
    ssh: SSHConfig | None           # None: the inventory says "ssh: none" (no SSH access)
    serial: SerialConfig | None
    power: PowerConfig
    tags: frozenset[str] = frozenset()
    capabilities: dict[str, object] = field(default_factory=dict)
    # The health check steps this host can do (inventory ``health.steps``);
    # None: all of HEALTH_STEPS.
    health_steps: tuple[str, ...] | None = None

    @property
    def profile(self) -> HostProfile:
        """What kind of host this is (real or emulated) and what follows
        from it: every layer asks this rather than the capabilities."""
        return HostProfile.of(self.capabilities)

    def matches(self, tags: frozenset[str] | set[str] = frozenset(),
                capabilities: dict[str, object] | None = None) -> bool:
        """True when this host has every tag and every capability value asked for."""
        if not set(tags) <= self.tags:
            return False
        for key, want in (capabilities or {}).items():
            if self.capabilities.get(key) != want:
                return False
        return True


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: dict[str, HostSpec]
    # Optional lease store URL given in the file (sqlite:///path or postgresql://...)
    lease_db: str | None = None

    def host(self, name: str) -> HostSpec:
        try:
            return self.hosts[name]
        except KeyError:
            from xenhil.harness.options import shown
            known = ", ".join(sorted(self.hosts)) or "none"
            raise ConfigError(f"{self.path}: no host named {shown(name)}",
                              help=f"use one of: {known}") from None
