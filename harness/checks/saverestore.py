"""Save/restore (docs/xen-ioreq-facts.md section 6), after OSSTest's recipe: the guest
answers, ``xl save`` (200 s limit), the domain is gone, ``xl restore``, the
guest answers again; then its uptime continued, a file written before is
intact, the PCI topology and the server ownership are the same (by model:
server ids may change), every model runs again, and the save file holds one
emulator record pair per model.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from xenhil.harness.checks.failure import (CheckFailed, Evidence, Mismatch, fail, fail_if, quote,
                                           save_evidence)
from xenhil.harness.checks.mapcache import DataPattern, check_pattern_intact
from xenhil.harness.checks.pci import companion_servers, server_ids_by_model
from xenhil.harness.errors import ProductError, RemoteCommandFailed, TestBugError, XenhilError
from xenhil.harness.step import step
from xenhil.harness.xen.parsers.errors import UnexpectedOutput
from xenhil.harness.xen.parsers.lspci import PciDevice, parse_pci_listing
from xenhil.harness.xen.parsers.qemu_trace import parse_trace_log
from xenhil.harness.xen.parsers.rangesets import (DomainServers, ServerRanges, format_ranges,
                                                  parse_ioreq_rangesets)
from xenhil.harness.xen.savefile import (LIBXL_REC_EMULATOR_CONTEXT, LIBXL_REC_EMULATOR_XENSTORE_DATA,
                                         SaveFile, parse_savefile)
from xenhil.harness.xen.splits import Split


#: libxl's device-model state key (docs/xen-ioreq-facts.md section 4).
DM_STATE_PATH = "/local/domain/0/device-model/{domid}/state"
#: Per-model state keys of our port of the series (lab/series/device-models,
#: QEMU patch 5): model i of ``device_models`` writes its run state under
#: ``dm/<i>``, seen on the virtual lab with the qnet+qall split.  Splits only;
#: pass ``state_paths=`` to save_restore_cycle for another implementation.
SPLIT_DM_STATE_PATH = "/local/domain/0/device-model/{domid}/dm/{index}/state"
DM_RUNNING = "running"
#: /proc/uptime may step back this much across a restore (clock source
#: re-synchronisation) and still count as continued.
UPTIME_TOLERANCE_S = 1.0
SAVE_TIMEOUT_S = 200.0      # OSSTest's limit


# --------------------------------------------------------------------------
# Pure checks
# --------------------------------------------------------------------------

def check_savefile_emulators(sf: SaveFile, models: Sequence[str], evidence: Evidence) -> None:
    """One EMULATOR_CONTEXT record per device model, with distinct indices;
    EMULATOR_XENSTORE_DATA records, when present (upstream 4.17 writes none
    for a model without xenstore data), only with indices of those contexts,
    at most one each."""
    problems: list[Mismatch] = []
    contexts = sf.emulator_pairs(LIBXL_REC_EMULATOR_CONTEXT)
    xs = sf.emulator_pairs(LIBXL_REC_EMULATOR_XENSTORE_DATA)
    if len(contexts) != len(models):
        problems.append(Mismatch("EMULATOR_CONTEXT records", f"{len(models)} (one per model: {', '.join(models)})",
                                 f"{len(contexts)}: {contexts}"))
    indices = [i for _, i in contexts]
    dup = sorted({i for i in indices if indices.count(i) > 1})
    if dup:
        problems.append(Mismatch("EMULATOR_CONTEXT indices", "distinct", f"index {dup} repeated in {contexts}"))
    xs_indices = [i for _, i in xs]
    for eid, idx in xs:
        if (eid, idx) not in contexts:
            problems.append(Mismatch(f"EMULATOR_XENSTORE_DATA (emulator {eid}, index {idx})",
                                     "the (emulator, index) of an EMULATOR_CONTEXT record",
                                     f"no such context among {contexts}"))
    dup_xs = sorted({i for i in xs_indices if xs_indices.count(i) > 1})
    if dup_xs:
        problems.append(Mismatch("EMULATOR_XENSTORE_DATA indices", "at most one record per index",
                                 f"index {dup_xs} repeated"))
    fail_if(problems, "save file emulator records", expected=f"one emulator record set per model "
                                                             f"({len(models)})", evidence=evidence)


def parse_uptime(text: str) -> float:
    """First number of /proc/uptime output (the shell's echo may precede it)."""
    for token in text.split():
        try:
            return float(token)
        except ValueError:
            continue
    raise CheckFailed("guest uptime readable", expected="/proc/uptime's '<seconds> <idle>'",
                      seen=quote(text, 200) or "(empty)", evidence={"output": quote(text, 200)})


def check_uptime_continued(before_s: float, after_s: float, evidence: Evidence,
                           tolerance_s: float = UPTIME_TOLERANCE_S) -> None:
    if after_s < before_s - tolerance_s:
        fail("guest uptime continued across save/restore",
             expected=f"uptime after restore >= {before_s:.2f} s - {tolerance_s} s",
             seen=f"{after_s:.2f} s (the guest rebooted or its clock went back)", evidence=evidence)


def normalise_rangesets(servers: DomainServers, server_models: Mapping[int, str]) -> dict[str, ServerRanges]:
    """Rangesets keyed by model name instead of server id (ids may change
    across a restore); a server of no model is keyed ``server <id>``."""
    return {server_models.get(sid, f"server {sid}"): kinds for sid, kinds in servers.items()}


def check_same_ownership(before: Mapping[str, ServerRanges], after: Mapping[str, ServerRanges],
                         evidence: Evidence) -> None:
    problems: list[Mismatch] = []
    for model in sorted(set(before) | set(after)):
        b, a = before.get(model), after.get(model)
        if b is None or a is None:
            problems.append(Mismatch(f"model {model}", "a server before and after",
                                     f"{'only after' if b is None else 'only before'}"))
            continue
        for kind in sorted(set(b) | set(a)):
            if b.get(kind, []) != a.get(kind, []):
                problems.append(Mismatch(f"model {model} {kind}", f"{{ {format_ranges(b.get(kind, []))} }}",
                                         f"{{ {format_ranges(a.get(kind, []))} }}"))
    fail_if(problems, "ioreq server ownership unchanged by save/restore",
            expected="the same rangesets per model after restore", evidence=evidence)


def check_same_pci(before: Sequence[PciDevice], after: Sequence[PciDevice], evidence: Evidence) -> None:
    b = {d.bdf: d for d in before}
    a = {d.bdf: d for d in after}
    problems = [Mismatch(bdf, str(b[bdf]) if bdf in b else "no device", str(a[bdf]) if bdf in a else "no device")
                for bdf in sorted(set(a) | set(b))
                if (b.get(bdf) and (b[bdf].vendor, b[bdf].device, b[bdf].class_code)) !=
                   (a.get(bdf) and (a[bdf].vendor, a[bdf].device, a[bdf].class_code))]
    fail_if(problems, "guest PCI topology unchanged by save/restore",
            expected="the same lspci -n after restore", evidence=evidence)


def check_models_running(states: Mapping[str, str | None], evidence: Evidence,
                         processes: Mapping[str, int] | None = None) -> None:
    """``states``: xenstore path -> value (None: absent); ``processes``:
    {"expected": n, "seen": m} device-model processes of the domain."""
    problems = [Mismatch(path, DM_RUNNING, "absent" if value is None else repr(value))
                for path, value in sorted(states.items()) if value != DM_RUNNING]
    if processes is not None and processes["seen"] != processes["expected"]:
        problems.append(Mismatch("device-model processes", str(processes["expected"]), str(processes["seen"])))
    fail_if(problems, "every device model running", expected=f"{DM_RUNNING} in each model's state key",
            evidence=evidence)


def state_paths(split: Split, domid: int) -> dict[str, str]:
    """Model -> xenstore state key."""
    if split.is_single:
        return {split.model_names[0]: DM_STATE_PATH.format(domid=domid)}
    return {m: SPLIT_DM_STATE_PATH.format(domid=domid, index=i) for i, m in enumerate(split.model_names)}


# --------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------

@dataclass
class SaveRestoreRecord:
    domid_before: int | None = None
    domid_after: int | None = None
    save_s: float | None = None
    restore_s: float | None = None
    uptime_before_s: float | None = None
    uptime_after_s: float | None = None
    emulator_contexts: list[tuple[int, int]] = field(default_factory=list)
    xenstore_data_records: list[tuple[int, int]] = field(default_factory=list)
    model_states: dict[str, str | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    evidence: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "evidence"}


class _Collector:
    """Run every check; raise one CheckFailed listing all that failed."""

    def __init__(self, record: SaveRestoreRecord):
        self.record = record
        self.failed: list[CheckFailed] = []

    def run(self, fn: Callable, *args, **kw) -> None:
        try:
            fn(*args, **kw)
        except CheckFailed as exc:
            self.failed.append(exc)
            self.record.failures.append(exc.check)

    def raise_earlier(self, guest_name: str, step: str, exc: XenhilError) -> None:
        """``step`` failed with ``exc`` after checks had failed already:
        raise those (product) failures, ``exc`` listed with them, since the
        later failure is their consequence (a restore from a save file that
        lacks a model's record fails too, as the lab's failure of an xl
        command).  Returns when no check had failed: the caller re-raises."""
        if not self.failed:
            return
        first = (str(exc.args[0]) if exc.args else type(exc).__name__).splitlines()[0]
        said = [line for line in (getattr(exc, "stderr_tail", "") or "").splitlines() if line.strip()]
        if said:                          # a failed command's last word (xl's error line)
            first += f" ({quote(said[-1], 200)})"
        self.failed.append(CheckFailed(step, expected="it succeeds", seen=f"{exc.failure_class} "
                                       f"failure after the checks above failed: {first}",
                                       evidence={**exc.evidence, **self.record.evidence}))
        self.record.failures.append(step)
        self.raise_if_failed(guest_name)

    def raise_if_failed(self, guest_name: str) -> None:
        if not self.failed:
            return
        if len(self.failed) == 1:
            raise self.failed[0]
        mismatches: list[Mismatch] = []
        evidence: dict[str, str] = {}
        for exc in self.failed:
            mismatches.append(Mismatch(exc.check, exc.expected, exc.seen))
            mismatches.extend(Mismatch(f"{exc.check}: {m.what}", m.expected, m.seen) for m in exc.mismatches)
            evidence.update(exc.evidence)
        raise CheckFailed(f"save/restore of {guest_name}", expected="every save/restore check passes",
                          seen=f"{len(self.failed)} checks failed: {', '.join(e.check for e in self.failed)}",
                          evidence=evidence, mismatches=mismatches)


def _uptime(guest) -> float:
    return parse_uptime(guest.run("cat /proc/uptime", timeout=60))


# Where each model's trace log ends: (inode, size).  libxl starts a model's
# log afresh when it starts the model (the restore's QEMU; the old file
# becomes .log.1), so a mark of another file means "read it all".  The size
# alone cannot tell: a new log that grew past the old one's size before it
# is read looked like the old file, and its xen_ioreq_server_create was
# skipped (main job 2026-12-02, commands over SSH: the check came sooner).
LogMark = tuple[int, int]
_STAT = "stat -c '%i %s' {path} 2>/dev/null || echo '0 0'"


def _log_mark(host, path: str) -> LogMark:
    inode, size = host.ssh.run(_STAT.format(path=shlex.quote(path)), timeout=30).stdout.split()
    return int(inode), int(size)


def _log_offsets(host, model_logs: Mapping[str, str]) -> dict[str, LogMark]:
    return {model: _log_mark(host, path) for model, path in model_logs.items()}


def _traces_since(host, model_logs: Mapping[str, str], offsets: Mapping[str, LogMark]) -> dict:
    """Each model's trace from its mark in ``offsets`` on (no mark, another
    file, or a shorter one: the whole file)."""
    traces = {}
    for model, path in model_logs.items():
        inode, size = _log_mark(host, path)
        mark_inode, mark_size = offsets.get(model, (None, 0))
        start = mark_size if (mark_inode == inode and size >= mark_size) else 0
        text = host.ssh.run(f"tail -c +{start + 1} {shlex.quote(path)}", timeout=120, check=True).stdout
        traces[model] = parse_trace_log(text, source=path)
    return traces


def _ownership(guest, model_logs: Mapping[str, str] | None, offsets: Mapping[str, LogMark],
               evidence: dict, tag: str, out_dir: Path) -> dict[str, ServerRanges]:
    text = guest.xl.rangesets_text()
    evidence[f"rangesets {tag}"] = save_evidence(out_dir, f"rangesets-{tag}.txt", text)
    servers = parse_ioreq_rangesets(text).get(guest.domid, {})
    split = guest.config.split
    # A companion (the probe) that did not come back after the restore fails
    # here with its stderr and counters as evidence.
    companions = companion_servers(guest)
    if model_logs:
        server_models = server_ids_by_model(_traces_since(guest.host, model_logs, offsets), evidence,
                                            companions)
    elif split.is_single and len(servers) == 1 + len(companions):
        server_models = {**companions,
                         next(s for s in servers if s not in companions): split.model_names[0]}
    elif split.is_single and len(servers) == 1:
        server_models = {next(iter(servers)): split.model_names[0]}
    elif split.is_single and not servers:
        server_models = {}
    else:
        raise TestBugError(f"split {split.id}: pass model_logs to tell which server is which model",
                           help="give save_restore_cycle(model_logs={model: trace log path})")
    return normalise_rangesets(servers, server_models)


def xl_refused(operation: str, exc: RemoteCommandFailed, evidence: Evidence) -> CheckFailed:
    """`xl save` or `xl restore` ran and exited non-zero: libxl, part of the
    build under test, refused the operation, a product failure (the lab's
    own failures, a lost connection or a time limit, are other errors).
    ``seen`` quotes libxl's error lines, else the end of xl's output."""
    lines = [line.strip() for line in exc.stderr_tail.splitlines()
             if line.strip() and not line.startswith("xc: progress")]
    errors = [line for line in lines if "error" in line.lower() or line.startswith("Failed")]
    said = "; ".join((errors or lines)[-4:]) or "no output"
    return CheckFailed(operation, expected="exit status 0",
                       seen=f"exit status {exc.exit_status}: {said}",
                       evidence={**evidence, f"{operation} output (end)": quote("\n".join(lines[-8:]), 800)},
                       help="libxl refused the operation: its error names the step (read it "
                            "with the guest's xl log in the host's xen-logs evidence)")


@step("save/restore cycle of guest {guest.name}")
def save_restore_cycle(guest, *, model_logs: Mapping[str, str] | None = None,
                       pattern_target: str = "/xenhil-saverestore.dat", pattern: DataPattern | None = None,
                       uptime_tolerance_s: float = UPTIME_TOLERANCE_S,
                       save_timeout: float = SAVE_TIMEOUT_S, restore_timeout: float = 300.0,
                       ready_timeout: float = 420.0, inspect_savefile: bool = True,
                       state_paths_override: Mapping[str, str] | None = None) -> SaveRestoreRecord:
    """One OSSTest-style cycle.  Returns the record; raises CheckFailed
    (listing every failed check) when any check fails.  ``model_logs``:
    model -> trace log on the host (xen_ioreq_server* enabled), needed to
    compare ownership per model for splits."""
    host = guest.host
    out_dir = Path(guest.artifacts_dir) / f"saverestore-{int(time.time())}"
    record = SaveRestoreRecord(domid_before=guest.domid)
    evidence = record.evidence
    evidence["guest console"] = str(Path(guest.artifacts_dir) / f"{guest.name}.console.log")
    evidence["guest commands"] = str(Path(guest.artifacts_dir) / f"{guest.name}.commands.log")
    checks = _Collector(record)
    split = guest.config.split
    models = list(split.model_names)
    pattern = pattern or DataPattern(f"sr{int(time.time())}", lines=5000)

    # before
    record.uptime_before_s = _uptime(guest)
    guest.run(pattern.write_command(pattern_target), timeout=120)
    lspci_before = guest.run("lspci -n", timeout=60)
    evidence["lspci -n before"] = save_evidence(out_dir, "lspci-before.txt", lspci_before)
    own_before = _ownership(guest, model_logs, {}, evidence, "before", out_dir)
    old_domid = guest.domid

    # save: the domain and all its models must be gone
    started = time.monotonic()
    try:
        guest.save(timeout=save_timeout)
    except (CheckFailed, UnexpectedOutput):
        raise   # an unreadable `xl list` is its own failure, with the line it choked on
    except ProductError as exc:     # Guest.save's own "still listed" check
        raise CheckFailed("domain gone after xl save", expected=f"{guest.name} absent from `xl list`",
                          seen=str(exc).splitlines()[0], evidence=evidence) from exc
    except RemoteCommandFailed as exc:
        raise xl_refused("xl save", exc, evidence) from exc
    record.save_s = time.monotonic() - started
    leftovers = guest.xl.qemu_pids(old_domid)
    if leftovers:
        checks.run(fail, "device models gone after xl save", expected="no QEMU for the saved domain",
                   seen=f"processes {leftovers} still serve domid {old_domid}", evidence=evidence)
    if inspect_savefile:
        local = out_dir / "guest.save"
        host.ssh.get(guest.save_path, local)
        sf = parse_savefile(local)
        record.emulator_contexts = sf.emulator_pairs(LIBXL_REC_EMULATOR_CONTEXT)
        record.xenstore_data_records = sf.emulator_pairs(LIBXL_REC_EMULATOR_XENSTORE_DATA)
        before = len(checks.failed)
        checks.run(check_savefile_emulators, sf, models,
                   {**evidence, "save file": f"{host.name}:{guest.save_path} (copy {local})"})
        if len(checks.failed) == before:
            local.unlink()  # 100s of MiB: kept only as the evidence of a failure

    # restore: the guest answers again
    offsets = _log_offsets(host, model_logs) if model_logs else {}
    started = time.monotonic()
    try:
        guest.restore(timeout=restore_timeout)
        guest.wait_ready(timeout=ready_timeout)
    except XenhilError as exc:
        checks.raise_earlier(guest.name, "xl restore and the guest answering again", exc)
        if isinstance(exc, RemoteCommandFailed) and exc.command.startswith("xl restore"):
            raise xl_refused("xl restore", exc, evidence) from exc
        raise
    record.restore_s = time.monotonic() - started
    record.domid_after = guest.domid

    # after
    record.uptime_after_s = _uptime(guest)
    checks.run(check_uptime_continued, record.uptime_before_s, record.uptime_after_s, evidence,
               uptime_tolerance_s)
    readback = guest.run(pattern.readback_command(pattern_target), timeout=120)
    evidence["pattern readback"] = save_evidence(out_dir, "readback.txt", readback)
    checks.run(check_pattern_intact, pattern, readback, pattern_target, evidence)
    lspci_after = guest.run("lspci -n", timeout=60)
    evidence["lspci -n after"] = save_evidence(out_dir, "lspci-after.txt", lspci_after)
    checks.run(check_same_pci, parse_pci_listing(lspci_before, "lspci -n before"),
               parse_pci_listing(lspci_after, "lspci -n after"), evidence)
    own_after = _ownership(guest, model_logs, offsets, evidence, "after", out_dir)
    checks.run(check_same_ownership, own_before, own_after, evidence)
    paths = dict(state_paths_override or state_paths(split, guest.domid))
    states: dict[str, str | None] = {path: guest.xl.xenstore_read(path) for path in paths.values()}
    record.model_states = states
    pids = guest.xl.qemu_pids(guest.domid)
    checks.run(check_models_running, states, evidence, {"expected": len(models), "seen": len(pids)})
    checks.raise_if_failed(guest.name)
    return record
