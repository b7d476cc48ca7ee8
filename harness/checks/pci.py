"""PCI checks: what the guest sees against the expected topology, which
ioreq server owns each BDF, and which model answers as the Xen platform
device.

Inputs are parsed data (harness.xen.parsers); evidence names where the raw
text was saved.  Every failure is a CheckFailed listing each mismatch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from xenhil.harness.checks.failure import CheckFailed, Evidence, Mismatch, fail, fail_if
from xenhil.harness.checks.topology import ExpectedTopology
from xenhil.harness.xen.parsers.lspci import PciDevice
from xenhil.harness.xen.parsers.probe_output import PciConfigAccess, PciFunction, PortRead
from xenhil.harness.xen.parsers.qemu_trace import TraceEvent
from xenhil.harness.xen.parsers.rangesets import (DomainServers, expand_pci, owners, sbdf_to_str,
                                                  str_to_sbdf)

#: What a config read of a BDF nobody owns returns (docs/xen-ioreq-facts.md section 2).
ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}

#: Xen platform device (QEMU hw/i386/xen/xen_platform.c): the fixed I/O port
#: 0x10 reads the magic 0x49d2; a byte written to 0x12 is logged as
#: xen_platform_log by the model emulating it.
PLATFORM_MAGIC_PORT = 0x10
PLATFORM_MAGIC = 0x49D2
PLATFORM_LOG_PORT = 0x12


def _norm(bdf: str) -> str:
    return sbdf_to_str(str_to_sbdf(bdf))


def _seen_desc(d: PciDevice | PciFunction) -> str:
    return f"{d.vendor:04x}:{d.device:04x} class {d.class_code:04x}"


# --------------------------------------------------------------------------
# The guest's view
# --------------------------------------------------------------------------

def pci_view_mismatches(expected: ExpectedTopology, seen: Sequence[PciDevice | PciFunction],
                        view: str) -> list[Mismatch]:
    """Differences between the expected devices and one view of the guest
    (lspci -n, the sysfs listing, xhprobe pci-scan): missing, phantom,
    duplicate BDFs, wrong vendor:device or class."""
    out: list[Mismatch] = []
    want = expected.by_bdf()
    got: dict[str, PciDevice | PciFunction] = {}
    for d in seen:
        bdf = _norm(d.bdf)
        if bdf in got:
            out.append(Mismatch(f"{view} {bdf}", "listed once",
                                f"listed twice: {_seen_desc(got[bdf])} and {_seen_desc(d)}"))
            continue
        got[bdf] = d
    for bdf in sorted(set(want) | set(got)):
        e, s = want.get(bdf), got.get(bdf)
        if e is None:
            out.append(Mismatch(f"{view} {bdf}", "no device (no model emulates this BDF)",
                                f"phantom {_seen_desc(s)}"))
        elif s is None:
            out.append(Mismatch(f"{view} {bdf}", e.describe(), "no device"))
        elif (s.vendor, s.device, s.class_code) != (e.vendor, e.device, e.class_code):
            out.append(Mismatch(f"{view} {bdf}", e.describe(), _seen_desc(s)))
    return out


def check_pci_views(expected: ExpectedTopology,
                    views: Mapping[str, Sequence[PciDevice | PciFunction]],
                    evidence: Evidence) -> None:
    """Every view (e.g. ``{"lspci -n": [...], "sysfs": [...], "xhprobe pci-scan":
    scan.devices}``) holds exactly the expected devices."""
    problems = [m for view, seen in views.items() for m in pci_view_mismatches(expected, seen, view)]
    fail_if(problems, "guest PCI topology",
            expected=f"exactly {expected.describe()} in {', '.join(views)}", evidence=evidence)


def unowned_bdfs_to_probe(expected: ExpectedTopology, count: int = 3) -> list[str]:
    """BDFs no model owns, to read with ``xhprobe pci-read BDF 0 2``: the
    first free slots, function 7 of the host bridge's slot (a single-function
    device) and the last slot."""
    taken = {str_to_sbdf(d.bdf) for d in expected.devices}
    picks: list[int] = []
    for devfn in range(0, 256, 8):
        if devfn not in taken and len(picks) < max(count - 2, 1):
            picks.append(devfn)
    for extra in (0x07, 0xF8):
        if extra not in taken and extra not in picks:
            picks.append(extra)
    return [sbdf_to_str(p) for p in picks[:count]]


def check_unowned_bdfs_read_ones(expected: ExpectedTopology, reads: Sequence[PciConfigAccess],
                                 evidence: Evidence) -> None:
    """Config reads of BDFs no model owns return all ones (vendor 0xffff)."""
    want = expected.by_bdf()
    problems: list[Mismatch] = []
    checked = 0
    for r in reads:
        if r.op != "pci-read":
            continue
        bdf = _norm(r.bdf)
        if bdf in want:
            continue  # an owned BDF: its value is checked by the topology views
        checked += 1
        ones = ALL_ONES.get(r.width, (1 << (8 * r.width)) - 1)
        if r.value != ones:
            problems.append(Mismatch(f"config read {bdf} reg {r.reg:#x} width {r.width}",
                                     f"{ones:#x} (no server claims it, Xen returns all ones)",
                                     f"{r.value:#x}"))
    if checked == 0:
        fail("unowned BDFs read all ones", expected="at least one config read of an unowned BDF",
             seen=f"{len(reads)} reads, all of owned BDFs or writes", evidence=evidence,
             help="probe BDFs from unowned_bdfs_to_probe(): this is a bug of the suite")
    fail_if(problems, "unowned BDFs read all ones", expected="all ones from every unowned BDF",
            evidence=evidence)


# --------------------------------------------------------------------------
# Ownership: ioreq server ids -> models, BDFs in pci rangesets
# --------------------------------------------------------------------------

def companion_servers(guest) -> dict[int, str]:
    """Server id -> name of the guest's companion ioreq servers (the probe),
    as each reports it.  A companion that stopped serving raises (ProbeStale,
    with its evidence) instead of silently dropping out of the checks."""
    found: dict[int, str] = {}
    for companion in getattr(guest, "companions", ()):
        sid = companion.counters().server_id
        if sid is not None:
            found[int(sid)] = companion.name
    return found


def server_ids_by_model(traces: Mapping[str, Sequence[TraceEvent]],
                        evidence: Evidence, companions: Mapping[int, str] | None = None) -> dict[int, str]:
    """Server id -> model, from each model's ``xen_ioreq_server_create`` trace
    line (the last create not followed by a destroy of that id), plus the
    ``companions`` (server id -> name, see :func:`companion_servers`)."""
    result: dict[int, str] = {}
    problems: list[Mismatch] = []
    for sid, name in (companions or {}).items():
        result[sid] = name
    for model, events in traces.items():
        live: list[int] = []
        for e in events:
            if e.name == "xen_ioreq_server_create":
                live.append(e["id"])
            elif e.name == "xen_ioreq_server_destroy" and e["id"] in live:
                live.remove(e["id"])
        if len(live) != 1:
            problems.append(Mismatch(f"model {model}", "exactly one live xen_ioreq_server_create in its log",
                                     f"live server ids {live}"))
            continue
        sid = live[0]
        if sid in result:
            problems.append(Mismatch(f"server id {sid}", "created by one model",
                                     f"created by {result[sid]} and {model}"))
            continue
        result[sid] = model
    fail_if(problems, "ioreq server of each device model",
            expected="one ioreq server per model, distinct ids", evidence=evidence,
            help="enable the trace events xen_ioreq_server* in every model "
                 "(docs/xen-ioreq-facts.md section 7)")
    return result


def check_pci_ownership(expected: ExpectedTopology, servers: DomainServers,
                        server_models: Mapping[int, str], evidence: Evidence) -> None:
    """Every expected BDF is in exactly the pci rangeset of its model's
    server; no server claims a BDF that is not its model's device; every
    server belongs to a model."""
    problems: list[Mismatch] = []
    sid_of = {m: s for s, m in server_models.items()}
    for sid in sorted(set(servers) - set(server_models)):
        problems.append(Mismatch(f"ioreq server {sid}", "a server created by one of the models "
                                 f"{', '.join(expected.models)}", "no model's log created it"))
    for d in expected.devices:
        found = owners(servers, "pci", str_to_sbdf(d.bdf))
        want = sid_of.get(d.model)
        shown = [f"{s} ({server_models.get(s, '?')})" for s in found]
        if found != ([want] if want is not None else []) or want is None:
            problems.append(Mismatch(
                f"{d.bdf} ({d.qemu_type})",
                f"in the pci rangeset of server {want} (model {d.model}) only"
                if want is not None else f"owned by model {d.model}, which has no server",
                f"in the pci rangesets of {shown or 'no server'}"))
    want = expected.by_bdf()
    for sid, kinds in sorted(servers.items()):
        model = server_models.get(sid)
        for bdf in expand_pci(kinds.get("pci", [])):
            if bdf not in want:  # an expected BDF in the wrong set is reported above
                problems.append(Mismatch(f"{bdf}", "claimed by no server (no model emulates it)",
                                         f"claimed by server {sid} ({model or 'no model'})"))
    fail_if(problems, "PCI ownership (xl debug-keys q rangesets)",
            expected="each BDF in the pci rangeset of exactly its owning model's server",
            evidence=evidence)


# --------------------------------------------------------------------------
# The Xen platform device
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class PlatformRecord:
    """Which model answers as the Xen platform device."""

    magic: int                    # inw(0x10)
    answered: bool                # magic == 0x49d2
    model: str | None             # None: nobody, or could not be told
    by_rangesets: str | None      # model whose server owns port 0x10
    by_log: str | None            # model whose log shows the marker written to 0x12

    def to_dict(self) -> dict:
        return {"magic": f"{self.magic:#06x}", "answered": self.answered, "model": self.model,
                "by_rangesets": self.by_rangesets, "by_log": self.by_log}


def identify_platform_model(magic_read: PortRead, servers: DomainServers | None,
                            server_models: Mapping[int, str] | None,
                            platform_logs: Mapping[str, Sequence[str]] | None,
                            marker: str | None, evidence: Evidence) -> PlatformRecord:
    """Who answers inw(0x10).  ``platform_logs``: model -> xen_platform_log
    messages (qemu_trace.platform_log_messages) after the guest wrote
    ``marker`` byte by byte to port 0x12.  Raises CheckFailed when the two
    sources of the answer disagree or two models logged the marker."""
    if magic_read.port != PLATFORM_MAGIC_PORT or magic_read.width != 2:
        fail("Xen platform device probe", expected="an inw(0x10) result",
             seen=f"a {magic_read.width}-byte read of port {magic_read.port:#x}", evidence=evidence,
             help="pass the result of `xhprobe inw 0x10`: this is a bug of the suite")
    by_rs = None
    if servers is not None and server_models is not None:
        found = owners(servers, "port", PLATFORM_MAGIC_PORT, 2)
        if len(found) > 1:
            fail("Xen platform device owner", expected="port 0x10 in one server's port rangeset",
                 seen=f"in servers {found}", evidence=evidence)
        by_rs = server_models.get(found[0], f"server {found[0]}") if found else None
    by_log = None
    if platform_logs is not None and marker:
        logged = sorted(m for m, msgs in platform_logs.items() if any(marker in s for s in msgs))
        if len(logged) > 1:
            fail("Xen platform device owner", expected="the marker written to port 0x12 in one model's log",
                 seen=f"in the logs of {logged}", evidence=evidence)
        by_log = logged[0] if logged else None
    if by_rs and by_log and by_rs != by_log:
        fail("Xen platform device owner",
             expected="the model owning port 0x10 also logs the bytes written to port 0x12",
             seen=f"port 0x10 owned by {by_rs}, marker logged by {by_log}", evidence=evidence)
    answered = magic_read.value == PLATFORM_MAGIC
    return PlatformRecord(magic_read.value, answered, (by_rs or by_log) if answered else None, by_rs, by_log)


def check_platform_device(record: PlatformRecord, expected_model: str | None, evidence: Evidence,
                          *, present: bool = True) -> None:
    """With ``present`` (xen_platform_pci on), a model answers 0x49d2, and it is
    ``expected_model`` when that is known (the single split: its one model;
    a split: the catalog's answer, None to only record).  Without it nobody
    answers (0xffff)."""
    if not present:
        if record.magic != ALL_ONES[2]:
            fail("no Xen platform device", expected="inw(0x10) == 0xffff (xen_platform_pci=0)",
                 seen=f"{record.magic:#06x} (model {record.model})", evidence=evidence)
        return
    if not record.answered:
        fail("Xen platform device answers", expected=f"inw(0x10) == {PLATFORM_MAGIC:#06x}",
             seen=f"{record.magic:#06x}" + (" (no server owns port 0x10)" if record.magic == 0xFFFF else ""),
             evidence=evidence)
    if expected_model is not None and record.model != expected_model:
        raise CheckFailed("Xen platform device owner",
                          expected=f"model {expected_model} emulates the platform device",
                          seen=f"model {record.model or 'unknown'} answers "
                               f"(rangesets: {record.by_rangesets}, log: {record.by_log})",
                          evidence=evidence)


# --------------------------------------------------------------------------
# Orchestration: gather the guest's views and the host's oracles
# --------------------------------------------------------------------------

SYSFS_LISTING = ("for d in /sys/bus/pci/devices/*; do "
                 "echo $d $(cat $d/vendor $d/device $d/class); done")


def gather_pci_views(guest, *, probe: str = "xhprobe") -> tuple[dict[str, list], dict[str, str]]:
    """The guest's three views of its PCI bus (lspci -n, sysfs, xhprobe
    pci-scan), parsed, and the evidence files they were saved to."""
    from xenhil.harness.checks.failure import save_evidence
    from xenhil.harness.xen.parsers.lspci import parse_pci_listing
    from xenhil.harness.xen.parsers.probe_output import PciScan, parse_single

    out_dir = guest.artifacts_dir / "pci"
    evidence: dict[str, str] = {}
    views: dict[str, list] = {}
    for view, cmd, parse in (
            ("lspci -n", "lspci -n", lambda t: parse_pci_listing(t, "lspci -n")),
            ("sysfs", SYSFS_LISTING, lambda t: parse_pci_listing(t, "sysfs listing")),
            ("xhprobe pci-scan", f"{probe} pci-scan", lambda t: list(parse_single(t, PciScan).devices))):
        text = guest.run(cmd, timeout=120)
        evidence[view] = save_evidence(out_dir, view.replace(" ", "_") + ".txt", text)
        views[view] = parse(text)
    return views, evidence


def read_model_traces(host, model_logs: Mapping[str, str]) -> tuple[dict[str, list[TraceEvent]], dict[str, str]]:
    """Parse each model's trace log on the host (model -> path)."""
    from xenhil.harness.xen.parsers.qemu_trace import parse_trace_log

    traces: dict[str, list[TraceEvent]] = {}
    evidence: dict[str, str] = {}
    for model, path in model_logs.items():
        traces[model] = parse_trace_log(host.ssh.read_text(path), source=path)
        evidence[f"trace log of model {model}"] = f"{host.name}:{path}"
    return traces, evidence


def probe_unowned_bdfs(guest, expected: ExpectedTopology, *, probe: str = "xhprobe",
                       count: int = 3) -> tuple[list[PciConfigAccess], str]:
    """``xhprobe pci-read BDF 0 2`` on BDFs nobody owns; (results, output)."""
    import shlex

    from xenhil.harness.xen.parsers.probe_output import parse_probe_output

    cmds = [shlex.join([probe, "pci-read", bdf, "0", "2"]) for bdf in unowned_bdfs_to_probe(expected, count)]
    text = guest.run(" && ".join(cmds), timeout=120)
    return [r for r in parse_probe_output(text) if isinstance(r, PciConfigAccess)], text
