"""The hostile-input corpus (issue 15, item 5): malformed and hostile inputs
generated here, across the command line, the pytest options, the inventory,
split strings, save files, Xen builds, the lease and results stores, the
report and credential files.

Each case runs as a subprocess (a child of tests/support/forkrun.py's fork
server: its own working directory holding the inputs, its environment,
RLIMIT_AS of 512 MiB, killed after 60 s of wall time) and must end with:

- the documented exit code (bad input: 2 at the command line, pytest's
  usage error 4 under pytest);
- one line carrying the fix ("fix:") and naming the field (an option, an
  inventory field, ``device_models[i]``, the file), and at most two more
  lines (a split's pointer, lab check's count);
- no traceback, no INTERNALERROR, no form of the planted secret
  (harness.secrets.secret_forms) in anything it printed;
- nothing written: the case's folder (also its HOME) is the same after;
- within 10 s of CPU time and 512 MiB.

``CASES`` is built at import; ``test_corpus_counts`` prints the counts by
input kind and checks there are at least 250.
"""
from __future__ import annotations

import base64
import collections
import gzip
import io
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xenhil.harness.secrets import secret_forms
from xenhil.harness.xen import savefile as sf
from tests.support.savefile_builder import SaveFileBuilder, record

ROOT = Path(__file__).resolve().parents[1]
# The time bound is CPU time: on a loaded machine (CI's -n 2, a virtual host
# booting) a case's wall time stretched past 10 s with no more work done.
# A hang (a blocked read burns no CPU) is caught by the wall-clock kill.
TIME_LIMIT_S = 10.0
HANG_LIMIT_S = 60.0
MEMORY_LIMIT = 512 << 20
# Fixed, so that xdist workers collect the same case ids.
SECRET = "corpusPW-7f3a9c2e41b8"
SECRET_VAR = "XENHIL_CORPUS_PW"

# Special file contents: made by _materialise, not written as bytes.
FIFO, SOCKET, FOLDER, DEVZERO = "<fifo>", "<socket>", "<folder>", "<dev/zero>"


@dataclass
class Case:
    kind: str                     # the input kind (counted)
    id: str
    argv: list[str]               # "{d}" stands for the case's folder
    field: str                    # what the error line must name
    files: dict = field(default_factory=dict)    # relative path -> bytes | str | FIFO | ...
    rc: int = 2
    runner: str = "cli"           # "cli" (xenhil) or "pytest"
    env: dict = field(default_factory=dict)


CASES: list[Case] = []


def case(kind: str, id: str, argv: list[str], field: str, **kw) -> None:
    CASES.append(Case(kind, id, argv, field, **kw))


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------

# A well-formed ed25519 public key line (the host key pin), so that a case's
# only problem is the one it plants.
HOST_KEY = "ssh-ed25519 " + base64.b64encode(struct.pack(">I", 11) + b"ssh-ed25519"
                                             + struct.pack(">I", 32) + bytes(range(32))).decode()

GOOD_HOST = """\
  - name: h1
    address: 192.0.2.10
    ssh: none
    power: {kind: ipmi, address: 192.0.2.110, user: ADMIN, password: {env: XENHIL_CORPUS_PW}}
"""
GOOD_LAB = "hosts:\n" + GOOD_HOST
NONE_LAB = "hosts:\n  - name: h1\n    address: 192.0.2.10\n    ssh: none\n    power: {kind: none}\n"


def host_with(power: str = "{kind: none}", extra: str = "", address: str = "192.0.2.10",
              ssh: str = "none") -> str:
    return (f"hosts:\n  - name: h1\n    address: {address}\n    ssh: {ssh}\n    power: {power}\n"
            + extra)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append(f"hosts: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def tar_member(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def sparse_tar() -> bytes:
    """A GNU sparse member (old format, type 'S') claiming 64 GiB."""
    info = tarfile.TarInfo("install/boot/xen.gz")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 0
    raw = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    # realsize (offset 483, 12 octal bytes) of the old GNU sparse header: 64 GiB
    raw[483:495] = b"%011o\0" % (64 << 30)
    raw[148:156] = b"        "
    raw[148:156] = b"%06o\0 " % (sum(raw) & 0o777777)
    return gzip.compress(bytes(raw) + b"\0" * 1024)


def tar_bomb() -> bytes:
    """A gzip tarball of a few KiB whose member claims 600 MiB (its first MiB
    of zeros follows): a decompression bomb, refused from the header."""
    info = tarfile.TarInfo("boot/xen-4.17.gz")
    info.size = 600 << 20
    return gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * (1 << 20))


# --------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------

# 1. Numbers on the command line.
BAD_NUMBERS = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1", "abc", "", "0x10", "5s",
               "1e12", " ", "--"]
for option, verb in (("--ttl", ["reserve", "--lab", "{d}/lab.yaml"]),
                     ("--timeout", ["reserve", "--lab", "{d}/lab.yaml"]),
                     ("--timeout", ["host", "run", "h1", "--lab", "{d}/lab.yaml"])):
    for value in BAD_NUMBERS + (["0"] if verb[0] == "host" or option == "--ttl" else []):
        if value == "--":
            continue
        case("cli-number", f"{verb[0]}{option}={value!r}", verb + [f"{option}={value}"], option,
             files={"lab.yaml": NONE_LAB})

# 2. Other command-line arguments.
for cap in ["x", "=1", "foo=1", "iommu=maybe", "cpus=abc", "cpus=", f"x{SECRET}=1"]:
    case("cli-args", f"capability {cap.replace(SECRET, 'SECRET')!r}", ["reserve", "--lab", "{d}/lab.yaml", "--capability", cap],
         "--capability", files={"lab.yaml": GOOD_LAB})
for argv, fld in ((["bogus"], "VERB"), (["lab"], "ACTION"), (["split"], "SUBVERB"),
                  (["savefile", "inspect"], "file"), (["power", "h1", "explode"], "action"),
                  (["release"], "HOST"), (["reserve", "--lab"], "--lab"),
                  (["host", "run", "h1", "--lab", "{d}/lab.yaml"], "command"),
                  (["report"], "results_dir"), (["lab", "status"], "lab"),
                  (["host", "run", "nosuch", "--lab", "{d}/lab.yaml", "--", "true"], "nosuch"),
                  (["release", "nosuch", "--lab", "{d}/lab.yaml"], "nosuch")):
    case("cli-args", " ".join(argv), argv, fld, files={"lab.yaml": NONE_LAB})

# 3. Inventory files (xenhil lab check).
INVENTORY_FILES = {
    "missing": (None, "lab.yaml"),
    "folder": (FOLDER, "lab.yaml"),
    "fifo": (FIFO, "lab.yaml"),
    "socket": (SOCKET, "lab.yaml"),
    "dev-zero": (DEVZERO, "lab.yaml"),
    "empty": (b"", "lab.yaml"),
    "binary": (bytes(range(256)) * 4, "lab.yaml"),
    "latin-1": ("hosts:\n  - name: h\xe9\n".encode("latin-1"), "lab.yaml"),
    "5 MiB": (b"# " + b"x" * (5 << 20) + b"\n", "lab.yaml"),
    "alias bomb": (alias_bomb(), "lab.yaml"),
    "alias bomb, mapping": ("a: &a {k: v}\n" + "".join(
        f"b{i}: &b{i} {{" + ", ".join(f"k{j}: *{'a' if i == 0 else f'b{i - 1}'}" for j in range(10))
        + "}\n" for i in range(8)) + "hosts: [*b7]\n", "lab.yaml"),
    "recursive alias": ("hosts: &h [*h]\n", "lab.yaml"),
    "nested 10000 [": ("hosts: " + "[" * 10000 + "]" * 10000 + "\n", "lab.yaml"),
    "nested 100 {": ("hosts: " + "{a: " * 100 + "1" + "}" * 100 + "\n", "lab.yaml"),
    "nested 50 lists, block": ("hosts:\n" + "".join("  " * i + "-\n" for i in range(1, 50)), "lab.yaml"),
    "150k values": ("hosts:\n" + "  - x\n" * 150_000, "lab.yaml"),
    "tab indentation": ("hosts:\n\t- name: h1\n", "lab.yaml"),
    "unbalanced quote": ('hosts:\n  - name: "h1\n', "lab.yaml"),
    "unbalanced bracket": ("hosts: [\n", "lab.yaml"),
    "python tag": ("hosts: !!python/object/apply:os.system ['true']\n", "lab.yaml"),
    "top-level list": ("- a\n- b\n", "lab.yaml"),
    "top-level scalar": ("just text\n", "lab.yaml"),
    "two documents": (GOOD_LAB + "---\n" + GOOD_LAB, "lab.yaml"),
    "NUL byte": ("hosts:\n  - name: h\0\n", "lab.yaml"),
}
for name, (content, fld) in INVENTORY_FILES.items():
    files = {} if content is None else {"lab.yaml": content}
    case("inventory-file", name, ["lab", "check", "{d}/lab.yaml"], fld, files=files)

def power_command(line: str, action: str = "on") -> tuple[str, str]:
    """(An inventory whose host's power ``action`` runs ``line``, the field named.)"""
    return host_with(f"{{kind: command, commands: {{{action}: '{line}'}}}}"), f"power.commands.{action}"


def serial_command(line: str) -> tuple[str, str]:
    """(An inventory whose host's console is ``line``'s output, the field named.)"""
    return host_with(extra=f"    serial: {{kind: command, command: '{line}'}}\n"), "serial.command"


INLINE_SECRETS = {
    # where the secret hides -> (inventory text, field named)
    "ipmitool -P": power_command(f"ipmitool -H b -U u -P {SECRET} power on"),
    "ipmitool -Pvalue": power_command(f"ipmitool -P{SECRET} power off", "off"),
    "--password=": power_command(f"bmctool --password={SECRET} cycle", "cycle"),
    "--password value": power_command(f"bmctool --password {SECRET} st", "status"),
    "sshpass -p": power_command(f"sshpass -p {SECRET} ssh bmc on"),
    "PASSWORD= assignment": power_command(f"IPMI_PASSWORD={SECRET} ipmitool -E on"),
    "URL in command": power_command(f"curl https://admin:{SECRET}@bmc/on"),
    "URL with @ in password": power_command(f"curl https://admin:p@{SECRET}@bmc/on"),
    "serial command -P": serial_command(f"ipmitool -I lanplus -P {SECRET} sol activate"),
    "lease_db URL password": (f"lease_db: postgresql://lab:{SECRET}@db/leases\n" + GOOD_LAB, "lease_db"),
    "lease_db password with @": (f"lease_db: postgresql://lab:p@{SECRET}@db/leases\n" + GOOD_LAB, "lease_db"),
    "lease_db ?password=": (f"lease_db: postgresql://lab@db/leases?password={SECRET}\n" + GOOD_LAB, "lease_db"),
    "lease_db keyword DSN": (f"lease_db: 'host=db dbname=leases password={SECRET}'\n" + GOOD_LAB, "lease_db"),
    "power.password inline": (host_with(f"{{kind: ipmi, address: b, user: u, password: {SECRET}}}"),
                              "power.password"),
    "power.password number": (host_with("{kind: ipmi, address: b, user: u, password: 12345678}"),
                               "power.password"),
    "serial.password inline": (host_with(extra=f"    serial: {{kind: ipmi-sol, host: b, user: u, password: '{SECRET}'}}\n"),
                               "serial.password"),
    "ssh.passphrase inline": (host_with(ssh=f"{{user: root, host_key: '" + HOST_KEY + f"', passphrase: {SECRET}}}"),
                              "ssh.passphrase"),
    "unknown key bmc_password": (host_with(f"{{kind: ipmi, address: b, user: u, password: {{env: X}}, bmc_password: {SECRET}}}"),
                                 "power.bmc_password"),
    "top-level token": (f"token: {SECRET}\n" + GOOD_LAB, "token"),
    "address user:pw@host": (host_with(address=f"'root:{SECRET}@192.0.2.10'"), "address"),
    "power address user:pw@host": (host_with(f"{{kind: ipmi, address: 'u:{SECRET}@b', user: u, password: {{env: X}}}}"),
                                   "power.address"),
    "power kind with secret": (host_with(f"{{kind: 'ipmitool -P {SECRET}'}}"), "power.kind"),
    "env name is the secret": (host_with(f"{{kind: ipmi, address: b, user: u, password: {{env: '{SECRET}'}}}}"),
                               "power.password.env"),
    "password env and file": (host_with("{kind: ipmi, address: b, user: u, password: {env: X, file: /x}}"),
                              "power.password"),
    "curl -u user:password": power_command(f"curl -u admin:{SECRET} https://bmc/on"),
    "racadm -p": power_command(f"racadm -r bmc -u root -p {SECRET} serveraction powerup"),
    "ipmipower -p": power_command(f"ipmipower -h bmc -u admin -p {SECRET} --off", "off"),
    "ipmitool -k (K_g key)": power_command(f"ipmitool -I lanplus -k {SECRET} -E on"),
    "ipmi-sol -p in serial": serial_command(f"ipmi-sol -h b -u u -p {SECRET}"),
    "power.user user:password": (host_with(f"{{kind: ipmi, address: b, user: 'ADMIN:{SECRET}', password: {{env: X}}}}"),
                                 "power.user"),
    "serial.user user:password": (host_with(extra=f"    serial: {{kind: ipmi-sol, host: b, user: 'ADMIN:{SECRET}', password: {{env: X}}}}\n"),
                                  "serial.user"),
    "ssh.user user:password": (host_with(ssh=f"{{user: 'root:{SECRET}', host_key: '" + HOST_KEY + "'}"), "ssh.user"),
}
for name, (text, fld) in INLINE_SECRETS.items():
    case("inventory-secret", name, ["lab", "check", "{d}/lab.yaml"], fld, files={"lab.yaml": text})

INVENTORY_SCHEMA = {
    "port 0": (host_with(ssh="{user: root, port: 0, host_key: '" + HOST_KEY + "'}"), "ssh.port"),
    "port 70000": (host_with(ssh="{user: root, port: 70000, host_key: '" + HOST_KEY + "'}"), "ssh.port"),
    "port text": (host_with(ssh="{user: root, port: ssh, host_key: '" + HOST_KEY + "'}"), "ssh.port"),
    "port 1e400": (host_with(ssh="{user: root, port: 1e400, host_key: '" + HOST_KEY + "'}"), "ssh.port"),
    "port .nan": (host_with(ssh="{user: root, port: .nan, host_key: '" + HOST_KEY + "'}"), "ssh.port"),
    "name with space": ("hosts:\n  - name: 'h 1'\n    address: a\n    ssh: none\n    power: {kind: none}\n", "name"),
    "name 200 chars": ("hosts:\n  - name: " + "h" * 200 + "\n    address: a\n    ssh: none\n    power: {kind: none}\n", "name"),
    "unknown power kind": (host_with("{kind: telepathy}"), "power.kind"),
    "no hosts": ("lease_db: sqlite:///x\n", "hosts"),
    "hosts empty": ("hosts: []\n", "hosts"),
    "hosts a mapping": ("hosts: {h1: {}}\n", "hosts"),
    "env name with space": (host_with("{kind: ipmi, address: b, user: u, password: {env: 'A B'}}"), "power.password.env"),
    "key_file missing": (host_with(ssh="{user: root, key_file: nope, host_key: '" + HOST_KEY + "'}"), "ssh.key_file"),
    "key_file a FIFO": (host_with(ssh="{user: root, key_file: fifo, host_key: '" + HOST_KEY + "'}"), "ssh.key_file"),
    "key_file /dev/zero": (host_with(ssh="{user: root, key_file: /dev/zero, host_key: '" + HOST_KEY + "'}"), "ssh.key_file"),
    "known_hosts a FIFO": (host_with(ssh="{user: root, known_hosts: fifo}"), "ssh.known_hosts"),
    "credential file FIFO": (host_with("{kind: ipmi, address: b, user: u, password: {file: fifo}}"), "power.password.file"),
    "credential file /dev/zero": (host_with("{kind: ipmi, address: b, user: u, password: {file: /dev/zero}}"), "power.password.file"),
    "credential file a folder": (host_with("{kind: ipmi, address: b, user: u, password: {file: /tmp}}"), "power.password.file"),
    "host_key garbage": (host_with(ssh="{user: root, host_key: 'ssh-ed25519 !!!!'}"), "ssh.host_key"),
    "host_key 100k": (host_with(ssh="{user: root, host_key: 'ssh-ed25519 " + "A" * 100_000 + "'}"), "ssh.host_key"),
    "duplicate key": ("hosts:\n  - name: h1\n    name: h2\n    address: a\n    ssh: none\n    power: {kind: none}\n", "name"),
    "unknown capability": (host_with(extra="    capabilities: {iomu: true}\n"), "capabilities.iomu"),
    "virt mismatch": (host_with(extra="    capabilities: {cpu_vendor: intel, virt: svm}\n"), "capabilities.virt"),
    "ram_mb negative": (host_with(extra="    capabilities: {ram_mb: -5}\n"), "capabilities.ram_mb"),
    "tags with comma": (host_with(extra="    tags: ['a,b']\n"), "tags"),
    "lease_db mysql": ("lease_db: mysql://db/leases\n" + NONE_LAB, "lease_db"),
    "command console with host": (host_with(extra="    serial: {kind: command, command: c, host: x}\n"), "serial.host"),
}
for name, (text, fld) in INVENTORY_SCHEMA.items():
    files = {"lab.yaml": text}
    if "fifo" in text:
        files["fifo"] = FIFO
    case("inventory-schema", name, ["lab", "check", "{d}/lab.yaml"], fld, files=files)

# 4. Split strings (xenhil split check).
SPLITS = {
    "10k chars": ["name=a,ui," + "x" * 10_000],
    "1M chars": ["name=a,ui," + "x," * 500_000],
    "200k commas": ["name=a,ui" + "," * 200_000],
    "40 models": ["ui"] + [f"name=m{i},vifs=v{i}" for i in range(39)],
    "10000 models": ["ui"] + ["ide"] * 9999,
    "9 models": ["name=a,ui"] + [f"name=m{i},vifs=v{i}" for i in range(8)],
    "escape char": ["name=a,ui,\x1b[31mred"],
    "newline": ["name=a,ui", "ide\nx"],
    "NUL": ["name=a,ui,\0"],
    "tab": ["name=a,ui,\tide"],
    "fullwidth ide": ["name=a,ui", "name=b,ｉｄｅ"],
    "cyrillic i": ["name=a,ui", "name=b,\u0456de"],
    "RTL override": ["name=a,ui,\u202eedi"],
    "unknown flag": ["name=a,ui,sound"],
    "flag twice": ["name=a,ui,ide,ide"],
    "empty item": ["name=a,ui,,ide"],
    "leading comma": ["name=a,ui", ",ide"],
    "empty string": ["name=a,ui", ""],
    "empty name": ["name=,ui"],
    "plus in name": ["name=a+b,ui"],
    "name 33 chars": ["name=" + "n" * 33 + ",ui"],
    "name 100k": ["name=" + "n" * 100_000 + ",ui"],
    "vifs a;;b": ["name=a,ui,vifs=a;;b"],
    "vif id 1000": ["name=a,ui,vifs=" + "v" * 1000],
    "relative path": ["name=a,ui,path=qemu"],
    "path 4000": ["name=a,ui,path=/" + "p" * 4000 + ",x"],
    "Name=": ["Name=a,ui"],
    "trailing blank": ["name=a,ui "],
    "=x": ["=x,ui"],
    "ui=1": ["name=a,ui=1", "name=b,ui"],
    "no ui": ["name=a,ide"],
    "ide twice": ["name=a,ui,ide", "name=b,ide"],
    "name twice": ["name=a,ui", "name=a,ide"],
    "path no name": ["ui,path=/usr/bin/qemu"],
    "secret as flag": ["name=a,ui," + SECRET],
}
for name, models in SPLITS.items():
    # $XENHIL_LAB names the lab: its secrets are registered before any message.
    case("split", name, ["split", "check", *models], "device_models",
         files={"lab.yaml": GOOD_LAB}, env={"XENHIL_LAB": "{d}/lab.yaml"})

# 5. Save files (xenhil savefile inspect).
GOOD_SAVE = SaveFileBuilder().build()
HEADER = sf.XL_MAGIC + struct.pack("<4I", sf.XL_BYTEORDER_VALUE, 3, 0, 0)
LIBXL = struct.pack(">QII", sf.LIBXL_IDENT, sf.LIBXL_VERSION, 0)


def xl(optional: bytes, rest: bytes = b"") -> bytes:
    return sf.XL_MAGIC + struct.pack("<4I", sf.XL_BYTEORDER_VALUE, 3, 0, len(optional)) + optional + rest


SAVEFILES = {
    "missing": None,
    "folder": FOLDER,
    "fifo": FIFO,
    "socket": SOCKET,
    "dev-zero": DEVZERO,
    "empty": b"",
    "text": b"hello, not a save file\n",
    "wrong magic": b"Y" + GOOD_SAVE[1:],
    "bad byteorder": GOOD_SAVE[:32] + b"\x05\x06\x07\x08" + GOOD_SAVE[36:],
    "unknown mandatory flags": sf.XL_MAGIC + struct.pack("<4I", sf.XL_BYTEORDER_VALUE, 0xF0, 0, 0),
    "legacy stream": sf.XL_MAGIC + struct.pack("<4I", sf.XL_BYTEORDER_VALUE, 1, 0, 0),
    "optional_data_len 4 GiB": sf.XL_MAGIC + struct.pack("<4I", sf.XL_BYTEORDER_VALUE, 3, 0, 0xFFFFFFFF)
                               + struct.pack("<I", 0xFFFFFFF0),
    "config length 4 GiB": xl(struct.pack("<I", 0xFFFFFFF0) + b"{}"),
    "config length 100 MiB": sf.XL_MAGIC + struct.pack("<4I", sf.XL_BYTEORDER_VALUE, 3, 0, 200 << 20)
                             + struct.pack("<I", 100 << 20) + b"{}",
    "optional_data_len 2": xl(b"ab"),
    "bad libxl ident": HEADER + b"NotLibxl" + struct.pack(">II", 2, 0),
    "libxl version 9": HEADER + struct.pack(">QII", sf.LIBXL_IDENT, 9, 0),
    "unknown record type": HEADER + LIBXL + record(0x77, b"x"),
    "xenstore length 4 GiB": HEADER + LIBXL + struct.pack("<II", 2, 0xFFFFFFF8) + b"\0" * 16,
    "emulator length 4 GiB": HEADER + LIBXL + struct.pack("<II", 3, 0xFFFFFFF8) + b"\0" * 16,
    "END with a length": HEADER + LIBXL + struct.pack("<II", 0, 64),
    "libxc record 4 GiB": HEADER + LIBXL + record(1) + struct.pack(">QIIHHI", sf.LIBXC_MARKER, sf.LIBXC_ID, 3, 0, 0, 0)
                          + struct.pack("<IHHII", 2, 12, 0, 4, 17) + struct.pack("<II", 1, 0xFFFFFFF0),
    "libxc bad marker": HEADER + LIBXL + record(1) + b"\0" * 40,
    "20000 libxl records": HEADER + LIBXL + record(4) * 20000,
    "no END": HEADER + LIBXL + record(4),
    "trailing data": GOOD_SAVE + b"junk",
    "gzip truncated": gzip.compress(GOOD_SAVE)[:200],
    "gzip garbage": b"\x1f\x8b" + b"\xff" * 100,
    "gzip of text": gzip.compress(b"hello"),
    "gzip of 4 GiB length": gzip.compress(HEADER + LIBXL + struct.pack("<II", 2, 0xFFFFFFF8) + b"\0" * 16),
}
for cut in (10, 40, 60, 200, 500, 1000, len(GOOD_SAVE) - 8, len(GOOD_SAVE) - 1):
    SAVEFILES[f"cut at {cut}"] = GOOD_SAVE[:cut]
for name, content in SAVEFILES.items():
    files = {} if content is None else {"guest.save": content}
    case("savefile", name, ["savefile", "inspect", "{d}/guest.save"], "guest.save", files=files)

# 6. Lease and results stores.
STORE_URLS = {
    "DSN with password": (f"host=db dbname=leases password={SECRET}", {}),
    "postgres URL password": (f"postgresql://lab:{SECRET}@127.0.0.1:1/leases", {}),
    "postgres password with @": (f"postgresql://lab:p@{SECRET}@127.0.0.1:1/leases", {}),
    "mysql scheme": ("mysql://db/leases", {}),
    "sqlite:// no file": ("sqlite://", {}),
    "a folder": ("sqlite://{d}/store", {"store": FOLDER}),
    "a FIFO": ("sqlite://{d}/store", {"store": FIFO}),
    "dev-zero": ("/dev/zero", {}),
    "not SQLite": ("{d}/store", {"store": b"this is not a database" * 10}),
    "SQLite magic, garbage": ("{d}/store", {"store": b"SQLite format 3\0" + b"\xff" * 4000}),
    "missing folder": ("sqlite:///nonexistent-folder/x/leases.sqlite", {}),
    "empty": ("", {}),
}
for name, (url, extra) in STORE_URLS.items():
    case("lease-store", name, ["lab", "status", "--lab", "{d}/lab.yaml", "--lab-db", url], "--lab-db",
         files={"lab.yaml": NONE_LAB, **extra})

# 7. The report (xenhil report): its inputs are checked before anything is written.
RESULTS = {"allure/x-result.json": json.dumps({"name": "t", "status": "passed"}),
           "allure/environment.properties": "xenhil.run_id=r1\n"}
REPORT = {
    "results missing": (["{d}/nope", "-o", "{d}/out"], {}, "RESULTS_DIR"),
    "results a file": (["{d}/f", "-o", "{d}/out"], {"f": b"x"}, "RESULTS_DIR"),
    "results empty": (["{d}/empty", "-o", "{d}/out"], {"empty": FOLDER}, "RESULTS_DIR"),
    "output a file": (["{d}/allure", "-o", "{d}/f"], {"f": b"x", **RESULTS}, "--output"),
    "output is the results": (["{d}/allure", "-o", "{d}/allure"], RESULTS, "--output"),
    "output inside the results": (["{d}/allure", "-o", "{d}/allure/html"], RESULTS, "--output"),
    "output holds the results": (["{d}/allure", "-o", "{d}"], RESULTS, "--output"),
    "store missing": (["{d}/allure", "-o", "{d}/out", "--artifacts", "{d}/none"], RESULTS, "--results-db"),
    "store postgres": (["{d}/allure", "-o", "{d}/out", "--results-db", f"postgresql://u:{SECRET}@h/db"],
                       RESULTS, "--results-db"),
    "store DSN": (["{d}/allure", "-o", "{d}/out", "--results-db", f"host=h password={SECRET}"],
                  RESULTS, "--results-db"),
    "store not SQLite": (["{d}/allure", "-o", "{d}/out", "--results-db", "{d}/r.sqlite"],
                         {"r.sqlite": b"nope" * 100, **RESULTS}, "--results-db"),
    "store a FIFO": (["{d}/allure", "-o", "{d}/out", "--results-db", "{d}/r.sqlite"],
                     {"r.sqlite": FIFO, **RESULTS}, "--results-db"),
    "known issues FIFO": (["{d}/allure", "-o", "{d}/out", "--results-db", "{d}/r.sqlite", "--known-issues", "{d}/k"],
                          {"k": FIFO, "r.sqlite": b"", **RESULTS}, "known issues"),
    "known issues bad YAML": (["{d}/allure", "-o", "{d}/out", "--results-db", "{d}/r.sqlite", "--known-issues", "{d}/k"],
                              {"k": "- [", "r.sqlite": b"", **RESULTS}, "known issues"),
    "known issues alias bomb": (["{d}/allure", "-o", "{d}/out", "--results-db", "{d}/r.sqlite", "--known-issues", "{d}/k"],
                                {"k": "- " + alias_bomb(3, 3).replace("\n", "\n  "), "r.sqlite": b"", **RESULTS}, "k"),
    "scan: secret unset": (["{d}/allure", "-o", "{d}/out", "--results-db", "{d}/r.sqlite", "--scan-secrets", "{d}/lab.yaml"],
                           {"lab.yaml": GOOD_LAB, "r.sqlite": b"", **RESULTS}, "power.password"),
    "scan: folder missing": (["{d}/allure", "-o", "{d}/out", "--results-db", "{d}/r.sqlite", "--scan-secrets",
                              "{d}/lab.yaml", "--scan-also", "{d}/artifacts/run"],
                             {"lab.yaml": NONE_LAB, "r.sqlite": b"", **RESULTS}, "--scan-also"),
    "no run id": (["{d}/allure", "-o", "{d}/out", "--results-db", "{d}/r.sqlite"],
                  {"r.sqlite": b"", "allure/x-result.json": "{}"}, "run"),
}
for name, (argv, files, fld) in REPORT.items():
    env = {SECRET_VAR: ""} if "unset" in name else {}
    case("report", name, ["report", *argv], fld, files=files, env=env)

# 8. Credential files and references, at the moment of use (xenhil power).
CREDENTIALS = {
    "env unset": ("{env: XENHIL_CORPUS_UNSET}", {}, "XENHIL_CORPUS_UNSET"),
    "file 1 MiB": ("{file: big}", {"big": b"p" * (1 << 20)}, "big"),
    "file not UTF-8": ("{file: bin}", {"bin": b"\xff\xfe" * 10}, "bin"),
}
for name, (ref, files, fld) in CREDENTIALS.items():
    text = host_with(f"{{kind: ipmi, address: 127.0.0.1, port: 9, user: u, password: {ref}}}")
    case("credential", name, ["power", "h1", "status", "--lab", "{d}/lab.yaml"], fld,
         files={"lab.yaml": text, **files})

# 8b. The other verbs' numbers and paths, each refused before anything is
# fetched, built, leased or written.
for value in ("nan", "inf", "-1", "abc", "1e999", "2e6", ""):
    case("cli-number", f"build --max-size={value!r}",
         ["build", "--list", "--cache", "{d}/cache", f"--max-size={value}"], "--max-size")
for value in ("0", "-1", "1.5", "nan", "5000", "x"):
    case("cli-number", f"build --jobs={value!r}",
         ["build", "--xen-series", "{d}/s", "-o", "{d}/o.tar.gz", f"--jobs={value}"], "--jobs",
         files={"s": FOLDER})
for option in ("--boot-timeout", "--timeout"):
    for value in ("nan", "inf", "-1", "1e999", "abc") + (("0",) if option == "--boot-timeout" else ()):
        case("cli-number", f"lab health {option}={value!r}",
             ["lab", "health", "--lab", "{d}/lab.yaml", f"{option}={value}"], option,
             files={"lab.yaml": NONE_LAB})
for value in ("abc", "nan", "-5", "inf"):
    case("environment", f"XENHIL_BUILD_CACHE_GB={value!r}", ["build", "--list", "--cache", "{d}/cache"],
         "XENHIL_BUILD_CACHE_GB", env={"XENHIL_BUILD_CACHE_GB": value})
for name, path in (("a FIFO", "{d}/fifo"), ("/dev/zero", "/dev/zero"), ("a folder", "{d}")):
    case("environment", f"XENHIL_LAB is {name}", ["lab", "status"], "--lab",
         files={"fifo": FIFO}, env={"XENHIL_LAB": path})

REASONS = {"empty": "", "blank": "   ", "line break": "BMC\ndown", "escape": "\x1b[2Jgone",
           "10 000 characters": "x" * 10_000, "501 characters": "y" * 501}
for verb in ("quarantine", "unquarantine"):
    for name, reason in REASONS.items():
        case("cli-args", f"lab {verb} --reason {name}",
             ["lab", verb, "h1", "--lab", "{d}/lab.yaml", f"--reason={reason}"], "--reason",
             files={"lab.yaml": NONE_LAB})
OTHER_ARGS = {
    "lab health --artifacts a file": (["lab", "health", "--lab", "{d}/lab.yaml", "--artifacts", "{d}/f"],
                                      "--artifacts"),
    "host console --transcripts a file": (["host", "console", "h1", "--lab", "{d}/lab.yaml",
                                           "--transcripts", "{d}/f"], "--transcripts"),
    "host run --artifacts a file": (["host", "run", "h1", "--lab", "{d}/lab.yaml", "--artifacts", "{d}/f",
                                     "--", "true"], "--artifacts"),
    "power of a host without power control": (["power", "h1", "cycle", "--lab", "{d}/lab.yaml"], "power.kind"),
    "build -o in a missing folder": (["build", "--xen-series", "{d}/s", "-o", "{d}/no/o.tar.gz",
                                      "--cache", "{d}/cache"], "-o"),
    "build -o a folder": (["build", "--xen-series", "{d}/s", "-o", "{d}/s", "--cache", "{d}/cache"], "-o"),
    "build -o an existing file": (["build", "--xen-series", "{d}/s", "-o", "{d}/f", "--cache", "{d}/cache"],
                                  "-o"),
    "build --cache a file": (["build", "--list", "--cache", "{d}/f"], "--cache"),
    "build --components unknown": (["build", "--xen-series", "{d}/s", "--components", "xen,sound",
                                    "--cache", "{d}/cache"], "--components"),
    "split check --vif 100 000 characters": (["split", "check", "name=a,ui", "--vif", "v" * 100_000], "--vif"),
    "split check --vif with a comma": (["split", "check", "name=a,ui", "--vif", "nic1,nic2"], "--vif"),
    "reserve --tag of 100 000 characters": (["reserve", "--lab", "{d}/lab.yaml", "--tag", "t" * 100_000], "--tag"),
    "reserve --tag with a line break": (["reserve", "--lab", "{d}/lab.yaml", "--tag", "amd\nx"], "--tag"),
    "reserve --tag no host has": (["reserve", "--lab", "{d}/lab.yaml", "--tag", "arm"], "tags=arm"),
    "release a 100 000-character host": (["release", "h" * 100_000, "--lab", "{d}/lab.yaml"], "no host named"),
    "host run on a host without ssh": (["host", "run", "h1", "--lab", "{d}/lab.yaml", "--", "true"], "ssh"),
}
for name, (argv, fld) in OTHER_ARGS.items():
    case("cli-args", name, argv, fld, files={"lab.yaml": NONE_LAB, "f": b"x", "s": FOLDER})
# argparse's own errors echo what was typed: the lab's secrets are registered
# before the arguments are parsed.
for name, argv, fld in (("power action is the lab's password", ["power", "h1", SECRET, "--lab", "{d}/lab.yaml"],
                         "action"),
                        ("split check --has the lab's password", ["split", "check", "name=a,ui", "--has", SECRET],
                         "--has"),
                        ("lab quarantine --reason the password and a line break",
                         ["lab", "quarantine", "h1", "--lab", "{d}/lab.yaml", f"--reason=pw {SECRET}\nx"], "--reason")):
    case("cli-args", name, argv, fld, files={"lab.yaml": GOOD_LAB}, env={"XENHIL_LAB": "{d}/lab.yaml"})

# 8b'. Patch series (xenhil build --xen-series): read bounded before anything is fetched.
SERIES = {
    "series file a FIFO": ("{d}/s", {"s/series": FIFO}),
    "a patch a FIFO": ("{d}/s", {"s/series": "a.patch\n", "s/a.patch": FIFO}),
    "a patch of 70 MiB": ("{d}/s", {"s/series": "a.patch\n", "s/a.patch": b"+" * (70 << 20)}),
    "a patch listed but missing": ("{d}/s", {"s/series": "a.patch\n"}),
    "series file names no patch": ("{d}/s", {"s/series": "# nothing\n"}),
    "series line with an unknown option": ("{d}/s", {"s/series": "a.patch -R\n", "s/a.patch": b"x"}),
    "/dev/zero": ("/dev/zero", {}),
    "an mbox FIFO": ("{d}/m.mbox", {"m.mbox": FIFO}),
    "an mbox of 70 MiB": ("{d}/m.mbox", {"m.mbox": b"From x\n" + b"y" * (70 << 20)}),
    "binary": ("{d}/p.patch", {"p.patch": bytes(range(256)) * 100}),
    "a git range without a repository": ("git:{d}/nope:a..b", {}),
}
for name, (spec, files) in SERIES.items():
    case("build-series", name, ["build", "--cache", "{d}/cache", "-o", "{d}/o.tar.gz", "--xen-series", spec],
         "--xen-series", files=files)

# 8c. The split catalog (xenhil split list --catalog): read bounded like the inventory.
CATALOGS = {
    "FIFO": FIFO,
    "/dev/zero": DEVZERO,
    "a folder": FOLDER,
    "5 MiB": b"# " + b"x" * (5 << 20) + b"\n",
    "binary": bytes(range(256)) * 4,
    "alias bomb": "version: 1\n" + alias_bomb().replace("hosts:", "splits:"),
    "recursive alias": "version: 1\nsplits: &s [*s]\n",
    "nested 10000 [": "version: 1\nsplits: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "nested 40 lists": "version: 1\nsplits: " + "[" * 40 + "]" * 40 + "\n",
    "150k values": "version: 1\nsplits:\n" + "  - x\n" * 150_000,
    "unbalanced bracket": "version: 1\nsplits: [\n",
    "no version": "splits: []\n",
}
for name, content in CATALOGS.items():
    case("split-catalog", name, ["split", "list", "--catalog", "{d}/catalog.yaml"], "catalog",
         files={"catalog.yaml": content})

# 9. pytest options (one usage error at start-up, exit 4).
PYTEST_OPTIONS = {
    "--lease-ttl": ["nan", "inf", "-1", "0", "1e999", "abc", "99999999"],
    "--reserve-timeout": ["nan", "inf", "-5", "abc", "1e9"],
    "--lab-db": [f"host=db password={SECRET}", f"postgresql://u:{SECRET}@h/db",
                 f"postgresql://u:p@{SECRET}@h/db", "mysql://h/db", "{d}/f", "{d}/fifo"],
    "--results-db": [f"postgresql://u:{SECRET}@h/db", f"dbname=x password={SECRET}", "{d}/fifo",
                     "{d}/f", "ftp://h/x"],
    "--run-id": ["../x", "a/b", ".hidden", "r" * 200, "a b"],
    "--artifacts": ["{d}/f", "{d}/f/sub"],
    "--lab": ["{d}/nope.yaml", "{d}", "{d}/fifo", "/dev/zero", "{d}/bomb.yaml", "{d}/inline.yaml"],
    "--xen-build": ["{d}/nope", "{d}/fifo", "/dev/zero", "{d}/garbage.tar.gz", "{d}/sparse.tar.gz",
                    "{d}/dotdot.tar.gz", "{d}/empty", "{d}/bomb.tar.gz"],
    # Written into every report: one line, no credentials.
    "--series": ["", "s" * 100_000, "https://lore.example/x\nInjected: line", f"https://u:{SECRET}@patchew.example/s"],
    # A typo would require nothing.
    "--require-run": ["real-xen", "no such marker"],
    # The suites' counts: 0 or less would make their test pass having checked nothing.
    "--saverestore-cycles": ["0", "-1", "5000"],
    "--latency-samples": ["0", "-5", "1", "99999999999"],
}
PYTEST_FILES = {
    "test_x.py": "def test_x():\n    pass\n",
    "f": b"not a folder, not a database",
    "fifo": FIFO,
    "empty": FOLDER,
    "bomb.yaml": alias_bomb(),
    "inline.yaml": INLINE_SECRETS["ipmitool -P"][0],
    "garbage.tar.gz": b"\x1f\x8b" + b"garbage" * 50,
    "sparse.tar.gz": sparse_tar(),
    "dotdot.tar.gz": tar_bytes([tar_member("../../etc/evil", b"x")]),
    "bomb.tar.gz": tar_bomb(),
}
for option, values in PYTEST_OPTIONS.items():
    for value in values:
        fld = {"--lab": "lab"}.get(option, option)
        if option == "--lab" and value in ("{d}/bomb.yaml", "{d}/inline.yaml"):
            fld = "power.commands.on" if "inline" in value else "bomb.yaml"
        if value == "{d}/bomb.tar.gz":
            fld = "decompression bomb"
        case("pytest-option", f"{option}={value.replace(SECRET, 'SECRET')[:40]}",
             ["-p", "no:cacheprovider", "-q", "-p", "no:randomly", f"{option}={value}", "test_x.py"],
             fld, files=PYTEST_FILES, rc=4, runner="pytest")
# Options that are wrong together, or hold the lab's own secret: the lab's
# secrets are registered before any option is checked, so none is echoed.
PYTEST_COMBINATIONS = {
    "--lab-db and --results-db one file": (["--lab-db={d}/s.sqlite", "--results-db=sqlite://{d}/s.sqlite"],
                                           "--results-db"),
    "the lab's password in --run-id": (["--lab={d}/lab.yaml", f"--run-id={SECRET}/x"], "--run-id"),
    "the lab's password in --artifacts": (["--lab={d}/lab.yaml", f"--artifacts={{d}}/f/{SECRET}"], "--artifacts"),
    "the lab's password in --lease-ttl": (["--lab={d}/lab.yaml", f"--lease-ttl={SECRET}"], "--lease-ttl"),
}
for name, (options, fld) in PYTEST_COMBINATIONS.items():
    case("pytest-option", name, ["-p", "no:cacheprovider", "-q", "-p", "no:randomly", *options, "test_x.py"],
         fld, files={**PYTEST_FILES, "lab.yaml": GOOD_LAB}, rc=4, runner="pytest")


# --------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------

class ForkServer:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.forkrun"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def run(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def server():
    server = ForkServer()
    yield server
    server.close()


def _materialise(folder: Path, files: dict) -> None:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == FIFO:
            os.mkfifo(path)
        elif content == FOLDER:
            path.mkdir()
        elif content == DEVZERO:
            path.symlink_to("/dev/zero")
        elif content == SOCKET:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
            sock.close()
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)


def _snapshot(folder: Path) -> dict:
    state = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root) / name
            info = path.lstat()
            state[str(path.relative_to(folder))] = (stat.S_IFMT(info.st_mode), info.st_size,
                                                    info.st_mtime_ns)
    return state


def _forbidden_forms() -> list[str]:
    return [form for form in secret_forms(SECRET)]


FORMS = _forbidden_forms()


def _expand(arg: str, folder: Path) -> str:
    return arg.replace("{d}", str(folder))


@pytest.mark.parametrize("c", CASES, ids=[f"{c.kind}:{c.id}".replace(SECRET, "SECRET") for c in CASES])
def test_hostile_input(c: Case, server: ForkServer, tmp_path: Path) -> None:
    folder, out = tmp_path / "case", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    files = {_expand(k, folder): v for k, v in c.files.items()}
    _materialise(folder, files)
    before = _snapshot(folder)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", SECRET_VAR: SECRET, "XENHIL_ALLURE": "/nonexistent",
           **{k: _expand(v, folder) for k, v in c.env.items()}}
    if not env[SECRET_VAR]:
        del env[SECRET_VAR]
    result = server.run({"runner": c.runner, "argv": [_expand(a, folder) for a in c.argv],
                         "cwd": str(folder), "env": env, "out": str(out),
                         "timeout": HANG_LIMIT_S, "memory": MEMORY_LIMIT})
    stdout = (out / "stdout").read_text(errors="replace")
    stderr = (out / "stderr").read_text(errors="replace")
    shown = f"rc={result['rc']}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"

    assert not result["timed_out"], f"hung: did not finish within {HANG_LIMIT_S}s\n{shown}"
    assert result["cpu_seconds"] <= TIME_LIMIT_S, f"{result['cpu_seconds']:.1f} s of CPU\n{shown}"
    assert result["maxrss_kib"] * 1024 <= MEMORY_LIMIT, result
    assert result["rc"] == c.rc, shown
    text = stdout + stderr
    assert "Traceback" not in text and "INTERNALERROR" not in text, shown
    leaked = [form for form in FORMS if form in text]
    assert not leaked, f"the secret was printed ({leaked})\n{shown}"
    lines = [line for line in text.splitlines() if line.strip()]
    fixes = [line for line in lines if "fix:" in line]
    assert len(fixes) == 1, f"expected one line with the fix\n{shown}"
    assert c.field in fixes[0], f"the error line does not name {c.field!r}\n{shown}"
    assert len(lines) <= 3 and all(len(line) <= 1000 for line in lines), shown
    assert _snapshot(folder) == before, f"files were written\n{shown}"


def test_corpus_counts() -> None:
    counts = collections.Counter(c.kind for c in CASES)
    print("hostile-input corpus:", dict(sorted(counts.items())), "total", len(CASES))
    assert len(CASES) >= 250
    assert len({(c.kind, c.id) for c in CASES}) == len(CASES), "case ids must be unique"
