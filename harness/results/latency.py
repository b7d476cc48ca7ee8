"""Per-server ioreq latency: summaries and the regression rule.

A server's *cost* is its median round trip above the Xen-internal baseline
(the PIT, never leaving Xen), both read in turn by one ``xhprobe time-in``
(the probe interleaves every port's accesses, so a slow window of the
machine lands on all of them alike).  Each measured server is compared
with its *history*: the last :attr:`LatencyRule.history_runs` clean runs of
the same host and split whose build is of the same class
(:func:`build_class`), measured on a host of the same kind (emulated or
not), never a mutant run.  Two comparisons:

- **cost**: the cost now against the history's median cost;
- **share** (a guest with two or more measured servers): the server's cost
  divided by the median cost of the guest's other servers, now against the
  history's median share.  On the virtual lab whole runs are slower or
  faster by tens of percent (the emulator's scheduling of dom0, which every
  dom0 server shares) while one server's share holds within a few percent;
  a server that alone got slower moves its share.

A run measured while the virtual host's emulator waited for its machine's
CPUs (harness.lab.virtual.contention, above
harness.lab.virtual.quirks.EMULATOR_CPU_WAIT_CONTENDED) is never history:
its figures are the machine's, not the product's.

A comparison finds a regression when BOTH hold:

- the value grew by more than the *tolerance*: the host's floor (+10 % on
  real hardware; on an emulated host the spread recorded there,
  harness.lab.virtual.quirks), widened to :attr:`LatencyRule.margin` times
  the largest deviation of a history run from the history's median once the
  history holds :attr:`LatencyRule.spread_runs` runs;
- a one-sided Mann-Whitney U test (scipy) says the new values are larger,
  p < ``alpha`` (0.01): for cost, the server's samples against the
  history's; for share, the shares of :data:`BLOCKS` consecutive blocks of
  the interleaved samples against the history's.  Mann-Whitney makes no
  normality assumption: latency distributions are skewed with long tails.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from scipy.stats import mannwhitneyu

SUBSAMPLE = 2000  # samples kept per (run, server, port) for later comparisons
BASELINE_SERVER = "xen"  # the Xen-internal port (PIT): never leaves Xen
#: Blocks the interleaved samples of a measurement are cut into for the
#: share's significance test (about 25 samples each from the console's 250).
BLOCKS = 10


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


def subsample(samples: list[float], k: int = SUBSAMPLE) -> list[float]:
    """At most ``k`` samples, evenly spaced: they keep their order in time,
    which the share's blocks need (the ports were read in turn)."""
    if len(samples) <= k:
        return list(samples)
    step = len(samples) / k
    return [samples[int(i * step)] for i in range(k)]


def mann_whitney_greater(new: Sequence[float], old: Sequence[float]) -> float:
    """One-sided p-value that ``new`` tends to be larger than ``old``."""
    if len(new) < 2 or len(old) < 2:
        raise ValueError("need at least two samples on each side")
    if len(set(new) | set(old)) == 1:
        return 1.0  # all values identical: no evidence of a shift
    return float(mannwhitneyu(new, old, alternative="greater").pvalue)


def build_class(label: str) -> str:
    """The class of a build label (``<kind>-<id>``, harness.xen.build): the
    host's Debian packages, or a build made elsewhere (a `xenhil build`, a
    tarball or .debs of one).  A new build is measured against the history
    of its class: earlier builds of the same product, not Debian's Xen."""
    return "debian" if label.startswith("debian-default-") else "built"


@dataclass(frozen=True)
class LatencyRule:
    """The figures of the rule (module docstring; README "Latency verdicts")."""
    cost_floor: float = 0.10      # smallest growth of a cost that counts
    share_floor: float = 0.10     # smallest growth of a share that counts
    alpha: float = 0.01
    history_runs: int = 10        # earlier runs of the same host, split and build class
    spread_runs: int = 5          # history runs needed before their spread sets the tolerance
    margin: float = 1.5           # tolerance = margin x the largest deviation in the history
    #: A run measured while the host's emulator waited longer than this for
    #: a CPU (s per s) is not history (None: hosts nobody watches).
    contended_cpu_wait: float | None = None

    def tolerance(self, floor: float, history: Sequence[float]) -> tuple[float, str]:
        """The tolerance for values whose history is ``history``, and where it came from."""
        if len(history) < self.spread_runs:
            return floor, f"floor (history of {len(history)} run(s), spread needs {self.spread_runs})"
        centre = statistics.median(history)
        deviation = max(abs(v - centre) / centre for v in history) if centre > 0 else 0.0
        spread = self.margin * deviation
        if spread <= floor:
            return floor, f"floor (history spread {deviation * 100:.0f} % x {self.margin:g} below it)"
        return spread, f"history spread {deviation * 100:.0f} % x {self.margin:g}"


def latency_rule(emulated: bool) -> LatencyRule:
    """The rule for a host: on an emulated one, the floors are the spread
    recorded on the virtual lab (harness.lab.virtual.quirks)."""
    if not emulated:
        return LatencyRule()
    from xenhil.harness.lab.virtual.quirks import (EMULATOR_CPU_WAIT_CONTENDED, LATENCY_COST_SPREAD_EMULATED,
                                                   LATENCY_SHARE_SPREAD_EMULATED)
    return replace(LatencyRule(), cost_floor=LATENCY_COST_SPREAD_EMULATED,
                   share_floor=LATENCY_SHARE_SPREAD_EMULATED,
                   contended_cpu_wait=EMULATOR_CPU_WAIT_CONTENDED)


@dataclass(frozen=True)
class Measurement:
    """One guest's rows of one run: baseline and servers, by (server, port)."""
    run_id: str
    build: str
    rows: Mapping[tuple[str, str], dict]

    @classmethod
    def of(cls, run_id: str, build: str, rows: Sequence[dict]) -> "Measurement":
        return cls(run_id, build, {(r["server"], r["port"]): r for r in rows})

    @property
    def baseline(self) -> dict | None:
        return next((r for (server, _), r in self.rows.items() if server == BASELINE_SERVER), None)

    def cost(self, key: tuple[str, str]) -> float:
        base = self.baseline
        return self.rows[key]["p50_ns"] - (base["p50_ns"] if base else 0.0)

    def servers(self) -> list[tuple[str, str]]:
        return sorted(k for k in self.rows if k[0] != BASELINE_SERVER)

    def share(self, key: tuple[str, str]) -> float | None:
        """Cost over the median cost of the other servers (None with one server)."""
        others = [self.cost(k) for k in self.servers() if k != key]
        if not others or key not in self.rows:
            return None
        reference = statistics.median(others)
        return self.cost(key) / reference if reference > 0 else None

    def block_shares(self, key: tuple[str, str]) -> list[float]:
        """The share in each of BLOCKS consecutive blocks of the samples."""
        base = self.baseline
        series = {k: self.rows[k]["samples"] for k in self.servers()}
        base_samples = base["samples"] if base else []
        if key not in series or len(series) < 2 or any(len(s) < BLOCKS for s in series.values()):
            return []

        def block(values: Sequence[float], b: int) -> list[float]:
            n = len(values)
            return list(values[b * n // BLOCKS:(b + 1) * n // BLOCKS])

        shares = []
        for b in range(BLOCKS):
            base_median = statistics.median(block(base_samples, b)) if len(base_samples) >= BLOCKS else 0.0
            costs = {k: statistics.median(block(s, b)) - base_median for k, s in series.items()}
            others = statistics.median([c for k, c in costs.items() if k != key])
            if others > 0:
                shares.append(costs[key] / others)
        return shares


@dataclass(frozen=True)
class LatencyRegression:
    host: str
    split: str
    server: str
    port: str
    verdict: str              # the figures, the test and the runs measured against

    @property
    def where(self) -> str:
        return f"{self.host} split={self.split} server={self.server} port {self.port}"

    def __str__(self) -> str:
        return f"{self.where}: {self.verdict}"


@dataclass(frozen=True)
class Comparison:
    regression: bool
    text: str


def _compare(what: str, now: float, history: Sequence[float], now_values: Sequence[float],
             history_values: Sequence[float], floor: float, rule: LatencyRule, unit: str) -> Comparison:
    reference = statistics.median(history)
    tolerance, source = rule.tolerance(floor, history)
    growth = (now - reference) / reference if reference > 0 else float("nan")
    grew = reference > 0 and growth > tolerance
    p = (mann_whitney_greater(now_values, history_values)
         if len(now_values) >= 2 and len(history_values) >= 2 else None)
    regression = grew and p is not None and p < rule.alpha
    fmt = (lambda v: f"{v:.0f} ns") if unit == "ns" else (lambda v: f"{v:.2f}")
    p_text = f"p={p:.3g}" if p is not None else "p n/a (too few values)"
    text = (f"{what} {fmt(now)} vs {fmt(reference)}, the median of {len(history)} run(s) "
            f"({growth * 100:+.1f} %, tolerance +{tolerance * 100:.0f} %: {source}); "
            f"Mann-Whitney U one-sided {p_text} (alpha {rule.alpha}): "
            f"{'REGRESSION' if regression else 'no regression'}")
    return Comparison(regression, text)


def judge(now: Measurement, history: Sequence[Measurement], key: tuple[str, str],
          rule: LatencyRule) -> list[Comparison]:
    """The cost and (with siblings) share comparisons of one server."""
    past = [m for m in history if key in m.rows]
    if not past:
        return []
    comparisons = [_compare(
        "round-trip cost above baseline", now.cost(key), [m.cost(key) for m in past],
        now.rows[key]["samples"], [v for m in past for v in m.rows[key]["samples"]],
        rule.cost_floor, rule, "ns")]
    share = now.share(key)
    past_shares = [(m, s) for m in past if (s := m.share(key)) is not None]
    if share is not None and past_shares:
        comparisons.append(_compare(
            "share of the siblings' cost", share, [s for _, s in past_shares],
            now.block_shares(key), [v for m, _ in past_shares for v in m.block_shares(key)],
            rule.share_floor, rule, "ratio"))
    return comparisons


def find_latency_regressions(store, run_id: str, host: str | None = None,
                             split: str | None = None) -> list[LatencyRegression]:
    """The latency regressions of a run (of one host and split when given)
    against each host and split's history, by the rule of the host (its rows
    say whether it is emulated)."""
    rows = [r for r in store.latency_rows(run_id)
            if (host is None or r["host"] == host) and (split is None or r["split"] == split)]
    guests: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        guests.setdefault((row["host"], row["split"]), []).append(row)
    found = []
    for (guest_host, guest_split), guest_rows in sorted(guests.items()):
        build = guest_rows[0]["build"]
        emulated = any(r.get("emulated") for r in guest_rows)
        rule = latency_rule(emulated)
        now = Measurement.of(run_id, build, guest_rows)
        # Only rows of the same kind of host: rows written before the store
        # said (schema 3) read 0, and those were measured one port after
        # another, which on the virtual lab gave QEMU round trips about half
        # as long as the interleaved measurement does (457-736 us, then 1 075).
        history = [Measurement.of(h["run_id"], h["build"], h["rows"])
                   for h in store.latency_history(run_id, guest_host, guest_split,
                                                  build_class=build_class(build),
                                                  limit=rule.history_runs, emulated=emulated,
                                                  cpu_wait_above=rule.contended_cpu_wait)]
        waited = max((r["emulator_cpu_wait"] for r in guest_rows
                      if r.get("emulator_cpu_wait") is not None), default=None)
        for key in now.servers():
            comparisons = judge(now, history, key, rule)
            if not any(c.regression for c in comparisons):
                continue
            runs = [m for m in history if key in m.rows]
            against = f"against {len(runs)} run(s) of build class {build_class(build)}, newest {runs[0].run_id}"
            if runs[0].build != build:
                against += f"; build changed: {runs[0].build} -> {build}"
            if rule.contended_cpu_wait is not None and waited is not None \
                    and waited > rule.contended_cpu_wait:
                against += (f"; measured while the host's emulator waited {waited:.2f} s per second "
                            f"for a CPU (contended above {rule.contended_cpu_wait:g}): the machine's "
                            "figure, kept out of the history")
            found.append(LatencyRegression(guest_host, guest_split, key[0], key[1],
                                           "; ".join(c.text for c in comparisons) + f" ({against})"))
    return found


def latency_regressions(store, run_id: str) -> list[str]:
    """Texts of the latency regressions of a run against each series' history."""
    return [str(r) for r in find_latency_regressions(store, run_id)]
