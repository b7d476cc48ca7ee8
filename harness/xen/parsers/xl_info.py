"""``xl info`` -> ``XlInfo``.

tools/xl/xl_info.c prints each field as ``printf("%-23s: %s\\n")`` style,
e.g. ``"virt_caps              : pv hvm hap shadow"`` (an empty list prints
``"virt_caps              :"``).  Every key is shorter than the padding, so a
key line has at least one space before its colon; ``xl info -n`` adds tables
(``cpu_topology``, ``numa_info``, ``device topology``) whose rows
(``"cpu:    core    socket     node"``, ``"  0:       0 ..."``) do not, and
are kept as raw rows under the key that opened them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from xenhil.harness.xen.parsers.errors import UnexpectedOutput

# Keys are words, one has a space ("device topology"); padding before ':' is required.
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?: [A-Za-z0-9_]+)*)( +):(?: (.*))?$")


@dataclass
class XlInfo:
    fields: dict[str, str]
    tables: dict[str, list[str]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.fields.get(key, default)

    @property
    def xen_version(self) -> str:
        """``"4.17.3"`` (xen_major.xen_minor + xen_extra)."""
        if "xen_version" in self.fields:
            return self.fields["xen_version"]
        return f"{self.fields['xen_major']}.{self.fields['xen_minor']}{self.fields.get('xen_extra', '')}"

    @property
    def xen_major_minor(self) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", self.xen_version)
        if not m:
            raise UnexpectedOutput("xl info", f"xen_version {self.xen_version!r} is not MAJOR.MINOR...")
        return int(m.group(1)), int(m.group(2))

    @property
    def xen_changeset(self) -> str | None:
        return self.fields.get("xen_changeset")

    @property
    def xen_commandline(self) -> str | None:
        return self.fields.get("xen_commandline")

    @property
    def virt_caps(self) -> frozenset[str]:
        return frozenset(self.fields.get("virt_caps", "").split())

    @property
    def hvm_capable(self) -> bool:
        return "hvm" in self.virt_caps


def parse_xl_info(text: str, source: str = "xl info") -> XlInfo:
    fields: dict[str, str] = {}
    tables: dict[str, list[str]] = {}
    table_key: str | None = None
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line.strip():
            continue
        m = _KEY.match(line)
        if m:
            key, value = m.group(1), (m.group(3) or "").strip()
            fields[key] = value
            table_key = key if not value else None
            continue
        if table_key is not None:
            tables.setdefault(table_key, []).append(line)
            continue
        raise UnexpectedOutput(source, "expected 'key<spaces>: value'", line_no=no, line=raw)
    if not fields:
        raise UnexpectedOutput(source, "no 'key : value' lines at all (empty output?)")
    return XlInfo(fields, tables)
