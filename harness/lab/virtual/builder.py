"""Build the virtual host's disk: Debian bookworm dom0 + Xen 4.17 + GRUB.

Everything comes from Debian packages (debootstrap from the mirror this
machine's apt uses) and the recipe in ``lab/virtual/`` (package list, dom0
overlay, setup script, GRUB config template, guest kit sources).

Two cached stages, each under a hash of exactly what it is made of:

1. ``rootfs/<h1>``: ``debootstrap --variant=minbase --include=<packages>``
   (h1 = suite, mirror, package list).  Minutes; redone only when the
   package list changes.
2. ``images/<h2>/disk.raw``: a copy of the tree + overlay + keys + guest kit
   + ``setup.sh`` in a chroot, then the disk is assembled *without loop
   devices*: an MBR with GRUB's ``boot.img``, GRUB's ``core.img`` in the gap
   before the partition (as ``grub-install`` embeds it), and the ext4
   partition written by ``mke2fs -E offset=... -d TREE``.
   (h2 = h1 + every recipe file + rendered grub.cfg + public keys + kit.)

A build with nothing changed only computes the hashes: seconds.

Boot path: SeaBIOS -> boot.img -> core.img -> /boot/grub/grub.cfg on the
dom0 partition -> ``multiboot2`` Xen -> dom0.  Chosen over QEMU ``-kernel``
with a multiboot GRUB image because the i386-multiboot GRUB has no BIOS disk
driver (and no virtio driver): it could not read the virtio dom0 disk, and
the real "firmware -> bootloader on its own disk" path is what a later
``grub-reboot`` + power cycle into a freshly built Xen needs.

Needs root (debootstrap, chroot) and, on the build machine: debootstrap,
e2fsprogs (mke2fs >= 1.43 for ``-d``), util-linux (unshare).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from xenhil.harness.errors import ConfigError, InfrastructureError
from xenhil.harness.lab.virtual import guestkit, quirks
from xenhil.harness.step import step

BUILDER_VERSION = "1"       # bump when the build steps change meaning
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DISK_SIZE_MB = 6144         # sparse: room for Xen builds and guest images
PARTITION_START_SECTOR = 2048  # 1 MiB: the gap that holds core.img
SECTOR = 512
# GRUB modules built into core.img (the rest load from /boot/grub/i386-pc).
CORE_MODULES = ["biosdisk", "part_msdos", "ext2", "normal", "configfile", "loadenv",
                "test", "echo", "serial", "terminal", "gzio", "multiboot2", "search"]

Progress = Callable[[str], None]


class BuildError(InfrastructureError):
    help = "Building the virtual host image failed: read the step's output above, fix, rerun."


def recipe_dir() -> Path:
    """``lab/virtual`` of this checkout (``XENHIL_VLAB_RECIPE`` overrides)."""
    override = os.environ.get("XENHIL_VLAB_RECIPE")
    path = Path(override) if override else Path(__file__).resolve().parents[3] / "lab" / "virtual"
    if not (path / "dom0" / "packages.txt").is_file():
        raise ConfigError(f"virtual lab recipe not found at {path} (no dom0/packages.txt)",
                          help="run from a xenhil checkout or set XENHIL_VLAB_RECIPE to its lab/virtual")
    return path


def cache_dir() -> Path:
    """``$XENHIL_CACHE``, else /var/cache/xenhil when writable, else ~/.cache/xenhil."""
    if os.environ.get("XENHIL_CACHE"):
        return Path(os.environ["XENHIL_CACHE"])
    system = Path("/var/cache/xenhil")
    if os.access(system if system.exists() else system.parent, os.W_OK):
        return system
    return Path.home() / ".cache" / "xenhil"


def apt_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for ``SUITE`` (``XENHIL_DEBIAN_MIRROR`` wins)."""
    if os.environ.get("XENHIL_DEBIAN_MIRROR"):
        return os.environ["XENHIL_DEBIAN_MIRROR"]
    files = [sources_dir / "sources.list"]
    files += sorted((sources_dir / "sources.list.d").glob("*.list"))
    files += sorted((sources_dir / "sources.list.d").glob("*.sources"))
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if SUITE in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                    return fields.get("URIs", "").split()[0]
        else:
            for line in text.splitlines():
                words = line.split("#")[0].split()
                words = [w for w in words if not w.startswith("[")]
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    return DEFAULT_MIRROR


def read_packages(path: Path) -> list[str]:
    packages = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        word = line.split("#")[0].strip()
        if not word:
            continue
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", word):
            raise ConfigError(f"{path}:{number}: {word!r} is not a Debian package name",
                              help="one package name per line; '#' starts a comment")
        packages.append(word)
    return packages


# --- keys -------------------------------------------------------------------

@dataclass(frozen=True)
class LabKeys:
    """Key pairs of one lab cache: the harness's login key (root on every
    dom0), the dom0s' SSH host key (pinned in the inventory), and the key
    dom0 uses to log in to its test guests."""

    directory: Path

    @property
    def client_key(self) -> Path:
        return self.directory / "lab_ed25519"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def guest_key(self) -> Path:
        return self.directory / "guest_ed25519"

    @property
    def guest_host_key(self) -> Path:
        """The test guest's own SSH host key (dropbear), baked into the guest
        kit so that SSH into a guest pins it instead of trusting the first one."""
        return self.directory / "guest_host_ed25519"

    def public(self, key: Path) -> str:
        return Path(f"{key}.pub").read_text().strip()

    def host_key_pin(self) -> str:
        """"ssh-ed25519 AAAA..." (type and base64, no comment) for the inventory."""
        return " ".join(self.public(self.host_key).split()[:2])


def ensure_keys(directory: Path) -> LabKeys:
    """Create the lab's ed25519 key pairs once (kept across builds)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    keys = LabKeys(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for path, comment in ((keys.client_key, "xenhil-lab"), (keys.host_key, "xenhil-vhost"),
                          (keys.guest_key, "xenhil-dom0"), (keys.guest_host_key, "xenhil-guest")):
        if path.exists() and Path(f"{path}.pub").exists():
            continue
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        Path(f"{path}.pub").write_text(public.decode() + f" {comment}\n")
    return keys


# --- the image ----------------------------------------------------------------

@dataclass(frozen=True)
class BuiltImage:
    """A finished dom0 disk in the cache."""

    directory: Path
    image_hash: str
    keys: LabKeys
    kernel_version: str
    xen_file: str

    @property
    def disk(self) -> Path:
        return self.directory / "disk.raw"

    @property
    def manifest(self) -> dict:
        return json.loads((self.directory / "manifest.json").read_text())


def _hash_files(h: "hashlib._Hash", base: Path, paths: list[Path]) -> None:
    for path in sorted(paths):
        rel = path.relative_to(base).as_posix()
        h.update(rel.encode() + b"\0")
        if path.is_symlink():
            h.update(b"L" + os.readlink(path).encode())
        elif path.is_file():
            h.update(b"F%o" % (path.stat().st_mode & 0o777) + hashlib.sha256(path.read_bytes()).digest())


def rootfs_hash(packages: list[str], mirror: str) -> str:
    h = hashlib.sha256(f"rootfs {BUILDER_VERSION} {SUITE} {mirror}\n".encode())
    h.update("\n".join(sorted(packages)).encode())
    return h.hexdigest()[:16]


def render_grub_cfg(template: str, kernel_version: str, xen_file: str) -> str:
    return (template.replace("@XEN@", f"/boot/{xen_file}")
            .replace("@KERNEL@", f"/boot/vmlinuz-{kernel_version}")
            .replace("@INITRD@", f"/boot/initrd.img-{kernel_version}")
            .replace("@XEN_CMDLINE@", quirks.XEN_CMDLINE)
            .replace("@DOM0_CMDLINE@", quirks.DOM0_CMDLINE))


def image_hash(rootfs_id: str, recipe: Path, keys: LabKeys, kit_hash: str) -> str:
    h = hashlib.sha256(f"image {BUILDER_VERSION} {rootfs_id} {kit_hash} {DISK_SIZE_MB}\n".encode())
    dom0 = recipe / "dom0"
    _hash_files(h, dom0, [p for p in dom0.rglob("*")])
    # What the GRUB entry says comes from quirks.py: hash the rendered text.
    h.update(render_grub_cfg((dom0 / "grub.cfg.in").read_text(), "K", "X").encode())
    h.update(" ".join(CORE_MODULES).encode())
    for key in (keys.client_key, keys.host_key, keys.guest_key, keys.guest_host_key):
        h.update(keys.public(key).encode())
    return h.hexdigest()[:16]


def _default_progress(message: str, _t0=[time.monotonic()]) -> None:
    print(f"[{time.monotonic() - _t0[0]:7.1f}s] {message}", file=sys.stderr, flush=True)


# debootstrap's phase lines (not its one line per package).
_PHASE_LINE = re.compile(r"I: (Retrieving (InRelease|Packages)|Installing core|Unpacking|"
                         r"Configuring (required packages|the base system)|Base system|"
                         r"Resolving dependencies of (required|base))")


def _run(argv: list[str], progress: Progress, *, label: str, cwd: Path | None = None,
         stream: bool = False) -> str:
    """Run a build command; on failure raise BuildError with the output's tail."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace",
                            start_new_session=True)
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if stream and _PHASE_LINE.match(line):
                progress(f"{label}: {line.strip()[3:]}")
        proc.wait()
    except BaseException:
        # Ctrl-C or an error here: leave no half-finished debootstrap behind.
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    if proc.returncode != 0:
        tail = "\n".join(lines[-30:])
        raise BuildError(f"{label} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")
    progress(f"{label}: done in {time.monotonic() - started:.1f}s")
    return "\n".join(lines)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ConfigError("building the virtual host image needs root (debootstrap, chroot)",
                          help="run `sudo -E xenhil lab up --virtual N` or build once as root "
                               "into $XENHIL_CACHE")


def _require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise ConfigError(f"missing build tools: {', '.join(missing)}",
                          help="apt-get install debootstrap e2fsprogs util-linux qemu-utils")


@step("debootstrap the dom0 tree")
def build_rootfs(cache: Path, packages: list[str], mirror: str, progress: Progress) -> Path:
    """Stage 1: the debootstrapped tree, cached by package list."""
    key = rootfs_hash(packages, mirror)
    target = cache / "rootfs" / key
    if (target / "done").is_file():
        progress(f"rootfs {key}: cached")
        return target
    _require_root()
    _require_tools("debootstrap")
    tmp = target.with_name(key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    progress(f"rootfs {key}: debootstrap {SUITE} from {mirror} ({len(packages)} extra packages)")
    _run(["debootstrap", "--variant=minbase", f"--cache-dir={debs}",
          "--include=" + ",".join(packages), SUITE, str(tmp / "root"), mirror],
         progress, label="debootstrap", stream=True)
    (tmp / "packages.txt").write_text("\n".join(packages) + "\n")
    (tmp / "done").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _xen_file(root: Path) -> str:
    found = sorted(p.name for p in (root / "boot").glob("xen-*-amd64.gz"))
    if not found:
        raise BuildError(f"no /boot/xen-*-amd64.gz in {root}",
                         help="xen-hypervisor-4.17-amd64 must be in lab/virtual/dom0/packages.txt")
    return found[-1]


def write_mbr(disk: Path, boot_img: bytes, core_img: bytes, total_sectors: int) -> None:
    """MBR = GRUB boot.img code + one bootable Linux partition from 1 MiB;
    core.img in sectors 1.. (boot.img's default kernel sector is 1, and
    core.img's first block list defaults to "from sector 2", exactly
    grub-install's embedding)."""
    if len(boot_img) != SECTOR:
        raise BuildError(f"boot.img is {len(boot_img)} bytes, expected 512")
    if len(core_img) > (PARTITION_START_SECTOR - 1) * SECTOR:
        raise BuildError(f"core.img ({len(core_img)} bytes) does not fit before the partition",
                         help="embed fewer modules (builder.CORE_MODULES)")
    lba_count = total_sectors - PARTITION_START_SECTOR
    chs_max = b"\xfe\xff\xff"  # "beyond CHS": LBA fields are authoritative
    entry = (b"\x80" + chs_max + b"\x83" + chs_max
             + struct.pack("<II", PARTITION_START_SECTOR, lba_count))
    mbr = (boot_img[:440] + b"XHIL" + b"\0\0" + entry + b"\0" * 48 + b"\x55\xaa")
    assert len(mbr) == SECTOR
    with open(disk, "r+b") as out:
        out.write(mbr)
        out.write(core_img)


@step("assemble the dom0 image")
def build_image(recipe: Path, rootfs: Path, keys: LabKeys, cache: Path, progress: Progress,
                force: bool = False) -> BuiltImage:
    root_src = rootfs / "root"
    kit = guestkit.build_guest_kit(root_src, recipe, cache, keys.public(keys.guest_key),
                                   rootfs.name, progress, guest_host_key=keys.guest_host_key)
    key = image_hash(rootfs.name, recipe, keys, kit.kit_hash)
    target = cache / "images" / key
    version = guestkit.kernel_version(root_src)
    xen_file = _xen_file(root_src)
    if (target / "manifest.json").is_file() and not force:
        progress(f"image {key}: cached ({target / 'disk.raw'})")
        return BuiltImage(target, key, keys, version, xen_file)
    _require_root()
    _require_tools("mke2fs", "unshare", "chroot")
    started = time.monotonic()
    tmp = target.with_name(key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    root = tmp / "root"
    progress(f"image {key}: copying the dom0 tree")
    _run(["cp", "-a", "--reflink=auto", str(root_src), str(root)], progress, label="copy tree")

    # Overlay (config files), keys, guest kit.
    shutil.copytree(recipe / "dom0" / "overlay", root, dirs_exist_ok=True, symlinks=True)
    (root / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / "root/.ssh/authorized_keys").write_text(keys.public(keys.client_key) + "\n")
    shutil.copyfile(keys.guest_key, root / "root/.ssh/id_ed25519")
    shutil.copyfile(f"{keys.guest_key}.pub", root / "root/.ssh/id_ed25519.pub")
    shutil.copyfile(keys.host_key, root / "etc/ssh/ssh_host_ed25519_key")
    shutil.copyfile(f"{keys.host_key}.pub", root / "etc/ssh/ssh_host_ed25519_key.pub")
    kit_dir = root / guestkit.GUEST_KIT_DIR.lstrip("/")
    kit_dir.mkdir(parents=True, exist_ok=True)
    for name in ("vmlinuz", "initrd.img", "manifest.json", "guest_host_key.pub"):
        shutil.copyfile(kit.directory / name, kit_dir / name)

    # Configure inside the tree: private mount namespace, so /proc etc.
    # vanish with the process even if the build is interrupted.
    shutil.copyfile(recipe / "dom0" / "setup.sh", root / "xenhil-setup.sh")
    progress(f"image {key}: configuring dom0 (setup.sh in chroot)")
    _run(["unshare", "--mount", "--fork", "sh", "-ec",
          'mount -t proc proc "$1/proc"; mount -t sysfs sysfs "$1/sys"; '
          'mount --bind /dev "$1/dev"; chroot "$1" /bin/sh /xenhil-setup.sh', "setup", str(root)],
         progress, label="setup.sh")
    (root / "xenhil-setup.sh").unlink()

    # GRUB: modules + config on the partition, core.img from the tree's own grub-mkimage.
    grub_dir = root / "boot/grub"
    grub_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(root / "usr/lib/grub/i386-pc", grub_dir / "i386-pc", dirs_exist_ok=True)
    (grub_dir / "grub.cfg").write_text(
        render_grub_cfg((recipe / "dom0" / "grub.cfg.in").read_text(), version, xen_file))
    (grub_dir / "custom.cfg").write_text("# xenhil: extra GRUB entries (e.g. a Xen under test)\n")
    # grubenv: exactly 1024 bytes, as grub-editenv writes it.
    header = b"# GRUB Environment Block\n"
    (grub_dir / "grubenv").write_bytes(header + b"#" * (1024 - len(header)))
    _run(["chroot", str(root), "grub-mkimage", "-O", "i386-pc", "-o", "/tmp/core.img",
          "-p", "(hd0,msdos1)/boot/grub", *CORE_MODULES], progress, label="grub-mkimage")
    core_img = (root / "tmp/core.img").read_bytes()
    (root / "tmp/core.img").unlink()
    boot_img = (root / "usr/lib/grub/i386-pc/boot.img").read_bytes()

    # Disk: sparse file, ext4 at 1 MiB written from the tree, then MBR + core.img.
    disk = tmp / "disk.raw"
    total_sectors = DISK_SIZE_MB * 1024 * 1024 // SECTOR
    with open(disk, "wb") as out:
        out.truncate(total_sectors * SECTOR)
    fs_blocks = (total_sectors - PARTITION_START_SECTOR) * SECTOR // 4096
    progress(f"image {key}: mke2fs -d (ext4, {DISK_SIZE_MB} MiB disk)")
    # metadata_csum_seed / orphan_file: mke2fs 1.47 defaults GRUB 2.06 may not read.
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "xenhil-dom0",
          "-O", "^metadata_csum_seed,^orphan_file",
          "-E", f"offset={PARTITION_START_SECTOR * SECTOR}", "-d", str(root), str(disk),
          str(fs_blocks)], progress, label="mke2fs")
    write_mbr(disk, boot_img, core_img, total_sectors)

    manifest = {"hash": key, "rootfs": rootfs.name, "guest_kit": kit.kit_hash,
                "kernel": version, "xen": xen_file, "suite": SUITE,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "build_seconds": round(time.monotonic() - started, 1),
                "host_key": keys.host_key_pin()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(root)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    disk = target / "disk.raw"
    progress(f"image {key}: ready ({disk.stat().st_blocks * 512 // 2**20} MiB used) "
             f"in {time.monotonic() - started:.1f}s")
    return BuiltImage(target, key, keys, version, xen_file)


def build(*, cache: Path | None = None, progress: Progress | None = None,
          force: bool = False) -> BuiltImage:
    """Build (or find in the cache) the virtual host image of this recipe."""
    progress = progress or _default_progress
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    recipe = recipe_dir()
    packages = read_packages(recipe / "dom0" / "packages.txt")
    mirror = apt_mirror()
    keys = ensure_keys(cache / "keys")
    rootfs = build_rootfs(cache, packages, mirror, progress)
    return build_image(recipe, rootfs, keys, cache, progress, force=force)


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m xenhil.harness.lab.virtual.builder",
                                     description="build the virtual host's dom0 disk image")
    parser.add_argument("--cache", type=Path, default=None, help="cache dir (default $XENHIL_CACHE)")
    parser.add_argument("--force", action="store_true", help="rebuild the image stage")
    args = parser.parse_args(argv)
    image = build(cache=args.cache, force=args.force)
    print(image.disk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
