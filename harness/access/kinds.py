"""Registries of the inventory's access kinds: a driver class registers
itself for one ``kind`` of an inventory section (``power``, ``serial``) and
owns that kind's fields, and the section's part of the inventory schema is
made from what the registered classes declare.  Nothing else in xenhil
lists the kinds.

A registered class declares (class attributes):

- ``kind``: the section's ``kind`` value it serves;
- ``fields``: the section's fields it takes besides ``kind``, as JSON Schema
  (``$ref`` to the inventory schema's ``$defs`` allowed); a field two kinds
  of one section share must have one schema;
- ``required``: which of them the inventory must give;
- ``summary``: how the kind is named in the fix for a wrong kind, e.g.
  "ipmi (with address, user, password)" (None: another kind's summary
  names it too, as "tcp or telnet (with host and port)" does);
- ``fix``: the fix shown when a required field is missing;
- ``unused_field_hint``: said before "remove it" of a field it does not take.
"""
from __future__ import annotations

from typing import Any, Generic, TypeVar

from xenhil.harness.errors import ConfigError, TestBugError

Driver = TypeVar("Driver", bound=type)


class KindRegistry(Generic[Driver]):
    """The drivers of one inventory section, by kind, in registration order."""

    def __init__(self, section: str):
        self.section = section
        self._classes: dict[str, Driver] = {}

    def register(self, cls: Driver) -> Driver:
        """Class decorator: ``cls`` serves ``<section>.kind`` ``cls.kind``."""
        kind = cls.kind
        known = self._classes.get(kind)
        if known is not None and known is not cls:
            raise TestBugError(f"{self.section} kind {kind!r} is registered twice "
                               f"({known.__name__}, {cls.__name__})",
                               help="give the new driver a kind of its own")
        for name, schema in cls.fields.items():
            for other in self._classes.values():
                if name in other.fields and other.fields[name] != schema:
                    raise TestBugError(f"{self.section} field {name!r} of kind {kind!r} differs "
                                       f"from kind {other.kind!r}'s",
                                       help="give the field the same schema, or another name")
        self._classes[kind] = cls
        return cls

    def kinds(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def get(self, kind: str) -> Driver:
        try:
            return self._classes[kind]
        except KeyError:
            raise ConfigError(f"unknown {self.section}.kind {kind!r}",
                              help=f"use one of: {', '.join(self._classes)}") from None

    def of(self, section: Any) -> Driver | None:
        """The class of an inventory section's kind (a raw mapping), or None
        when it has no known kind (the schema reports that)."""
        kind = section.get("kind") if isinstance(section, dict) else None
        return self._classes.get(kind) if isinstance(kind, str) else None

    def schema(self) -> dict:
        """The section's definition in the inventory schema: ``kind`` is one
        of the registered kinds; each kind takes its own fields, requires its
        required ones and refuses the others'."""
        everything: dict[str, dict] = {}
        for cls in self._classes.values():
            everything.update(cls.fields)
        rules = []
        for kind, cls in self._classes.items():
            then: dict[str, Any] = {"properties": {name: {"not": {}} for name in everything
                                                   if name not in cls.fields}}
            if cls.required:
                then["required"] = list(cls.required)
            if cls.fix:
                then["x-fix"] = cls.fix
            rules.append({"if": {"required": ["kind"], "properties": {"kind": {"const": kind}}},
                          "then": then})
        kinds = list(self._classes)
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["kind"],
            "x-fix": (f"give {self.section} as a mapping with kind: {'|'.join(kinds)} and that "
                      f"kind's fields"),
            "properties": {
                "kind": {"enum": kinds, "x-fix": "use kind " + _one_of(
                    [cls.summary or cls.kind for cls in self._classes.values()
                     if cls.summary is not None])},
                **everything,
            },
            "allOf": rules,
        }


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
