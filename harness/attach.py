"""Evidence attached to the current test, with every secret scrubbed out.

Each helper does two things: it attaches the evidence to the current Allure
test (when allure-pytest is collecting and a test is running), and it always
writes a copy into the test's artifact folder (set by the pytest glue with
:func:`set_test_artifact_dir`), so a run without ``--alluredir`` still keeps
its evidence.

    attach_file(Path("guest.cfg"), "xl config", "text/plain")
    attach_text(lspci_output, "guest lspci")
    attach_console_slice(console, begin, "host console during boot")
    attach_latency(rows, png_path)

Secrets
    Everything attached passes through :func:`scrub`: every value in the
    process-wide secret registry (passwords resolved from the inventory's
    credential references: ``CredentialRef.resolve()`` registers what it
    returns) is replaced by ``***``, and so is every PEM private-key block
    (``-----BEGIN ... PRIVATE KEY-----`` to its END line, or to the end of
    the text when cut off).  The same scrubber cleans Allure's own results
    (:class:`AllureScrubber`) and log records (:class:`ScrubbingLogFilter`).

    Values shorter than :data:`MIN_SECRET_LEN` are not scrubbed (replacing
    every "ab" in a report would destroy it); registering one logs a warning.

No pytest import here: this module is used by the harness layers.
"""
from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

try:  # allure-python-commons: no pytest import behind it
    import allure as _allure
    from allure_commons import hookimpl as _allure_hookimpl
    from allure_commons import plugin_manager as _allure_plugins
except ImportError:  # pragma: no cover - allure is a hard dependency
    _allure = _allure_plugins = None

    def _allure_hookimpl(*args, **kwargs):
        return (lambda f: f) if not args else args[0]

from xenhil.harness.secrets import contains_secret, scrub, scrub_object

log = logging.getLogger("xenhil.attach")

class AllureScrubber:
    """An allure-commons plugin: scrubs every test result and fixture
    container before the file logger writes it (``tryfirst``), and rewrites
    every attachment file that holds a secret right after it is written
    (``trylast``), whoever attached it (allure-pytest's captured logs, a
    suite calling ``allure.attach`` directly)."""

    @_allure_hookimpl(tryfirst=True)
    def report_result(self, result) -> None:
        scrub_object(result)
        _one_host_label(result)

    @_allure_hookimpl(tryfirst=True)
    def report_container(self, container) -> None:
        scrub_object(container)

    @_allure_hookimpl(trylast=True)
    def report_attached_data(self, body, file_name) -> None:
        self._rewrite(file_name)

    @_allure_hookimpl(trylast=True)
    def report_attached_file(self, source, file_name) -> None:
        self._rewrite(file_name)

    @staticmethod
    def _rewrite(file_name: str) -> None:
        for plugin in _allure_plugins.get_plugins():
            report_dir = getattr(plugin, "_report_dir", None)
            if report_dir is None:
                continue
            path = Path(report_dir) / file_name
            try:
                data = path.read_bytes()
            except OSError:
                continue
            _write_scrubbed(path, data)


def _one_host_label(result) -> None:
    """allure-pytest labels every result with the runner's hostname as
    "host"; when the test leased a lab host, that is the host a reviewer
    means (and the Timeline groups by): drop the runner's."""
    import socket
    labels = getattr(result, "labels", None) or []
    hosts = [label for label in labels if getattr(label, "name", None) == "host"]
    if len(hosts) > 1:
        runner = socket.gethostname()
        for label in hosts:
            if label.value == runner:
                labels.remove(label)


def _write_scrubbed(path: Path, data: bytes) -> None:
    """Rewrite ``path`` without secrets: text is scrubbed, a binary file
    holding a secret is replaced by a note (patching bytes would corrupt it)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        if contains_secret(data):
            path.write_bytes(b"[xenhil: withheld, this file contained a secret]\n")
        return
    scrubbed = scrub(text)
    if scrubbed != text:
        path.write_text(scrubbed, encoding="utf-8")


_SCRUBBER = AllureScrubber()


def install_allure_scrubber() -> None:
    """Register :class:`AllureScrubber` with allure-commons (once per process;
    it stays registered: with no secrets it changes nothing)."""
    if _allure_plugins is not None and not _allure_plugins.is_registered(_SCRUBBER):
        _allure_plugins.register(_SCRUBBER, "xenhil-allure-scrubber")


# --- the current test's artifact folder ----------------------------------------

_current_dir: Path | None = None


def test_artifact_dir(run_artifacts: Path, nodeid: str) -> Path:
    """``<run artifacts>/tests/<nodeid as a file name>``:
    ``suites/pci/test_a.py::test_b[split=x+y]`` -> ``suites.pci.test_a.py--test_b[split=x+y]``."""
    name = nodeid.replace("::", "--").replace("/", ".")
    name = re.sub(r"[^A-Za-z0-9_.+=,\[\]-]", "_", name)
    if len(name) > 150:  # keep below file name limits, unique by a digest
        import hashlib
        name = name[:130] + "-" + hashlib.sha1(nodeid.encode()).hexdigest()[:12]
    return Path(run_artifacts) / "tests" / name


test_artifact_dir.__test__ = False  # a helper, not a test, despite the name


def set_test_artifact_dir(path: Path | None) -> None:
    """Set by the pytest glue around each test; ``None`` between tests."""
    global _current_dir
    _current_dir = Path(path) if path is not None else None


def current_test_artifact_dir() -> Path | None:
    return _current_dir


# --- attaching -------------------------------------------------------------------

# kind (MIME type) -> (Allure attachment type name, file extension, is text)
KINDS: dict[str, tuple[str, str, bool]] = {
    "text/plain": ("TEXT", "txt", True),
    "image/png": ("PNG", "png", False),
    "text/csv": ("CSV", "csv", True),
    "application/json": ("JSON", "json", True),
}
_BY_SUFFIX = {".txt": "text/plain", ".log": "text/plain", ".cfg": "text/plain",
              ".png": "image/png", ".csv": "text/csv", ".json": "application/json"}


def _kind_of(path: Path, kind: str | None) -> str:
    if kind is None:
        kind = _BY_SUFFIX.get(path.suffix.lower(), "text/plain")
    if kind not in KINDS:
        from xenhil.harness.errors import TestBugError
        raise TestBugError(f"attachment kind {kind!r} is not supported",
                           help=f"use one of: {', '.join(KINDS)}")
    return kind


def _file_name(name: str, ext: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.+=-]+", "-", name).strip("-.") or "attachment"
    return stem if stem.endswith("." + ext) else f"{stem}.{ext}"


def _allure_collecting() -> bool:
    """True when an Allure listener is registered (pytest ran with --alluredir)."""
    if _allure is None:
        return False
    return bool(_allure_plugins.hook.attach_data.get_hookimpls())


def _to_allure(body: bytes, name: str, kind: str) -> None:
    if not _allure_collecting():
        return
    type_name, ext, _ = KINDS[kind]
    try:
        _allure.attach(body, name=name,
                       attachment_type=getattr(_allure.attachment_type, type_name), extension=ext)
    except Exception as exc:  # no test running (session-scoped code): the copy is kept anyway
        log.debug("not attached to Allure (%s): %s", type(exc).__name__, name)


def _save(body: bytes, name: str, ext: str, artifact_dir: Path | None) -> Path | None:
    folder = artifact_dir if artifact_dir is not None else _current_dir
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / _file_name(name, ext)
    if dest.exists():  # never overwrite earlier evidence of the same test
        for i in range(2, 1000):
            candidate = dest.with_name(f"{dest.stem}-{i}{dest.suffix}")
            if not candidate.exists():
                dest = candidate
                break
    dest.write_bytes(body)
    return dest


def _attach_bytes(body: bytes, name: str, kind: str, artifact_dir: Path | None) -> Path | None:
    _, ext, is_text = KINDS[kind]
    if is_text:
        body = scrub(body.decode("utf-8", "replace")).encode("utf-8")
    elif contains_secret(body):
        # Patching bytes would corrupt the file; say so instead of leaking.
        note = f"[xenhil: attachment {name!r} withheld: it contained a secret]\n".encode()
        return _attach_bytes(note, name, "text/plain", artifact_dir)
    _to_allure(body, name, kind)
    return _save(body, name, ext, artifact_dir)


def attach_file(path: Path | str, name: str, kind: str | None = None, *,
                artifact_dir: Path | None = None) -> Path | None:
    """Attach a file (scrubbed) and copy it into the test's artifact folder.
    ``kind``: text/plain, image/png, text/csv or application/json (default:
    from the file's suffix).  Returns the copy's path (``None`` when no test
    artifact folder is set and none is given)."""
    path = Path(path)
    kind = _kind_of(path, kind)
    try:
        body = path.read_bytes()
    except OSError as exc:
        body = f"[xenhil: {path} could not be read: {exc.strerror}]\n".encode()
        kind = "text/plain"
    return _attach_bytes(body, name, kind, artifact_dir)


def attach_text(text: str, name: str, *, kind: str = "text/plain",
                artifact_dir: Path | None = None) -> Path | None:
    """Attach text (scrubbed) and save it into the test's artifact folder."""
    if not KINDS[_kind_of(Path(name), kind)][2]:
        from xenhil.harness.errors import TestBugError
        raise TestBugError(f"attach_text({name!r}): {kind} is not a text kind",
                           help="use attach_file for images")
    return _attach_bytes(text.encode("utf-8"), name, kind, artifact_dir)


def attach_console_slice(console, marker, name: str, *,
                         artifact_dir: Path | None = None) -> Path | None:
    """Attach what ``console`` received since ``marker`` (a
    :meth:`harness.access.console.Console.mark`), e.g. one boot's output."""
    return attach_text(console.slice(marker), name, artifact_dir=artifact_dir)


def latency_csv(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]]) -> str:
    """CSV text of ``rows``: dicts (header from the first row's keys) or
    sequences (the first row is the header)."""
    out = io.StringIO()
    rows = list(rows)
    if rows and isinstance(rows[0], Mapping):
        writer = csv.DictWriter(out, fieldnames=list(rows[0].keys()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows(rows)
    return out.getvalue()


def attach_latency(csv_rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
                   png_path: Path | str | None, *, name: str = "latency",
                   artifact_dir: Path | None = None) -> list[Path]:
    """Attach a latency table (CSV) and its plot (PNG, from
    :func:`harness.results.plots.latency_distribution_png`)."""
    saved = [attach_text(latency_csv(csv_rows), f"{name}.csv", kind="text/csv",
                         artifact_dir=artifact_dir)]
    if png_path is not None:
        saved.append(attach_file(png_path, f"{name}.png", "image/png", artifact_dir=artifact_dir))
    return [p for p in saved if p is not None]


#: Largest part of one evidence file put into a report (its tail: the end of
#: a log is where a failure shows); the whole file stays in the artifacts.
EVIDENCE_TAIL_BYTES = 1 << 20


def attach_evidence(evidence: dict[str, str], *, artifact_dir: Path | None = None) -> list[str]:
    """Attach every evidence entry that is a local file (a failure's
    ``evidence``: name -> path), scrubbed, text files cut to their last
    EVIDENCE_TAIL_BYTES.  Entries that are folders or remote paths are left
    to the failure message.  Returns the names attached."""
    attached = []
    for name, value in evidence.items():
        path = Path(str(value))
        try:
            if not path.is_file():
                continue
            size = path.stat().st_size
            kind = _kind_of(path, None)
            if KINDS[kind][2] and size > EVIDENCE_TAIL_BYTES:
                with path.open("rb") as f:
                    f.seek(size - EVIDENCE_TAIL_BYTES)
                    body = (f"[xenhil: last {EVIDENCE_TAIL_BYTES} of {size} bytes of {path}]\n"
                            .encode() + f.read())
                _attach_bytes(body, name, kind, artifact_dir)
            else:
                attach_file(path, name, kind, artifact_dir=artifact_dir)
        except OSError as exc:
            log.warning("evidence %s (%s) not attached: %s", name, path, exc)
            continue
        attached.append(name)
    return attached



# --- the run's files, once more at its end -------------------------------------

#: A file up to this size holding a secret is rewritten scrubbed; a larger
#: one (checked in chunks) is withheld whole: patching it in place is not safe.
SWEEP_REWRITE_MAX = 64 << 20
#: SQLite files and their journals are never rewritten: the stores scrub
#: what they write (harness.results.store), a byte patch would corrupt them.
_NOT_SWEPT_SUFFIXES = ("-wal", "-shm", "-journal")


def scrub_files(targets: Sequence[Path | str]) -> list[Path]:
    """Scrub every regular file under ``targets`` (folders or files) that
    holds a registered secret or a private-key block: the last line of
    defence at the end of a run, for what was written without passing
    through the scrubber (a console transcript, a tool's own log); a file or
    folder whose name holds one is renamed.  Returns the files rewritten and
    the new paths of those renamed."""
    import os
    import stat

    from xenhil.harness.secrets import registered_secrets
    secrets = registered_secrets()
    changed: list[Path] = []
    paths: list[Path] = []
    for target in targets:
        target = Path(target)
        if target.is_file():
            paths.append(target)
        elif target.is_dir():
            for root, _, names in os.walk(target):
                paths.extend(Path(root) / name for name in names)
    for path in paths:
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or path.name.endswith(_NOT_SWEPT_SUFFIXES):
                continue
            with path.open("rb") as f:
                if f.read(16) == b"SQLite format 3\0":
                    continue
            if info.st_size <= SWEEP_REWRITE_MAX:
                data = path.read_bytes()
                if contains_secret(data):
                    _write_scrubbed(path, data)
                    changed.append(path)
            elif _large_file_holds(path, secrets):
                path.write_bytes(b"[xenhil: withheld, this file contained a secret]\n")
                changed.append(path)
        except OSError as exc:
            log.warning("could not check %s for secrets: %s", path, exc.strerror)
    renamed = _rename_secret_names(targets)
    if changed:
        log.warning("masked secrets in %d file(s) written unscrubbed during the run: %s",
                    len(changed), ", ".join(str(p) for p in changed[:5]))
    if renamed:
        # The names are logged masked: they are the new ones.
        log.warning("renamed %d file(s) or folder(s) whose names held a secret: %s",
                    len(renamed), ", ".join(str(p) for p in renamed[:5]))
    return changed + renamed


def _rename_secret_names(targets: Sequence[Path | str]) -> list[Path]:
    """Rename every file and folder under ``targets`` whose name holds a
    secret (a test id or a tool's output file named after a command line),
    deepest first so a folder's new name does not break its entries' paths;
    the secret part becomes ``***`` and a name taken already gets a number.
    The targets themselves are the caller's and keep their names."""
    import os

    renamed: list[Path] = []
    for target in targets:
        target = Path(target)
        if not target.is_dir():
            continue
        for root, dirs, files in os.walk(target, topdown=False):
            for name in files + dirs:
                masked = scrub(name)
                if masked == name:
                    continue
                old, new = Path(root) / name, Path(root) / masked
                number = 1
                while new.exists() or new.is_symlink():
                    number += 1
                    new = Path(root) / f"{masked}.{number}"
                try:
                    old.rename(new)
                    renamed.append(new)
                except OSError as exc:
                    log.warning("could not rename %s: %s", scrub(str(old)), exc.strerror)
    return renamed


def _large_file_holds(path: Path, secrets: frozenset[str]) -> bool:
    needles = [s.encode() for s in secrets] + [b"PRIVATE KEY-----"]
    overlap = max(len(n) for n in needles) - 1
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(4 << 20):
            data = tail + chunk
            if any(n in data for n in needles):
                return True
            tail = data[-overlap:]
    return False
