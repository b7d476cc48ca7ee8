"""Map-cache invalidation (docs/xen-ioreq-facts.md section 3): after the guest gives memory
back (``xl mem-set`` lowering it), Xen sends IOREQ_TYPE_INVALIDATE (type 8)
to every enabled server, and no "Unsuccessful map-cache invalidate" is
logged; each QEMU that does DMA really empties its map cache (it maps
again, after its last invalidate, a bucket it had mapped before); data on
the guest's emulated disk stays intact across it.
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
from xenhil.harness.lab.virtual.guestkit import NIC_TRAFFIC_COMMAND
from xenhil.harness.xen.parsers.qemu_trace import (IOREQ_TYPE_INVALIDATE, TraceEvent, parse_trace_log,
                                                   remapped_buckets)
from xenhil.harness.xen.splits import IDE, NIC_PREFIX

#: Xen's message when a server did not answer an invalidate (xen/common/ioreq.c).
INVALIDATE_FAILURE = "Unsuccessful map-cache invalidate"


def count_invalidates(events: Iterable[TraceEvent]) -> int:
    """handle_ioreq lines with type=8 (one per request; the _read/_write
    variants of the same request are not counted again)."""
    return sum(1 for e in events if is_invalidate(e))


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


def is_invalidate(event: TraceEvent) -> bool:
    return event.name == "handle_ioreq" and event.args.get("type") == IOREQ_TYPE_INVALIDATE


@dataclass(frozen=True)
class Remaps:
    """One model's map-cache misses around its last invalidate: the buckets
    it had mapped before it (since the model started) and those it mapped
    after it.  ``invalidated``: the window had an invalidate at all."""

    before: frozenset[int]
    after: tuple[int, ...]
    invalidated: bool

    @classmethod
    def around_last_invalidate(cls, earlier: Iterable[TraceEvent], window: Sequence[TraceEvent]) -> "Remaps":
        """``earlier``: the model's events before the window (only its
        xen_remap_bucket lines matter); ``window``: its events since the
        first memory-removal event, invalidates included."""
        last = max((i for i, e in enumerate(window) if is_invalidate(e)), default=None)
        before = set(remapped_buckets(earlier))
        if last is None:
            return cls(frozenset(before | set(remapped_buckets(window))), (), False)
        before |= set(remapped_buckets(window[:last]))
        return cls(frozenset(before), tuple(remapped_buckets(window[last + 1:])), True)


def dma_models(owners: Mapping[str, str]) -> set[str]:
    """Models that own a device doing DMA through the map cache (the disk, a
    NIC): device class -> model, as the guest's owner table."""
    return {model for dclass, model in owners.items()
            if model is not None and (dclass == IDE or dclass.startswith(NIC_PREFIX))}


def check_map_caches_emptied(remaps: Mapping[str, Remaps], evidence: Evidence) -> None:
    """Each model (model -> its remaps; only models whose DMA devices the
    workload drove after the invalidates) mapped again, after its last
    invalidate, a bucket it had mapped before: the invalidate emptied its
    cache.  A model that logs the invalidate but keeps its mappings maps
    nothing it knew (QEMU's xen_invalidate_map_cache() drops every unlocked
    bucket; a kept bucket is a hit, which is not traced).  A model without
    any invalidate is left to the count check."""
    problems = []
    for model, r in sorted(remaps.items()):
        if not r.invalidated:
            continue
        if not r.before:
            problems.append(Mismatch(f"model {model}", "buckets mapped before its last invalidate "
                                                       "(its DMA device ran before)",
                                     "no xen_remap_bucket line before it (is the trace event enabled?)"))
        elif not r.before.intersection(r.after):
            shown = ", ".join(f"{b:#x}" for b in r.after[:6]) or "none"
            problems.append(Mismatch(
                f"model {model}", "a bucket it had mapped before its last invalidate mapped again after it",
                f"{len(r.after)} bucket(s) mapped after it ({shown}), none of the {len(r.before)} "
                f"mapped before: its map cache kept them"))
    fail_if(problems, "every DMA model emptied its map cache on invalidate",
            expected="xen_remap_bucket of an earlier bucket after each model's last invalidate",
            evidence=evidence,
            help="a model that traces the invalidate but keeps its mappings goes on using frames "
                 "the guest gave back (QEMU: handle_ioreq -> xen_invalidate_map_cache)")


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
    #: model -> buckets mapped before its last invalidate, after it, and both
    remaps: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"targets_mib": self.targets_mib, "invalidates": self.invalidates,
                "dmesg_failures": self.dmesg_failures, "pattern_sha256": self.pattern_sha256,
                "remaps": self.remaps}


def _log_size(host, path: str) -> int:
    out = host.ssh.run(f"stat -c %s {shlex.quote(path)} 2>/dev/null || echo 0", timeout=30).stdout.strip()
    return int(out or 0)


def _log_since(host, path: str, offset: int) -> str:
    return host.ssh.run(f"tail -c +{offset + 1} {shlex.quote(path)}", timeout=120, check=True).stdout


def _remaps_before(host, path: str, offset: int) -> str:
    """The xen_remap_bucket lines of the log's first ``offset`` bytes (the
    model's life before the cycle; the rest of those lines is not needed)."""
    return host.ssh.run(f"head -c {int(offset)} {shlex.quote(path)} | grep -a -F xen_remap_bucket || true",
                        timeout=120, check=True).stdout


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
    # DMA before the invalidates too (the disk's by the pattern's write, the
    # NIC's by a ping): a restored guest's models have mapped nothing yet.
    owners = guest.config.owner_table()
    has_nic = any(dclass.startswith(NIC_PREFIX) for dclass in owners)
    guest.run(pattern.write_command(pattern_target), timeout=300)
    if has_nic:
        guest.run(NIC_TRAFFIC_COMMAND, timeout=120, check=False)
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
    counts, _ = settled(count_now, settle_timeout)
    for companion in companions.values():
        evidence.update(companion.evidence(guest, out_dir))
    dmesg = guest.xl.dmesg()
    evidence["xl dmesg"] = save_evidence(out_dir, "xl-dmesg.txt", dmesg)
    # DMA after the last invalidate, so that each model that does DMA shows
    # whether its cache was emptied: the NIC's ping here, the disk's readback.
    if has_nic:
        guest.run(NIC_TRAFFIC_COMMAND, timeout=120, check=False)
    readback = guest.run(pattern.readback_command(pattern_target), timeout=300)
    evidence["pattern readback"] = save_evidence(out_dir, "readback.txt", readback)
    remaps = {}
    for model, path in model_logs.items():
        trace = _log_since(host, path, offsets[model])
        evidence[f"trace of model {model} since the first mem-set"] = save_evidence(
            out_dir, f"trace-{model}.log", trace)
        if model in dma_models(owners):
            earlier = _remaps_before(host, path, offsets[model])
            evidence[f"map-cache misses of model {model} before the first mem-set"] = save_evidence(
                out_dir, f"remaps-before-{model}.log", earlier)
            remaps[model] = Remaps.around_last_invalidate(parse_trace_log(earlier, source=path),
                                                          parse_trace_log(trace, source=path))
    record = MapcacheRecord(list(targets_mib), counts, invalidate_failures(dmesg), pattern.sha256, evidence,
                            remaps={m: {"before": len(r.before), "after": len(r.after),
                                        "again": len(r.before.intersection(r.after))}
                                    for m, r in remaps.items()})
    check_no_invalidate_failure(dmesg, evidence)
    check_invalidates(counts, len(targets_mib), evidence)
    check_map_caches_emptied(remaps, evidence)
    check_pattern_intact(pattern, readback, pattern_target, evidence)
    return record
