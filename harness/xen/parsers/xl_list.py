"""``xl list`` (table) and ``xl list -l`` (JSON) -> domain records.

tools/xl/xl_list.c prints the header
``"Name                                        ID   Mem VCPUs\\tState\\tTime(s)"``
and per domain ``"%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f"``; ``-v`` adds
UUID, reason and security label columns, ``-Z`` a label.  The name is
padded, not quoted, so the fixed columns are read from the left after it:
ID, Mem, VCPUs, State, Time.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from xenhil.harness.xen.parsers.errors import UnexpectedOutput

# State: running, blocked, paused, shutdown, then the *shutdown reason* as one
# of "-rscwS" (poweroff, reboot, suspend, crash, watchdog, soft_reset; '?'
# beyond them), then dying.  A domain being saved shows "--pssd", one being
# torn down after a reboot "--psrd", both named "(null)" once libxl has
# removed their xenstore name (seen on the virtual lab during `xl save`).
_ROW = re.compile(r"^(?P<name>.+?)\s+(?P<id>\d+)\s+(?P<mem>\d+)\s+(?P<vcpus>\d+)\s+"
                  r"(?P<state>[r-][b-][p-][s-][-rscwS?][d-])\s+(?P<time>\d+(?:\.\d+)?)"
                  r"(?:\s+(?P<extra>.*))?$")
SHUTDOWN_REASONS = {"-": "poweroff", "r": "reboot", "s": "suspend", "c": "crash",
                    "w": "watchdog", "S": "soft_reset", "?": "unknown"}


@dataclass(frozen=True)
class DomainEntry:
    name: str
    domid: int
    mem_mib: int
    vcpus: int
    state: str          # six flag characters, e.g. "-b----"
    time_s: float
    extra: str = ""     # -v / -Z columns, unparsed

    @property
    def shutdown_reason(self) -> str | None:
        """Why the domain shut down ("suspend", "crash", ...); None while it has not."""
        return SHUTDOWN_REASONS[self.state[4]] if self.state[3] == "s" else None

    @property
    def flags(self) -> frozenset[str]:
        """running, blocked, paused, shutdown, dying; "crashed" for a crash shutdown."""
        flags = {f for f, c in zip(("running", "blocked", "paused", "shutdown"), self.state) if c != "-"}
        if self.state[5] == "d":
            flags.add("dying")
        if self.shutdown_reason == "crash":
            flags.add("crashed")
        return frozenset(flags)


def parse_xl_list(text: str, source: str = "xl list") -> list[DomainEntry]:
    entries: list[DomainEntry] = []
    saw_header = False
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line.strip():
            continue
        if line.startswith("Name") and "ID" in line and "State" in line:
            saw_header = True
            continue
        m = _ROW.match(line)
        if not m:
            raise UnexpectedOutput(source, "expected 'NAME ID MEM VCPUS STATE TIME'", line_no=no, line=raw)
        entries.append(DomainEntry(m.group("name").strip(), int(m.group("id")), int(m.group("mem")),
                                   int(m.group("vcpus")), m.group("state"), float(m.group("time")),
                                   (m.group("extra") or "").strip()))
    if not saw_header:
        raise UnexpectedOutput(source, "no 'Name ID Mem VCPUs State Time(s)' header: not xl list output")
    return entries


def parse_xl_list_long(text: str, source: str = "xl list -l") -> list[dict]:
    """The JSON array ``xl list -l`` prints (one object per domain: domid, config)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnexpectedOutput(source, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                                       "xl prints SXP only with output_format=sxp in xl.conf",
                               line_no=exc.lineno) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(d, dict) and "domid" in d for d in data):
        raise UnexpectedOutput(source, "expected a JSON array of objects with a 'domid' key")
    return data


def domain_by_name(entries: list[dict], name: str) -> dict | None:
    """The ``xl list -l`` object whose config.c_info.name is *name*."""
    for entry in entries:
        if entry.get("config", {}).get("c_info", {}).get("name") == name:
            return entry
    return None
