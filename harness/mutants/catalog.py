"""The mutant catalog (``lab/mutants/mutants.yaml``): planted product bugs
and the tests that must catch them (issue 14, item 1).

A mutant is a patch applied on top of the reference series' patches of one
half (``xen``: hypervisor and libxl; ``qemu``), or a fault of the probe
device model run on the reference build (harness/probe_dm/faults.py).  Each
names the splits to run, the tests that must fail on every one of them, and
the failure class their failure must have.  The file's own comment has the
keys; README.md in that folder says how a mutant is added and qualified.

Every rule is in the tables below; :func:`load_mutant_catalog` is the one
parser, and it reports every problem of the file at once, each naming the
mutant, the key and the fix (:class:`MutantCatalogError`), before anything
is built or any host touched.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from xenhil.harness.errors import INFRASTRUCTURE, PRODUCT, TEST_BUG, ConfigError

# --------------------------------------------------------------------------
# Tables: the rules.  Change them here only.
# --------------------------------------------------------------------------

CATALOG_VERSION = 1
REPO = Path(__file__).resolve().parents[2]
DEFAULT_CATALOG = REPO / "lab" / "mutants" / "mutants.yaml"

#: A mutant's id names build folders, run ids and table rows.
MUTANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
REQUIRED_KEYS = ("id", "breaks", "splits", "caught_by", "failure_class")
OPTIONAL_KEYS = ("patch", "probe_fault", "note")
#: A mutant is exactly one of these.
KINDS = ("patch", "probe_fault")
#: The halves of the reference series a patch goes on top of.
HALVES = ("xen", "qemu")
#: What a failure may be classed (harness.errors); a planted bug is a product bug.
FAILURE_CLASSES = (PRODUCT, INFRASTRUCTURE, TEST_BUG)
#: A test as pytest names it, without parameters: a file under suites/ and a function.
TEST_ID = re.compile(r"(?P<file>suites/(?:[A-Za-z0-9_.-]+/)*test_[A-Za-z0-9_]+\.py)::(?P<name>test_[A-Za-z0-9_]+)")
#: The reference build: series folders, relative to the catalog's folder.
REFERENCE_KEYS = ("xen_series", "qemu_series")
#: Texts shown in messages are cut to this length.
SHOWN = 60


@dataclass(frozen=True)
class Problem:
    """One mistake in the catalog: where (mutant and key), what, the fix."""

    where: str
    message: str
    fix: str

    def one_line(self) -> str:
        return f"{self.where}: {self.message}; fix: {self.fix}"


class MutantCatalogError(ConfigError):
    """The mutant catalog is wrong; ``problems`` lists every mistake."""

    help = "fix each named key of the mutant catalog (its comment lists the keys)"

    def __init__(self, path: Path, problems: list[Problem]):
        self.path = path
        self.problems = problems
        body = "\n".join(p.one_line() for p in problems)
        super().__init__(f"mutant catalog {path}: {len(problems)} problem(s)\n{body}")


@dataclass(frozen=True)
class Mutant:
    id: str
    breaks: str
    splits: tuple[str, ...]
    caught_by: tuple[str, ...]            # suites/...py::test_name
    failure_class: str
    half: str | None = None               # a patch mutant: "xen" or "qemu"
    patch: Path | None = None
    probe_fault: str | None = None        # a fault mutant: the canonical fault
    note: str = ""

    @property
    def kind(self) -> str:
        return "patch" if self.patch is not None else "probe fault"

    @property
    def what(self) -> str:
        """The patch's file name or the fault, for tables."""
        return f"{self.half}: {self.patch.name}" if self.patch is not None else f"--probe-fault {self.probe_fault}"

    def expected(self) -> list[tuple[str, str, str]]:
        """(test, split, pytest node id) of every failure the mutant must cause."""
        return [(test, split, f"{test}[split={split}]") for test in self.caught_by for split in self.splits]


@dataclass(frozen=True)
class MutantCatalog:
    path: Path
    xen_series: Path | None
    qemu_series: Path | None
    mutants: tuple[Mutant, ...]

    def ids(self) -> list[str]:
        return [m.id for m in self.mutants]

    def chosen(self, wanted: list[str]) -> list[Mutant]:
        """The mutants named (all when none is), in the catalog's order; an
        unknown id is refused, every one named at once."""
        unknown = [w for w in dict.fromkeys(wanted) if w not in self.ids()]
        if unknown:
            raise ConfigError(f"--mutant {', '.join(unknown)}: not in the mutant catalog {self.path}",
                              help=f"give ids of the catalog: {', '.join(self.ids())}")
        return [m for m in self.mutants if not wanted or m.id in wanted]


# --------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------

def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."


def _test_functions(path: Path) -> set[str] | None:
    """The module-level test functions of a test file (None: unreadable)."""
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError, ValueError):
        return None
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_id_problem(test: object, root: Path,
                    seen: dict[Path, set[str] | None] | None = None) -> tuple[str, str] | None:
    """What is wrong with a test id (suites/...py::test_name, relative to
    ``root``) as (message, fix), or None when the file has that test.
    ``seen`` caches the test files read."""
    seen = {} if seen is None else seen
    match = TEST_ID.fullmatch(test) if isinstance(test, str) else None
    if match is None:
        return (f"{_short(test)} is not a test id",
                "write suites/SUITE/test_FILE.py::test_NAME, without parameters")
    file = root / match["file"]
    if file not in seen:
        seen[file] = _test_functions(file)
    names = seen[file]
    if names is None:
        return (f"{match['file']} does not exist or does not parse",
                f"name a test file of {root / 'suites'}")
    if match["name"] not in names:
        return (f"{match['file']} has no test {match['name']}",
                f"name one of: {', '.join(sorted(n for n in names if n.startswith('test_'))) or 'none'}")
    return None


class _Parser:
    def __init__(self, path: Path, root: Path, split_ids: list[str], probe_splits: list[str]):
        self.path, self.root = path, root
        self.split_ids, self.probe_splits = split_ids, probe_splits
        self.problems: list[Problem] = []
        self._tests: dict[Path, set[str] | None] = {}

    def bad(self, where: str, message: str, fix: str) -> None:
        self.problems.append(Problem(where, message, fix))

    def series(self, raw: object) -> tuple[Path | None, Path | None]:
        if raw is None:
            return None, None
        if not isinstance(raw, dict):
            self.bad("reference", "not a mapping", "write reference: {xen_series: DIR, qemu_series: DIR}")
            return None, None
        for key in sorted(set(map(str, raw)) - set(REFERENCE_KEYS)):
            self.bad(f"reference.{key}", "unknown key", f"known keys: {', '.join(REFERENCE_KEYS)}")
        out = []
        for key in REFERENCE_KEYS:
            value = raw.get(key)
            if value is None:
                out.append(None)
                continue
            folder = (self.path.parent / str(value)).resolve()
            if not folder.is_dir() or not (folder / "series").is_file():
                self.bad(f"reference.{key}", f"{_short(value)} is not a series folder (no {folder}/series)",
                         "give the folder of a quilt series, relative to the catalog's folder")
            out.append(folder)
        return out[0], out[1]

    def test_exists(self, where: str, test: object) -> str | None:
        problem = test_id_problem(test, self.root, self._tests)
        if problem is not None:
            self.bad(where, *problem)
            return None
        return test

    def mutant(self, index: int, raw: object, references: dict[str, Path | None]) -> Mutant | None:
        where = f"mutants[{index}]"
        if not isinstance(raw, dict):
            self.bad(where, "not a mapping", "write each mutant as a mapping (id:, breaks:, ...)")
            return None
        if isinstance(raw.get("id"), str):
            where += f" ({raw['id'][:SHOWN]})"
        before = len(self.problems)
        for key in sorted(set(map(str, raw)) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)):
            self.bad(f"{where}.{key}", "unknown key",
                     f"known keys: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}")
        for key in REQUIRED_KEYS:
            if key not in raw:
                self.bad(f"{where}.{key}", "missing", "add it (the catalog's comment says what it holds)")
        kinds = [k for k in KINDS if k in raw]
        if len(kinds) != 1:
            self.bad(where, f"has {' and '.join(kinds) or 'neither patch nor probe_fault'}",
                     "give exactly one: patch: {xen: FILE} (or qemu:) or probe_fault: FAULT")
        mutant_id = raw.get("id")
        if "id" in raw and not (isinstance(mutant_id, str) and MUTANT_ID.fullmatch(mutant_id)):
            self.bad(f"{where}.id", f"{_short(mutant_id)} is not an id",
                     "use 1-64 of a-z, 0-9 and '-', starting with a letter or digit")
        breaks = raw.get("breaks")
        if "breaks" in raw and not (isinstance(breaks, str) and breaks.strip()):
            self.bad(f"{where}.breaks", "empty or not text", "say in one line what the planted bug breaks")
        half = patch = fault = None
        if "patch" in raw:
            half, patch = self.patch(f"{where}.patch", raw["patch"], references)
        if "probe_fault" in raw:
            fault = self.fault(f"{where}.probe_fault", raw["probe_fault"])
        splits = self.splits(f"{where}.splits", raw.get("splits"), fault is not None or "probe_fault" in raw)
        tests = raw.get("caught_by")
        if "caught_by" in raw and (not isinstance(tests, list) or not tests):
            self.bad(f"{where}.caught_by", "not a list of tests",
                     "list the tests that must fail, e.g. [suites/pci/test_pci.py::test_NAME]")
            tests = []
        caught = [self.test_exists(f"{where}.caught_by[{i}]", t) for i, t in enumerate(tests or [])]
        failure_class = raw.get("failure_class")
        if "failure_class" in raw and failure_class not in FAILURE_CLASSES:
            self.bad(f"{where}.failure_class", f"{_short(failure_class)} is not a failure class",
                     f"give one of {', '.join(FAILURE_CLASSES)} ({PRODUCT}: a planted bug is the product's)")
        note = raw.get("note", "")
        if not isinstance(note, str):
            self.bad(f"{where}.note", "not text", "write the note as one text")
        if len(self.problems) > before:
            return None
        return Mutant(mutant_id, breaks.strip(), tuple(splits), tuple(caught), failure_class,
                      half, patch, fault, " ".join(note.split()))

    def patch(self, where: str, raw: object, references: dict[str, Path | None]):
        if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in HALVES:
            self.bad(where, f"{_short(raw)} is not {{xen: FILE}} or {{qemu: FILE}}",
                     "name the half the patch goes on and its file, e.g. patch: {xen: patches/NAME.patch}")
            return None, None
        half, name = next(iter(raw.items()))
        if references.get(half) is None:
            self.bad(where, f"a {half} patch, and the catalog has no reference.{half}_series",
                     f"add reference: {{{half}_series: DIR}}: the patch goes on top of that series")
        path = (self.path.parent / str(name)).resolve()
        if not isinstance(name, str) or not path.is_file():
            self.bad(where, f"{_short(name)}: no such file next to the catalog",
                     f"put the patch under {self.path.parent} and give its path relative to it")
            return None, None
        if self.path.parent.resolve() not in path.parents:
            self.bad(where, f"{_short(name)} is outside the catalog's folder",
                     "keep the mutants' patches under the catalog's folder (they are part of it)")
            return None, None
        return half, path

    def fault(self, where: str, raw: object) -> str | None:
        from xenhil.harness.probe_dm.faults import parse_fault
        try:
            return parse_fault(str(raw), "probe_fault").text
        except ConfigError as exc:
            self.bad(where, exc.args[0], exc.help)
            return None

    def splits(self, where: str, raw: object, needs_probe: bool) -> list[str]:
        if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
            if raw is not None:
                self.bad(where, "not a list of split ids", "write e.g. splits: [single+probe]")
            return []
        for split in raw:
            if split not in self.split_ids:
                self.bad(where, f"{_short(split)} is not a split of fixtures/splits.yaml",
                         f"give one of: {', '.join(self.split_ids)}")
            elif needs_probe and split not in self.probe_splits:
                self.bad(where, f"{split} has no probe, and a probe fault needs one",
                         f"run a probe fault on {', '.join(self.probe_splits)}")
        if len(set(raw)) != len(raw):
            self.bad(where, "a split is named twice", "name each split once")
        return list(raw)


def load_mutant_catalog(path: str | Path | None = None, *, root: str | Path = REPO,
                        split_catalog=None) -> MutantCatalog:
    """The catalog at ``path`` (default lab/mutants/mutants.yaml), checked:
    MutantCatalogError listing every problem.  ``root``: the folder the
    tests' ids are relative to (pytest's rootdir); ``split_catalog``: the
    splits (default fixtures/splits.yaml)."""
    from xenhil.harness import safeyaml
    from xenhil.harness.safeio import read_text
    from xenhil.harness.xen.catalog import load_catalog

    path = Path(path) if path is not None else DEFAULT_CATALOG
    text = read_text(path, "mutant catalog", fix="give the path of lab/mutants/mutants.yaml")
    data = safeyaml.load(text, f"mutant catalog {path}",
                         fix="fix the YAML at that line (see the comment at the top of the catalog)")
    splits = split_catalog if split_catalog is not None else load_catalog()
    parser = _Parser(path, Path(root), splits.ids(), [s for s in splits.ids() if splits.get(s).probe])
    if not isinstance(data, dict) or data.get("version") != CATALOG_VERSION \
            or not isinstance(data.get("mutants"), list):
        raise MutantCatalogError(path, [Problem("catalog", "not a mapping with version: "
                                                f"{CATALOG_VERSION} and a list under mutants:",
                                                "see the comment at the top of lab/mutants/mutants.yaml")])
    for key in sorted(set(map(str, data)) - {"version", "reference", "mutants"}):
        parser.bad(key, "unknown key", "known keys: version, reference, mutants")
    xen, qemu = parser.series(data.get("reference"))
    mutants, seen = [], set()
    for index, raw in enumerate(data["mutants"]):
        mutant = parser.mutant(index, raw, {"xen": xen, "qemu": qemu})
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(raw_id, str) and raw_id in seen:
            parser.bad(f"mutants[{index}] ({raw_id[:SHOWN]})", "the id appears twice",
                       "give every mutant its own id")
        seen.add(raw_id)
        if mutant is not None:
            mutants.append(mutant)
    if not data["mutants"]:
        parser.bad("mutants", "empty", "add at least one mutant")
    if parser.problems:
        raise MutantCatalogError(path, parser.problems)
    return MutantCatalog(path, xen, qemu, tuple(mutants))


__all__ = ["Mutant", "MutantCatalog", "MutantCatalogError", "Problem", "load_mutant_catalog",
           "DEFAULT_CATALOG", "FAILURE_CLASSES", "HALVES"]
