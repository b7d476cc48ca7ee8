"""The Xen build under test, validated before any host is touched.

Accepted forms of ``--xen-build PATH``:
- a ``make dist`` tree (``dist/``): ``install/boot/xen*.gz`` (or
  ``boot/xen*.gz``) plus the tools install tree (``install/usr/...`` with
  ``sbin/xl``);
- a tarball of such a tree (``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.xz``);
- a folder (or list) of Debian ``.deb`` files containing a
  ``xen-hypervisor-*`` and a ``xen-utils-*`` package;
- nothing: the host's own Debian Xen packages (``debian-default``), so the
  whole flow runs for real on the virtual lab.

A tree or tarball from ``xenhil build`` carries its manifest at
``var/lib/xenhil/build-manifest.json`` (sources, patches, compiler,
options).  It may hold the hypervisor alone (the series touched nothing
else): the manifest lists the components left to the host's Debian
packages, and no xl is required then.

Its identity is a hash of everything that gets installed plus the Xen and
dom0 command lines: the same bytes booted the same way are the same build.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import re
import tarfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from xenhil.harness.access.ssh import sha256_file
from xenhil.harness.errors import ConfigError

DEFAULT_XEN_CMDLINE = "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all noreboot"
DEFAULT_DOM0_CMDLINE = "ro console=hvc0 earlyprintk=xen"

_TARBALL = re.compile(r"\.(tar|tar\.gz|tgz|tar\.xz|txz|tar\.bz2)$")
MANIFEST = "var/lib/xenhil/build-manifest.json"   # written by `xenhil build`


class XenBuildError(ConfigError):
    help = "pass --xen-build a `make dist` tree, a tarball of it, or a folder of Xen .deb files"


@dataclass(frozen=True)
class XenBuild:
    kind: str                          # "dist" | "tarball" | "debs" | "debian-default"
    source: Path | None
    hypervisor: str                    # path inside the tree/tarball, deb name, or "" for default
    files: tuple[tuple[str, str], ...] = ()   # (relative path, sha256) of what gets installed
    xen_cmdline: str = DEFAULT_XEN_CMDLINE
    dom0_cmdline: str = DEFAULT_DOM0_CMDLINE
    notes: tuple[str, ...] = field(default=())
    manifest: str = ""                 # a `xenhil build` manifest: its path, "" for other builds
    xenhil_build: str = ""             # that build's key (the manifest's xenhil_build)
    # Components that manifest's build compiled with patches applied (xen,
    # tools, qemu): () for an unpatched or foreign build.
    patched_components: tuple[str, ...] = ()
    # What provisioning checks on the host against that manifest: the built
    # xen-syms' GNU build id (xl info's build_id), and the built xl's path on
    # the host and sha256 ("" when the build left the tools to Debian).
    elf_build_id: str = ""
    xl_path: str = ""
    xl_sha256: str = ""

    @property
    def carries_series(self) -> bool:
        """A `xenhil build` with patches in the toolstack or QEMU, where the
        multiple-ioreq-server series lives (xl's device_models, QEMU's
        per-model servers): a run of it tests the series.  A hypervisor-only
        series (lab/series/hello) does not count."""
        return bool({"tools", "qemu"} & set(self.patched_components))

    @property
    def build_id(self) -> str:
        digest = hashlib.sha256()
        digest.update(self.kind.encode())
        for rel, sha in self.files:
            digest.update(f"{rel}\0{sha}\n".encode())
        digest.update(f"xen:{self.xen_cmdline}\ndom0:{self.dom0_cmdline}\n".encode())
        return digest.hexdigest()[:16]

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.build_id}"


def as_booted_on(build: XenBuild, profile) -> XenBuild:
    """``build`` as a host of this profile (harness.lab.profile.HostProfile)
    boots it: its Xen command line plus the options such a host needs (an
    emulated host: see harness.lab.virtual.quirks.XEN_CMDLINE_EMULATED).  The
    result has its own build id, since what boots differs; on real hardware
    it is ``build``."""
    present = build.xen_cmdline.split()
    extra = [option for option in profile.xen_cmdline_options if option not in present]
    if not extra:
        return build
    return replace(build, xen_cmdline=" ".join([build.xen_cmdline, *extra]))


def _validate_cmdline(name: str, value: str) -> None:
    # Command lines end up in a GRUB menu entry: refuse what GRUB would parse
    # as something else, rather than quote it and hope.
    bad = set(value) & set("\n\r;'\"`$\\{}")
    if bad:
        raise XenBuildError(f"{name} {value!r} contains {''.join(sorted(bad))!r}",
                            help=f"remove those characters from {name}; GRUB parses them")


def load_build(path: str | Path | None, xen_cmdline: str = DEFAULT_XEN_CMDLINE,
               dom0_cmdline: str = DEFAULT_DOM0_CMDLINE) -> XenBuild:
    _validate_cmdline("the Xen command line", xen_cmdline)
    _validate_cmdline("the dom0 command line", dom0_cmdline)
    if path is None or str(path) in ("", "debian-default"):
        return XenBuild("debian-default", None, "", (), xen_cmdline, dom0_cmdline)
    source = Path(path)
    if not source.exists():
        raise XenBuildError(f"--xen-build {source}: no such file or folder")
    if source.is_file() and _TARBALL.search(source.name):
        return _from_tarball(source, xen_cmdline, dom0_cmdline)
    if source.is_dir() and list(source.glob("*.deb")):
        return _from_debs(source, xen_cmdline, dom0_cmdline)
    if source.is_dir():
        return _from_dist(source, xen_cmdline, dom0_cmdline)
    raise XenBuildError(f"--xen-build {source}: neither a folder nor a tarball (.tar, .tar.gz, .tar.xz)")


def _dist_root(tree: Path) -> Path:
    return tree / "install" if (tree / "install").is_dir() else tree


def _from_dist(tree: Path, xen_cmdline: str, dom0_cmdline: str) -> XenBuild:
    root = _dist_root(tree)
    hypervisors = sorted(p for p in (root / "boot").glob("xen*.gz") if not p.is_symlink())
    if not hypervisors:
        raise XenBuildError(f"--xen-build {tree}: no hypervisor: expected boot/xen-*.gz "
                            f"under {root}", help="run `make dist` (or `make dist-xen`) first")
    from xenhil.harness.safeio import read_bytes
    manifest = _read_manifest(tree, read_bytes(root / MANIFEST, "build manifest")
                              if (root / MANIFEST).is_file() else None)
    names = {str(p.relative_to(root)) for p in root.rglob("xl")}
    if not _has_tools(names, manifest):
        raise XenBuildError(f"--xen-build {tree}: no tools: expected usr/sbin/xl or "
                            f"usr/local/sbin/xl under {root}", help="run `make dist-tools` too")
    files = tuple(sorted((str(p.relative_to(root)), sha256_file(p))
                         for p in root.rglob("*") if p.is_file() and not p.is_symlink()))
    return XenBuild("dist", tree, str(hypervisors[-1].relative_to(root)), files,
                    xen_cmdline, dom0_cmdline, **_manifest_fields(root / MANIFEST, manifest))


def _read_manifest(where, data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        manifest = json.loads(data)
        manifest["xenhil_build"], manifest.get("packaged", [])
    except (ValueError, KeyError, TypeError) as exc:
        raise XenBuildError(f"--xen-build {where}: unreadable {MANIFEST}: {exc}",
                            help="rebuild it with `xenhil build`") from None
    return manifest


def _has_tools(names: set[str], manifest: dict | None) -> bool:
    """xl where a dist tree has it, or where Debian's layout has it (a
    `xenhil build` replaces Debian's tools file for file); none needed when
    the manifest leaves the tools to the host's packages."""
    if manifest is not None and "tools" in manifest.get("packaged", []):
        return True
    return any(re.fullmatch(r"(\./)?usr/(local/)?sbin/xl|(\./)?usr/lib/xen-[0-9.]+/bin/xl", n)
               for n in names)


def _manifest_fields(path, manifest: dict | None) -> dict:
    if manifest is None:
        return {}
    # Xen's patches reach the hypervisor and tools it built, QEMU's reach QEMU.
    patches = manifest.get("patches", {})
    patched = tuple(c for c in manifest.get("components", {})
                    if patches.get("qemu" if c == "qemu" else "xen"))
    def built(component: str, key: str) -> str:
        components = manifest.get("components")
        facts = components.get(component) if isinstance(components, dict) else None
        value = facts.get(key) if isinstance(facts, dict) else None
        return value if isinstance(value, str) else ""
    from xenhil.harness.build.recipes import XEN_LEAF
    xl_sha256 = built("tools", "xl_sha256")
    return {"manifest": str(path), "xenhil_build": str(manifest["xenhil_build"]),
            "patched_components": patched,
            "elf_build_id": built("xen", "elf_build_id"), "xl_sha256": xl_sha256,
            # where `xenhil build` puts xl (Debian's layout, harness.build.engine)
            "xl_path": f"/usr/lib/{XEN_LEAF}/bin/xl" if xl_sha256 else "",
            "notes": (f"xenhil build {manifest['xenhil_build']}: "
                      f"{', '.join(manifest.get('components', {}))} built from "
                      + ", ".join(f"{s['package']} {s['version']}" for s in manifest.get("sources", {}).values())
                      + f", {sum(len(v) for v in manifest.get('patches', {}).values())} patch(es); "
                      f"left to the host's packages: {', '.join(manifest.get('packaged', [])) or 'none'}",)}


# Bounds on a build tarball, so a hostile one is refused in bounded time and
# memory: a Xen dist tree is a few thousand files and a few hundred MiB.
TAR_MEMBERS_MAX = 100_000
TAR_MEMBER_MAX = 2 << 30          # one file (QEMU's binary is about 50 MiB)
TAR_TOTAL_MAX = 8 << 30           # everything that would be installed
# Every byte is hashed: a few MiB of compressed zeros claiming gigabytes took
# seconds per GiB.  A dist tree compresses about 4:1 (xz: 6:1); more than
# TAR_RATIO_MAX:1 past a floor small trees always fit in is a decompression
# bomb, refused from the member headers before their bytes are read.
TAR_RATIO_MAX = 40
TAR_RATIO_FLOOR = 256 << 20
MANIFEST_MAX = 4 << 20


def _from_tarball(tarball: Path, xen_cmdline: str, dom0_cmdline: str) -> XenBuild:
    from xenhil.harness.options import shown
    names: list[str] = []
    files = []
    manifest_bytes = None
    total = 0
    unpacked_max = min(TAR_TOTAL_MAX, max(TAR_RATIO_FLOOR, TAR_RATIO_MAX * tarball.stat().st_size))
    try:
        with tarfile.open(tarball) as tar:
            for count, m in enumerate(tar, start=1):   # one member at a time, none kept
                if count > TAR_MEMBERS_MAX:
                    raise XenBuildError(f"--xen-build {tarball}: more than {TAR_MEMBERS_MAX} members",
                                        help="tar the `make dist` output only (dist/install)")
                if m.issparse():
                    raise XenBuildError(f"--xen-build {tarball}: member {shown(m.name)} is a sparse "
                                        "file (a build has none)",
                                        help="tar the `make dist` output without --sparse")
                if not m.isfile():
                    continue
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise XenBuildError(f"--xen-build {tarball}: unsafe member path {shown(m.name)}",
                                        help="make the tarball from inside the dist tree")
                total += m.size
                if m.size > TAR_MEMBER_MAX or total > TAR_TOTAL_MAX:
                    raise XenBuildError(f"--xen-build {tarball}: member {shown(m.name)} makes the "
                                        f"build larger than {TAR_MEMBER_MAX >> 30} GiB per file or "
                                        f"{TAR_TOTAL_MAX >> 30} GiB in all",
                                        help="tar the `make dist` output only (dist/install)")
                if total > unpacked_max:
                    raise XenBuildError(f"--xen-build {tarball}: unpacks to more than "
                                        f"{TAR_RATIO_MAX} times its own size (member "
                                        f"{shown(m.name)}): a decompression bomb, not a build",
                                        help="tar the `make dist` output only (dist/install)")
                names.append(m.name)
                digest = hashlib.sha256()
                is_manifest = m.name.removeprefix("./") == MANIFEST
                kept = bytearray()
                with tar.extractfile(m) as member:
                    while chunk := member.read(1 << 20):
                        digest.update(chunk)
                        if is_manifest and len(kept) <= MANIFEST_MAX:
                            kept += chunk
                files.append((m.name, digest.hexdigest()))
                if is_manifest:
                    if len(kept) > MANIFEST_MAX:
                        raise XenBuildError(f"--xen-build {tarball}: {MANIFEST} is larger than "
                                            f"{MANIFEST_MAX >> 20} MiB", help="rebuild it with `xenhil build`")
                    manifest_bytes = bytes(kept)
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise XenBuildError(f"--xen-build {tarball}: not a readable tarball "
                            f"({type(exc).__name__})") from None
    hypervisors = [n for n in names if re.search(r"(^|/)boot/xen[^/]*\.gz$", n)]
    if not hypervisors:
        raise XenBuildError(f"--xen-build {tarball}: no boot/xen*.gz inside",
                            help="tar the `make dist` output (dist/install) including boot/")
    manifest = _read_manifest(tarball, manifest_bytes)
    if not _has_tools(set(names), manifest):
        raise XenBuildError(f"--xen-build {tarball}: no usr/sbin/xl inside",
                            help="include the tools install tree (make dist-tools)")
    return XenBuild("tarball", tarball, sorted(hypervisors)[-1], tuple(sorted(files)),
                    xen_cmdline, dom0_cmdline,
                    **_manifest_fields(f"{tarball}:{MANIFEST}", manifest))


def _from_debs(folder: Path, xen_cmdline: str, dom0_cmdline: str) -> XenBuild:
    debs = sorted(folder.glob("*.deb"))
    hypervisor = [d for d in debs if d.name.startswith("xen-hypervisor-")]
    utils = [d for d in debs if d.name.startswith("xen-utils-") and "common" not in d.name]
    if not hypervisor:
        raise XenBuildError(f"--xen-build {folder}: no xen-hypervisor-*.deb among {len(debs)} .deb files")
    if not utils:
        raise XenBuildError(f"--xen-build {folder}: no xen-utils-<version>*.deb (the tools)")
    from xenhil.harness.safeio import open_regular
    for deb in debs:
        with open_regular(deb, "Debian package", fix="give a folder of .deb files") as f:
            header = f.read(8)
        if header != b"!<arch>\n":
            raise XenBuildError(f"--xen-build {deb}: not a Debian package (no ar header)")
    files = tuple((d.name, sha256_file(d)) for d in debs)
    return XenBuild("debs", folder, hypervisor[0].name, files, xen_cmdline, dom0_cmdline)
