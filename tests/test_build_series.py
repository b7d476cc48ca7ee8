"""Patch series in the forms a reviewer receives them (quilt folder, mbox,
git range, single diff), and series that are wrong.  The patches are real:
made with git in a temporary repository by each test."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xenhil.harness.build.series import BadSeries, parse_series
from xenhil.harness.cli.main import main


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env={"GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.org",
                                          "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.org",
                                          "HOME": str(repo), "PATH": "/usr/bin:/bin"}).stdout


def make_repo(tmp: Path) -> Path:
    """A small tree shaped like Xen's (xen/ and tools/) with two commits on
    top of a base tagged `base`: one hypervisor change, one tools change."""
    repo = tmp / "repo"
    (repo / "xen/common").mkdir(parents=True)
    (repo / "tools/xl").mkdir(parents=True)
    (repo / "xen/common/version.c").write_text("".join(f"line {i}\n" for i in range(1, 41)))
    (repo / "tools/xl/xl_info.c").write_text("".join(f"info {i}\n" for i in range(1, 41)))
    git(repo.parent, "init", "-q", str(repo))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    git(repo, "tag", "base")
    text = (repo / "xen/common/version.c").read_text().replace("line 10\n", "line 10\nbanner\n")
    (repo / "xen/common/version.c").write_text(text)
    git(repo, "commit", "-q", "-am", "xen: add a banner line")
    text = (repo / "tools/xl/xl_info.c").read_text().replace("info 30\n", "info 30\nxenhil\n")
    (repo / "tools/xl/xl_info.c").write_text(text)
    git(repo, "commit", "-q", "-am", "xl: add a line to xl info")
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path)


def format_patches(repo: Path, out: Path, *extra: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    names = git(repo, "format-patch", "-o", str(out), *extra, "base..HEAD").split()
    return [Path(n) for n in names]


def test_quilt_folder_mbox_and_git_range_give_the_same_series(repo: Path, tmp_path: Path) -> None:
    files = format_patches(repo, tmp_path / "quilt")
    (tmp_path / "quilt/series").write_text("# from git format-patch\n"
                                           + "".join(f"{p.name}\n" for p in files))
    mbox = tmp_path / "series.mbox"
    mbox.write_text(git(repo, "format-patch", "--stdout", "base..HEAD"))

    quilt = parse_series(tmp_path / "quilt")
    mail = parse_series(mbox)
    rng = parse_series(f"git:{repo}:base..HEAD")
    for series in (quilt, mail, rng):
        assert [p.subject.split("] ", 1)[-1] for p in series] == [
            "xen: add a banner line", "xl: add a line to xl info"]
        assert [p.files for p in series] == [("xen/common/version.c",), ("tools/xl/xl_info.c",)]
    # Content-addressed on the diff: the same change keys the same in every form.
    assert [p.diff_sha256 for p in quilt] == [p.diff_sha256 for p in mail] == [p.diff_sha256 for p in rng]
    assert quilt[0].name == files[0].name and mail[0].name.startswith("0001-xen-add-a-banner-line")


def test_mbox_skips_the_cover_letter_and_orders_by_patch_number(repo: Path, tmp_path: Path) -> None:
    files = format_patches(repo, tmp_path / "p", "--cover-letter")
    assert files[0].name.startswith("0000-cover-letter")
    # Mails arrive in any order; [PATCH k/N] puts them back.
    mbox = tmp_path / "shuffled.mbox"
    mbox.write_text("".join(p.read_text() for p in (files[2], files[0], files[1])))
    series = parse_series(mbox)
    assert [p.files[0] for p in series] == ["xen/common/version.c", "tools/xl/xl_info.c"]


def test_single_git_patch_file_and_plain_diff(repo: Path, tmp_path: Path) -> None:
    files = format_patches(repo, tmp_path / "p")
    assert len(parse_series(files[0])) == 1       # a format-patch file is an mbox of one
    plain = tmp_path / "plain.diff"
    plain.write_text(git(repo, "diff", "base", "HEAD~1"))
    (series,) = [parse_series(plain)]
    assert series[0].files == ("xen/common/version.c",)
    assert series[0].diff_sha256 == parse_series(files[0])[0].diff_sha256


def test_quilt_strip_level(repo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "one.diff").write_text(git(repo, "diff", "--no-prefix", "base", "HEAD~1"))
    (folder / "series").write_text("one.diff -p0\n")
    (patch,) = parse_series(folder)
    assert patch.strip == 0 and patch.files == ("xen/common/version.c",)


@pytest.mark.parametrize("setup,message", [
    (lambda d: d.mkdir(), "without a `series` file"),
    (lambda d: (d.mkdir(), (d / "series").write_text("missing.patch\n")), "patch missing.patch is not in"),
    (lambda d: (d.mkdir(), (d / "series").write_text("# nothing\n")), "names no patch"),
    (lambda d: (d.mkdir(), (d / "a.patch").write_text("just words\n"),
                (d / "series").write_text("a.patch\n")), "contains no diff"),
    (lambda d: (d.mkdir(), (d / "a.patch").write_text("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"),
                (d / "series").write_text("a.patch -R\n")), "unknown option '-R'"),
])
def test_bad_quilt_series_names_the_problem(tmp_path: Path, setup, message) -> None:
    folder = tmp_path / "s"
    setup(folder)
    with pytest.raises(BadSeries, match=message) as err:
        parse_series(folder)
    assert "how to fix" in str(err.value)


def test_bad_git_range_and_missing_path(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(BadSeries, match="no commit"):
        parse_series(f"git:{repo}:HEAD..HEAD")
    with pytest.raises(BadSeries, match="format-patch failed"):
        parse_series(f"git:{repo}:nosuchref..HEAD")
    with pytest.raises(BadSeries, match="git:REPO:A..B"):
        parse_series(f"git:{repo}")
    with pytest.raises(BadSeries, match="no such file"):
        parse_series(tmp_path / "nothing")


def test_cli_bad_series_exits_2_without_a_traceback(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    assert main(["build", "--xen-series", str(folder), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "without a `series` file" in err and "Traceback" not in err
    assert not (tmp_path / "c" / "build-cache").exists()     # nothing started
