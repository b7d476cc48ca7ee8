"""Map-cache invalidation (docs/xen-ioreq-facts.md section 3): after the guest gives memory
back (``xl mem-set`` lowering it), Xen sends IOREQ_TYPE_INVALIDATE (type 8)
to every enabled server, and no "Unsuccessful map-cache invalidate" is
logged; data on the guest's emulated disk stays intact across it.
"""
from __future__ import annotations

import hashlib
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from xenhil.harness.checks.failure import Evidence, Mismatch, fail, fail_if, quote, save_evidence
from xenhil.harness.errors import InfrastructureError
from xenhil.harness.step import step
from xenhil.harness.xen.parsers.qemu_trace import IOREQ_TYPE_INVALIDATE, TraceEvent, parse_trace_log

#: Xen's message when a server did not answer an invalidate (xen/common/ioreq.c).
INVALIDATE_FAILURE = "Unsuccessful map-cache invalidate"


def count_invalidates(events: Iterable[TraceEvent]) -> int:
    """handle_ioreq lines with type=8 (one per request; the _read/_write
    variants of the same request are not counted again)."""
    return sum(1 for e in events if e.name == "handle_ioreq" and e.args.get("type") == IOREQ_TYPE_INVALIDATE)


def check_invalidates(counts: Mapping[str, int], events: int, evidence: Evidence) -> None:
    """Every enabled server (model -> invalidates counted in its log since the
    first event) got at least one invalidate per memory-removal event, and all
    got the same number (Xen broadcasts each one to every enabled server)."""
    if events < 1:
        fail("map-cache invalidates", expected="at least one memory-removal event",
             seen=f"{events} events", evidence=evidence, help="a bug of the suite: lower memory first")
    problems = [Mismatch(f"model {m}", f">= {events} invalidate(s) (one per event at least)", f"{n}")
                for m, n in sorted(counts.items()) if n < events]
    if len(set(counts.values())) > 1:
        problems.append(Mismatch("all models", "the same number of invalidates (each is broadcast)",
                                 ", ".join(f"{m}={n}" for m, n in sorted(counts.items()))))
    fail_if(problems, f"map-cache invalidate reached every server ({events} event(s))",
            expected=f"handle_ioreq type=8 in every model's log, >= {events} each", evidence=evidence)


def invalidate_failures(dmesg_text: str) -> list[str]:
    return [line for line in dmesg_text.splitlines() if INVALIDATE_FAILURE in line]


def check_no_invalidate_failure(dmesg_text: str, evidence: Evidence) -> None:
    bad = invalidate_failures(dmesg_text)
    if bad:
        fail("no failed map-cache invalidate", expected=f"no {INVALIDATE_FAILURE!r} in xl dmesg",
             seen=f"{len(bad)} line(s), first: {quote(bad[0], 200)}", evidence=evidence)


# --------------------------------------------------------------------------
# Data integrity: a deterministic pattern whose checksum is known in advance
# --------------------------------------------------------------------------

_SHA256 = re.compile(r"\b([0-9a-f]{64})\b")


@dataclass(frozen=True)
class DataPattern:
    """``lines`` lines ``xenhil <seed> <n>\\n`` (n = 1..lines), made in the guest
    with busybox ``seq`` and ``sed``: the expected checksum is computed here,
    so a corruption before the write is caught too."""

    seed: str
    lines: int = 20000

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", self.seed) or self.lines < 1:
            raise ValueError(f"DataPattern seed {self.seed!r} must be 1-32 of [A-Za-z0-9_.-], lines >= 1")

    def content(self) -> bytes:
        return "".join(f"xenhil {self.seed} {n}\n" for n in range(1, self.lines + 1)).encode()

    @property
    def size(self) -> int:
        return len(self.content())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content()).hexdigest()

    def write_command(self, target: str) -> str:
        """Write the pattern at the start of ``target`` (a file, or a spare
        block device: its first bytes are overwritten) and flush it to disk."""
        t = shlex.quote(target)
        return f"seq 1 {self.lines} | sed 's/^/xenhil {self.seed} /' > {t} && sync"

    def readback_command(self, target: str) -> str:
        """Drop the page cache so the read goes through the emulated disk, then
        checksum the pattern's bytes."""
        t = shlex.quote(target)
        return (f"sync && echo 3 > /proc/sys/vm/drop_caches && "
                f"head -c {self.size} {t} | sha256sum")


def parse_sha256sum(output: str) -> str | None:
    m = _SHA256.search(output)
    return m.group(1) if m else None


def check_pattern_intact(pattern: DataPattern, readback_output: str, target: str,
                         evidence: Evidence) -> None:
    seen = parse_sha256sum(readback_output)
    if seen != pattern.sha256:
        fail(f"data on {target} intact", expected=f"sha256 {pattern.sha256} of {pattern.size} bytes "
                                                  f"(pattern seed {pattern.seed})",
             seen=f"sha256 {seen}" if seen else f"no checksum in output {quote(readback_output, 200)!r}",
             evidence=evidence)


# --------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------

@dataclass
class MapcacheRecord:
    targets_mib: list[int]
    invalidates: dict[str, int]
    dmesg_failures: list[str]
    pattern_sha256: str
    evidence: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"targets_mib": self.targets_mib, "invalidates": self.invalidates,
                "dmesg_failures": self.dmesg_failures, "pattern_sha256": self.pattern_sha256}


def _log_size(host, path: str) -> int:
    out = host.ssh.run(f"stat -c %s {shlex.quote(path)} 2>/dev/null || echo 0", timeout=30).stdout.strip()
    return int(out or 0)


def _log_since(host, path: str, offset: int) -> str:
    return host.ssh.run(f"tail -c +{offset + 1} {shlex.quote(path)}", timeout=120, check=True).stdout


#: Seconds between two readings of every server's invalidate count: equal
#: readings mean the servers have taken every buffered invalidate.
COUNTS_SETTLE_POLL_S = 5.0


def settled(read: Callable[[], tuple[dict, Any]], timeout: float,
            poll: float = COUNTS_SETTLE_POLL_S, sleep: Callable[[float], None] = time.sleep
            ) -> tuple[dict, Any]:
    """``read()`` -> (counts, what they were read from), again every ``poll``
    seconds until two readings' counts agree or ``timeout`` passes; the last
    reading.  A server that lost invalidates keeps its lower count: settling
    only ends the ones still on their way."""
    counts, source = read()
    waited = 0.0
    while waited < timeout:
        sleep(poll)
        waited += poll
        again, source = read()
        if again == counts:
            break
        counts = again
    return counts, source


@step("map-cache invalidate cycle of guest {guest.name} to {targets_mib} MiB")
def mapcache_cycle(guest, model_logs: Mapping[str, str], targets_mib: Sequence[int], *,
                   pattern_target: str, pattern: DataPattern | None = None,
                   settle_timeout: float = 120.0) -> MapcacheRecord:
    """Write a pattern to the guest's disk, lower the guest's memory through
    each of ``targets_mib`` (``xl mem-set``), then check that every model
    logged an invalidate per event, ``xl dmesg`` has no failed invalidate,
    and the pattern reads back intact.  ``model_logs``: model -> path of its
    trace log on the host (handle_ioreq enabled)."""
    host, out_dir = guest.host, guest.artifacts_dir / "mapcache"
    pattern = pattern or DataPattern(f"mc{int(time.time())}")
    guest.run(pattern.write_command(pattern_target), timeout=300)
    offsets = {m: _log_size(host, p) for m, p in model_logs.items()}
    # Companion servers (the probe) count invalidates themselves.
    companions = {c.name: c for c in getattr(guest, "companions", ())}
    companion_before = {n: c.fresh_counters().invalidations for n, c in companions.items()}
    guest.xl.dmesg(clear=True)
    for target in targets_mib:
        guest.xl.xl("mem-set", guest.name, f"{int(target)}m")
        try:
            guest.wait_balloon_settled(reach_target=True)
        except InfrastructureError as exc:
            raise InfrastructureError(f"guest {guest.name} did not balloon down to {target} MiB: "
                                      f"{exc.args[0]}",
                                      help="is the balloon driver in the guest kernel? "
                                           "(CONFIG_XEN_BALLOON)") from exc
    evidence: dict[str, str] = {}

    def count_now() -> tuple[dict[str, int], dict[str, str]]:
        counts, traces = {}, {}
        for model, path in model_logs.items():
            traces[model] = _log_since(host, path, offsets[model])
            counts[model] = count_invalidates(parse_trace_log(traces[model], source=path))
        for name, companion in companions.items():
            counts[name] = companion.fresh_counters().invalidations - companion_before[name]
        return counts, traces

    # Xen sends the invalidates as buffered requests, which each server takes
    # from its ring in its own time (and the guest's balloon driver may still
    # be handing back its last pages): counts read one after the other right
    # after the memory target differed by ~2 % (4653 vs 4737 on an emulated
    # host).  Compared once no server's count moves any more.
    counts, traces = settled(count_now, settle_timeout)
    for model in model_logs:
        evidence[f"trace of model {model} since the first mem-set"] = save_evidence(
            out_dir, f"trace-{model}.log", traces[model])
    for companion in companions.values():
        evidence.update(companion.evidence(guest, out_dir))
    dmesg = guest.xl.dmesg()
    evidence["xl dmesg"] = save_evidence(out_dir, "xl-dmesg.txt", dmesg)
    readback = guest.run(pattern.readback_command(pattern_target), timeout=300)
    evidence["pattern readback"] = save_evidence(out_dir, "readback.txt", readback)
    record = MapcacheRecord(list(targets_mib), counts, invalidate_failures(dmesg), pattern.sha256, evidence)
    check_no_invalidate_failure(dmesg, evidence)
    check_invalidates(counts, len(targets_mib), evidence)
    check_pattern_intact(pattern, readback, pattern_target, evidence)
    return record
