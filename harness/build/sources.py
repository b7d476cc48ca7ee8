"""Debian 12's source packages of Xen and QEMU, fetched with apt and kept.

``apt-get source --download-only`` (it checks the files against the signed
Sources index) into ``<cache>/src/<package>_<version>/``, then
``dpkg-source -x`` (which checks them against the .dsc and applies Debian's
own patches) into ``tree/`` beside them, through a temporary folder renamed
at the end: a fetch cut short leaves nothing that looks complete.

The version is the newest one apt lists whose files really download: the
security archive has listed xen versions whose tarballs answer 404.  Such a
version is remembered in ``unavailable.json`` and not tried again.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from xenhil.harness.errors import ConfigError, InfrastructureError

PACKAGES = ("xen", "qemu")


class SourcesUnavailable(ConfigError):
    help = ("run scripts/setup (it adds the deb-src entry for bookworm and runs apt-get update), "
            "or pin a version that downloads with --xen-version/--qemu-version")


class FetchFailed(InfrastructureError):
    help = "apt could not download the source package: check the network and `apt-get update`"


@dataclass(frozen=True)
class SourcePackage:
    package: str
    version: str
    folder: Path                  # holds the .dsc, tarballs and source.json
    files: dict[str, str]         # file name -> sha256

    @property
    def tree(self) -> Path:
        """The unpacked source with Debian's patches applied (read-only by convention)."""
        return self.folder / "tree"

    @property
    def dsc_sha256(self) -> str:
        return next(sha for name, sha in self.files.items() if name.endswith(".dsc"))

    def to_json(self) -> dict:
        return {"package": self.package, "version": self.version, "files": self.files}


def src_dir(cache: Path) -> Path:
    return cache / "src"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listed_versions(package: str) -> list[str]:
    """Versions of the source package apt knows, newest first."""
    run = subprocess.run(["apt-cache", "showsrc", package], capture_output=True, text=True)
    versions = []
    current = None
    for line in run.stdout.splitlines():
        if line.startswith("Package: "):
            current = line.split(": ", 1)[1].strip()
        elif line.startswith("Version: ") and current == package:
            versions.append(line.split(": ", 1)[1].strip())
    if not versions:
        raise SourcesUnavailable(f"apt knows no source package {package!r}: no deb-src entry, "
                                 f"or apt-get update has not run since it was added")
    import functools

    def compare(a: str, b: str) -> int:
        if a == b:
            return 0
        lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
        return -1 if lt else 1
    return sorted(set(versions), key=functools.cmp_to_key(compare), reverse=True)


def _folder(cache: Path, package: str, version: str) -> Path:
    return src_dir(cache) / f"{package}_{version.replace(':', '%3a')}"


def load_fetched(cache: Path, package: str, version: str) -> SourcePackage | None:
    folder = _folder(cache, package, version)
    meta = folder / "source.json"
    if not (meta.is_file() and (folder / "tree").is_dir()):
        return None
    data = json.loads(meta.read_text())
    return SourcePackage(package, version, folder, data["files"])


def _unavailable(cache: Path) -> dict:
    path = src_dir(cache) / "unavailable.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _remember_unavailable(cache: Path, package: str, version: str, why: str) -> None:
    data = _unavailable(cache)
    data.setdefault(package, {})[version] = why
    path = src_dir(cache) / "unavailable.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def fetch(cache: Path, package: str, version: str | None = None, progress=print) -> SourcePackage:
    """The source package, from the cache or downloaded and unpacked once."""
    src_dir(cache).mkdir(parents=True, exist_ok=True)
    if version:
        candidates = [version]
    else:
        skip = _unavailable(cache).get(package, {})
        candidates = [v for v in listed_versions(package) if v not in skip]
    tried = []
    for candidate in candidates:
        found = load_fetched(cache, package, candidate)
        if found:
            return found
        progress(f"fetching source package {package}={candidate}")
        folder = _folder(cache, package, candidate)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=src_dir(cache)))
        try:
            run = subprocess.run(["apt-get", "source", "--download-only", "-qq",
                                  f"{package}={candidate}"], cwd=tmp, capture_output=True, text=True)
            if run.returncode != 0:
                errors = [l for l in run.stderr.splitlines() if l.startswith("E:")]
                why = (errors or run.stderr.strip().splitlines() or ["apt-get source failed"])[0]
                tried.append(f"{candidate}: {why}")
                if "404" in run.stderr and not version:
                    _remember_unavailable(cache, package, candidate, why)
                    continue
                if version:
                    raise FetchFailed(f"apt-get source {package}={candidate} failed: {run.stderr.strip()}")
                continue
            files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            dsc = next(tmp.glob("*.dsc"))
            # dpkg-source checks each file's checksum against the .dsc and
            # applies Debian's patch series (the tree Debian builds from).
            run = subprocess.run(["dpkg-source", "-x", dsc.name, "tree"], cwd=tmp,
                                 capture_output=True, text=True)
            if run.returncode != 0:
                raise FetchFailed(f"dpkg-source -x {dsc.name} failed: {run.stderr.strip()[-2000:]}")
            (tmp / "source.json").write_text(json.dumps(
                {"package": package, "version": candidate, "files": files}, indent=2))
            if folder.exists():
                shutil.rmtree(tmp)
            else:
                tmp.rename(folder)
            return load_fetched(cache, package, candidate)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    raise SourcesUnavailable(f"no version of source package {package} downloads: "
                             + "; ".join(tried or ["none listed"]))
