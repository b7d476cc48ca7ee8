"""Per-server ioreq latency: summaries and the regression test.

A regression is declared only when BOTH hold, so neither noise nor a
meaningless tiny shift fails a run:
- the median round trip above the Xen-internal baseline grew by more than
  ``threshold`` (default 10 %) against the previous run of the same host and
  split, and
- a one-sided Mann-Whitney U test over the two runs' samples says the new
  samples are stochastically larger with p < ``alpha`` (default 0.01).
Mann-Whitney makes no normality assumption: latency distributions are skewed
with long tails.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

SUBSAMPLE = 2000  # samples kept per (run, server, port) for later comparisons


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def summarize(samples_ns: list[float]) -> dict:
    values = sorted(samples_ns)
    return {"n": len(values), "p50_ns": percentile(values, 50), "p90_ns": percentile(values, 90),
            "p99_ns": percentile(values, 99), "max_ns": float(values[-1])}


def subsample(samples: list[float], k: int = SUBSAMPLE, seed: int = 0) -> list[float]:
    if len(samples) <= k:
        return list(samples)
    return random.Random(seed).sample(list(samples), k)


def mann_whitney_greater(new: list[float], old: list[float]) -> float:
    """One-sided p-value that ``new`` tends to be larger than ``old``
    (normal approximation with tie correction; fine for n >= 20 each)."""
    n1, n2 = len(new), len(old)
    if n1 < 2 or n2 < 2:
        raise ValueError("need at least two samples on each side")
    combined = sorted([(v, 0) for v in new] + [(v, 1) for v in old])
    ranks = [0.0] * len(combined)
    tie_term = 0.0
    i = 0
    while i < len(combined):
        j = i
        while j + 1 < len(combined) and combined[j + 1][0] == combined[i][0]:
            j += 1
        avg = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[k] = avg
        t = j - i + 1
        tie_term += t ** 3 - t
        i = j + 1
    r1 = sum(rank for rank, (_, side) in zip(ranks, combined) if side == 0)
    u1 = r1 - n1 * (n1 + 1) / 2.0
    mean = n1 * n2 / 2.0
    n = n1 + n2
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1)))
    if var <= 0:
        return 1.0  # all values identical: no evidence of a shift
    z = (u1 - mean - 0.5) / math.sqrt(var)  # continuity correction
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True)
class LatencyVerdict:
    regression: bool
    text: str
    cost_now_ns: float
    cost_before_ns: float | None
    p_value: float | None


def compare(current: dict, previous: dict | None, baseline_now_ns: float,
            baseline_before_ns: float | None, threshold: float = 0.10,
            alpha: float = 0.01) -> LatencyVerdict:
    """``current``/``previous``: {"p50_ns", "samples"}; costs are p50 above the baseline."""
    cost_now = current["p50_ns"] - baseline_now_ns
    if previous is None:
        return LatencyVerdict(False, f"no previous run: cost {cost_now:.0f} ns above baseline "
                                     f"recorded as the reference", cost_now, None, None)
    before_base = baseline_before_ns if baseline_before_ns is not None else baseline_now_ns
    cost_before = previous["p50_ns"] - before_base
    p = mann_whitney_greater(current["samples"], previous["samples"])
    grew = cost_before > 0 and (cost_now - cost_before) / cost_before > threshold
    regression = grew and p < alpha
    change = (cost_now - cost_before) / cost_before * 100 if cost_before > 0 else float("nan")
    text = (f"round-trip cost above baseline {cost_now:.0f} ns vs {cost_before:.0f} ns before "
            f"({change:+.1f} %, threshold +{threshold * 100:.0f} %); Mann-Whitney U one-sided "
            f"p={p:.3g} (alpha {alpha}): {'REGRESSION' if regression else 'no regression'}")
    return LatencyVerdict(regression, text, cost_now, cost_before, p)


BASELINE_SERVER = "xen"  # the Xen-internal port (PIT): never leaves Xen


@dataclass(frozen=True)
class LatencyRegression:
    host: str
    split: str
    server: str
    port: str
    verdict: str              # the figures, the test and the run measured against

    @property
    def where(self) -> str:
        return f"{self.host} split={self.split} server={self.server} port {self.port}"

    def __str__(self) -> str:
        return f"{self.where}: {self.verdict}"


def find_latency_regressions(store, run_id: str, host: str | None = None, split: str | None = None,
                             threshold: float = 0.10, alpha: float = 0.01) -> list[LatencyRegression]:
    """The latency regressions of a run (of one host and split when given)
    against each series' previous run."""
    rows = [r for r in store.latency_rows(run_id)
            if (host is None or r["host"] == host) and (split is None or r["split"] == split)]
    baselines = {(r["host"], r["split"]): r for r in rows if r["server"] == BASELINE_SERVER}
    found = []
    for row in rows:
        if row["server"] == BASELINE_SERVER:
            continue
        previous = store.previous_latency(run_id, row["host"], row["split"], row["server"],
                                          row["port"])
        if previous is None:
            continue
        base_now = baselines.get((row["host"], row["split"]))
        base_before = store.previous_latency(run_id, row["host"], row["split"],
                                             BASELINE_SERVER, base_now["port"]) if base_now else None
        result = compare(row, previous, base_now["p50_ns"] if base_now else 0.0,
                         base_before["p50_ns"] if base_before else None, threshold, alpha)
        if result.regression:
            # Which run it is measured against, and whether what booted
            # changed since (a new build, or the same build with another
            # Xen command line, has another label): the first question in triage.
            against = f"against run {previous['run_id']}"
            if previous.get("build") != row.get("build"):
                against += f"; build changed: {previous.get('build')} -> {row.get('build')}"
            found.append(LatencyRegression(row["host"], row["split"], row["server"], row["port"],
                                           f"{result.text} ({against})"))
    return found


def latency_regressions(store, run_id: str, threshold: float = 0.10,
                        alpha: float = 0.01) -> list[str]:
    """Texts of the latency regressions of a run against each series' previous run."""
    return [str(r) for r in find_latency_regressions(store, run_id, threshold=threshold, alpha=alpha)]
