"""`xenhil build` end to end on a hand-written stand-in for Xen's source
package (a few lines of C and a Makefile shaped like xen/'s targets: labelled
here as hand-written data), so the cache, the keys, incremental rebuilds and
the failure paths run for real in seconds.  The real sources are built by
tests/test_build_real.py."""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from xenhil.harness.build import cache as bcache
from xenhil.harness.build import engine
from xenhil.harness.build import recipes as R
from xenhil.harness.build.series import parse_series
from xenhil.harness.cli.main import main
from xenhil.harness.xen.build import load_build

from tests.test_build_series import git

VERSION = "9.9-1"

# Hand-written stand-in for xen/Makefile: the recipe's targets (olddefconfig,
# build) producing xen/xen.gz from two C files.
FAKE_MAKEFILE = """\
olddefconfig:
\t@test -f .config
build: xen.gz
xen.gz: common/version.o common/other.o
\tcat $^ | gzip -n > $@
%.o: %.c
\t$(CC) -c -o $@ $<
"""


def fake_source(cache: Path) -> Path:
    """A fetched xen source package as harness.build.sources leaves one."""
    folder = cache / "src" / f"xen_{VERSION}"
    tree = folder / "tree"
    (tree / "xen/common").mkdir(parents=True)
    (tree / "debian").mkdir()
    (tree / "debian/xen-kconfig").write_text("CONFIG_DEBUG=n\n")
    (tree / "xen/Makefile").write_text(FAKE_MAKEFILE)
    (tree / "xen/common/version.c").write_text("".join(f"int line_{i} = {i};\n" for i in range(1, 41)))
    (tree / "xen/common/other.c").write_text("int other = 1;\n")
    (folder / "source.json").write_text(json.dumps(
        {"package": "xen", "version": VERSION, "files": {f"xen_{VERSION}.dsc": "0" * 64}}))
    return tree


def series_dir(tmp: Path, name: str, changes: list[tuple[str, str, str]], tree: Path) -> Path:
    """A quilt folder made with git from ``tree``: one patch per (subject,
    old line, new line) in version.c."""
    repo = tmp / f"repo-{name}"
    subprocess.run(["cp", "-a", str(tree), str(repo)], check=True)
    git(repo.parent, "init", "-q", str(repo))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    for subject, old, new in changes:
        path = repo / "xen/common/version.c"
        path.write_text(path.read_text().replace(old, new))
        git(repo, "commit", "-q", "-am", subject)
    out = tmp / f"series-{name}"
    names = git(repo, "format-patch", "-o", str(out), f"HEAD~{len(changes)}..HEAD").split()
    (out / "series").write_text("".join(Path(n).name + "\n" for n in names))
    return out


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def tree(cache: Path) -> Path:
    return fake_source(cache)


def build(cache: Path, series: Path | None, **kw) -> engine.Result:
    request = engine.Request(xen_series=parse_series(series) if series else [],
                             xen_version=VERSION, jobs=1, **kw)
    return engine.Builder(cache).build(request)


def test_build_is_cached_and_a_one_line_change_rebuilds_one_file(cache, tree, tmp_path) -> None:
    one = series_dir(tmp_path, "one", [("xen: banner", "int line_10 = 10;", "int line_10 = 11;")], tree)
    first = build(cache, one)
    assert not first.cached and first.components_built == ["xen"]
    assert first.manifest["packaged"] == ["tools", "qemu"]
    assert first.manifest["sources"]["xen"]["version"] == VERSION
    assert [p["subject"] for p in first.manifest["patches"]["xen"]] == ["[PATCH] xen: banner"]
    assert first.manifest["compiler"].startswith("gcc")
    assert {"xen: compile", "xen: configure", "apply series"} <= set(first.times)

    # What --xen-build takes: a hypervisor-only tree, its manifest named.
    loaded = load_build(first.dist)
    assert loaded.hypervisor == "boot/xen.gz"   # never a /boot/xen-*.gz on the host
    assert loaded.xenhil_build == first.key and loaded.manifest.endswith("build-manifest.json")
    assert "left to the host's packages: tools, qemu" in loaded.notes[0]

    again = build(cache, one)
    assert again.cached and again.key == first.key and again.path == first.path

    # One changed line: only version.c is recompiled in the kept tree.
    work = next((bcache.cache_root(cache) / "work").glob("xen-*"))
    other_o = work / "src/xen/common/other.o"
    before = other_o.stat().st_mtime_ns
    two = series_dir(tmp_path, "two", [("xen: banner", "int line_10 = 10;", "int line_10 = 12;")], tree)
    second = build(cache, two)
    assert second.key != first.key and second.components_built == ["xen"]
    assert second.manifest["components"]["xen"]["files_changed_since_last_build"] == 1
    assert other_o.stat().st_mtime_ns == before
    # No series at all: back to the pristine file, again one file changed.
    plain = build(cache, None)
    assert plain.manifest["components"]["xen"]["files_changed_since_last_build"] == 1
    assert not list((bcache.cache_root(cache) / "builds").glob(".tmp-*"))


def test_cache_key_is_the_diff_not_the_mail(cache, tree, tmp_path) -> None:
    change = ("xen: banner", "int line_10 = 10;", "int line_10 = 11;")
    quilt = series_dir(tmp_path, "q", [change], tree)
    mbox = tmp_path / "s.mbox"
    mbox.write_text("".join(p.read_text() for p in sorted(quilt.glob("*.patch"))))
    reworded = series_dir(tmp_path, "r", [("xen: say it differently", *change[1:])], tree)
    other = series_dir(tmp_path, "o", [("xen: banner", "int line_10 = 10;", "int line_10 = 13;")], tree)
    builder = engine.Builder(cache)

    def plan(series, **kw):
        return builder.plan(engine.Request(xen_series=parse_series(series), xen_version=VERSION, **kw))
    assert plan(quilt).key == plan(mbox).key == plan(reworded).key
    assert plan(other).key != plan(quilt).key
    # A hypervisor-only change leaves the tools' key alone: only xen rebuilds.
    a, b = plan(quilt, components="xen,tools"), plan(other, components="xen,tools")
    assert a.components["tools"] == b.components["tools"] and a.components["xen"] != b.components["xen"]
    assert plan(quilt).components.keys() == {"xen"}       # auto: what the series touches


def test_patch_that_does_not_apply_exits_2_before_compiling(cache, tree, tmp_path, capsys) -> None:
    series = series_dir(tmp_path, "s", [("xen: first", "int line_10 = 10;", "int line_10 = 11;"),
                                        ("xen: second", "int line_30 = 30;", "int line_30 = 31;")], tree)
    # The source moved under the second patch (hand-made drift).
    path = tree / "xen/common/version.c"
    path.write_text(path.read_text().replace("int line_29 = 29;\nint line_30 = 30;\nint line_31 = 31;\n",
                                             "int moved;\n"))
    rc = main(["build", "--xen-series", str(series), "--xen-version", VERSION, "--cache", str(cache)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "patch 2/2 '0002-xen-second.patch'" in err
    assert "xen/common/version.c: hunk #1 @@ -27,7 +27,7 @@" in err and "failed at line 27" in err
    assert "Traceback" not in err and "how to fix" in err
    root = bcache.cache_root(cache)
    assert not (root / "work").exists() and not (root / "builds").exists()   # nothing compiled


def test_compile_error_shows_the_failing_lines_and_the_log(cache, tree, tmp_path, capsys) -> None:
    bad = series_dir(tmp_path, "bad", [("xen: typo", "int line_10 = 10;", "int line_10 = 10")], tree)
    rc = main(["build", "--xen-series", str(bad), "--xen-version", VERSION, "--cache", str(cache), "-j1"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "xen: compile failed" in err and "error: expected" in err and "version.c:11" in err
    log = err.split("--- full log: ")[1].split()[0]
    assert Path(log).is_file() and "version.c" in Path(log).read_text()
    root = bcache.cache_root(cache)
    assert not list((root / "builds").glob("*")) if (root / "builds").exists() else True
    assert not list((root / "components").glob("*")) if (root / "components").exists() else True


def test_missing_build_dependency_names_the_package(cache, tree, monkeypatch, capsys) -> None:
    real = R.recipes

    def with_missing(jobs):
        recipes = real(jobs)
        recipes["xen"] = R.Recipe("xen", "xen", ("build-essential", "xenhil-no-such-package"),
                                  recipes["xen"].configure, recipes["xen"].build, recipes["xen"].options)
        return recipes
    monkeypatch.setattr(R, "recipes", with_missing)
    rc = main(["build", "--xen-version", VERSION, "--cache", str(cache)])
    err = capsys.readouterr().err
    assert rc == 2 and "apt-get install xenhil-no-such-package" in err


def test_output_tarball_loads_with_its_manifest(cache, tree, tmp_path, capsys) -> None:
    out = tmp_path / "out.tar.gz"
    assert main(["build", "--xen-version", VERSION, "--cache", str(cache), "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    with tarfile.open(out) as tar:
        assert "var/lib/xenhil/build-manifest.json" in tar.getnames()
    loaded = load_build(out)
    assert loaded.kind == "tarball" and loaded.xenhil_build == result["key"]
    assert main(["build", "--xen-version", VERSION, "--cache", str(cache), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] is True
    assert main(["build", "--list", "--cache", str(cache)]) == 0
    listed = capsys.readouterr().out
    assert result["key"] in listed and "builds" in listed


def test_interrupted_staging_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    final = tmp_path / "builds" / "k"
    with pytest.raises(KeyboardInterrupt):
        with bcache.staging(final) as tmp:
            (tmp / "half").write_text("x")
            raise KeyboardInterrupt
    assert not final.exists() and not list((tmp_path / "builds").iterdir())
    # A temporary left by a killed process (pid gone) is removed by prune.
    dead = tmp_path / "build-cache" / "builds" / ".tmp-k-999999999"
    dead.mkdir(parents=True)
    assert bcache.stale_temporaries(tmp_path) == [dead]
    bcache.prune(tmp_path, 10**12)
    assert not dead.exists()


def test_prune_removes_least_recently_used_first(tmp_path: Path) -> None:
    root = bcache.cache_root(tmp_path)
    for i, name in enumerate(("old", "mid", "new")):
        entry = root / "builds" / name
        entry.mkdir(parents=True)
        (entry / "blob").write_bytes(b"x" * 1000)
        bcache.touch(entry)
        os.utime(entry / "last-used", (1000 + i, 1000 + i))
    removed = bcache.prune(tmp_path, 2100)
    assert [e.name for e in removed] == ["old"]
    assert {e.name for e in bcache.entries(tmp_path)} == {"mid", "new"}
    assert [e.name for e in bcache.prune(tmp_path, 0, remove_all=True)] == ["mid", "new"]


def test_failing_lines_pick_the_errors(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("cc -c a.c\nok\nIn file included from b.c:1:\nb.h:3:1: error: unknown type\n"
                   "make[2]: *** [Makefile:5: b.o] Error 1\nlater\n")
    text = engine.failing_lines(log)
    assert "b.h:3:1: error: unknown type" in text and "Error 1" in text and "cc -c a.c" not in text
