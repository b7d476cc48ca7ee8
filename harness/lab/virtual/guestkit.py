"""The guest kit: what an HVM test guest boots.

A guest is direct-kernel-booted by Xen's QEMU (``kernel=``/``ramdisk=``):
Debian's kernel from the dom0 tree plus a small initramfs built here from
files of Debian packages in that same tree (busybox, pciutils' lspci with
pci.ids, dropbear, the e1000 module) and the scripts in
``lab/virtual/guest/``.  Its ``/init`` brings eth0 up (DHCP through dom0's
xenbr0), starts dropbear, prints ``XENHIL-GUEST-READY`` and keeps a root
shell on ttyS0 for ``xl console``.  The guest's xl config is written by
:func:`harness.xen.testguest.guest_model` (one description for every caller).

The kit is built once per recipe hash and installed *into the dom0 image* at
:data:`GUEST_KIT_DIR` (no copy at run time: a fresh host can start a guest at
once).  The initramfs is written by a tiny newc writer (no cpio, no root
needed) and library dependencies are found by reading ELF ``DT_NEEDED``
entries, so building the kit is deterministic.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from xenhil.harness.errors import InfrastructureError
from xenhil.harness.probes import build_xhprobe, xhprobe_source

# Where the kit lives inside dom0.
GUEST_KIT_DIR = "/var/lib/xenhil/guest"
# What the guest's init prints once its network and sshd are up.
READY_MARKER = "XENHIL-GUEST-READY"
# ... and the file it creates then: a quote-free shell test for Guest.wait_ready.
READY_CONDITION = "test -e /run/xenhil-ready"
GUEST_PROMPT = "guest# "

KIT_VERSION = "2"  # bump when the kit's layout changes (part of the hash)
# Where the guest's init puts eth0 when no DHCP server answers on xenbr0
# (lab/virtual/guest/init); dom0 reaches it over the bridge.
GUEST_ADDRESS = "192.168.100.10"
# dom0's own address on xenbr0 (lab/virtual/dom0/overlay/.../30-xenbr0.network).
DOM0_BRIDGE_ADDRESS = "192.168.100.1"
# Makes every NIC of the guest move frames both ways, across the isolated
# bridge to dom0 (nothing leaves the host; the guest has no default route):
# eth0, which has the guest's address, pings dom0; every NIC, addressed or
# not, asks for dom0's address in ARP's duplicate-address mode (source
# 0.0.0.0), which dom0 answers.  A ping alone left a second NIC (a split's
# qnet2) without any DMA, so its model had nothing for the map-cache check
# to see (catalog run 2026-12-02, qnet1+qnet2+qall).
NIC_TRAFFIC_COMMAND = (
    "for nic in /sys/class/net/eth*; do ip link set \"${nic##*/}\" up; done; "
    f"ping -c 3 -W 1 {DOM0_BRIDGE_ADDRESS} >/dev/null 2>&1; "
    "for nic in /sys/class/net/eth*; do "
    f"arping -D -c 2 -w 2 -I \"${{nic##*/}}\" {DOM0_BRIDGE_ADDRESS} >/dev/null 2>&1; done; true")
DROPBEAR_HOST_KEY = "etc/dropbear/dropbear_ed25519_host_key"
MULTIARCH = "x86_64-linux-gnu"

# (path in the dom0 tree, path in the guest)
GUEST_BINARIES = [
    ("/usr/bin/busybox", "/bin/busybox"),
    ("/usr/bin/lspci", "/usr/bin/lspci"),
    ("/usr/sbin/dropbear", "/usr/sbin/dropbear"),
]
GUEST_DATA = [
    ("/usr/share/misc/pci.ids", "/usr/share/misc/pci.ids"),
]
# Kernel modules insmod-ed by /init, relative to /lib/modules/<version>/kernel;
# their dependencies (modules.dep) come along, loaded first.  e1000: the
# emulated NIC; ata_piix + sd_mod: the emulated IDE disk the routing,
# map-cache and save/restore checks write through.
GUEST_MODULES = ["drivers/net/ethernet/intel/e1000/e1000.ko", "drivers/ata/ata_piix.ko",
                 "drivers/scsi/sd_mod.ko"]


class GuestKitError(InfrastructureError):
    help = "The guest kit could not be built from the dom0 tree: read the message, rebuild the image."


@dataclass(frozen=True)
class GuestKit:
    directory: Path          # on the build machine: vmlinuz, initrd.img, guest_host_key.pub
    kit_hash: str
    kernel_version: str

    @property
    def vmlinuz(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"


# --- newc cpio ------------------------------------------------------------

class NewcArchive:
    """Writes a "newc" cpio archive (the initramfs format) entry by entry.

    Every entry is owned by root with fixed times, so the same input gives
    the same bytes."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1
        self._seen: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.lstrip("/")
        if name in self._seen:
            return
        self._seen.add(name)
        encoded = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        self._ino += 1
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        self._out.write(header + encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self._entry("/".join(parts[:i]), stat.S_IFDIR | (mode if i == len(parts) else 0o755))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.directory(parent)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def getvalue(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


# --- ELF dependencies -----------------------------------------------------

def elf_needed(data: bytes) -> tuple[list[str], str | None]:
    """(DT_NEEDED sonames, PT_INTERP path) of a 64-bit little-endian ELF."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise GuestKitError("not a 64-bit little-endian ELF file")
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 0x20)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", data, 0x36)
    interp = None
    for i in range(e_phnum):
        p_type, _f, p_offset, _v, _p, p_filesz = struct.unpack_from("<IIQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == 3:  # PT_INTERP
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    needed: list[str] = []
    for sh in sections:
        if sh[1] != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[sh[6]]
        str_off = strtab[4]
        for off in range(sh[4], sh[4] + sh[5], 16):
            tag, val = struct.unpack_from("<qQ", data, off)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", str_off + val)
                needed.append(data[str_off + val:end].decode())
    return needed, interp


def resolve_in_root(root: Path, path: str) -> Path:
    """``path`` inside the tree ``root``, absolute symlinks taken as rooted there."""
    current = root
    parts = [p for p in path.split("/") if p]
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise GuestKitError(f"symlink loop resolving {path} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in target.split("/") if p] + parts
            continue
        if part == "..":
            current = current.parent if current != root else root
        elif part != ".":
            current = candidate
    return current


def library_closure(root: Path, binaries: Iterable[str]) -> dict[str, Path]:
    """Every shared library the binaries need: guest path -> file in ``root``."""
    search = [f"/usr/lib/{MULTIARCH}", f"/lib/{MULTIARCH}", "/usr/lib", "/lib"]
    found: dict[str, Path] = {}
    todo = list(binaries)
    while todo:
        binary = resolve_in_root(root, todo.pop())
        needed, interp = elf_needed(binary.read_bytes())
        if interp and interp not in found:
            found[interp] = resolve_in_root(root, interp)
        for soname in needed:
            guest_path = f"/lib/{MULTIARCH}/{soname}"
            if guest_path in found:
                continue
            for directory in search:
                candidate = resolve_in_root(root, f"{directory}/{soname}")
                if candidate.is_file():
                    found[guest_path] = candidate
                    todo.append(f"{directory}/{soname}")
                    break
            else:
                raise GuestKitError(f"library {soname} (needed by {binary.name}) not found in {root}",
                                    help="add the package that ships it to lab/virtual/dom0/packages.txt")
    return found


# --- the kit ------------------------------------------------------------------

def kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "usr/lib/modules").iterdir() if p.is_dir())
    if not versions:
        raise GuestKitError(f"no kernel in {root}/usr/lib/modules",
                            help="linux-image-amd64 must be in lab/virtual/dom0/packages.txt")
    return versions[-1]


def dropbear_ed25519_key(openssh_private_key: Path) -> tuple[bytes, str]:
    """An OpenSSH ed25519 private key file as dropbear's key file (string
    "ssh-ed25519", string seed||public, each with a big-endian u32 length),
    and its "ssh-ed25519 AAAA..." public line for pinning."""
    import struct

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_ssh_private_key(openssh_private_key.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise GuestKitError(f"{openssh_private_key} is not an ed25519 key",
                            help="delete it: the builder makes a new one")
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def string(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    pin = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return string(b"ssh-ed25519") + string(seed + raw), pin.decode()


def kit_inputs(recipe_dir: Path, guest_pubkey: str, guest_host_pin: str = "") -> dict[str, bytes]:
    """Everything the kit is made of besides the dom0 tree (for the hash)."""
    guest_dir = recipe_dir / "guest"
    inputs = {f"guest/{p.name}": p.read_bytes() for p in sorted(guest_dir.iterdir()) if p.is_file()}
    inputs["authorized_key"] = guest_pubkey.encode()
    inputs["guest_host_key"] = guest_host_pin.encode()
    inputs["kit_version"] = KIT_VERSION.encode()
    inputs["modules"] = "\n".join(GUEST_MODULES).encode()
    inputs["xhprobe.c"] = xhprobe_source().read_bytes()
    return inputs


def build_initramfs(root: Path, recipe_dir: Path, guest_pubkey: str,
                    dropbear_host_key: bytes | None = None) -> bytes:
    version = kernel_version(root)
    guest_dir = recipe_dir / "guest"
    archive = NewcArchive()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run",
              "var/log", "etc/dropbear", f"lib/{MULTIARCH}", "lib64", "lib/modules"):
        archive.directory(d)
    archive.directory("root", 0o700)
    archive.directory("root/.ssh", 0o700)
    archive.char_device("dev/console", 5, 1)
    archive.char_device("dev/null", 1, 3, 0o666)
    archive.file("init", (guest_dir / "init").read_bytes(), 0o755)
    archive.file("etc/udhcpc.script", (guest_dir / "udhcpc.script").read_bytes(), 0o755)
    archive.file("etc/profile", (guest_dir / "profile").read_bytes())
    archive.file("etc/passwd", b"root::0:0:root:/root:/bin/sh\n")
    archive.file("etc/group", b"root:x:0:\n")
    archive.file("etc/shells", b"/bin/sh\n")
    archive.file("root/.ssh/authorized_keys", guest_pubkey.strip().encode() + b"\n", 0o600)
    if dropbear_host_key is not None:
        archive.file(DROPBEAR_HOST_KEY, dropbear_host_key, 0o600)
    for src, dst in GUEST_BINARIES:
        archive.file(dst, resolve_in_root(root, src).read_bytes(), 0o755)
    for src, dst in GUEST_DATA:
        archive.file(dst, resolve_in_root(root, src).read_bytes())
    for guest_path, host_file in sorted(library_closure(root, [s for s, _ in GUEST_BINARIES]).items()):
        archive.file(guest_path, host_file.read_bytes(), 0o755)
    # /init loads lib/modules/*.ko in name order: a numeric prefix keeps
    # every module after its dependencies.
    for index, module in enumerate(module_load_order(root / "usr/lib/modules" / version, GUEST_MODULES)):
        path = root / "usr/lib/modules" / version / module
        if not path.is_file():
            raise GuestKitError(f"kernel module {module} missing from {root}")
        archive.file(f"lib/modules/{index:02d}-{path.name}", path.read_bytes())
    # The guest probe (timed port I/O, raw PCI config, MMIO), built static.
    with tempfile.TemporaryDirectory(prefix="xhprobe-") as tmp:
        archive.file("usr/bin/xhprobe", build_xhprobe(Path(tmp) / "xhprobe").read_bytes(), 0o755)
    return gzip.compress(archive.getvalue(), compresslevel=6, mtime=0)


def module_load_order(modules_dir: Path, wanted: Iterable[str]) -> list[str]:
    """``kernel/...`` paths of ``wanted`` and everything they depend on
    (modules.dep), each after its dependencies."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        name, _, rest = line.partition(":")
        deps[name] = rest.split()
    order: list[str] = []

    def visit(module: str) -> None:
        if module in order:
            return
        if module not in deps:
            raise GuestKitError(f"kernel module {module} is not in {modules_dir}/modules.dep")
        for dep in deps[module]:
            visit(dep)
        order.append(module)

    for module in wanted:
        visit(f"kernel/{module}")
    return order


def build_guest_kit(root: Path, recipe_dir: Path, cache_dir: Path, guest_pubkey: str,
                    tree_id: str, progress: Callable[[str], None] = lambda _m: None, *,
                    guest_host_key: Path | None = None) -> GuestKit:
    """Build (or reuse from ``cache_dir``) the kit for the dom0 tree ``root``.

    ``tree_id`` identifies the tree's content (the debootstrap stage hash).
    ``guest_host_key``: the guests' SSH host key (OpenSSH ed25519 file);
    its public line lands in the kit as guest_host_key.pub, for pinning."""
    dropbear_key, pin = dropbear_ed25519_key(guest_host_key) if guest_host_key else (None, "")
    h = hashlib.sha256(tree_id.encode())
    for name, data in sorted(kit_inputs(recipe_dir, guest_pubkey, pin).items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    kit_hash = h.hexdigest()[:16]
    target = cache_dir / "guestkit" / kit_hash
    if (target / "manifest.json").is_file():
        progress(f"guest kit {kit_hash}: cached")
        return GuestKit(target, kit_hash, json.loads((target / "manifest.json").read_text())["kernel"])
    progress(f"guest kit {kit_hash}: building initramfs")
    version = kernel_version(root)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "initrd.img").write_bytes(build_initramfs(root, recipe_dir, guest_pubkey, dropbear_key))
    (tmp / "guest_host_key.pub").write_text(pin + "\n" if pin else "")
    shutil.copyfile(root / "boot" / f"vmlinuz-{version}", tmp / "vmlinuz")
    (tmp / "manifest.json").write_text(json.dumps({"hash": kit_hash, "kernel": version}, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    progress(f"guest kit {kit_hash}: initrd {(target / 'initrd.img').stat().st_size // 1024} KiB")
    return GuestKit(target, kit_hash, version)
