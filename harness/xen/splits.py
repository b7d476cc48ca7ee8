"""The ``device_models`` option of the series: grammar, validation, ownership.

One *split* says which QEMU (device model) emulates which device class of an
HVM guest.  In an xl config it is written::

    device_models = [ 'name=qnet,vifs=nic1', 'name=qall,ui,ide' ]

and in test names as its *split id*: the model names joined by ``+``
(``qnet+qall``), or ``single`` when the option is absent (one QEMU does all).

Grammar of one model string (read from the series' ``tools/libxl/libxlu_dm.c``,
two revisions of which were found; see GRAMMAR below for each choice):

    model  := item ( "," item )*
    item   := " "* ( "name=" NAME | "path=" ABSPATH | "vifs=" VIFID ( ";" VIFID )* | FLAG )
    FLAG   := "ui" | "audio" | "ide" | "serial"

This module is stricter than the series' parser where the series silently
ignores mistakes (unknown ``key=``, empty items, a flag given twice): a
mistaken split would otherwise run a test of a different split than its name
says.  Every rule lives in the tables below, not in the checks.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from xenhil.harness.errors import ConfigError

# --------------------------------------------------------------------------
# Tables: the grammar and the device classes.  Change rules here only.
# --------------------------------------------------------------------------

UI, AUDIO, IDE, SERIAL = "ui", "audio", "ide", "serial"

#: The flags, in the canonical order used when rendering a model.
FLAGS: tuple[str, ...] = (UI, AUDIO, IDE, SERIAL)

#: What each flag's device class covers (cover letter of the series).
CLASS_COVERS: dict[str, str] = {
    UI: "root bridge, south bridge, VGA, keyboard, mouse, USB",
    AUDIO: "audio",
    IDE: "IDE disks and CD-ROMs",
    SERIAL: "serial port",
}

#: A NIC's device class is ``nic:<vif id>``.
NIC_PREFIX = "nic:"

#: Device classes a guest always has, whatever its config: some model must own them.
ALWAYS_PRESENT: tuple[str, ...] = (UI,)

#: The most device models one guest can have: Xen allows at most 8 ioreq
#: servers per domain (the 9th create fails with ENOSPC).
MAX_MODELS = 8


@dataclass(frozen=True)
class Grammar:
    """Every lexical choice of the ``device_models`` strings, in one place."""

    item_separator: str = ","
    key_value_separator: str = "="
    # VERIFIED: both revisions of the series' libxlu_dm.c split vifs= with
    # strtok(..., ";").
    vif_separator: str = ";"
    # The series skips leading blanks (' ' only) of each item and of each vif
    # id; trailing blanks stay part of the item, so we reject them.
    skipped_leading: str = " "
    # CHOICE: keys are compared with strcmp in every revision (lower case).
    # Flags are strcmp'd in one revision and strcasecmp'd (libxl enum
    # from_string) in the other: accept only lower case, which both take.
    flags_case_sensitive: bool = True
    keys: tuple[str, ...] = ("name", "path", "vifs")
    flags: tuple[str, ...] = FLAGS
    # CHOICE: a name appears in log file names and, joined by '+', in split
    # ids and test ids: letters, digits, '_' and '-' only, not starting with '-'.
    name_first: str = "A-Za-z0-9_"
    name_rest: str = "A-Za-z0-9_-"
    # A vif id is matched by the series with strcmp against the guest's vif:
    # keep to characters that survive the vif spec parser (no ',', '=', ';').
    vif_id_first: str = "A-Za-z0-9_"
    vif_id_rest: str = "A-Za-z0-9_.-"
    max_identifier_length: int = 32
    # Default names: the series says "a number is used"; our port uses the
    # model's index (lab/series/device-models/xen patch 0002,
    # dm_split_name), so models are numbered by position from this base.
    default_name_base: int = 0
    # One revision of the series exits with "Unable to parse device_deamon"
    # when path= is given without name=: require name= with path=.
    path_requires_name: bool = True
    # CHOICE: a model owning nothing would start a QEMU that emulates nothing.
    reject_empty_model: bool = True
    # CHOICE: bounds that keep a hostile split cheap to refuse: the longest
    # model string (name, flags, vifs and a PATH_MAX path= fit well within)
    # and the most models read before giving up (MAX_MODELS is the real limit).
    max_model_length: int = 4096 + 256
    max_models_read: int = 4 * 8


GRAMMAR = Grammar()

#: Name of the one QEMU when ``device_models`` is absent (the series fills in
#: one model with every class and no name, i.e. the first default number).
SINGLE_MODEL_NAME = str(GRAMMAR.default_name_base)
SINGLE_SPLIT_ID = "single"
SPLIT_ID_JOINER = "+"

#: Capability a host's toolstack needs to run a split other than single.
DEVICE_MODELS_CAPABILITY = "device_models"


@dataclass(frozen=True)
class _IdentRule:
    """An identifier: a first-character class, a rest class, a length limit."""

    first: str
    rest: str
    max_len: int

    def fullmatch(self, value: str) -> bool:
        return self.problem(value) is None

    def problem(self, value: str) -> tuple[int, str] | None:
        """(offset, what) of the first violation, or None."""
        # Past max_len the value is too long whatever follows: a hostile
        # 100 000-character word costs no more than a 33-character one.
        for i, c in enumerate(value[:self.max_len + 1]):
            if not re.fullmatch(f"[{self.first if i == 0 else self.rest}]", c):
                return i, f"bad character {c!r}" + (" at the start" if i == 0 and
                                                    re.fullmatch(f"[{self.rest}]", c) else "")
        if not value:
            return 0, "empty"
        if len(value) > self.max_len:
            return self.max_len, f"longer than {self.max_len} characters"
        return None


_NAME_RULE = _IdentRule(GRAMMAR.name_first, GRAMMAR.name_rest, GRAMMAR.max_identifier_length)
_VIF_ID_RULE = _IdentRule(GRAMMAR.vif_id_first, GRAMMAR.vif_id_rest, GRAMMAR.max_identifier_length)

PathExists = Callable[[str], bool]


def is_valid_vif_id(vif_id: str) -> bool:
    """Whether ``vif_id`` can be written in a vif entry and in vifs=."""
    return isinstance(vif_id, str) and _VIF_ID_RULE.fullmatch(vif_id)


def check_vif_id(option: str, vif_id: str) -> str:
    """``vif_id`` given with ``option`` (``split check --vif``); ConfigError
    saying what is wrong with it, the value shown short."""
    problem = _VIF_ID_RULE.problem(vif_id)
    if problem is not None:
        from xenhil.harness.options import shown
        raise ConfigError(f"{option} {shown(vif_id)}: not a vif id ({problem[1]})",
                          help=f"give the id= of one of the guest's vif entries: letters, digits, "
                               f"'_', '.' or '-', at most {GRAMMAR.max_identifier_length}")
    return vif_id


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitProblem:
    """One mistake in a split, pointing at the offending text."""

    message: str
    fix: str
    model_index: int | None = None   # 0-based; None: the split as a whole
    model_text: str = ""
    start: int = 0                   # span of the offending text in model_text
    end: int = 0

    def render(self) -> str:
        if self.model_index is None:
            return f"device_models: {self.message}\n    fix: {self.fix}"
        return (f"device_models[{self.model_index}] (model {self.model_index + 1}): {self.message}\n"
                + "\n".join(self.pointer()) + f"\n    fix: {self.fix}")

    def one_line(self) -> str:
        """The problem on one line: where, what, and the fix (the command line's error line)."""
        where = ("device_models" if self.model_index is None
                 else f"device_models[{self.model_index}] (model {self.model_index + 1})")
        return f"{where}: {self.message}; fix: {self.fix}"

    def pointer(self) -> list[str]:
        """The model text and a caret line under the offending span, cut to
        SHOWN_CONTEXT characters around it (a model string may be huge)."""
        if self.model_index is None:
            return []
        begin = max(0, self.start - SHOWN_CONTEXT)
        stop = min(len(self.model_text), max(min(self.end, self.start + SHOWN_CONTEXT),
                                             self.start + 1) + SHOWN_CONTEXT)
        left = "..." if begin else ""
        right = "..." if stop < len(self.model_text) else ""
        shown = _printable(self.model_text[begin:stop])
        width = max(1, min(self.end, stop) - self.start)
        caret = " " * (5 + len(left) + self.start - begin) + "^" * width
        return [f"    '{left}{shown}{right}'", caret]


class SplitError(ConfigError):
    """A ``device_models`` value (split) is wrong.  ``problems`` lists every
    mistake found, each pointing at its model, item and fix."""

    help = "Each problem above names its fix; re-check with `xenhil split check MODEL...`."

    def __init__(self, problems: Sequence[SplitProblem], *, source: str = ""):
        self.problems: list[SplitProblem] = list(problems)
        where = f" in {source}" if source else ""
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in device_models{where}:"
        body = "\n".join(p.render() for p in self.problems)
        super().__init__(f"{head}\n{body}")

    def messages(self) -> list[str]:
        return [p.message for p in self.problems]


#: Characters of a model string shown on each side of a problem's span.
SHOWN_CONTEXT = 60


def _printable(text: str) -> str:
    # one character per character, so that carets stay aligned
    return "".join(c if c.isprintable() else "?" for c in text)


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceModel:
    """One QEMU of a split."""

    name: str
    flags: tuple[str, ...] = ()          # canonical order (FLAGS)
    vifs: tuple[str, ...] = ()           # as given
    path: str | None = None
    name_given: bool = True              # False: name is the positional default

    def owns(self, device_class: str) -> bool:
        if device_class.startswith(NIC_PREFIX):
            return device_class[len(NIC_PREFIX):] in self.vifs
        return device_class in self.flags

    def to_spec(self) -> str:
        """The model string, in canonical item order: name, flags, vifs, path
        (the order of the cover letter's examples)."""
        g = GRAMMAR
        items = []
        if self.name_given:
            items.append(f"name{g.key_value_separator}{self.name}")
        items.extend(self.flags)
        if self.vifs:
            items.append(f"vifs{g.key_value_separator}{g.vif_separator.join(self.vifs)}")
        if self.path is not None:
            items.append(f"path{g.key_value_separator}{self.path}")
        return g.item_separator.join(items)


@dataclass(frozen=True)
class Split:
    """Which model owns which device class.  ``models == ()`` is the single
    split: no ``device_models`` option, one QEMU does all."""

    models: tuple[DeviceModel, ...] = ()

    # ---- construction
    @classmethod
    def single(cls) -> "Split":
        return cls(())

    @classmethod
    def parse(cls, specs: Sequence[str] | None, **kw) -> "Split":
        return parse_split(specs, **kw)

    # ---- identity
    @property
    def is_single(self) -> bool:
        return not self.models

    @property
    def id(self) -> str:
        """``qnet+qall``; ``single`` without device_models."""
        if self.is_single:
            return SINGLE_SPLIT_ID
        return SPLIT_ID_JOINER.join(m.name for m in self.models)

    @property
    def model_names(self) -> tuple[str, ...]:
        if self.is_single:
            return (SINGLE_MODEL_NAME,)
        return tuple(m.name for m in self.models)

    @property
    def requires(self) -> tuple[str, ...]:
        """Host capabilities this split needs (device_models unless single)."""
        return () if self.is_single else (DEVICE_MODELS_CAPABILITY,)

    @property
    def vif_ids(self) -> tuple[str, ...]:
        return tuple(v for m in self.models for v in m.vifs)

    # ---- ownership
    def owner_of(self, device_class: str) -> str | None:
        """Name of the model that emulates ``device_class`` (``ui``, ``audio``,
        ``ide``, ``serial`` or ``nic:<vif id>``); None when no model does, i.e.
        the guest must not have that device."""
        check_device_class(device_class)
        if self.is_single:
            return SINGLE_MODEL_NAME
        for model in self.models:
            if model.owns(device_class):
                return model.name
        return None

    def ownership(self, guest_vifs: Iterable[str] = ()) -> dict[str, str | None]:
        """Owner of every flag class and of every NIC (the split's own vif ids
        plus ``guest_vifs``), in a stable order."""
        table: dict[str, str | None] = {c: self.owner_of(c) for c in FLAGS}
        for vif in list(self.vif_ids) + [v for v in guest_vifs if v not in self.vif_ids]:
            table[NIC_PREFIX + vif] = self.owner_of(NIC_PREFIX + vif)
        return table

    def model(self, name: str) -> DeviceModel:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"split {self.id} has no model named {name!r}",
                          help=f"use one of: {', '.join(self.model_names)}")

    # ---- rendering
    def specs(self) -> list[str]:
        """The model strings (the value of ``device_models``); [] when single."""
        return [m.to_spec() for m in self.models]

    def to_xl(self) -> str:
        """``device_models = [ '...', '...' ]``, or "" for the single split
        (the option must then be absent, not empty)."""
        if self.is_single:
            return ""
        from xenhil.harness.xen.xlconfig import xl_list  # xlconfig imports this module

        return f"device_models = {xl_list(self.specs(), prefer_quote=chr(39))}"

    def __str__(self) -> str:
        return self.id


def check_device_class(device_class: str) -> None:
    if device_class in FLAGS:
        return
    if device_class.startswith(NIC_PREFIX) and _VIF_ID_RULE.fullmatch(device_class[len(NIC_PREFIX):]):
        return
    raise ConfigError(f"unknown device class {device_class!r}",
                      help=f"use one of {', '.join(FLAGS)} or {NIC_PREFIX}<vif id>")


# --------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------

@dataclass
class _Item:
    text: str
    start: int            # offset in the model string (after skipped blanks)

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass
class _Draft:
    index: int
    text: str
    name: str | None = None
    path: str | None = None
    vifs: list[tuple[str, int]] = field(default_factory=list)     # (id, offset)
    flags: dict[str, _Item] = field(default_factory=dict)
    keys: dict[str, _Item] = field(default_factory=dict)

    @property
    def effective_name(self) -> str:
        return self.name if self.name is not None else str(GRAMMAR.default_name_base + self.index)


def _split_with_offsets(text: str, sep: str, base: int = 0) -> list[tuple[str, int]]:
    out, pos = [], 0
    for part in text.split(sep):
        out.append((part, base + pos))
        pos += len(part) + len(sep)
    return out


def _short(text: str) -> str:
    """A message with each quoted value cut to SHOWN_CONTEXT characters."""
    return re.sub(r"""(['"])([^'"]{%d})[^'"]{4,}\1""" % SHOWN_CONTEXT, r"\1\2...\1", text)


def _suggest(word: str, choices: Iterable[str]) -> str:
    if len(word) > 2 * GRAMMAR.max_identifier_length:   # difflib is quadratic: no suggestion
        return ""
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return close[0] if close else ""


class _Parser:
    def __init__(self, guest_vifs: Sequence[str] | None, path_exists: PathExists | None):
        self.guest_vifs = list(guest_vifs) if guest_vifs is not None else None
        self.path_exists = path_exists
        self.problems: list[SplitProblem] = []
        # flags written wrongly (case, trailing blank): reported where they
        # stand, so "no model owns X" is not piled on top
        self.misspelt: set[str] = set()

    # -- reporting
    def at(self, d: _Draft, start: int, end: int, message: str, fix: str) -> None:
        end = min(end, max(len(d.text), start + 1))
        self.problems.append(SplitProblem(_short(message), _short(fix), d.index, d.text, start, end))

    def whole(self, message: str, fix: str) -> None:
        self.problems.append(SplitProblem(_short(message), _short(fix)))

    # -- one model
    def parse_model(self, index: int, text: str) -> _Draft:
        d = _Draft(index, text)
        g = GRAMMAR
        if not isinstance(text, str):
            d.text = ""
            self.at(d, 0, 0, f"model is not a string but {type(text).__name__} {text!r}",
                    "write each model as a quoted string")
            return d
        if text.strip(g.skipped_leading) == "":
            self.at(d, 0, len(text), "empty model string",
                    "remove the empty string from the list, or give the model flags or vifs=")
            return d
        if len(text) > g.max_model_length:
            self.at(d, g.max_model_length, len(text),
                    f"model string of {len(text)} characters, longer than {g.max_model_length}",
                    "a model string is a few items: name=, flags, vifs= and an absolute path=")
            self.misspelt.add(UI)   # unread: whether it owns ui is unknown
            return d
        for raw, offset in _split_with_offsets(text, g.item_separator):
            item_text = raw.lstrip(g.skipped_leading)
            item = _Item(item_text, offset + len(raw) - len(item_text))
            self.parse_item(d, item)
        self.check_model(d)
        return d

    def parse_item(self, d: _Draft, item: _Item) -> None:
        g = GRAMMAR
        text = item.text
        if text == "":
            self.at(d, max(0, item.start - 1), item.start + 1,
                    "empty item (two commas in a row, or a comma at an end)",
                    "remove the extra comma")
            return
        bad = next((i for i, c in enumerate(text) if not c.isprintable()), None)
        if bad is not None:
            self.at(d, item.start + bad, item.start + bad + 1,
                    f"control character {text[bad]!r} in item",
                    "model strings hold printable characters only")
            return
        if text != text.rstrip():
            stripped = text.rstrip()
            self.misspelt.add(stripped.lower())
            self.at(d, item.start + len(stripped), item.end,
                    f"trailing blank after {stripped!r} (xl keeps it as part of the item)",
                    f"write {stripped!r} without the blank")
            return
        key, sep, value = text.partition(g.key_value_separator)
        if sep:
            self.parse_key(d, item, key, value)
        else:
            self.parse_flag(d, item)

    def parse_key(self, d: _Draft, item: _Item, key: str, value: str) -> None:
        g = GRAMMAR
        kstart, kend = item.start, item.start + len(key)
        vstart = kend + 1
        if key not in g.keys:
            if key.lower() in g.keys:
                self.at(d, kstart, kend, f"key {key!r} must be lower case",
                        f"write {key.lower()}={value}")
            elif key.lower() in g.flags:
                self.at(d, item.start, item.end, f"flag {key.lower()!r} takes no value",
                        f"write just {key.lower()}")
            elif key == "":
                self.at(d, item.start, item.end, "item starts with '=' (no key)",
                        f"write one of {', '.join(k + '=' for k in g.keys)}")
            else:
                hint = _suggest(key, g.keys)
                self.at(d, kstart, kend, f"unknown key {key!r}",
                        (f"did you mean {hint}=? " if hint else "")
                        + f"known keys: {', '.join(g.keys)}; flags: {', '.join(g.flags)}")
            return
        if key in d.keys:
            self.at(d, kstart, item.end, f"{key}= given twice in one model",
                    f"keep one {key}= item")
            return
        d.keys[key] = item
        if value == "":
            self.at(d, kstart, item.end, f"{key}= has an empty value",
                    {"name": "give a name (letters, digits, _ and -) or drop name= for a numbered default",
                     "path": "give the absolute path of the QEMU binary or drop path=",
                     "vifs": "list vif ids separated by ';' (vifs=nic1;nic2) or drop vifs="}[key])
            return
        if key == "name":
            bad = _NAME_RULE.problem(value)
            if bad is not None:
                offset, what = bad
                end = item.end if "longer" in what else vstart + offset + 1
                self.at(d, vstart + offset, end,
                        f"name {value!r}: {what}",
                        "a name uses letters, digits, '_' and '-', does not start with '-' "
                        f"and has at most {GRAMMAR.max_identifier_length} characters "
                        "('+' joins names in split ids)")
                return
            d.name = value
        elif key == "path":
            if not value.startswith("/"):
                self.at(d, vstart, item.end, f"path {value!r} is not absolute",
                        "give the absolute path of the QEMU binary on the host")
                return
            if self.path_exists is not None and not self.path_exists(value):
                self.at(d, vstart, item.end, f"path {value!r} does not exist on the host",
                        "install that QEMU there or correct the path")
            d.path = value
        elif key == "vifs":
            seen: set[str] = set()
            for raw, offset in _split_with_offsets(value, g.vif_separator, vstart):
                vif = raw.lstrip(g.skipped_leading)
                start = offset + len(raw) - len(vif)
                if vif == "":
                    self.at(d, max(vstart, start - 1), start + 1, "empty vif id in vifs=",
                            f"separate vif ids with a single '{g.vif_separator}', none at the ends")
                    continue
                bad = _VIF_ID_RULE.problem(vif)
                if bad is not None:
                    offset, what = bad
                    self.at(d, start + offset, start + (len(vif) if "longer" in what else offset + 1),
                            f"vif id {vif!r}: {what}",
                            "vif ids use letters, digits, '_', '.' and '-' (at most "
                            f"{GRAMMAR.max_identifier_length}); separate several with "
                            f"'{g.vif_separator}'")
                    continue
                if vif in seen:
                    self.at(d, start, start + len(vif), f"vif id {vif!r} listed twice in one model",
                            "list it once")
                    continue
                seen.add(vif)
                d.vifs.append((vif, start))

    def parse_flag(self, d: _Draft, item: _Item) -> None:
        g = GRAMMAR
        flag = item.text
        if flag not in g.flags:
            if flag.lower() in g.flags:
                self.misspelt.add(flag.lower())
                self.at(d, item.start, item.end, f"flag {flag!r} must be lower case",
                        f"write {flag.lower()}")
            elif ((self.guest_vifs is not None and flag in self.guest_vifs)
                  or ("vifs" in d.keys and _VIF_ID_RULE.fullmatch(flag))):
                self.at(d, item.start, item.end,
                        f"unknown flag {flag!r}: it looks like a vif id after a ','",
                        f"separate several vif ids with '{g.vif_separator}': "
                        f"vifs=...{g.vif_separator}{flag}")
            else:
                hint = _suggest(flag, g.flags + g.keys)
                fix = f"did you mean {hint}? " if hint else ""
                self.at(d, item.start, item.end, f"unknown flag {flag!r}",
                        fix + f"flags are {', '.join(g.flags)}; keys are "
                        f"{', '.join(k + '=' for k in g.keys)}")
            return
        if flag in d.flags:
            self.at(d, item.start, item.end, f"flag {flag!r} given twice in one model",
                    "give each flag once")
            return
        d.flags[flag] = item

    def check_model(self, d: _Draft) -> None:
        g = GRAMMAR
        if g.path_requires_name and d.path is not None and d.name is None:
            item = d.keys["path"]
            self.at(d, item.start, item.end, "path= without name=",
                    "add name=NAME to this model (a revision of the series rejects path= alone)")
        if g.reject_empty_model and not d.flags and not d.vifs and not self._model_had_errors(d):
            self.at(d, 0, len(d.text), "model owns no device class (no flag, no vifs=)",
                    f"add flags ({', '.join(g.flags)}) or vifs=, or remove the model")

    def _model_had_errors(self, d: _Draft) -> bool:
        return any(p.model_index == d.index for p in self.problems)

    # -- the whole split
    def check_split(self, drafts: list[_Draft], guest_classes: Sequence[str] | None) -> None:
        if len(drafts) > MAX_MODELS:
            self.whole(f"{len(drafts)} models, but Xen allows at most {MAX_MODELS} ioreq servers per domain",
                       f"merge models until at most {MAX_MODELS} remain")
        by_name: dict[str, _Draft] = {}
        for d in drafts:
            name = d.effective_name
            if name in by_name:
                first = by_name[name]
                item = d.keys.get("name")
                span = (item.start, item.end) if item else (0, len(d.text))
                how = "" if d.name is not None else " (its default name, the model's number)"
                self.at(d, *span, f"name {name!r}{how} is also the name of model {first.index + 1}",
                        "give every model a different name=")
            else:
                by_name[name] = d
        for flag in FLAGS:
            owners = [d for d in drafts if flag in d.flags]
            for d in owners[1:]:
                item = d.flags[flag]
                names = " and ".join(f"model {o.index + 1} ({o.effective_name})" for o in owners)
                self.at(d, item.start, item.end, f"{flag} is owned by {names}",
                        f"keep {flag} in exactly one model")
        vif_owner: dict[str, _Draft] = {}
        for d in drafts:
            for vif, start in d.vifs:
                if vif in vif_owner and vif_owner[vif] is not d:
                    first = vif_owner[vif]
                    self.at(d, start, start + len(vif),
                            f"vif {vif!r} is in model {first.index + 1} ({first.effective_name}) "
                            f"and model {d.index + 1} ({d.effective_name})",
                            "list each vif id in exactly one model's vifs=")
                else:
                    vif_owner.setdefault(vif, d)
        if drafts and not any(UI in d.flags for d in drafts) and UI not in self.misspelt:
            self.whole("no model owns ui; the root/south bridge would be missing",
                       "add ui to one model")
        if self.guest_vifs is not None:
            known = ", ".join(self.guest_vifs) or "none"
            for d in drafts:
                for vif, start in d.vifs:
                    if vif not in self.guest_vifs:
                        self.at(d, start, start + len(vif),
                                f"vif id {vif!r} is not a vif of the guest (its vif ids: {known})",
                                "use the id= of one of the guest's vif entries")
            for vif in self.guest_vifs:
                if vif not in vif_owner:
                    self.whole(f"the guest's vif {vif!r} is in no model's vifs=",
                               f"add {vif} to the vifs= of exactly one model "
                               "(what the series does with an unlisted NIC is unverified)")
        for cls in guest_classes or ():
            if cls in FLAGS and cls not in ALWAYS_PRESENT and not any(cls in d.flags for d in drafts):
                self.whole(f"the guest has {CLASS_COVERS[cls]} but no model owns {cls}",
                           f"add {cls} to one model, or remove the device from the guest")


def parse_split(specs: Sequence[str] | None, *,
                guest_vifs: Sequence[str] | None = None,
                guest_classes: Sequence[str] | None = None,
                path_exists: PathExists | None = None,
                source: str = "") -> Split:
    """Parse and validate a ``device_models`` value.

    ``specs``: the list of model strings; None means the option is absent
    (the single split).  ``guest_vifs``: the guest's vif ids, when known: ids
    are then checked both ways.  ``guest_classes``: device classes the guest
    has (e.g. ``serial`` when it has ``serial=``): each must be owned.
    ``path_exists``: checks ``path=`` values (locally or on the host); None
    defers that check.  Raises SplitError listing every problem."""
    if specs is None:
        return Split.single()
    if isinstance(specs, str):
        raise SplitError([SplitProblem(
            "device_models is a single string, not a list",
            f"write device_models = [ {specs!r} ]")], source=source)
    parser = _Parser(guest_vifs, path_exists)
    if len(specs) == 0:
        parser.whole("device_models is an empty list",
                     "remove the option for the single split (one QEMU does all), or list models")
        raise SplitError(parser.problems, source=source)
    if len(specs) > GRAMMAR.max_models_read:
        parser.whole(f"{len(specs)} models, but Xen allows at most {MAX_MODELS} ioreq servers "
                     "per domain", f"merge models until at most {MAX_MODELS} remain")
        raise SplitError(parser.problems, source=source)
    drafts = [parser.parse_model(i, text) for i, text in enumerate(specs)]
    parser.check_split(drafts, guest_classes)
    if parser.problems:
        raise SplitError(parser.problems, source=source)
    models = tuple(
        DeviceModel(name=d.effective_name,
                    flags=tuple(f for f in FLAGS if f in d.flags),
                    vifs=tuple(v for v, _ in d.vifs),
                    path=d.path,
                    name_given=d.name is not None)
        for d in drafts)
    return Split(models)


def guest_classes_check(split: Split, guest_vifs: Sequence[str],
                        guest_classes: Sequence[str]) -> list[SplitProblem]:
    """Problems of an already parsed split against a guest's devices (used by
    the xl config model, which knows the guest).  Empty for the single split."""
    if split.is_single:
        return []
    try:
        parse_split(split.specs(), guest_vifs=guest_vifs, guest_classes=guest_classes)
    except SplitError as exc:
        return exc.problems
    return []
