"""Prove that a lab's secrets reached no report: every credential an
inventory references (BMC and SOL passwords, SSH key passphrases) and every
line of its private keys, searched for in every file under the given
folders.  Only the file and which kind of secret are ever printed."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from harness.errors import XenhilError


@dataclass(frozen=True)
class Leak:
    path: Path
    what: str          # "power password of vhost1", never the value


def inventory_secrets(inventory) -> dict[str, str]:
    """Secret value -> what it is, for every host of ``inventory``."""
    found: dict[str, str] = {}

    def add(ref, what: str) -> None:
        if ref is None:
            return
        try:
            value = ref.resolve()
        except XenhilError:
            return  # unset or unreadable: it cannot have leaked from this run either
        if value:
            found[value] = what

    for host in inventory.hosts.values():
        if host.power is not None:
            add(host.power.password, f"power password of {host.name}")
        if host.serial is not None:
            add(host.serial.password, f"serial password of {host.name}")
        if host.ssh is not None:
            add(host.ssh.passphrase, f"SSH key passphrase of {host.name}")
            if host.ssh.key_file is not None:
                try:
                    text = Path(host.ssh.key_file).read_text()
                except OSError:
                    continue
                for line in text.splitlines():
                    line = line.strip()
                    if len(line) >= 16 and not line.startswith("-----"):
                        found[line] = f"private key {host.ssh.key_file} of {host.name}"
    return found


def scan(folders: Iterable[Path], secrets: dict[str, str]) -> list[Leak]:
    """Every file under ``folders`` holding one of ``secrets``."""
    needles = [(value.encode(), what) for value, what in secrets.items()]
    leaks: list[Leak] = []
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                path = Path(root) / name
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                for needle, what in needles:
                    if needle in data:
                        leaks.append(Leak(path, what))
    return leaks
