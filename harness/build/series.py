"""A patch series in the forms a reviewer receives one.

- a folder with a quilt ``series`` file (one patch per line, ``#`` comments,
  an optional ``-pN`` after the name, as quilt writes it);
- an mbox (``git format-patch --stdout``, a mail client's export, or the
  ``.patch`` files ``git format-patch`` writes, each an mbox of one mail);
  a cover letter ("[PATCH 0/N]") and other mails without a diff are left
  out, and "[PATCH k/N]" numbers give the order when present;
- a git range, written ``git:REPO:A..B`` (``git format-patch`` of it, read
  as an mbox);
- a single plain diff file.

Each patch is parsed with ``unidiff`` to know which files it touches (which
component to rebuild) and to name a failing hunk by its ``@@`` header.
"""
from __future__ import annotations

import email.header
import hashlib
import mailbox
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from unidiff import PatchSet
from unidiff.errors import UnidiffParseError

from xenhil.harness.errors import ConfigError


class BadSeries(ConfigError):
    help = ("give a folder with a quilt `series` file, an mbox (git format-patch --stdout), "
            "a .patch file, or git:REPO:A..B")


@dataclass(frozen=True)
class Patch:
    name: str            # file name in the series, or "NNNN-subject" for a mail
    subject: str
    text: str            # the whole patch as received (message, diffstat, diff)
    strip: int = 1       # -pN
    source: str = ""     # where it came from (file, mbox and message number, commit)

    @property
    def patchset(self) -> PatchSet:
        return _parse_diff(self)

    @property
    def files(self) -> tuple[str, ...]:
        """Paths (after stripping ``strip`` components) the patch touches."""
        out = []
        for f in self.patchset:
            path = f.target_file if f.target_file != "/dev/null" else f.source_file
            out.append("/".join(path.split("/")[self.strip:]))
        return tuple(out)

    @property
    def diff_sha256(self) -> str:
        """Hash of the diff alone: the same change from quilt, mbox or git keys
        the same build; commit messages and mail headers do not."""
        return hashlib.sha256(f"-p{self.strip}\n{self.patchset}".encode()).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _parse_diff(patch: Patch) -> PatchSet:
    try:
        ps = PatchSet(patch.text)
    except UnidiffParseError as exc:
        raise BadSeries(f"patch {patch.name}: not a readable unified diff: {exc}") from None
    if not len(ps):
        raise BadSeries(f"patch {patch.name}: contains no diff",
                        help="check the file: a series entry must be a unified diff (diff -u, git diff)")
    return ps


def _decode_subject(raw: str | None) -> str:
    if not raw:
        return ""
    parts = email.header.decode_header(raw)
    text = "".join(p.decode(c or "utf-8", "replace") if isinstance(p, bytes) else p for p, c in parts)
    return " ".join(text.split())


_NUMBER = re.compile(r"\[[^\]]*?\b(\d+)/(\d+)\s*\]")


def _mail_body(message: mailbox.mboxMessage) -> str:
    if message.is_multipart():
        parts = []
        for part in message.walk():
            if part.get_content_maintype() == "text" or part.get_filename(""):
                payload = part.get_payload(decode=True)
                if payload:
                    parts.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
        return "\n".join(parts)
    payload = message.get_payload(decode=True) or b""
    return payload.decode(message.get_content_charset() or "utf-8", "replace")


def _slug(subject: str) -> str:
    subject = re.sub(r"^\s*(\[[^\]]*\]\s*)+", "", subject)
    return re.sub(r"[^A-Za-z0-9]+", "-", subject).strip("-")[:52] or "patch"


def _read(path: Path, what: str = "patch series") -> str:
    """A series file read bounded, and refused (BadSeries, exit 2) when it is
    a FIFO, a device or larger than any series (harness.safeio)."""
    from xenhil.harness.safeio import read_bytes
    try:
        return read_bytes(path, what, fix="give a regular file: a quilt folder's `series` and its "
                          "patches, an mbox or a .patch").decode("utf-8", errors="replace")
    except ConfigError as exc:
        raise BadSeries(exc.args[0], help=exc.help) from None


def parse_mbox(path: Path, *, label: str | None = None) -> list[Patch]:
    _read(path)    # checked first: mailbox would block on a FIFO, or read /dev/zero for ever
    box = mailbox.mbox(str(path), create=False)
    try:
        numbered: list[tuple[int, int, Patch]] = []
        for index, message in enumerate(box):
            subject = _decode_subject(message.get("Subject"))
            body = _mail_body(message)
            if not re.search(r"^(diff --git |--- \S)", body, re.M):
                continue  # cover letter, or a reply without a diff
            m = _NUMBER.search(subject)
            if m and int(m.group(1)) == 0:
                continue
            order = int(m.group(1)) if m else index + 1
            patch = Patch(name=f"{order:04d}-{_slug(subject)}.patch", subject=subject, text=body,
                          source=f"{label or path} message {index + 1}")
            _parse_diff(patch)
            numbered.append((order, index, patch))
    finally:
        box.close()
    if not numbered:
        raise BadSeries(f"{label or path}: no mail with a diff in it")
    numbered.sort(key=lambda t: (t[0], t[1]))
    orders = [o for o, _, _ in numbered]
    if len(set(orders)) != len(orders):
        dup = sorted({o for o in orders if orders.count(o) > 1})
        raise BadSeries(f"{label or path}: patch number(s) {dup} appear twice (two versions "
                        f"of the series in one mbox?)", help="keep one version of the series in the mbox")
    return [p for _, _, p in numbered]


def parse_quilt(folder: Path) -> list[Patch]:
    series = folder / "series"
    patches = []
    for lineno, line in enumerate(_read(series, "quilt series file").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, *opts = line.split()
        strip = 1
        for opt in opts:
            m = re.fullmatch(r"-p(\d+)", opt)
            if not m:
                raise BadSeries(f"{series}:{lineno}: unknown option {opt!r} (quilt series "
                                f"lines are `NAME [-pN]`)")
            strip = int(m.group(1))
        file = folder / name
        if not file.exists():
            raise BadSeries(f"{series}:{lineno}: patch {name} is not in {folder}",
                            help="add the file or remove its line from the series file")
        text = _read(file)
        subject = next((_decode_subject(l[9:]) for l in text.splitlines() if l.startswith("Subject: ")),
                       name)
        patch = Patch(name=name, subject=subject, text=text, strip=strip, source=str(file))
        _parse_diff(patch)
        patches.append(patch)
    if not patches:
        raise BadSeries(f"{series}: names no patch")
    return patches


def parse_git_range(spec: str) -> list[Patch]:
    """``git:REPO:A..B``: the commits of the range, oldest first."""
    body = spec[len("git:"):]
    repo, sep, rng = body.rpartition(":")
    if not sep or ".." not in rng or not repo:
        raise BadSeries(f"{spec}: a git range is written git:REPO:A..B",
                        help="for example git:/src/xen:origin/stable-4.17..HEAD")
    if not Path(repo).is_dir():
        raise BadSeries(f"{spec}: {repo} is not a folder")
    run = subprocess.run(["git", "-C", repo, "format-patch", "--stdout", "--no-signature",
                          "--no-stat", rng], capture_output=True, text=True)
    if run.returncode != 0:
        raise BadSeries(f"{spec}: git format-patch failed: {run.stderr.strip()}",
                        help="check that REPO is a git repository and A..B names existing commits")
    if not run.stdout.strip():
        raise BadSeries(f"{spec}: the range holds no commit", help="A..B lists commits in B not in A")
    tmp = Path(repo) / ".git" / "xenhil-series.mbox"
    try:
        # mailbox reads files only; .git/ is the repository's own scratch space.
        tmp.write_text(run.stdout)
        # format-patch numbers only with -n; order is the file order (oldest first).
        patches = parse_mbox(tmp, label=spec)
    finally:
        tmp.unlink(missing_ok=True)
    return patches


def parse_series(spec: str | Path) -> list[Patch]:
    """Read a series in any accepted form; BadSeries (exit 2) otherwise."""
    text = str(spec)
    if text.startswith("git:"):
        return parse_git_range(text)
    path = Path(text)
    if path.is_dir():
        if not (path / "series").exists():
            raise BadSeries(f"{path}: a folder without a `series` file",
                            help="write the patch file names, in order, into a file named `series`")
        return parse_quilt(path)
    if not path.exists():
        raise BadSeries(f"{path}: no such file or folder")
    text = _read(path)
    if text.startswith("From "):
        return parse_mbox(path)
    patch = Patch(name=path.name, subject=path.name, text=text, source=str(path))
    _parse_diff(patch)
    return [patch]
