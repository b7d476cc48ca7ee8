"""Load and check a lab inventory (``lab/*.yaml``) into :mod:`harness.lab.model`.

The file format (``lab/example.yaml`` shows every field)::

    lease_db: sqlite:///leases.sqlite        # optional
    hosts:                                   # a list: order is kept, duplicates are caught
      - name: h1
        address: 192.0.2.10
        tags: [intel, rack1]
        capabilities: {cpu_vendor: intel, virt: vmx, iommu: true, ram_mb: 65536, cpus: 16}
        ssh:                                 # or "ssh: none" for a host without SSH
          user: root
          port: 22
          key_file: keys/lab_ed25519         # relative to this file's directory
          host_key: "ssh-ed25519 AAAA..."    # or known_hosts: FILE (one pin is required)
        serial: {kind: tcp, host: consoles.lab, port: 7001}
        power:
          kind: ipmi
          address: 192.0.2.110
          user: ADMIN
          password: {env: H1_IPMI_PASSWORD}  # or {file: secrets/h1-bmc}; never the value
        health: {steps: [dom0-ssh, xl-info]} # optional: the health check steps it can do (all)

``hosts`` is a list rather than a mapping keyed by name because YAML silently
keeps the last of two equal keys, which would hide a duplicated host.

Checking happens in three passes, all of which report every problem they find
(not just the first): YAML syntax, the JSON Schema in ``inventory.schema.json``
(shape, types, unknown keys, per-kind required fields), then the semantic
checks a schema cannot express (duplicates, files that must exist, host key
syntax, host key pins, cross-field rules).  Each :class:`Problem` names the
file, line, host and field and says how to fix it.

YAML is read with YAML 1.2 booleans (only ``true``/``false``): ``on``, ``off``,
``yes`` and ``no`` stay strings, so ``commands: {on: ..., off: ...}`` works.

Secrets: only references (``{env: NAME}`` / ``{file: PATH}``) are accepted and
they are not resolved here; no message ever repeats the value of a field that
looks like a secret.
"""
from __future__ import annotations

import base64
import binascii
import difflib
import functools
import json
import logging
import os
import re
import struct
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from xenhil.harness import safeyaml
from xenhil.harness.errors import ConfigError
from xenhil.harness.secrets import inline_secret_kind, redact_inline
from xenhil.harness.lab.model import (DEFAULT_IPMI_PORT, KNOWN_CAPABILITIES, CredentialRef, HostSpec,
                                      Inventory, PowerConfig, SerialConfig, SSHConfig, section_port)

log = logging.getLogger("xenhil.lab.inventory")

SCHEMA_RESOURCE = "inventory.schema.json"
DEFAULT_SSH_PORT = 22
#: The power section's fields PowerConfig has attributes for; a driver's
#: other fields reach it in PowerConfig.options.
_POWER_MODEL_FIELDS = frozenset({"kind", "address", "port", "user", "password", "commands"})

# Key types OpenSSH can pin; the base64 blob must start with the same name.
HOST_KEY_TYPES = (
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "ssh-rsa", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss",
)

# Bounds on the YAML (harness.safeyaml.LIMITS), so that a hostile file is
# refused in bounded time and memory (an inventory of 1000 hosts is about
# 30 000 events, 6 levels deep).
MAX_YAML_DEPTH = safeyaml.LIMITS["depth"]

# Which virtualisation extension each CPU vendor has.
_VIRT_OF_VENDOR = {"intel": "vmx", "amd": "svm"}

# Field names whose values are secrets: never echoed, and never accepted inline.
_SECRET_FIELDS = ("password", "passphrase")

_SECRET_WORDS = re.compile(r"pass|secret|token|pwd", re.IGNORECASE)

# Fixes for a missing required field, by field name.
_MISSING_FIELD_FIX = {
    "hosts": "add hosts: with a list of hosts (see lab/example.yaml)",
    "name": "add name: a unique short name for the host, e.g. name: h1",
    "address": "add address: the host's name or IP address",
    "ssh": "add ssh: {user: root, key_file: PATH, host_key: \"ssh-ed25519 AAAA...\"} "
           "(or ssh: none for a host without SSH)",
    "power": "add power: {kind: ipmi, address: BMC, user: USER, password: {env: IPMI_PASSWORD}} "
             "(or power: {kind: none} when its power cannot be controlled)",
    "kind": "add kind: (see the allowed kinds in lab/example.yaml)",
}


class InventoryError(ConfigError):
    """The inventory has problems; ``problems`` lists them all."""

    def __init__(self, path: Path | str, problems: Iterable["Problem"]):
        self.path = Path(path)
        self.problems: list[Problem] = list(problems)
        count = len(self.problems)
        header = f"{path}: {count} problem{'s' if count != 1 else ''} in the lab inventory:"
        super().__init__("\n".join([header] + [str(p) for p in self.problems]),
                         help=f"fix the fields listed above, then run `xenhil lab check {path}`")


@dataclass(frozen=True)
class Problem:
    """One thing wrong in an inventory file."""

    file: str                       # the inventory path as the user gave it
    field: str = ""                 # dotted path from the top: hosts[1].power.password
    message: str = ""
    fix: str = ""
    host: str | int | None = None   # the host's name, or its index in hosts: when it has none
    line: int | None = None         # 1-based line in the file, when known
    # --learn: the "type base64" key fetched from the host (trust on first use)
    learned_host_key: str | None = None

    @property
    def field_in_host(self) -> str:
        """The field relative to its host (``power.password``), or the full path."""
        if self.host is not None:
            match = re.match(r"hosts\[\d+\]\.?", self.field)
            if match:
                return self.field[match.end():]
        return self.field

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}" if self.line else self.file]
        if isinstance(self.host, str):
            parts.append(f"host {self.host!r}")
        elif isinstance(self.host, int):
            parts.append(f"host hosts[{self.host}]")
        if self.field_in_host:
            parts.append(f"field {self.field_in_host}")
        text = ": ".join(parts) + f": {self.message}"
        if self.fix:
            text += f"; fix: {self.fix}"
        return text


# --- public API ----------------------------------------------------------

def load_inventory(path: Path | str) -> Inventory:
    """Read, check and build the inventory; raise :class:`InventoryError`
    listing every problem when there is any."""
    problems, inventory = _check(Path(path), learn=False)
    if problems or inventory is None:
        raise InventoryError(path, problems)
    return inventory


def check_inventory(path: Path | str, learn: bool = False) -> list[Problem]:
    """Every problem of the inventory (empty list: valid).

    With ``learn``, hosts with SSH but no pinned host key are contacted and
    their key fetched (trust on first use, logged as a warning); the "no
    pinned host key" problem then carries ``learned_host_key`` and a fix with
    the exact line to add.  The file itself is never rewritten.
    """
    return _check(Path(path), learn=learn)[0]


def parse_host_key(text: str) -> tuple[str, bytes]:
    """``"ssh-ed25519 AAAA... [comment]"`` -> (key type, key blob).

    Raises ValueError saying what is wrong.
    """
    fields = text.split()
    if not fields:
        raise ValueError("the host key is empty")
    if len(fields) >= 2 and fields[0] not in HOST_KEY_TYPES and fields[1] in HOST_KEY_TYPES:
        raise ValueError("this looks like a known_hosts line: drop the leading host name "
                         f"{fields[0]!r}")
    if fields[0] not in HOST_KEY_TYPES:
        raise ValueError(f"unknown host key type {fields[0][:40]!r}")
    if len(fields) < 2:
        raise ValueError(f"the key data after {fields[0]!r} is missing")
    key_type, data = fields[0], fields[1]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key data is not valid base64 "
                         "(was the line cut or wrapped?)") from None
    if len(blob) < 4:
        raise ValueError("the key data is too short to be an SSH public key")
    (length,) = struct.unpack(">I", blob[:4])
    inner = blob[4:4 + length]
    if len(inner) != length or len(blob) <= 4 + length:
        raise ValueError("the key data is cut short (was the line cut or wrapped?)")
    if inner.decode("ascii", "replace") != key_type:
        raise ValueError(f"the key data is a {inner.decode('ascii', 'replace')[:40]!r} key, but "
                         f"the line says {key_type!r}")
    return key_type, blob


# --- the passes ----------------------------------------------------------

def _check(path: Path, learn: bool) -> tuple[list[Problem], Inventory | None]:
    shown = str(path)
    document = _read_yaml(path, shown)
    if isinstance(document, list):  # problems: nothing more can be checked
        return document, None
    context = _Context(path=path, shown=shown, data=document.data, lines=document.lines)
    problems = list(document.problems)
    problems += _schema_problems(context)
    unpinned: list[tuple[int, str, str, int]] = []
    problems += _semantic_problems(context, unpinned)
    if learn and unpinned:
        problems = _learn_host_keys(problems, unpinned, context)
    problems = _sorted_unique(problems)
    if problems:
        return problems, None
    return [], _build(context)


@dataclass
class _Document:
    data: Any
    lines: dict[tuple, int]
    problems: list[Problem]


@dataclass
class _Context:
    path: Path
    shown: str
    data: Any
    lines: dict[tuple, int]

    @property
    def base_dir(self) -> Path:
        return Path(os.path.abspath(self.path)).parent

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.base_dir / p))

    def line(self, path: tuple) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def host_label(self, index: int) -> str | int:
        hosts = self.data.get("hosts") if isinstance(self.data, dict) else None
        if isinstance(hosts, list) and 0 <= index < len(hosts):
            entry = hosts[index]
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]:
                return entry["name"]
        return index

    def problem(self, path: tuple, message: str, fix: str = "", **extra) -> Problem:
        host = None
        if len(path) >= 2 and path[0] == "hosts" and isinstance(path[1], int):
            host = self.host_label(path[1])
        return Problem(file=self.shown, field=_dotted(path), message=message, fix=fix,
                       host=host, line=self.line(path), **extra)


def _dotted(path: Iterable) -> str:
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _sorted_unique(problems: list[Problem]) -> list[Problem]:
    seen, unique = set(), []
    for p in problems:
        key = (p.field, p.message)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    # Stable: file order (line), then the order the passes found them.
    return sorted(unique, key=lambda p: p.line or 0)


# --- pass 1: YAML --------------------------------------------------------

class _InventoryLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false.  YAML 1.1 would turn
    ``on:``/``off:`` (power commands) and ``yes``/``no`` into booleans."""


_InventoryLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_InventoryLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _read_yaml(path: Path, shown: str) -> _Document | list[Problem]:
    def fail(message: str, fix: str, line: int | None = None) -> list[Problem]:
        return [Problem(file=shown, message=message, fix=fix, line=line)]

    from xenhil.harness.safeio import LIMITS, file_type
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return fail("the inventory file does not exist",
                    "give the path of a lab inventory (e.g. lab/example.yaml) or set XENHIL_LAB")
    except OSError as exc:
        return fail(f"cannot read the file: {exc.strerror}", "check its permissions")
    kind = file_type(mode)
    if kind == "a directory":
        return fail("this is a directory, not an inventory file", "give a lab/NAME.yaml file")
    if kind is not None:
        # A FIFO would block the read forever, /dev/zero never ends.
        return fail(f"this is {kind}, not an inventory file", "give a lab/NAME.yaml file")
    try:
        with open(path, "rb") as f:
            raw = f.read(LIMITS["inventory"] + 1)
    except OSError as exc:
        return fail(f"cannot read the file: {exc.strerror}", "check its permissions")
    if len(raw) > LIMITS["inventory"]:
        return fail(f"the file is larger than {LIMITS['inventory'] >> 20} MiB, too large for an "
                    "inventory", "give the lab's inventory file (a 1000-host lab is about 300 KiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return fail(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})",
                    "save the inventory as UTF-8")

    loader = None
    try:
        loader = _InventoryLoader(text)   # its reader refuses control characters here
        shape = safeyaml.shape_problem(text, _InventoryLoader)
        if shape is not None:
            fix = {"depth": "an inventory is a few levels deep: fix the brackets or indentation",
                   "events": "give the lab's inventory file"}[shape.kind]
            more = ", far more than any inventory" if shape.kind == "events" else ""
            return fail(shape.message + more, fix, shape.line)
        node = loader.get_single_node()
        if node is not None and safeyaml.expanded_size(node) > safeyaml.LIMITS["nodes"]:
            return fail(safeyaml.ALIASES_MESSAGE,
                        "write the values out instead of nesting aliases of aliases")
        lines: dict[tuple, int] = {}
        duplicates: list[tuple[tuple, int, int]] = []
        if node is not None:
            # Before constructing: that merges "<<:" keys into the node in place.
            _record_lines(node, (), lines, duplicates, depth=0)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        # Only the parser's own words and position: the line's text could hold a secret.
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or ""
        if exc.context:
            started = exc.context_mark.line + 1 if exc.context_mark else None
            what = (f"{exc.context}" + (f" (which started on line {started})" if started else "")
                    + f": {what}")
        where = f" (column {mark.column + 1})" if mark else ""
        return fail(f"YAML syntax error: {what}{where}",
                    "fix the YAML at that line (indentation, a missing ':', unbalanced quotes "
                    "or brackets)", line=mark.line + 1 if mark else None)
    except yaml.YAMLError as exc:
        # Not its text: it may quote a line holding a secret.
        return fail(f"YAML error ({type(exc).__name__})", "fix the YAML syntax")
    except RecursionError:
        return fail(f"the YAML is nested too deeply (more than {MAX_YAML_DEPTH} levels)",
                    "an inventory is a few levels deep: fix the brackets or indentation")
    finally:
        if loader is not None:
            loader.dispose()

    if node is None or data is None:
        return fail("the inventory is empty", "list the lab's hosts under hosts: "
                    "(see lab/example.yaml)")
    if not isinstance(data, dict):
        return fail(f"the top level is a {_type_name(data)}, not a mapping",
                    "start the file with 'hosts:' followed by the list of hosts",
                    line=node.start_mark.line + 1)

    document = _Document(data=data, lines=lines, problems=[])
    context = _Context(path=path, shown=shown, data=data, lines=lines)
    for key_path, first, again in duplicates:
        problem = context.problem(key_path, f"key {key_path[-1]!r} is given twice (lines {first} "
                                  f"and {again}); YAML keeps only the last one",
                                  "keep one of them")
        document.problems.append(replace(problem, line=again))
    return document


def _record_lines(node: yaml.Node, path: tuple, lines: dict, duplicates: list, depth: int) -> None:
    """Map every value's path to its line, and find keys given twice in a mapping."""
    if depth > 40:  # aliases can make cycles; an inventory is never this deep
        return
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            merge = key_node.tag == "tag:yaml.org,2002:merge"
            if merge or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            key_line = key_node.start_mark.line + 1
            if key in first_line:
                duplicates.append((path + (key,), first_line[key], key_line))
            else:
                first_line[key] = key_line
            _record_lines(value_node, path + (key,), lines, duplicates, depth + 1)
            lines[path + (key,)] = key_line  # point at "key: value", not the value's own line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, path + (index,), lines, duplicates, depth + 1)


# --- pass 2: JSON Schema -------------------------------------------------

@functools.cache
def inventory_schema() -> dict:
    """The inventory JSON Schema (Draft 2020-12), shipped as package data,
    with its ``power`` and ``serial`` definitions made by the registered
    drivers (each owns its fields: harness.access.power, harness.access.serial)."""
    from xenhil.harness.access.power import power_schema
    from xenhil.harness.access.serial import SERIAL_KINDS
    text = resources.files("xenhil.harness.lab").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema = json.loads(text)
    schema["$defs"]["power"] = power_schema()
    schema["$defs"]["serial"] = SERIAL_KINDS.schema()
    return schema


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = inventory_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _schema_problems(ctx: _Context) -> list[Problem]:
    problems: list[Problem] = []
    for error in _validator().iter_errors(ctx.data):
        problems.extend(_translate(error, ctx))
    return problems


def _type_name(value: Any) -> str:
    if value is None:
        return "empty value"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


_SCHEMA_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string",
                      "integer": "a whole number", "boolean": "true or false",
                      "number": "a number", "null": "empty"}


def _is_secret_path(path: tuple) -> bool:
    if path and path[-1] in ("env", "file"):  # where a secret is, not the secret
        return False
    return any(isinstance(p, str) and (p in _SECRET_FIELDS or _SECRET_WORDS.search(p))
               for p in path)


def _show(value: Any, path: tuple) -> str:
    """A value for a message, or nothing when it may be a secret or is long."""
    if _is_secret_path(path) or isinstance(value, (dict, list)) or value is None:
        return ""
    # A URL's password, a command's -P value, password=...: masked; and in a
    # user field, what follows a ':' (someone wrote user:password).
    if isinstance(value, str) and path and path[-1] == "user" and ":" in value:
        value = value.split(":", 1)[0] + ":***"
    text = repr(redact_inline(value)) if isinstance(value, str) else str(value)
    return f" {text}" if len(text) <= 80 else f" {text[:77]}..."


def _env_suggestion(ctx: _Context, path: tuple) -> str:
    """An environment variable name for a secret at ``path``, e.g. H1_IPMI_PASSWORD."""
    label = ctx.host_label(path[1]) if len(path) >= 2 and path[0] == "hosts" else None
    prefix = re.sub(r"[^A-Za-z0-9]", "_", label).upper() + "_" if isinstance(label, str) else ""
    if len(path) >= 2 and path[-2] in ("power", "serial"):
        return f"{prefix}IPMI_PASSWORD"
    if len(path) >= 2 and path[-2] == "ssh":
        return f"{prefix}SSH_KEY_PASSPHRASE"
    return f"{prefix}SECRET"


def _inline_secret_fix(ctx: _Context, path: tuple, allowed: Iterable[str]) -> str:
    allowed = set(allowed)
    if "key_file" in allowed or (len(path) >= 2 and path[-2] == "ssh"):
        return (f"SSH logs in with key_file; for an encrypted key use passphrase: "
                f"{{env: {_env_suggestion(ctx, path)}}} or passphrase: {{file: PATH}}")
    field = (path[-1] if path[-1] in _SECRET_FIELDS
             else "password" if "password" in allowed else None)
    if field is None:
        return "remove it; refer to secrets only as {env: NAME} or {file: PATH}"
    return f"use {field}: {{env: {_env_suggestion(ctx, path)}}} or {field}: {{file: PATH}}"


def _translate(error: jsonschema.ValidationError, ctx: _Context) -> list[Problem]:
    path = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    fix = schema.get("x-fix", "")
    instance = error.instance
    kind = error.validator
    name = path[-1] if path else None

    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        problems = []
        for key in sorted((k for k in instance if k not in allowed), key=str):
            key_path = path + (key,)
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            if path and path[-1] == "capabilities":
                problems.append(ctx.problem(
                    key_path, f"unknown capability {key!r}",
                    f"{hint}known capabilities: {', '.join(sorted(KNOWN_CAPABILITIES))}"))
            elif isinstance(key, str) and _SECRET_WORDS.search(key):
                problems.append(ctx.problem(
                    key_path, "inline secrets are not allowed in the inventory",
                    _inline_secret_fix(ctx, key_path, allowed)))
            else:
                problems.append(ctx.problem(
                    key_path, f"unknown key {key!r}",
                    f"{hint}allowed here: {', '.join(allowed)}"))
        return problems

    if kind == "required":
        problems = []
        for missing in error.validator_value:
            if isinstance(instance, dict) and missing in instance:
                continue
            where = path[-1] if path and isinstance(path[-1], str) else None
            if where in ("power", "serial") and isinstance(instance.get("kind"), str):
                message = f"{where} kind {instance['kind']!r} needs field {missing!r}"
            else:
                message = f"missing required field {missing!r}"
            # A host's own fields have specific fixes; a kind's fields the kind's x-fix.
            specific = _MISSING_FIELD_FIX.get(missing) if len(path) <= 2 else None
            problem = ctx.problem(path + (missing,), message,
                                  specific or fix or f"add {missing}:")
            # The field is absent: point at the mapping that lacks it.
            problems.append(replace(problem, line=ctx.line(path)))
        return problems

    if kind == "type" or (kind == "const" and name == "ssh"):
        if name in _SECRET_FIELDS and not isinstance(instance, dict):
            return [ctx.problem(path, f"inline {name}s are not allowed",
                                _inline_secret_fix(ctx, path, ()))]
        if name == "ssh":
            return [ctx.problem(path, f"ssh must be a mapping or none, not "
                                f"{_type_name(instance)}{_show(instance, path)}", fix)]
        expected = error.validator_value
        expected = expected if isinstance(expected, list) else [expected]
        words = " or ".join(_SCHEMA_TYPE_WORDS.get(t, t) for t in expected)
        message = f"must be {words}, not {_type_name(instance)}{_show(instance, path)}"
        if "string" in expected and isinstance(instance, (int, float, bool)):
            fix = f"quote the value (YAML reads it as {_type_name(instance)}); " + fix
        if instance is None:
            fix = "give a value after the ':' or remove the key; " + fix
        return [ctx.problem(path, message, fix)]

    if kind in ("enum", "const"):
        allowed = error.validator_value if kind == "enum" else [error.validator_value]
        value = _show(instance, path).strip()
        message = (f"{value} is not allowed" if value else "value not allowed") \
            + f" (allowed: {', '.join(map(str, allowed))})"
        if name == "kind" and len(path) >= 2:
            message = (f"unknown {path[-2]} kind{' ' + value if value else ''} "
                       f"(allowed: {', '.join(map(str, allowed))})")
        return [ctx.problem(path, message, fix)]

    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return [ctx.problem(path, f"{_show(instance, path).strip() or 'the value'} is out of range",
                            fix)]

    if kind == "pattern" and name == "env":
        # Not shown: a value that is no variable name may be the secret pasted in.
        return [ctx.problem(path, "the value is not a valid environment variable name (the "
                                  "variable's name goes here, never the secret itself)", fix)]

    if kind == "pattern":
        what = {"name": "host name", "address": "address", "host": "address",
                "user": "user name", "env": "environment variable name",
                "lease_db": "lease store URL"}.get(name, "value")
        return [ctx.problem(path, f"{_show(instance, path).strip() or 'the value'} is not a "
                                  f"valid {what}", fix)]

    if kind == "minLength":
        return [ctx.problem(path, "must not be empty", fix)]

    if kind == "minItems":
        return [ctx.problem(path, "the list is empty", fix)]

    if kind == "uniqueItems":
        seen, repeated = set(), []
        for item in instance:
            key = json.dumps(item, sort_keys=True, default=str)
            if key in seen:
                repeated.append(item)
            seen.add(key)
        shown = ", ".join(_show(r, path).strip() or "a value" for r in repeated)
        return [ctx.problem(path, f"repeated item(s): {shown}", "list each item once")]

    if kind in ("minProperties", "maxProperties"):
        if "env" in schema.get("properties", {}):  # a credential reference
            message = ("an empty credential reference" if kind == "minProperties"
                       else "give only one of env and file")
            return [ctx.problem(path, message, fix)]
        return [ctx.problem(path, "must not be empty" if kind == "minProperties"
                            else "too many entries", fix)]

    if kind == "not" and len(path) >= 2:
        parent = _get(ctx.data, path[:-1])
        section = path[-2]
        owner = parent.get("kind") if isinstance(parent, dict) else None
        driver = (_power_driver_of(parent) if section == "power"
                  else _serial_driver_of(parent) if section == "serial" else None)
        how = driver.unused_field_hint if driver is not None else ""
        return [ctx.problem(path, f"field {name!r} is not used by {section} kind {owner!r}",
                            f"{how}remove it (or change kind)")]

    # Anything else: jsonschema's words, unless the value may be a secret.
    message = (error.message if not _is_secret_path(path) and _show(instance, path)
               and len(error.message) <= 200 else f"invalid value ({kind})")
    return [ctx.problem(path, message, fix)]


def _serial_driver_of(section: Any):
    """The registered driver class of a serial section's kind, or None."""
    from xenhil.harness.access.serial import SERIAL_KINDS
    return SERIAL_KINDS.of(section)


def _power_driver_of(section: Any):
    """The registered driver class of a power section's kind, or None."""
    from xenhil.harness.access.power import POWER_KINDS
    return POWER_KINDS.of(section)


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


# --- pass 3: semantic checks ---------------------------------------------

def _hosts(ctx: _Context) -> list[tuple[int, dict]]:
    hosts = ctx.data.get("hosts")
    if not isinstance(hosts, list):
        return []
    return [(i, h) for i, h in enumerate(hosts) if isinstance(h, dict)]


def _ssh_endpoint(host: dict) -> tuple[str, int] | None:
    ssh = host.get("ssh")
    if not isinstance(ssh, dict):
        return None
    address = ssh.get("address", host.get("address"))
    port = section_port(ssh.get("port"), DEFAULT_SSH_PORT)
    if not isinstance(address, str) or port is None:
        return None
    return address.lower(), port


# Where an inline secret hides in a command line, and how to pass it instead
# (commands run without a shell: $VAR is not expanded; arguments show in ps).
_COMMAND_SECRET_FIX = {
    "power": ("pass it through the environment or a file, never the command line: ipmitool -E "
              "(reads IPMI_PASSWORD) or -f FILE, or use power kind ipmi with password: "
              "{env: NAME}"),
    "serial": ("pass it through the environment or a file, never the command line: ipmitool -E "
               "(reads IPMI_PASSWORD) or -f FILE, or use serial kind ipmi-sol with password: "
               "{env: NAME}"),
}


def _inline_secret_problems(ctx: _Context) -> list[Problem]:
    """Passwords written where the schema takes a plain string: a store URL
    with a password part or a keyword DSN, a command line with a password
    option, a password= keyword or a URL with a password."""
    problems: list[Problem] = []
    lease_db = ctx.data.get("lease_db")
    if isinstance(lease_db, str) and re.match(r"(postgresql|postgres|sqlite)://", lease_db) \
            and inline_secret_kind(lease_db):   # a value of another form fails the schema
        problems.append(ctx.problem(
            ("lease_db",), f"the lease store URL holds a password ({inline_secret_kind(lease_db)})",
            "leave the password out of the URL (postgresql://USER@HOST/DATABASE): libpq reads it "
            "from ~/.pgpass or PGPASSWORD"))
    for index, host in _hosts(ctx):
        power, serial = host.get("power"), host.get("serial")
        lines: list[tuple[tuple, str, str]] = []
        driver = _power_driver_of(power)
        if driver is not None:
            lines += [(("hosts", index, "power", *where), line, "power")
                      for where, line in driver.command_lines(power)]
        serial_driver = _serial_driver_of(serial)
        if serial_driver is not None:
            lines += [(("hosts", index, "serial", *where), line, "serial")
                      for where, line in serial_driver.command_lines(serial)]
        for path, line, section in lines:
            kind = inline_secret_kind(line)
            if kind:
                problems.append(ctx.problem(path, f"inline secret in a command line ({kind})",
                                            _COMMAND_SECRET_FIX[section]))
    return problems


def _semantic_problems(ctx: _Context, unpinned: list) -> list[Problem]:
    problems: list[Problem] = _inline_secret_problems(ctx)
    hosts = _hosts(ctx)
    for index, host in hosts:
        problems += _check_host(ctx, index, host, unpinned)
    problems += _check_duplicates(ctx, hosts)
    return problems


def _check_host(ctx: _Context, index: int, host: dict, unpinned: list) -> list[Problem]:
    problems: list[Problem] = []
    here = ("hosts", index)
    ssh, power, serial = host.get("ssh"), host.get("power"), host.get("serial")
    power_kind = power.get("kind") if isinstance(power, dict) else None

    if isinstance(ssh, dict):
        for field in ("key_file", "known_hosts"):
            if isinstance(ssh.get(field), str) and ssh[field]:
                problems += _check_file(ctx, here + ("ssh", field), ssh[field], field)
        host_key, known_hosts = ssh.get("host_key"), ssh.get("known_hosts")
        if isinstance(host_key, str):
            try:
                parse_host_key(host_key)
            except ValueError as exc:
                problems.append(ctx.problem(
                    here + ("ssh", "host_key"), f"the host key cannot be parsed: {exc}",
                    "paste the whole public key as one line, e.g. host_key: \"ssh-ed25519 "
                    "AAAA...\" (ssh-keyscan -t ed25519 ADDRESS prints it)"))
        endpoint = _ssh_endpoint(host)
        if isinstance(known_hosts, str) and endpoint and not _has_problem(problems, "known_hosts"):
            problems += _check_known_hosts_entry(ctx, here + ("ssh", "known_hosts"),
                                                 ctx.resolve(known_hosts), *endpoint)
        if host_key is None and known_hosts is None:
            address, port = endpoint or ("ADDRESS", DEFAULT_SSH_PORT)
            problems.append(ctx.problem(
                here + ("ssh", "host_key"), "no pinned host key: the harness will not connect "
                "to a host it cannot authenticate",
                f"add host_key: \"ssh-ed25519 AAAA...\" (ssh-keyscan -t ed25519 -p {port} "
                f"{address}, run on a trusted network) or known_hosts: FILE, or run "
                f"`xenhil lab check --learn {ctx.shown}`"))
            if endpoint and 1 <= endpoint[1] <= 65535:  # else the port problem comes first
                unpinned.append((index, ctx.host_label(index), ssh.get("address",
                                 host.get("address")), endpoint[1]))
        if isinstance(ssh.get("passphrase"), dict):
            problems += _check_credential(ctx, here + ("ssh", "passphrase"), ssh["passphrase"])
    elif ssh == "none" and getattr(_power_driver_of(power), "needs_ssh", False):
        problems.append(ctx.problem(here + ("power", "kind"),
                                    f"power kind {power_kind!r} needs SSH, but this host has "
                                    "ssh: none",
                                    "give the host an ssh: section, or use another power kind"))

    if isinstance(power, dict) and isinstance(power.get("password"), dict):
        problems += _check_credential(ctx, here + ("power", "password"), power["password"])

    if isinstance(serial, dict) and isinstance(serial.get("password"), dict):
        problems += _check_credential(ctx, here + ("serial", "password"), serial["password"])
    serial_driver = _serial_driver_of(serial)
    if serial_driver is not None:
        for where, message, fix in serial_driver.host_problems(serial, power):
            # Shown at the serial section: the field is missing there.
            problem = ctx.problem(here + where, message, fix)
            problems.append(replace(problem, line=ctx.line(here + where[:1])))

    caps = host.get("capabilities")
    if isinstance(caps, dict):
        vendor, virt = caps.get("cpu_vendor"), caps.get("virt")
        if vendor in _VIRT_OF_VENDOR and virt in _VIRT_OF_VENDOR.values() \
                and _VIRT_OF_VENDOR[vendor] != virt:
            problems.append(ctx.problem(
                here + ("capabilities", "virt"),
                f"virt {virt!r} does not go with cpu_vendor {vendor!r}",
                f"{vendor} CPUs have virt: {_VIRT_OF_VENDOR[vendor]}; fix one of the two"))
    return problems


def _has_problem(problems: list[Problem], field_suffix: str) -> bool:
    return any(p.field.endswith(field_suffix) for p in problems)


def _check_file(ctx: _Context, path: tuple, value: str, what: str) -> list[Problem]:
    """A file the harness will read later must exist and be readable now."""
    resolved = ctx.resolve(value)
    relative = "" if Path(value).expanduser().is_absolute() else f" (relative to {ctx.base_dir})"
    how = {"key_file": f"create the key (ssh-keygen -t ed25519 -f {resolved}) or fix the path",
           "known_hosts": "create it (ssh-keyscan -p PORT ADDRESS >> FILE, on a trusted network) "
                          "or fix the path",
           "credential": "create the file with the secret (mode 0600) or fix the path"}[what]
    label = {"key_file": "key file", "known_hosts": "known_hosts file",
             "credential": "credential file"}[what]
    if not resolved.exists():
        return [ctx.problem(path, f"{label} {resolved} does not exist{relative}", how)]
    if not resolved.is_file():
        return [ctx.problem(path, f"{label} {resolved} is not a regular file",
                            f"give the path of the {label} itself, not of a directory")]
    try:
        with resolved.open("rb"):
            pass
    except OSError as exc:
        return [ctx.problem(path, f"{label} {resolved} cannot be read: {exc.strerror}",
                            "make it readable by the user running xenhil")]
    return []


def _check_known_hosts_entry(ctx: _Context, path: tuple, file: Path,
                             address: str, port: int) -> list[Problem]:
    import paramiko  # only needed for this check; hashed entries need its matcher

    name = address if port == DEFAULT_SSH_PORT else f"[{address}]:{port}"
    try:
        keys = paramiko.HostKeys(str(file))
    except Exception as exc:  # paramiko raises several types for malformed lines
        return [ctx.problem(path, f"known_hosts file {file} cannot be parsed: {exc}",
                            "fix or regenerate the file with ssh-keyscan")]
    if not keys.lookup(name):
        return [ctx.problem(path, f"known_hosts file {file} has no key for {name}",
                            f"add one (ssh-keyscan -p {port} {address} >> {file}, on a trusted "
                            "network) or pin host_key: instead")]
    return []


def _check_credential(ctx: _Context, path: tuple, ref: dict) -> list[Problem]:
    if isinstance(ref.get("file"), str) and ref["file"] and len(ref) == 1:
        return _check_file(ctx, path + ("file",), ref["file"], "credential")
    return []


def _check_duplicates(ctx: _Context, hosts: list[tuple[int, dict]]) -> list[Problem]:
    problems: list[Problem] = []

    def once(key: Any, index: int, field: tuple, message: str, fix: str, seen: dict) -> None:
        """Report ``key`` when an earlier host already had it."""
        if key is None:
            return
        if key in seen:
            first = seen[key]
            other = ctx.host_label(first)
            # Two hosts with one name: only the index tells them apart.
            other = (f"host {other!r}" if isinstance(other, str) and field != ("name",)
                     else f"hosts[{first}]")
            problems.append(ctx.problem(("hosts", index) + field,
                                        f"{message} by {other} (line {ctx.line(('hosts', first))})",
                                        fix))
        else:
            seen[key] = index

    names: dict = {}
    ssh_endpoints: dict = {}
    consoles: dict = {}
    bmcs: dict = {}
    for index, host in hosts:
        name = host.get("name")
        once(name if isinstance(name, str) else None, index, ("name",),
             f"host name {name!r} is already used", "give each host a unique name", names)

        endpoint = _ssh_endpoint(host)
        ssh = host.get("ssh")
        once(endpoint, index, ("ssh", "port") if isinstance(ssh, dict) and "port" in ssh
             else ("address",),
             f"SSH endpoint {endpoint[0]}:{endpoint[1]} is already used" if endpoint else "",
             "each host needs its own address (or ssh port); remove the copied entry or fix "
             "the address", ssh_endpoints)

        power = host.get("power")
        power_driver = _power_driver_of(power)
        bmc = power_driver.endpoint(power) if power_driver is not None else None
        once(bmc, index, ("power", "address"),
             f"BMC {bmc[0]}:{bmc[1]} is already used" if bmc else "",
             "each host has its own BMC: fix the power address (or port)", bmcs)

        serial = host.get("serial")
        serial_driver = _serial_driver_of(serial)
        reached = serial_driver.endpoint(serial, power) if serial_driver is not None else None
        console, shown, field = reached if reached else (None, "", ("serial",))
        once(console, index, field, f"{shown} is already used" if console else "",
             "each host has its own console: fix the serial host/port or command", consoles)
    return problems


# --- --learn -------------------------------------------------------------

def _learn_host_keys(problems: list[Problem], unpinned: list, ctx: _Context) -> list[Problem]:
    from xenhil.harness.lab.inventory_learn import fetch_host_key
    from xenhil.harness.errors import XenhilError

    result = list(problems)
    for index, label, address, port in unpinned:
        field = _dotted(("hosts", index, "ssh", "host_key"))
        position = next(i for i, p in enumerate(result) if p.field == field
                        and p.message.startswith("no pinned host key"))
        old = result[position]
        try:
            learned = fetch_host_key(label if isinstance(label, str) else f"hosts[{label}]",
                                     address, port)
        except XenhilError as exc:
            result[position] = replace(old, fix=f"could not learn the key from {address}:{port} "
                                       f"({str(exc).splitlines()[0]}); " + old.fix)
            continue
        result[position] = replace(
            old, learned_host_key=learned.host_key,
            fix=f"add under ssh: host_key: \"{learned.host_key}\" (learned on first use from "
                f"{address}:{port}, fingerprint {learned.fingerprint}: NOT verified, compare it "
                "with the host's own key before pinning it)")
    return result


# --- building the model --------------------------------------------------

def _credential(ctx: _Context, ref: dict | None) -> CredentialRef | None:
    if not ref:
        return None
    if "env" in ref:
        return CredentialRef(env=ref["env"])
    return CredentialRef(file=ctx.resolve(ref["file"]))


def _serial_config(ctx: _Context, serial: dict | None, power: dict) -> SerialConfig | None:
    if not serial:
        return None
    return _serial_driver_of(serial).config(serial, power, lambda ref: _credential(ctx, ref))


def _build(ctx: _Context) -> Inventory:
    hosts: dict[str, HostSpec] = {}
    for _, raw in _hosts(ctx):
        ssh = raw["ssh"]
        ssh_config = None
        if isinstance(ssh, dict):
            host_key = None
            if "host_key" in ssh:  # normalised: "type base64", without a comment
                host_key = " ".join(ssh["host_key"].split()[:2])
            ssh_config = SSHConfig(
                address=ssh.get("address", raw["address"]),
                port=ssh.get("port", DEFAULT_SSH_PORT),
                user=ssh.get("user", "root"),
                key_file=ctx.resolve(ssh["key_file"]) if "key_file" in ssh else None,
                host_key=host_key,
                known_hosts=ctx.resolve(ssh["known_hosts"]) if "known_hosts" in ssh else None,
                passphrase=_credential(ctx, ssh.get("passphrase")))
        power = raw["power"]
        serial = _serial_config(ctx, raw.get("serial"), power)
        hosts[raw["name"]] = HostSpec(
            name=raw["name"],
            address=raw["address"],
            ssh=ssh_config,
            serial=serial,
            power=PowerConfig(kind=power["kind"], address=power.get("address"),
                              port=power.get("port", DEFAULT_IPMI_PORT), user=power.get("user"),
                              password=_credential(ctx, power.get("password")),
                              commands=dict(power.get("commands", {})),
                              options={k: v for k, v in power.items() if k not in _POWER_MODEL_FIELDS}),
            tags=frozenset(raw.get("tags", ())),
            capabilities=dict(raw.get("capabilities", {})),
            health_steps=(tuple(raw["health"]["steps"]) if "health" in raw else None),
        )
    return Inventory(path=Path(os.path.abspath(ctx.path)), hosts=hosts,
                     lease_db=ctx.data.get("lease_db"))


__all__ = ["InventoryError", "Problem", "load_inventory", "check_inventory", "parse_host_key",
           "inventory_schema", "HOST_KEY_TYPES"]
