"""A typed HVM guest, rendered to xl config syntax (and read back).

:class:`HvmGuest` holds what the suites vary (memory, NICs, disks, serial,
trace arguments, the split); :meth:`HvmGuest.render` writes an xl config
that xl 4.17 accepts, adding ``device_models`` only for a real split.

The syntax rules are xl's own (``tools/libs/util/libxlu_cfg_l.l`` and
``libxlu_cfg.c:xlu__cfgl_dequote``):

- a key is ``[a-z][_0-9a-z]*``; a number ``[0-9][0-9a-fx]*`` (no sign);
- a string is in ``'...'`` or ``"..."`` on one line; inside, backslash
  escapes ``\\\\ \\' \\" \\a \\b \\f \\n \\r \\t \\v`` are understood.  The
  numeric escapes are broken (xl 4.17, checked with its libxlutil: ``\\x41``
  is an error, ``\\101`` is silently dropped), so they are never emitted;
- the value is a C string: a NUL character cannot be expressed;
- a statement ends with a newline, ``;`` or the end of the text; a ``#``
  comment runs to the newline; a carriage return is a lexical error (so
  never write CRLF);
- a later assignment of a key wins; ``+=`` appends.

:func:`parse_xl_config` reads that subset back, for round-trip tests.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

from xenhil.harness.errors import ConfigError
from xenhil.harness.xen import splits
from xenhil.harness.xen.splits import Split

log = logging.getLogger("xenhil.xlconfig")

XlValue = Union[str, int, list]  # list of XlValue

# --------------------------------------------------------------------------
# Quoting
# --------------------------------------------------------------------------

# character -> escape, for the escapes xl's dequote understands
_NAMED_ESCAPES = {"\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                  "\r": "\\r", "\t": "\\t", "\v": "\\v"}
_UNESCAPES = {"\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f",
              "n": "\n", "r": "\r", "t": "\t", "v": "\v"}

KEY_RE = re.compile(r"[a-z][_0-9a-z]*")


class XlSyntaxError(ConfigError):
    help = "The text is not valid xl config syntax (see xl.cfg(5)); fix the named line."


def xl_string(value: str, prefer_quote: str = '"') -> str:
    """``value`` as an xl string literal that xl reads back exactly.

    Raises ConfigError when no literal can express it (a NUL character, or
    text that is not valid Unicode)."""
    if not isinstance(value, str):
        raise ConfigError(f"xl string expected, got {type(value).__name__}: {value!r}")
    if "\0" in value:
        raise ConfigError(f"string {value!r} holds a NUL character, which xl cannot express",
                          help="remove the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"string {value!r} is not valid Unicode ({exc.reason})",
                          help="remove the lone surrogate characters") from None
    other = "'" if prefer_quote == '"' else '"'
    quote = prefer_quote
    if prefer_quote in value and other not in value:
        quote = other  # no escaping needed with the other quote
    out = []
    for c in value:
        if c == quote:
            out.append("\\" + c)
        elif c in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[c])
        else:
            out.append(c)  # any other byte is literal inside a quoted string
    return quote + "".join(out) + quote


def xl_number(value: int) -> str:
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise ConfigError(f"xl numbers are non-negative integers, got {value!r}",
                          help="xl's lexer has no sign: give a non-negative integer")
    return str(value)


def xl_list(items: Sequence[XlValue], prefer_quote: str = '"') -> str:
    if not items:
        return "[ ]"
    return "[ " + ", ".join(xl_value(i, prefer_quote) for i in items) + " ]"


def xl_value(value: XlValue, prefer_quote: str = '"') -> str:
    if isinstance(value, (bool, int)):
        return xl_number(value)
    if isinstance(value, str):
        return xl_string(value, prefer_quote)
    if isinstance(value, (list, tuple)):
        return xl_list(list(value), prefer_quote)
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} in an xl config",
                      help="use a string, a non-negative integer or a list of them")


def check_key(key: str) -> None:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ConfigError(f"{key!r} is not a valid xl config key",
                          help="xl keys are lower case letters, digits and '_', starting with a letter")


# --------------------------------------------------------------------------
# Reading xl config text (the subset render() writes, plus comments, ';', '+=')
# --------------------------------------------------------------------------

_TOKEN_RES = [
    ("IDENT", re.compile(r"[a-z][_0-9a-z]*")),
    ("NUMBER", re.compile(r"[0-9][0-9a-fx]*")),
    ("BLANK", re.compile(r"[ \t]+")),
    ("NEWLINE", re.compile(r"\n|#[^\n]*\n")),
    ("STRING", re.compile(r"'(?:[^'\\\n]|\\[^\n])*'|\"(?:[^\"\\\n]|\\[^\n])*\"")),
    ("OP_ADD", re.compile(r"\+=")),
    ("PUNCT", re.compile(r"[,\[\]=;]")),
]


def _c_strtol(text: str, line: int) -> int:
    """strtol(text, 0) as xl reads numbers: 0x hex, leading 0 octal."""
    try:
        if text.lower().startswith("0x"):
            return int(text[2:], 16)
        if len(text) > 1 and text.startswith("0"):
            return int(text[1:], 8)
        return int(text, 10)
    except ValueError:
        raise XlSyntaxError(f"line {line}: {text!r} is not a valid number") from None


def _dequote(token: str, line: int) -> str:
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nc = body[i + 1]
        if nc in _UNESCAPES:
            out.append(_UNESCAPES[nc])
        elif nc == "x" or nc in "01234567":
            raise XlSyntaxError(f"line {line}: numeric escape \\{nc} in {token}: "
                                "xl parses it but drops the character")
        else:
            raise XlSyntaxError(f"line {line}: invalid escape \\{nc} in {token}")
        i += 2
    return "".join(out)


def _tokens(text: str):
    pos, line = 0, 1
    while pos < len(text):
        for kind, rx in _TOKEN_RES:
            m = rx.match(text, pos)
            if m:
                break
        else:
            rest = text[pos:].split("\n", 1)[0]
            hint = " (carriage return: write the file with \\n line ends)" if text[pos] == "\r" else ""
            raise XlSyntaxError(f"line {line}: lexical error near {rest[:40]!r}{hint}")
        tok = m.group(0)
        if kind != "BLANK":
            yield kind, tok, line
        line += tok.count("\n")
        pos = m.end()
    yield "EOF", "", line


def parse_xl_config(text: str) -> dict[str, XlValue]:
    """Settings of an xl config: key -> str, int (NUMBER tokens) or list.
    Later assignments win; ``+=`` appends, like xl."""
    toks = list(_tokens(text))
    pos = 0
    settings: dict[str, XlValue] = {}

    def peek():
        return toks[pos]

    def take(*kinds_or_text):
        nonlocal pos
        kind, tok, line = toks[pos]
        if kind not in kinds_or_text and tok not in kinds_or_text:
            want = " or ".join(kinds_or_text)
            raise XlSyntaxError(f"line {line}: expected {want}, found {tok or kind!r}")
        pos += 1
        return kind, tok, line

    def skip_newlines():
        while peek()[0] == "NEWLINE":
            take("NEWLINE")

    def value():
        kind, tok, line = peek()
        if kind == "STRING":
            take("STRING")
            return _dequote(tok, line)
        if kind == "NUMBER":
            take("NUMBER")
            return _c_strtol(tok, line)
        if tok == "[":
            take("[")
            items: list = []
            skip_newlines()
            while peek()[1] != "]":
                items.append(value())
                skip_newlines()
                if peek()[1] == ",":
                    take(",")
                    skip_newlines()
                elif peek()[1] != "]":
                    raise XlSyntaxError(f"line {peek()[2]}: expected ',' or ']', found {peek()[1]!r}")
            take("]")
            return items
        raise XlSyntaxError(f"line {line}: expected a string, number or list, found {tok or kind!r}")

    while peek()[0] != "EOF":
        kind, tok, line = peek()
        if kind == "NEWLINE" or tok == ";":
            pos += 1
            continue
        _, key, line = take("IDENT")
        op = take("=", "OP_ADD")[1]
        val = value()
        if op == "+=" and key in settings:
            prev = settings[key]
            if isinstance(prev, list) != isinstance(val, list) or isinstance(val, int) or isinstance(prev, int):
                raise XlSyntaxError(f"line {line}: cannot += a {type(val).__name__} to "
                                    f"{type(prev).__name__} {key}")
            val = prev + val
        settings[key] = val
        if peek()[0] != "EOF":  # xl also takes a last statement without a newline
            take("NEWLINE", ";")
    return settings


# --------------------------------------------------------------------------
# The typed guest
# --------------------------------------------------------------------------

NIC_MODELS = ("e1000", "rtl8139")           # emulated NICs the suites use
VIF_TYPES = ("ioemu", "vif")
VGA_KINDS = ("cirrus", "stdvga", "none")
TSC_MODES = ("default", "always_emulate", "native", "native_paravirt")
ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
           "coredump-restart", "soft-reset")
DEVICE_MODEL_VERSIONS = ("qemu-xen", "qemu-xen-traditional")
DISK_FORMATS = ("raw", "qcow2", "vhd", "qcow")
DISK_ACCESS = ("rw", "w", "ro", "r")
# IDE disks in the emulated PIIX3 controller: hd* and (for HVM) xvd* too.
# SCSI (sd*) belongs to no device class of the series: rejected.
VDEV_RE = re.compile(r"(hd[a-d]|xvd[a-d])")
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
DOMAIN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
BRIDGE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")     # a Linux interface name
MEMORY_MIB_RANGE = (32, 1 << 20)
MAX_VCPUS = 128                                      # HVM_MAX_VCPUS

#: Key under which a vif entry carries the id that device_models' vifs=
#: refers to.  The series' cover letter writes ``id=nic1``, and so does our
#: port (lab/series/device-models/xen patch 0001: ``id`` in the vif's IDL).
#: One revision of the 2012 libxlu_dm.c matched vifs= against the NIC's
#: ifname instead: a build of that revision needs this key changed.
#: xl 4.17 rejects an unknown vif key, so the id is written only for a split.
VIF_ID_KEY = "id"


@dataclass(frozen=True)
class Vif:
    id: str
    model: str = "e1000"
    bridge: str = "xenbr0"
    mac: str | None = None
    type: str = "ioemu"

    def to_spec(self, with_id: bool) -> str:
        items = [f"type={self.type}", f"model={self.model}", f"bridge={self.bridge}"]
        if self.mac:
            items.append(f"mac={self.mac.lower()}")
        if with_id:
            items.append(f"{VIF_ID_KEY}={self.id}")
        return ",".join(items)


@dataclass(frozen=True)
class Disk:
    target: str
    vdev: str = "hda"
    format: str = "raw"
    access: str = "rw"
    cdrom: bool = False

    def to_spec(self) -> str:
        items = [f"format={self.format}", f"vdev={self.vdev}", f"access={self.access}"]
        if self.cdrom:
            items.append("devtype=cdrom")
        items.append(f"target={self.target}")  # last: xl's disk parser takes the rest
        return ", ".join(items)


@dataclass(frozen=True)
class DirectKernelBoot:
    kernel: str
    ramdisk: str | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class DiskBoot:
    order: str = "c"        # xl boot=: a=floppy c=disk d=cdrom n=network


@dataclass(frozen=True)
class XlProblem:
    field: str
    message: str
    fix: str

    def render(self) -> str:
        return f"{self.field}: {self.message}\n    fix: {self.fix}"


class XlConfigError(ConfigError):
    """An HvmGuest cannot be rendered: ``problems`` lists every reason."""

    help = "Each problem above names its field and fix."

    def __init__(self, name: str, problems: Sequence[XlProblem]):
        self.problems = list(problems)
        body = "\n".join(p.render() for p in self.problems)
        super().__init__(f"guest config {name!r} has {len(self.problems)} problem(s):\n{body}")

    def messages(self) -> list[str]:
        return [f"{p.field}: {p.message}" for p in self.problems]


# Typed fields that quirks may set, with whether they are lists (extended).
_QUIRK_LIST_FIELDS = ("device_model_args", "device_model_args_hvm")
_QUIRK_SCALAR_FIELDS = ("tsc_mode", "vga", "usb", "xen_platform_pci", "on_crash",
                        "on_reboot", "on_poweroff", "device_model_version",
                        "device_model_override", "memory", "maxmem", "vcpus")


@dataclass
class HvmGuest:
    """An HVM guest as the suites describe it."""

    name: str
    memory: int = 256                                   # MiB
    maxmem: int | None = None
    vcpus: int = 1
    boot: DirectKernelBoot | DiskBoot = field(default_factory=DiskBoot)
    vifs: list[Vif] = field(default_factory=list)
    disks: list[Disk] = field(default_factory=list)
    serial: str | list[str] | None = "pty"
    vga: str | None = None
    usb: bool = False
    soundhw: str | None = None
    device_model_version: str = "qemu-xen"
    device_model_override: str | None = None
    device_model_args: list[str] = field(default_factory=list)
    device_model_args_hvm: list[str] = field(default_factory=list)
    tsc_mode: str | None = None
    xen_platform_pci: bool | None = None
    on_poweroff: str | None = None
    on_reboot: str | None = None
    on_crash: str | None = None
    extra: dict[str, XlValue] = field(default_factory=dict)
    split: Split = field(default_factory=Split.single)
    applied_quirks: dict[str, Any] = field(default_factory=dict)

    # ---- the devices the guest has, for the split's ownership check
    def device_classes(self) -> list[str]:
        classes = [splits.UI]
        if self.soundhw:
            classes.append(splits.AUDIO)
        if self.disks:
            classes.append(splits.IDE)
        if self.serial:
            classes.append(splits.SERIAL)
        classes.extend(splits.NIC_PREFIX + v.id for v in self.vifs)
        return classes

    def owner_table(self) -> dict[str, str]:
        """Device class -> model name, for the devices this guest has."""
        return {c: self.split.owner_of(c) for c in self.device_classes()}  # type: ignore[misc]

    # ---- validation
    def problems(self) -> list[XlProblem]:
        out: list[XlProblem] = []

        def bad(fieldname: str, message: str, fix: str) -> None:
            out.append(XlProblem(fieldname, message, fix))

        def one_of(fieldname: str, value: Any, allowed: Sequence[str]) -> None:
            if value is not None and value not in allowed:
                bad(fieldname, f"{value!r} is not one of {', '.join(allowed)}",
                    f"use one of {', '.join(allowed)}")

        if not isinstance(self.name, str) or not DOMAIN_NAME_RE.fullmatch(self.name):
            bad("name", f"{self.name!r} is not a usable domain name",
                "use letters, digits, '_', '.', '-' (at most 64, not starting with '.' or '-')")
        elif self.name.isdigit():
            bad("name", f"{self.name!r} is all digits; xl would read it as a domain id",
                "add a letter to the name")
        elif self.name == "Domain-0":
            bad("name", "Domain-0 is dom0's name", "choose another name")
        lo, hi = MEMORY_MIB_RANGE
        if not isinstance(self.memory, int) or isinstance(self.memory, bool) or not lo <= self.memory <= hi:
            bad("memory", f"{self.memory!r} MiB is outside {lo}..{hi}", f"give an integer in {lo}..{hi} MiB")
        if self.maxmem is not None:
            if not isinstance(self.maxmem, int) or isinstance(self.maxmem, bool) or not lo <= self.maxmem <= hi:
                bad("maxmem", f"{self.maxmem!r} MiB is outside {lo}..{hi}", f"give an integer in {lo}..{hi} MiB")
            elif isinstance(self.memory, int) and self.maxmem < self.memory:
                bad("maxmem", f"maxmem {self.maxmem} is below memory {self.memory}",
                    "set maxmem >= memory, or leave it unset")
        if not isinstance(self.vcpus, int) or isinstance(self.vcpus, bool) or not 1 <= self.vcpus <= MAX_VCPUS:
            bad("vcpus", f"{self.vcpus!r} is outside 1..{MAX_VCPUS}", f"give 1..{MAX_VCPUS} vCPUs")
        if isinstance(self.boot, DirectKernelBoot):
            for attr in ("kernel", "ramdisk"):
                path = getattr(self.boot, attr)
                if path is not None and (not isinstance(path, str) or not path.startswith("/")):
                    bad(f"boot.{attr}", f"{path!r} is not an absolute path", "give the absolute path on the host")
        elif isinstance(self.boot, DiskBoot):
            if not self.boot.order or not re.fullmatch(r"[acdn]{1,4}", self.boot.order):
                bad("boot.order", f"{self.boot.order!r} is not a boot order", "use letters of a, c, d, n (e.g. 'c')")
            if not self.disks and "c" in self.boot.order and "n" not in self.boot.order:
                bad("boot", "disk boot but the guest has no disk", "add a disk or use DirectKernelBoot")
        else:
            bad("boot", f"{self.boot!r} is not a boot method", "use DirectKernelBoot(...) or DiskBoot(...)")
        seen_ids: set[str] = set()
        seen_macs: set[str] = set()
        for i, vif in enumerate(self.vifs):
            where = f"vifs[{i}]"
            if not splits.is_valid_vif_id(vif.id):
                bad(f"{where}.id", f"{vif.id!r} is not a valid vif id",
                    "use letters, digits, '_', '.', '-' (at most 32)")
            elif vif.id in seen_ids:
                bad(f"{where}.id", f"vif id {vif.id!r} is used twice", "give every vif its own id")
            seen_ids.add(vif.id)
            one_of(f"{where}.model", vif.model, NIC_MODELS)
            one_of(f"{where}.type", vif.type, VIF_TYPES)
            if not BRIDGE_RE.fullmatch(vif.bridge or ""):
                bad(f"{where}.bridge", f"{vif.bridge!r} is not a bridge name",
                    "give the dom0 bridge's interface name (at most 15 of letters, digits, '_.-')")
            if vif.mac is not None:
                if not MAC_RE.fullmatch(vif.mac):
                    bad(f"{where}.mac", f"{vif.mac!r} is not a MAC address", "write six hex pairs: 00:16:3e:xx:xx:xx")
                elif int(vif.mac[:2], 16) & 1:
                    bad(f"{where}.mac", f"{vif.mac!r} is a multicast address",
                        "use a unicast MAC, e.g. Xen's prefix 00:16:3e")
                elif vif.mac.lower() in seen_macs:
                    bad(f"{where}.mac", f"MAC {vif.mac} is used twice", "give every vif its own MAC")
                else:
                    seen_macs.add(vif.mac.lower())
        seen_vdevs: set[str] = set()
        for i, disk in enumerate(self.disks):
            where = f"disks[{i}]"
            if not VDEV_RE.fullmatch(disk.vdev):
                bad(f"{where}.vdev", f"{disk.vdev!r} is not an IDE disk name",
                    "use hda..hdd or xvda..xvdd (SCSI sd* is no device class of the series)")
            elif disk.vdev in seen_vdevs:
                bad(f"{where}.vdev", f"vdev {disk.vdev} is used twice", "give every disk its own vdev")
            seen_vdevs.add(disk.vdev)
            one_of(f"{where}.format", disk.format, DISK_FORMATS)
            one_of(f"{where}.access", disk.access, DISK_ACCESS)
            if not isinstance(disk.target, str) or not disk.target or any(c in disk.target for c in "\\\n\0"):
                bad(f"{where}.target", f"{disk.target!r} is not a usable disk target",
                    "give a path without backslash or newline")
        if self.serial is not None:
            items = [self.serial] if isinstance(self.serial, str) else self.serial
            if not isinstance(items, list) or not items or not all(isinstance(s, str) and s and "\n" not in s
                                                                   for s in items):
                bad("serial", f"{self.serial!r} is not a serial setting",
                    "use \"pty\", a list of QEMU chardev strings, or None")
        one_of("vga", self.vga, VGA_KINDS)
        one_of("tsc_mode", self.tsc_mode, TSC_MODES)
        one_of("device_model_version", self.device_model_version, DEVICE_MODEL_VERSIONS)
        for action in ("on_poweroff", "on_reboot", "on_crash"):
            one_of(action, getattr(self, action), ACTIONS)
        if self.device_model_override is not None and not str(self.device_model_override).startswith("/"):
            bad("device_model_override", f"{self.device_model_override!r} is not an absolute path",
                "give the absolute path of the QEMU binary on the host")
        for attr in ("device_model_args", "device_model_args_hvm"):
            args = getattr(self, attr)
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                bad(attr, f"{args!r} is not a list of strings", "give a list of QEMU arguments")
        typed = set(self._typed_keys())
        for key, value in self.extra.items():
            if not isinstance(key, str) or not KEY_RE.fullmatch(key):
                bad(f"extra[{key!r}]", "not a valid xl key",
                    "xl keys are lower case letters, digits and '_', starting with a letter")
            elif key in typed:
                bad(f"extra[{key!r}]", f"{key} is written from a typed field of HvmGuest",
                    "set that field (name, memory, vifs, disks, boot, split, ...) instead of extra")
            else:
                try:
                    xl_value(value)
                except ConfigError as exc:
                    bad(f"extra[{key!r}]", str(exc).splitlines()[0], "give a string, integer or list")
        if not isinstance(self.split, Split):
            bad("split", f"{self.split!r} is not a Split", "use xenhil.harness.xen.splits.parse_split(...)")
        elif not self.split.is_single:
            if self.device_model_version != "qemu-xen":
                bad("split", f"split {self.split.id} needs device_model_version qemu-xen",
                    "the series modified only upstream QEMU (qemu-xen)")
            guest_vifs = [v.id for v in self.vifs]
            for p in splits.guest_classes_check(self.split, guest_vifs, self.device_classes()):
                where = "split" if p.model_index is None else f"split model {p.model_index + 1}"
                bad(where, p.message, p.fix)
        return out

    def check(self) -> "HvmGuest":
        problems = self.problems()
        if problems:
            raise XlConfigError(getattr(self, "name", "?"), problems)
        return self

    # ---- host quirks
    def apply_quirks(self, quirks: Mapping[str, Any]) -> "HvmGuest":
        """A copy with a host's quirks merged in (e.g. ``{"tsc_mode": "native"}``
        on an emulated host).  Scalar fields are replaced, list fields
        (device_model_args*) extended, any other key goes to ``extra`` (it
        must be a valid xl key).  The quirks are listed as comments in the
        rendered config."""
        changes: dict[str, Any] = {}
        extra = dict(self.extra)
        for key, value in quirks.items():
            if key in _QUIRK_LIST_FIELDS:
                if not isinstance(value, (list, tuple)):
                    raise ConfigError(f"quirk {key} must be a list, got {value!r}",
                                      help="fix the host's quirks table")
                changes[key] = list(changes.get(key, getattr(self, key))) + list(value)
            elif key in _QUIRK_SCALAR_FIELDS:
                old = getattr(self, key)
                if old is not None and old != value:
                    log.info("host quirk %s=%r replaces the guest's %r", key, value, old)
                changes[key] = value
            else:
                check_key(key)
                if key in self._typed_keys():
                    raise ConfigError(f"quirk {key} names a typed field that quirks may not set",
                                      help=f"quirks may set {', '.join(_QUIRK_SCALAR_FIELDS + _QUIRK_LIST_FIELDS)} "
                                           "or untyped xl keys")
                extra[key] = value
        applied = dict(self.applied_quirks)
        applied.update(quirks)
        return dataclasses.replace(self, **changes, extra=extra, applied_quirks=applied)

    # ---- rendering
    @staticmethod
    def _typed_keys() -> tuple[str, ...]:
        return ("name", "type", "builder", "memory", "maxmem", "vcpus", "kernel", "ramdisk",
                "cmdline", "boot", "vif", "disk", "serial", "vga", "stdvga", "usb", "soundhw",
                "device_model_version", "device_model_override", "device_model_args",
                "device_model_args_hvm", "tsc_mode", "xen_platform_pci", "on_poweroff",
                "on_reboot", "on_crash", "device_models")

    def xl_settings(self) -> dict[str, XlValue]:
        """Key -> value as written to (and read back from) the xl config."""
        self.check()
        s: dict[str, XlValue] = {"name": self.name, "type": "hvm", "memory": self.memory}
        if self.maxmem is not None:
            s["maxmem"] = self.maxmem
        s["vcpus"] = self.vcpus
        if isinstance(self.boot, DirectKernelBoot):
            s["kernel"] = self.boot.kernel
            if self.boot.ramdisk is not None:
                s["ramdisk"] = self.boot.ramdisk
            if self.boot.cmdline is not None:
                s["cmdline"] = self.boot.cmdline
        else:
            s["boot"] = self.boot.order
        with_id = not self.split.is_single
        if self.vifs:
            s["vif"] = [v.to_spec(with_id) for v in self.vifs]
        if self.disks:
            s["disk"] = [d.to_spec() for d in self.disks]
        if self.serial is not None:
            s["serial"] = self.serial if isinstance(self.serial, str) else list(self.serial)
        if self.vga is not None:
            s["vga"] = self.vga
        if self.usb:
            s["usb"] = 1
        if self.soundhw:
            s["soundhw"] = self.soundhw
        s["device_model_version"] = self.device_model_version
        if self.device_model_override is not None:
            s["device_model_override"] = self.device_model_override
        if self.device_model_args:
            s["device_model_args"] = list(self.device_model_args)
        if self.device_model_args_hvm:
            s["device_model_args_hvm"] = list(self.device_model_args_hvm)
        if self.tsc_mode is not None:
            s["tsc_mode"] = self.tsc_mode
        if self.xen_platform_pci is not None:
            s["xen_platform_pci"] = int(self.xen_platform_pci)
        for action in ("on_poweroff", "on_reboot", "on_crash"):
            if getattr(self, action) is not None:
                s[action] = getattr(self, action)
        for key, value in self.extra.items():
            s[key] = [*value] if isinstance(value, tuple) else (int(value) if isinstance(value, bool) else value)
        if not self.split.is_single:
            s["device_models"] = self.split.specs()
        return s

    def render(self) -> str:
        """The xl config text (``\\n`` line ends, a newline after the last line)."""
        settings = self.xl_settings()
        lines = [f"# xl config rendered by xenhil: guest {self.name}, split {self.split.id}"]
        for key, value in self.applied_quirks.items():
            lines.append(f"# host quirk: {key} = {value!r}".replace("\n", "\\n"))
        for key, value in settings.items():
            quote = "'" if key == "device_models" else '"'
            lines.append(f"{key} = {xl_value(value, quote)}")
        return "\n".join(lines) + "\n"
