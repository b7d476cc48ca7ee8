"""The nightly configuration: which builds run against which lab, where the
reports go and how many are kept.

A small YAML file (parsed with harness.safeyaml), for example::

    lab: /etc/xenhil/lab.yaml            # the inventory (required)
    reports: /var/lib/xenhil/nightly     # the nights' folders (required)
    keep: 14                             # nights kept; older ones are pruned
    results_db: postgresql://xenhil@db/xenhil   # history shared by every runner
    builds:
      - name: debian                     # the hosts' Debian Xen
      - name: staging
        xen_build: /srv/builds/xen-staging.tar.gz
        series: https://lore.kernel.org/xen-devel/...
      - name: my-series
        xen_series: /srv/series/my-series     # built with `xenhil build` first

Relative paths are read from the configuration file's folder.  Every
problem of the file is reported at once, each naming its field
(``builds[1].name``) and its fix, before any host, folder or store is
touched (:class:`NightlyConfigError`).  The rules live in the tables below.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from xenhil.harness.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent

# --------------------------------------------------------------------------
# Tables: the fields and their rules.  Change rules here only.
# --------------------------------------------------------------------------

#: A build's name names its folder in each night, its Allure history file
#: and the end of its run id (which allows 100 characters: the night's id
#: takes at most 48 of them).
BUILD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")

#: The largest configuration file read: a hundred builds are a few KiB.
MAX_FILE_BYTES = 1 << 20

#: Options the nightly run sets itself for each build's pytest run: given
#: in pytest_args they would send a build's results, artifacts or history
#: somewhere the night does not read.  option -> where its value comes from.
RESERVED_PYTEST_OPTIONS: dict[str, str] = {
    "--lab": "the field lab sets it", "--lab-db": "the field lab_db sets it",
    "--results-db": "the field results_db sets it",
    "--alluredir": "each build's results go to its folder in the night's",
    "--artifacts": "the night's folder holds the artifacts",
    "--run-id": "each build's run id is the night's id and the build's name",
    "--xen-build": "a build's xen_build sets it", "--series": "a build's series sets it",
    "-n": "the field workers sets it", "--numprocesses": "the field workers sets it",
}


@dataclass(frozen=True)
class Rule:
    """One field: its kind (a checker of :data:`CHECKERS`), whether it must
    be given, its default, and the fix shown when it is wrong."""

    kind: str
    fix: str
    required: bool = False
    default: Any = None
    low: int = 1          # for "count"
    high: int = 1000


#: The top-level fields.
FIELDS: dict[str, Rule] = {
    "lab": Rule("file", "give the lab inventory, e.g. lab: /etc/xenhil/lab.yaml", required=True),
    "reports": Rule("folder-out", "give the folder the nights' reports go to, e.g. "
                    "reports: /var/lib/xenhil/nightly", required=True),
    "builds": Rule("builds", "list the builds to test, e.g. builds: [{name: debian}]",
                   required=True),
    # Two weeks of nights: enough to see when a failure started.
    "keep": Rule("count", "give how many nights' reports to keep, 1 to 1000", default=14),
    "lab_db": Rule("store", "give the lease store: sqlite:///PATH or postgresql://USER@HOST/DB "
                   "(default: next to the inventory)"),
    "results_db": Rule("store", "give the results store: sqlite:///PATH or "
                       "postgresql://USER@HOST/DB (default: REPORTS/results.sqlite)"),
    "suites": Rule("paths", "list the test folders or files to run, e.g. suites: [suites/pci]",
                   default=(PROJECT_ROOT / "suites",)),
    "workers": Rule("count", "give the pytest-xdist workers per build, 1 to 64",
                    default=1, high=64),
    "pytest_args": Rule("args", "list further pytest arguments as strings, e.g. "
                        "pytest_args: [--split, single]", default=()),
    "known_issues": Rule("file", "give the known issues YAML (test, reason, link)"),
}

#: The fields of one entry of ``builds``.
BUILD_FIELDS: dict[str, Rule] = {
    "name": Rule("name", "give the build a name: letters, digits, '_', '.' or '-', at most 40, "
                 "each build's its own", required=True),
    "xen_build": Rule("build", "give a `make dist` tree, its tarball or a folder of Xen .deb "
                      "files (leave xen_build out for the hosts' Debian Xen)"),
    "series": Rule("series", "give the series' URL (lore.kernel.org, patchew) or message id"),
    # Built by `xenhil build` (cached) at the start of the build's turn.
    "xen_series": Rule("patches", "give Xen patches as `xenhil build --xen-series` takes them: a "
                       "folder with a quilt series file, an mbox, a .patch or git:REPO:A..B"),
    "qemu_series": Rule("patches", "give QEMU patches as `xenhil build --qemu-series` takes them: "
                        "a folder with a quilt series file, an mbox, a .patch or git:REPO:A..B"),
    "pytest_args": Rule("args", "list further pytest arguments for this build, as strings",
                        default=()),
}


# --------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Build:
    name: str
    xen_build: Path | None
    series: str | None
    pytest_args: tuple[str, ...]
    xen_series: str | None = None       # patches `xenhil build` builds before the tests
    qemu_series: str | None = None

    @property
    def built_here(self) -> bool:
        return self.xen_series is not None or self.qemu_series is not None


@dataclass(frozen=True)
class NightlyConfig:
    path: Path
    lab: Path
    reports: Path
    builds: tuple[Build, ...]
    keep: int
    lab_db: str | None
    results_db: str           # the default made explicit: REPORTS/results.sqlite
    suites: tuple[Path, ...]
    workers: int
    pytest_args: tuple[str, ...]
    known_issues: Path | None


@dataclass(frozen=True)
class NightlyProblem:
    """One thing wrong in the configuration: where, what, the fix."""

    file: str
    field: str
    message: str
    fix: str

    def one_line(self) -> str:
        return f"{self.file}: {self.field}: {self.message}; fix: {self.fix}"

    def __str__(self) -> str:
        return self.one_line()


class NightlyConfigError(ConfigError):
    """The configuration has problems; ``problems`` lists them all."""

    def __init__(self, path: Path | str, problems: list[NightlyProblem]):
        self.path = Path(path)
        self.problems = list(problems)
        super().__init__("\n".join(p.one_line() for p in self.problems),
                         help=f"fix the fields named above in {path}")


class _Wrong(Exception):
    """A field's value is wrong: what, and (when not the rule's) the fix;
    ``more``: further problems of the same field (items of a list)."""

    def __init__(self, message: str, fix: str | None = None, more: list["_Wrong"] = ()):
        super().__init__(message)
        self.message, self.fix, self.more = message, fix, list(more)


# --------------------------------------------------------------------------
# The checkers: (field, value, the config's folder) -> the checked value
# --------------------------------------------------------------------------

def _path(value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise _Wrong(f"{_shown(value)} is not a path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _from_option(exc: ConfigError, option: str, field: str) -> _Wrong:
    """A harness.options check's message, which names a command-line
    option, told about the field instead."""
    message = str(exc.args[0]) if exc.args else str(exc)
    message = message.split("\n", 1)[0]
    if message.startswith(option):
        message = message[len(option):].lstrip(" :")
    return _Wrong(message or f"not valid for {field}", exc.help)


def _file(field: str, value: Any, base: Path) -> Path:
    from xenhil.harness.options import check_input_path
    try:
        return check_input_path(field, _path(value, base), folder=False)
    except ConfigError as exc:
        raise _from_option(exc, field, field) from None


def _folder_out(field: str, value: Any, base: Path) -> Path:
    from xenhil.harness.options import check_output_folder
    folder = _path(value, base)
    try:
        check_output_folder(field, folder)
    except ConfigError as exc:
        raise _from_option(exc, field, field) from None
    if folder.exists() and not folder.is_dir():
        raise _Wrong(f"{folder} is a file, not a folder")
    return folder


def _count(field: str, value: Any, base: Path, rule: Rule) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Wrong(f"{_shown(value)} is not a whole number")
    if not rule.low <= value <= rule.high:
        raise _Wrong(f"{value} is out of range ({rule.low} to {rule.high})")
    return value


def _store(field: str, value: Any, base: Path) -> str:
    from xenhil.harness.dburl import is_postgres
    from xenhil.harness.options import check_store_url
    if not isinstance(value, str):
        raise _Wrong(f"{_shown(value)} is not a URL")
    if not is_postgres(value) and "://" not in value and not Path(value).is_absolute():
        value = str(base / value)          # a bare relative file path: from the config's folder
    try:
        return check_store_url("--results-db" if field == "results_db" else "--lab-db", value)
    except ConfigError as exc:
        raise _from_option(exc, "--results-db" if field == "results_db" else "--lab-db",
                           field) from None


def _paths(field: str, value: Any, base: Path) -> tuple[Path, ...]:
    from xenhil.harness.options import check_input_path
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _Wrong(f"{_shown(value)} is not a list of paths")
    paths = []
    for index, item in enumerate(value):
        try:
            paths.append(check_input_path(f"{field}[{index}]", _path(item, base)))
        except ConfigError as exc:
            raise _from_option(exc, f"{field}[{index}]", field) from None
        except _Wrong as exc:
            raise _Wrong(f"[{index}]: {exc.message}") from None
    return tuple(paths)


def _args(field: str, value: Any, base: Path) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Wrong(f"{_shown(value)} is not a list")
    wrong = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            wrong.append(_Wrong(f"[{index}] {type(item).__name__} {_shown(item)} is not a string",
                                "quote each argument, e.g. ['-k', '1']"))
        elif _reserved(item):
            reserved = _reserved(item)
            wrong.append(_Wrong(f"[{index}] {_shown(item)}: {reserved} is set by xenhil nightly",
                                f"leave {reserved} out: {RESERVED_PYTEST_OPTIONS[reserved]}"))
    if wrong:
        raise _Wrong(wrong[0].message, wrong[0].fix, wrong[1:])
    return tuple(value)


def _reserved(arg: str) -> str | None:
    for option in RESERVED_PYTEST_OPTIONS:
        if arg == option or arg.startswith(option + "="):
            return option
        # A short option takes its value glued on too: -n4.
        if len(option) == 2 and arg.startswith(option) and not arg.startswith("--"):
            return option
    return None


def _name(field: str, value: Any, base: Path) -> str:
    if not isinstance(value, str) or not BUILD_NAME.fullmatch(value):
        raise _Wrong(f"{_shown(value)} is not a build name")
    return value


def _build(field: str, value: Any, base: Path) -> Path:
    from xenhil.harness.xen.build import load_build
    path = _path(value, base)
    try:
        load_build(path)           # the same checks as pytest --xen-build, now
    except ConfigError as exc:
        # Its help names the option; the rule's fix names the field.
        raise _Wrong(_from_option(exc, "--xen-build", field).message) from None
    return path


def _series(field: str, value: Any, base: Path) -> str:
    from xenhil.harness.options import check_series
    if not isinstance(value, str):
        raise _Wrong(f"{_shown(value)} is not text")
    try:
        return check_series(value)
    except ConfigError as exc:
        raise _from_option(exc, "--series", field) from None


def _patches(field: str, value: Any, base: Path) -> str:
    from xenhil.harness.build.series import parse_series
    if not isinstance(value, str) or not value.strip():
        raise _Wrong(f"{_shown(value)} is not a patch series")
    spec = value if value.startswith("git:") else str(_path(value, base))
    try:
        parse_series(spec)         # the same reading as xenhil build's, now
    except ConfigError as exc:
        raise _Wrong(str(exc.args[0]).split("\n", 1)[0]) from None
    return spec


CHECKERS: dict[str, Callable[..., Any]] = {
    "file": _file, "folder-out": _folder_out, "store": _store, "paths": _paths,
    "args": _args, "name": _name, "build": _build, "series": _series, "patches": _patches,
}


# --------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------

def load_nightly_config(path: str | Path) -> NightlyConfig:
    """The configuration at ``path``, checked; NightlyConfigError listing
    every problem (ConfigError when the file itself cannot be read)."""
    from xenhil.harness import safeyaml
    from xenhil.harness.options import check_input_path
    from xenhil.harness.safeio import read_text

    fix = "write the nightly configuration as README's \"Nightly runs\" shows"
    path = check_input_path("CONFIG", path, folder=False)
    text = read_text(path, "nightly configuration", limit=MAX_FILE_BYTES, fix=fix)
    data = safeyaml.load(text, f"nightly configuration {path}", fix)
    problems: list[NightlyProblem] = []

    def problem(field: str, message: str, fix: str) -> None:
        problems.append(NightlyProblem(str(path), field, message, fix))

    if not isinstance(data, dict):
        problem("(top)", "not a mapping of fields", f"{fix}; its fields: {', '.join(FIELDS)}")
        raise NightlyConfigError(path, problems)
    base = path.resolve().parent
    top = _fields(data, FIELDS, "", base, problem)
    builds = _builds(top.get("builds"), base, problem)
    if problems:
        raise NightlyConfigError(path, problems)
    reports = top["reports"].resolve()
    results_db = top.get("results_db") or f"sqlite://{reports / 'results.sqlite'}"
    return NightlyConfig(
        path=path, lab=top["lab"], reports=reports, builds=builds, keep=top["keep"],
        lab_db=top.get("lab_db"), results_db=results_db, suites=tuple(top["suites"]),
        workers=top["workers"], pytest_args=tuple(top["pytest_args"]),
        known_issues=top.get("known_issues"))


def _fields(data: dict, rules: dict[str, Rule], prefix: str, base: Path, problem) -> dict:
    """Each field of ``data`` checked by its rule; unknown and missing
    fields reported; the values by name (defaults filled in)."""
    values: dict[str, Any] = {}
    for key in data:
        if key not in rules:
            near = difflib.get_close_matches(str(key), rules, n=1)
            problem(f"{prefix}{key}", "unknown field",
                    f"did you mean {near[0]}?" if near else f"remove it (the fields: {', '.join(rules)})")
    for name, rule in rules.items():
        field = f"{prefix}{name}"
        if name not in data or data[name] is None:
            if rule.required:
                problem(field, "missing", rule.fix)
            values[name] = rule.default
            continue
        if rule.kind == "builds":
            values[name] = data[name]           # checked entry by entry by _builds
            continue
        checker = CHECKERS.get(rule.kind)
        try:
            values[name] = (_count(field, data[name], base, rule) if rule.kind == "count"
                            else checker(field, data[name], base))
        except _Wrong as exc:
            for wrong in (exc, *exc.more):
                problem(field, wrong.message, wrong.fix or rule.fix)
    return values


def _builds(value: Any, base: Path, problem) -> tuple[Build, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        problem("builds", f"{_shown(value)} is not a list of builds", FIELDS["builds"].fix)
        return ()
    builds: list[Build] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(value):
        prefix = f"builds[{index}]"
        if isinstance(entry, str):                 # a bare name: the hosts' Debian Xen
            entry = {"name": entry}
        if not isinstance(entry, dict):
            problem(prefix, f"{_shown(entry)} is not a build (a mapping)",
                    "write each build as {name: NAME, xen_build: PATH, series: URL}")
            continue
        if entry.get("xen_build") is not None and (entry.get("xen_series") is not None
                                                   or entry.get("qemu_series") is not None):
            problem(f"{prefix}.xen_build", "given with xen_series or qemu_series: the night "
                    "builds those itself", "give either a finished xen_build or the series "
                    "to build, not both")
            entry = {k: v for k, v in entry.items() if k != "xen_build"}
        fields = _fields(entry, BUILD_FIELDS, prefix + ".", base, problem)
        name = fields.get("name")
        if name is None:
            continue
        if name in seen:
            problem(f"{prefix}.name", f"{name!r} is also builds[{seen[name]}]'s name",
                    "give each build a name of its own: it names the build's reports and history")
            continue
        seen[name] = index
        builds.append(Build(name, fields.get("xen_build"), fields.get("series"),
                            tuple(fields.get("pytest_args") or ()), fields.get("xen_series"),
                            fields.get("qemu_series")))
    return tuple(builds)


def _shown(value: Any) -> str:
    from xenhil.harness.options import shown
    return shown(value)


__all__ = ["Build", "NightlyConfig", "NightlyConfigError", "NightlyProblem", "load_nightly_config",
           "FIELDS", "BUILD_FIELDS", "RESERVED_PYTEST_OPTIONS", "BUILD_NAME"]
