"""The split catalog (``fixtures/splits.yaml``): the splits the suites run and
the owner each device class must have.  A pure loader: no pytest.

Every entry is parsed with :mod:`harness.xen.splits` and its hand-written
owner table is compared with the ownership computed from its
``device_models``: a disagreement is a ConfigError naming the file, the entry
and the field, so the oracle cannot silently drift from the split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from xenhil.harness.errors import ConfigError
from xenhil.harness.probe_dm.companion import ProbeSettings
from xenhil.harness.xen.splits import DEVICE_MODELS_CAPABILITY, SPLIT_ID_JOINER, Split, parse_split

#: Capabilities a catalog entry may require (host capability detection
#: provides them).  ``probe``: the framework's own ioreq server (harness.probe_dm).
KNOWN_REQUIREMENTS = (DEVICE_MODELS_CAPABILITY, "probe")
PROBE_SUFFIX = SPLIT_ID_JOINER + "probe"
CATALOG_VERSION = 1

_ENTRY_KEYS = {"id", "about", "device_models", "guest_vifs", "requires", "probe", "owners"}
_REQUIRED_KEYS = {"id", "device_models", "guest_vifs", "requires", "owners"}


def default_catalog_path() -> Path:
    # fixtures/ sits next to harness/ (the package is installed editable);
    # located by path so that this layer never imports the pytest glue.
    return Path(__file__).resolve().parents[2] / "fixtures" / "splits.yaml"


@dataclass(frozen=True)
class CatalogSplit:
    id: str
    split: Split
    guest_vifs: tuple[str, ...]
    requires: tuple[str, ...]
    owners: dict[str, str | None]
    probe: bool = False
    about: str = ""
    probe_settings: ProbeSettings | None = None

    def runnable_on(self, capabilities: Iterable[str]) -> bool:
        return set(self.requires) <= set(capabilities)

    def missing(self, capabilities: Iterable[str]) -> list[str]:
        have = set(capabilities)
        return [r for r in self.requires if r not in have]


class Catalog:
    def __init__(self, entries: list[CatalogSplit], path: Path):
        self.path = path
        self._entries = {e.id: e for e in entries}

    def __iter__(self) -> Iterator[CatalogSplit]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def ids(self) -> list[str]:
        return list(self._entries)

    def get(self, split_id: str) -> CatalogSplit:
        try:
            return self._entries[split_id]
        except KeyError:
            raise ConfigError(f"split {split_id!r} is not in the catalog {self.path}",
                              help=f"use one of: {', '.join(self._entries)}") from None

    def runnable_on(self, capabilities: Iterable[str]) -> list[CatalogSplit]:
        caps = set(capabilities)
        return [e for e in self if e.runnable_on(caps)]

    def with_probe_fault(self, fault: str) -> "Catalog":
        """This catalog with ``fault`` (harness.probe_dm.faults, canonical
        text) planted in the probe of every split that has one: the
        catalog of a mutant run (pytest --probe-fault)."""
        import dataclasses
        return Catalog([dataclasses.replace(e, probe_settings=dataclasses.replace(
                            e.probe_settings, fault=fault)) if e.probe_settings else e
                        for e in self], self.path)


def load_catalog(path: str | Path | None = None) -> Catalog:
    path = Path(path) if path is not None else default_catalog_path()
    from xenhil.harness import safeyaml
    from xenhil.harness.safeio import read_text
    # Bounded: a FIFO, /dev/zero or an alias bomb given as --catalog is refused.
    text = read_text(path, "split catalog", fix="pass the path of fixtures/splits.yaml")
    data = safeyaml.load(text, f"split catalog {path}", fix="fix the YAML at that line "
                         "(see the comment at the top of fixtures/splits.yaml)")
    if not isinstance(data, dict) or data.get("version") != CATALOG_VERSION \
            or not isinstance(data.get("splits"), list):
        raise ConfigError(f"split catalog {path}: expected a mapping with version: {CATALOG_VERSION} "
                          "and a list under splits:",
                          help="see the comment at the top of fixtures/splits.yaml")
    entries: list[CatalogSplit] = []
    seen: set[str] = set()
    for index, raw in enumerate(data["splits"]):
        entry = _load_entry(path, index, raw)
        if entry.id in seen:
            raise ConfigError(f"{path}: splits[{index}]: id {entry.id!r} appears twice",
                              help="give every catalog entry its own id")
        seen.add(entry.id)
        entries.append(entry)
    return Catalog(entries, path)


def _load_entry(path: Path, index: int, raw: object) -> CatalogSplit:
    where = f"{path}: splits[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is not a mapping", help="write each split as a mapping (id:, ...)")
    if isinstance(raw.get("id"), str):
        where += f" ({raw['id']})"

    def fail(message: str, fix: str):
        raise ConfigError(f"{where}: {message}", help=fix)

    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        fail(f"unknown key(s) {', '.join(map(str, unknown))}", f"known keys: {', '.join(sorted(_ENTRY_KEYS))}")
    missing = sorted(_REQUIRED_KEYS - set(raw))
    if missing:
        fail(f"missing key(s) {', '.join(missing)}", "add them (see the comment at the top of the file)")
    split_id = raw["id"]
    if not isinstance(split_id, str) or not split_id:
        fail("id is not a string", "give the split id, e.g. qnet+qall")
    guest_vifs = raw["guest_vifs"]
    if not isinstance(guest_vifs, list) or not all(isinstance(v, str) for v in guest_vifs):
        fail("guest_vifs is not a list of vif ids", "write e.g. guest_vifs: [nic1]")
    requires = raw["requires"]
    if not isinstance(requires, list) or not all(r in KNOWN_REQUIREMENTS for r in requires):
        fail(f"requires {requires!r} is not a list of known capabilities",
             f"use a list of: {', '.join(KNOWN_REQUIREMENTS)}")
    probe_raw = raw.get("probe", False)
    if not isinstance(probe_raw, (bool, dict)):
        fail("probe is neither true/false nor a mapping of probe settings",
             "write probe: true, or probe: {ports: [0x6100-0x610f], mmio: ..., bdf: 00:05.0}")
    probe = probe_raw is not False
    settings = _probe_settings(probe_raw, fail) if probe else None
    specs = raw["device_models"]
    if specs is not None and (not isinstance(specs, list) or not all(isinstance(s, str) for s in specs)):
        fail("device_models is neither null nor a list of strings",
             "write the model strings as a YAML list, or null for the single split")
    # a SplitError names this entry (source=) and every problem in it
    split = parse_split(specs, guest_vifs=guest_vifs, source=where)
    expected_id = split.id + (PROBE_SUFFIX if probe else "")
    if split_id != expected_id:
        fail(f"id {split_id!r} does not match its device_models, which give {expected_id!r}",
             f"set id: {expected_id}")
    needs = list(split.requires) + (["probe"] if probe else [])
    lacking = [n for n in needs if n not in requires]
    if lacking:
        fail(f"requires lacks {', '.join(lacking)}", f"add {', '.join(lacking)} to requires")
    owners = raw["owners"]
    if not isinstance(owners, dict):
        fail("owners is not a mapping", "write owners: {ui: MODEL, ...}")
    computed = split.ownership(guest_vifs)
    for cls in computed:
        if cls not in owners:
            fail(f"owners has no entry for {cls}", f"add {cls}: {computed[cls] or 'null'}")
    for cls, owner in owners.items():
        if cls not in computed:
            fail(f"owners names {cls!r}, which is not a device class of this split",
                 f"remove it; the classes are {', '.join(computed)}")
        if owner is not None and not isinstance(owner, str):
            fail(f"owners.{cls} is not a model name", "quote numeric names, e.g. \"0\"")
        if owner != computed[cls]:
            fail(f"owners.{cls} says {owner!r} but the device_models give {computed[cls]!r}",
                 "correct owners (or device_models, if the owner is what the test means)")
    return CatalogSplit(id=split_id, split=split, guest_vifs=tuple(guest_vifs),
                        requires=tuple(requires), owners=dict(owners), probe=probe,
                        about=str(raw.get("about", "")), probe_settings=settings)


_PROBE_KEYS = {"ports", "mmio", "bdf", "vendor", "device"}


def _probe_settings(raw: bool | dict, fail) -> ProbeSettings:
    """``probe: true`` (the defaults) or a mapping overriding some of them."""
    if raw is True:
        return ProbeSettings()
    unknown = sorted(set(raw) - _PROBE_KEYS)
    if unknown:
        fail(f"probe has unknown key(s) {', '.join(map(str, unknown))}",
             f"known keys: {', '.join(sorted(_PROBE_KEYS))}")
    values: dict = {}

    def span(text, field: str, limit: int) -> tuple[int, int]:
        if not isinstance(text, str):
            fail(f"probe.{field}: {text!r} is not START-END in hex (YAML read a number)",
                 f"write a range, e.g. {field}: 0x6100-0x610f")
        try:
            lo, hi = (int(part, 16) for part in str(text).split("-"))
        except ValueError:
            fail(f"probe.{field}: {text!r} is not START-END in hex", f"write e.g. {field}: 0x6100-0x610f")
        if not lo <= hi <= limit:
            fail(f"probe.{field}: {text!r} is empty or beyond {limit:#x}", "give START <= END")
        return lo, hi

    if "ports" in raw:
        if not isinstance(raw["ports"], list) or not raw["ports"]:
            fail("probe.ports is not a list of ranges", "write ports: [0x6100-0x610f]")
        values["ports"] = tuple(span(p, "ports", 0xFFFF) for p in raw["ports"])
    if "mmio" in raw:
        lo, hi = span(raw["mmio"], "mmio", 0xFFFFFFFF)
        size = hi - lo + 1
        if size & (size - 1) or lo % size:
            fail(f"probe.mmio: {raw['mmio']!r} is not a naturally aligned power-of-two window",
                 "a BAR is a power of two in size, aligned to it (e.g. 0xf0000000-0xf0000fff)")
        values["mmio"] = (lo, hi)
    if "bdf" in raw:
        from xenhil.harness.probe_dm.emulation import Bdf
        if not isinstance(raw["bdf"], str):  # YAML 1.1 reads 00:40.0 as base-60 40.0
            fail(f"probe.bdf: YAML read it as the number {raw['bdf']!r}, not BUS:DEV.FN",
                 'quote it, e.g. bdf: "00:05.0"')
        try:
            Bdf.parse(str(raw["bdf"]))
        except (ValueError, ConfigError):
            fail(f"probe.bdf: {raw['bdf']!r} is not BUS:DEV.FN", "write e.g. bdf: 00:05.0")
        values["bdf"] = str(raw["bdf"])
    for key in ("vendor", "device"):
        if key in raw:
            try:
                values[key] = int(str(raw[key]), 16)
            except ValueError:
                values[key] = -1
            if not 0 <= values[key] <= 0xFFFF or values[key] in (0, 0xFFFF):
                fail(f"probe.{key}: {raw[key]!r} is not a 16-bit hex id", f"write e.g. {key}: '5853'")
    return ProbeSettings(**values)
