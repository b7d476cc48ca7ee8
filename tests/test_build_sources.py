"""Source packages: the newest version that really downloads is used and
recorded with its files' sha256; one that 404s is remembered and skipped.
apt-cache and apt-get are stand-ins on PATH (hand-written shell), serving a
real native source package made here with dpkg-source -b."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from xenhil.harness.build import engine, sources

pytestmark = pytest.mark.skipif(shutil.which("dpkg-source") is None, reason="needs dpkg-dev")

FAKE_APT_CACHE = """#!/bin/sh
# stand-in for `apt-cache showsrc xen`: two versions listed, newest first
printf 'Package: xen\\nVersion: 1.0\\n\\nPackage: xen\\nVersion: 2.0\\n\\n'
"""

# stand-in for `apt-get source --download-only -qq xen=V`: 2.0 answers 404
# (as the security pool's xen did), 1.0 downloads from $POOL.
FAKE_APT_GET = """#!/bin/sh
for last; do :; done
case "$last" in
  xen=2.0) echo "E: Failed to fetch http://deb.example/xen_2.0.dsc  404  Not Found" >&2; exit 100;;
  xen=1.0) cp "$POOL"/xen_1.0.dsc "$POOL"/xen_1.0.tar.xz .;;
  *) echo "E: Unable to find a source package for $last" >&2; exit 100;;
esac
"""


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch) -> Path:
    pool = tmp_path / "pool"
    pkg = pool / "xen-1.0"
    (pkg / "debian/source").mkdir(parents=True)
    (pkg / "debian/source/format").write_text("3.0 (native)\n")
    (pkg / "debian/changelog").write_text(
        "xen (1.0) unstable; urgency=medium\n\n  * test.\n\n"
        " -- T <t@example.org>  Mon, 30 Nov 2026 10:00:00 +0000\n")
    (pkg / "debian/control").write_text("Source: xen\nMaintainer: T <t@example.org>\n\n"
                                        "Package: xen\nArchitecture: any\nDescription: t\n t\n")
    (pkg / "README").write_text("hand-written stand-in for xen's source\n")
    subprocess.run(["dpkg-source", "-b", "xen-1.0"], cwd=pool, check=True, capture_output=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("apt-cache", FAKE_APT_CACHE), ("apt-get", FAKE_APT_GET)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("POOL", str(pool))
    return pool


def test_newest_version_that_downloads_is_fetched_and_recorded(tmp_path, fake_apt) -> None:
    cache = tmp_path / "cache"
    assert sources.listed_versions("xen") == ["2.0", "1.0"]
    src = sources.fetch(cache, "xen", progress=lambda m: None)
    assert src.version == "1.0" and (src.tree / "README").is_file()
    for name in ("xen_1.0.dsc", "xen_1.0.tar.xz"):
        assert src.files[name] == hashlib.sha256((fake_apt / name).read_bytes()).hexdigest()
    unavailable = json.loads((cache / "src/unavailable.json").read_text())
    assert "404" in unavailable["xen"]["2.0"]
    # Fetched once: the next call answers from the cache without apt.
    os.environ["PATH"] = "/nonexistent:" + os.environ["PATH"]
    assert sources.fetch(cache, "xen", version="1.0").folder == src.folder


def test_a_pinned_version_that_does_not_download_fails_clearly(tmp_path, fake_apt) -> None:
    with pytest.raises(sources.FetchFailed, match="404"):
        sources.fetch(tmp_path / "c", "xen", version="2.0", progress=lambda m: None)
    assert not [p for p in (tmp_path / "c/src").iterdir() if p.name.startswith(".")]


def test_no_deb_src_entry_says_what_to_run(monkeypatch, tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-cache").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "apt-cache").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(sources.SourcesUnavailable) as err:
        sources.fetch(tmp_path / "c", "xen")
    assert "scripts/setup" in str(err.value)


def test_tools_install_is_put_in_debians_layout(tmp_path) -> None:
    """Hand-written miniature of `make install-tools` output with Debian's paths."""
    raw = tmp_path / "raw"
    for rel in ("usr/sbin/xl", "usr/bin/xenstore-read", "usr/lib/xen-4.17/boot/hvmloader",
                "usr/lib/x86_64-linux-gnu/libxenlight.so.4.17.0", "usr/include/libxl.h",
                "etc/xen/xl.conf", "usr/lib/x86_64-linux-gnu/libxenlight.a"):
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_text(rel)
    (raw / "usr/lib/x86_64-linux-gnu/libxenlight.so").symlink_to("libxenlight.so.4.17.0")
    out = tmp_path / "out"
    engine._debian_layout(raw, out)
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == ["usr/lib/x86_64-linux-gnu/libxenlight.so.4.17.0", "usr/lib/xen-4.17/bin/xenstore-read",
                   "usr/lib/xen-4.17/bin/xl", "usr/lib/xen-4.17/boot/hvmloader"]
