"""Options checked once, before anything acts: numbers, store URLs, paths.

The pytest plugin checks its options here at start-up (one
``pytest.UsageError`` of one line, before any test, lease or file), and the
command line uses the same rules for its own options (exit 2).  Every rule
is in the tables below; every problem is one line naming the option and
its fix, and never repeats a value that might be a secret.

Exit codes (the documented convention, README "Exit codes"): bad input is
2 at the command line and pytest's usage error (4) under pytest.
"""
from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from xenhil.harness.errors import ConfigError

# --------------------------------------------------------------------------
# Tables: the rules.  Change them here only.
# --------------------------------------------------------------------------

DAY = 86400.0


@dataclass(frozen=True)
class Range:
    """A number option: finite, within [low, high] (an integer when
    ``integer``), measured in ``unit``."""

    meaning: str
    low: float
    high: float
    example: float
    low_open: bool = False        # True: low itself is not allowed (must be more)
    unit: str = "seconds"
    integer: bool = False


#: Every number option, by the name the user types (and, when two verbs
#: give one name different rules, the verb in parentheses).
NUMBERS: dict[str, Range] = {
    # A heartbeat renews every TTL/3: below a second it would hammer the store;
    # above a day a dead holder would block its host for as long.
    "--lease-ttl": Range("seconds a lease lives without a heartbeat", 1.0, DAY, 120),
    "--reserve-timeout": Range("seconds a test waits for a free host", 0.0, 7 * DAY, 1800),
    # xenhil reserve: nothing renews an interactive lease, hence the longer bound.
    "--ttl": Range("seconds the interactive lease lives", 1.0, 30 * DAY, 14400),
    "--timeout": Range("seconds to wait", 0.0, 7 * DAY, 60),
    # xenhil host run --timeout: the command's own limit.
    "--timeout (host run)": Range("seconds the command may run", 0.0, 7 * DAY, 600, low_open=True),
    # xenhil lab health: power cycle to dom0's SSH; an emulated host takes minutes.
    "--boot-timeout": Range("seconds from power cycle to dom0's SSH", 0.0, DAY, 900, low_open=True),
    # xenhil build: 0 empties the cache with --prune; a petabyte is no limit, a typo.
    "--max-size": Range("gigabytes the build cache may hold", 0.0, 1e6, 25, unit="GB"),
    "--jobs": Range("parallel compile jobs", 1, 1024, 8, unit="jobs", integer=True),
    # xenhil bisect: runs again of a prefix whose run said nothing (a lab failure, a skip).
    "--retries": Range("runs again of a prefix whose run said nothing", 0, 10, 1, unit="runs",
                       integer=True),
    # xenhil qualify: a catch repeated (the latency mutant: "5 of 5"); each
    # run is a guest boot and minutes of tests, so a hundred is a typo.
    "--repeat": Range("runs of each mutant", 1, 100, 5, unit="runs", integer=True),
    # Suites' options: a count of 0 or less would make their test pass
    # having checked nothing.
    "--saverestore-cycles": Range("save/restore cycles of the repeated-cycles test", 1, 1000, 3,
                                  unit="cycles", integer=True),
    # The Mann-Whitney comparison needs a sample; 10 million accesses take hours.
    "--latency-samples": Range("timed accesses per server", 10, 10_000_000, 100_000,
                               unit="samples", integer=True),
}

#: --series names the patch series in every report (a URL or a message id):
#: one line, and never a link with credentials in it.
SERIES_MAX = 2000

#: A run id becomes a folder name (artifacts/<run id>) and a lease column.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

#: How a value is shown in a message: at most this many characters.
SHOWN_MAX = 40

#: A libpq keyword DSN ("host=db dbname=lab password=..."): not a store URL.
KEYWORD_DSN = re.compile(r"^\s*[A-Za-z_]+\s*=")


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

def shown(value: object) -> str:
    """A user's value for a message: short, and with whatever may be a
    secret (URL passwords, password=..., -P ...) masked."""
    from xenhil.harness.secrets import redact_inline
    text = redact_inline(str(value))
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX - 3] + "...")


def number(option: str, value: object) -> float:
    """``value`` (text or number) as the number option ``option`` of
    :data:`NUMBERS`: ConfigError when it is not a finite number in the
    option's range (an int for an integer option)."""
    rule = NUMBERS[option]
    option = option.split(" (")[0]
    fix = f"give {rule.meaning}, e.g. {option} {rule.example:g}"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{option} {shown(value)}: not a number", help=fix) from None
    if not math.isfinite(number):
        raise ConfigError(f"{option} {shown(value)}: not a finite number", help=fix)
    if rule.integer and number != int(number):
        raise ConfigError(f"{option} {shown(value)}: not a whole number", help=fix)
    too_low = number <= rule.low if rule.low_open else number < rule.low
    if too_low or number > rule.high:
        low = f"more than {rule.low:g}" if rule.low_open else f"at least {rule.low:g}"
        raise ConfigError(f"{option} {shown(value)}: out of range ({low} and at most "
                          f"{rule.high:g} {rule.unit})", help=fix)
    return int(number) if rule.integer else number


def argparse_type(check, *args):
    """An argparse ``type=`` from a check of this module: its ConfigError
    becomes argparse's one-line usage error (exit 2), fix included."""
    import argparse

    def parse(text: str):
        try:
            return check(*args, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(f"{exc.args[0]}; fix: {exc.help}") from None
    parse.__name__ = check.__name__
    return parse


def argparse_number(option: str):
    """An argparse ``type=`` for the number option ``option`` (looked up
    now: an option missing from NUMBERS fails when the parser is built,
    not when a user types a value)."""
    NUMBERS[option]
    return argparse_type(number, option)


#: A tag as the inventory writes it (inventory.schema.json): one word.
TAG = re.compile(r"[^\s,]{1,64}")


def tag(option: str, value: str) -> str:
    """A tag asked for with ``option`` (``reserve --tag``): one word of at
    most 64 characters without spaces or commas, as inventories write them."""
    if not TAG.fullmatch(value or ""):
        raise ConfigError(f"{option} {shown(value)}: not a tag",
                          help="give one word without spaces or commas (repeat the option for "
                               "several tags), as the inventory's tags: lists them")
    return value


#: A reason (quarantine, unquarantine) is logged on one line with its author
#: and shown by `xenhil lab status`: a sentence, not a file.
REASON_MAX = 500


def reason(option: str, value: str) -> str:
    """A reason given with ``option``: one line of 1 to REASON_MAX printable
    characters, surrounding blanks dropped, and any secret in it masked (it
    is kept in the lease store and shown to everyone by `lab status`)."""
    text = (value or "").strip()
    fix = f"say why in a sentence, e.g. {option} 'BMC does not answer'"
    if not text:
        raise ConfigError(f"{option}: empty", help=fix)
    if len(text) > REASON_MAX:
        raise ConfigError(f"{option}: {len(text)} characters, more than {REASON_MAX}",
                          help=fix + "; put details in the issue tracker and link it")
    if not text.isprintable():
        raise ConfigError(f"{option} {shown(text)}: holds a line break or control character",
                          help=fix)
    from xenhil.harness.secrets import redact_inline
    return redact_inline(text)


def check_run_id(value: str) -> str:
    if not RUN_ID.fullmatch(value or ""):
        raise ConfigError(f"--run-id {shown(value)}: not a valid run id",
                          help="use up to 100 letters, digits, '.', '_' or '-', starting with a "
                               "letter or digit (it names the run's artifacts folder)")
    return value


def check_series(value: str) -> str:
    """--series: one printable line of at most SERIES_MAX characters, no
    password in it (it is written into every report)."""
    from xenhil.harness.secrets import inline_secret_kind
    text = str(value)
    fix = "give the series' URL (lore.kernel.org, patchew) or its message id"
    if not text.strip():
        raise ConfigError("--series: empty", help=fix)
    if len(text) > SERIES_MAX:
        raise ConfigError(f"--series: {len(text)} characters, more than {SERIES_MAX}", help=fix)
    if not text.isprintable():
        raise ConfigError(f"--series {shown(text)}: holds a line break or control character", help=fix)
    if inline_secret_kind(text):
        raise ConfigError(f"--series {shown(text)}: holds a password ({inline_secret_kind(text)}), "
                          "and it is written into every report", help=fix + ", without credentials")
    return text


def check_markers(option: str, names: list[str], known: set[str]) -> list[str]:
    """Marker names given with ``option`` (--require-run): each must be a
    registered marker, or a typo would silently require nothing."""
    for name in names:
        if name not in known:
            raise ConfigError(f"{option} {shown(name)}: no such marker",
                              help=f"use a registered marker ({', '.join(sorted(known)[:12])}"
                                   f"{', ...' if len(known) > 12 else ''}; `pytest --markers` lists them)")
    return names


def _same_sqlite_file(first: str, second: str) -> bool:
    from xenhil.harness.dburl import is_postgres, sqlite_path
    if is_postgres(first) or is_postgres(second):
        return False
    a, b = sqlite_path(first, "lease store"), sqlite_path(second, "results store")
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_store_url(option: str, url: str, *, postgres: bool = True) -> str:
    """A store URL given by ``option`` (``--lab-db``, ``--results-db``):
    ``sqlite:///PATH``, a file path, or (when ``postgres``: both stores
    take it) ``postgresql://USER@HOST/DB`` without a password.  ConfigError
    otherwise; the URL is only ever shown redacted."""
    from xenhil.harness.dburl import is_postgres
    from xenhil.harness.secrets import inline_secret_kind

    text = str(url)
    store = "results store" if option == "--results-db" else "lease store"
    choices = ("give sqlite:///ABSOLUTE/PATH, a file path"
               + (", or postgresql://USER@HOST/DATABASE" if postgres else ""))
    if not text.strip():
        raise ConfigError(f"{option}: empty {store} URL", help=choices)
    if KEYWORD_DSN.match(text):
        raise ConfigError(f"{option}: a keyword DSN (key=value ...) is not a {store} URL",
                          help="write postgresql://USER@HOST/DATABASE, with the password in "
                               "~/.pgpass or PGPASSWORD" if postgres else choices)
    if is_postgres(text):
        if not postgres:
            raise ConfigError(f"{option} {shown(text)}: the {store} is SQLite only",
                              help=choices)
        if inline_secret_kind(text):
            raise ConfigError(f"{option} {shown(text)}: the URL holds a password",
                              help="leave the password out of the URL: libpq reads it from "
                                   "~/.pgpass or PGPASSWORD")
        return text
    if "://" in text and not text.startswith("sqlite://"):
        raise ConfigError(f"{option} {shown(text)}: unknown scheme", help=choices)
    from xenhil.harness.dburl import sqlite_path
    try:
        path = sqlite_path(text, store)
    except ConfigError as exc:
        raise ConfigError(f"{option}: {exc.args[0]}", help=exc.help) from None
    _check_store_file(option, path)
    return text


def _check_store_file(option: str, path: Path) -> None:
    from xenhil.harness.safeio import file_type
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        parent = _existing_ancestor(path.parent)
        if parent is None or not parent.is_dir():
            raise ConfigError(f"{option}: {path.parent} is not a folder",
                              help="give a path in an existing folder") from None
        return
    except OSError as exc:
        raise ConfigError(f"{option}: {path} cannot be checked: {exc.strerror}",
                          help="give a path in a folder you can read") from None
    kind = file_type(mode)
    if kind is not None:
        raise ConfigError(f"{option}: {path} is {kind}, not a SQLite file",
                          help="give the path of the store's file (it is created when missing)")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ConfigError(f"{option}: {path} cannot be read: {exc.strerror}",
                          help="make the store readable by the user running xenhil") from None
    if head and head != b"SQLite format 3\0":
        raise ConfigError(f"{option}: {path} is not a SQLite database",
                          help="give the path of the store's file, or move that file aside "
                               "(a new store is created)")


def _existing_ancestor(path: Path) -> Path | None:
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return None


def check_output_folder(option: str, path: str | Path) -> Path:
    """A folder xenhil will create or write into: it must not be a file,
    and its nearest existing ancestor must be a writable folder."""
    folder = Path(path)
    if not str(path).strip():
        raise ConfigError(f"{option}: empty path", help=f"give a folder, e.g. {option} artifacts")
    ancestor = _existing_ancestor(folder)
    if ancestor is None:
        raise ConfigError(f"{option} {shown(path)}: no part of the path exists",
                          help="give a folder under an existing one")
    if not ancestor.is_dir():
        raise ConfigError(f"{option} {shown(path)}: {ancestor} is a file, not a folder",
                          help="give a folder path (or remove that file)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {shown(path)}: {ancestor} is not writable",
                          help="give a folder you can write to")
    return folder


def check_input_path(option: str, path: str | Path, *, folder: bool | None = None) -> Path:
    """An input ``path`` that must exist (``folder``: True a folder, False a
    regular file, None either)."""
    from xenhil.harness.safeio import file_type
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{option} {shown(path)}: does not exist",
                          help="give the path of an existing "
                               + ("folder" if folder else "file" if folder is False else "file or folder"))
    except OSError as exc:
        raise ConfigError(f"{option} {shown(path)}: cannot be read: {exc.strerror}",
                          help="check the path and its permissions") from None
    is_dir = stat.S_ISDIR(mode)
    if folder is True and not is_dir:
        raise ConfigError(f"{option} {shown(path)}: is {file_type(mode) or 'a file'}, not a folder",
                          help="give the folder itself")
    if not is_dir and not stat.S_ISREG(mode):
        raise ConfigError(f"{option} {shown(path)}: is {file_type(mode)}, not a regular file",
                          help="give a regular file")
    if folder is False and is_dir:
        raise ConfigError(f"{option} {shown(path)}: is a folder, not a file", help="give the file itself")
    return p


def one_line(exc: ConfigError) -> str:
    """A ConfigError as the one line a user sees: message; fix: help."""
    from xenhil.harness.secrets import redact_inline
    message = str(exc.args[0]) if exc.args else ""
    first = message.splitlines()[0] if message else type(exc).__name__
    problems = getattr(exc, "problems", None)
    if problems:       # an InventoryError's or a SplitError's: the first, and how many more
        first = problems[0]
        line = first.one_line() if hasattr(first, "one_line") else str(first)
        more = len(problems) - 1
        if more:
            check = (f"run `xenhil lab check {exc.path}`" if hasattr(exc, "path")
                     else "run `xenhil split check MODEL...`")
            line += f" (and {more} more problem{'s' if more > 1 else ''}: {check})"
        return redact_inline(line)
    help_text = getattr(exc, "help", "") or ""
    if help_text and "fix:" not in first:
        first += f"; how to fix: {help_text}"
    return redact_inline(first)


def detail_lines(exc: ConfigError) -> list[str]:
    """The lines of a multi-line message after its first (a patch's hunks,
    a build's log): shown below the one error line, secrets masked."""
    from xenhil.harness.secrets import redact_inline
    if getattr(exc, "problems", None):
        return []
    message = str(exc.args[0]) if exc.args else ""
    return [redact_inline(line) for line in message.splitlines()[1:]]


# --------------------------------------------------------------------------
# The pytest options
# --------------------------------------------------------------------------

def check_pytest_options(options: dict) -> dict:
    """The xenhil pytest options checked and normalised (numbers as floats);
    the first problem raises ConfigError (the plugin makes it a one-line
    pytest.UsageError).  --require-run is checked at session start
    (check_markers), once every marker is registered."""
    checked = dict(options)
    for option in ("--lease-ttl", "--reserve-timeout"):
        checked[option] = number(option, options[option])
    for option in ("--saverestore-cycles", "--latency-samples"):   # the suites' own, when loaded
        if options.get(option) is not None:
            checked[option] = number(option, options[option])
    if options.get("--run-id") is not None:
        check_run_id(options["--run-id"])
    if options.get("--lab-db"):
        check_store_url("--lab-db", options["--lab-db"], postgres=True)
    if options.get("--results-db"):
        check_store_url("--results-db", options["--results-db"], postgres=True)
    if options.get("--lab-db") and options.get("--results-db") \
            and _same_sqlite_file(options["--lab-db"], options["--results-db"]):
        # Both keep their schema version in the file's user_version: one
        # store would take the other's for a newer or damaged one.
        raise ConfigError("--lab-db and --results-db name the same SQLite file",
                          help="give each store its own file (the lease store defaults to the "
                               "inventory's folder, the results store to artifacts/results.sqlite)")
    if options.get("--series") is not None:
        check_series(options["--series"])
    check_output_folder("--artifacts", options["--artifacts"])
    if options.get("--lab"):
        # Read once, by the run configuration (harness.run_config), next.
        check_input_path("--lab", options["--lab"], folder=False)
    return checked


__all__ = ["NUMBERS", "Range", "number", "argparse_number", "argparse_type", "reason", "tag", "check_run_id",
           "check_store_url", "check_output_folder", "check_input_path", "check_pytest_options",
           "check_series", "check_markers", "one_line", "shown"]
