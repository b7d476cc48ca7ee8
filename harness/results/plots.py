"""Latency distribution plots (PNG) for the report: one curve per server,
the Xen-internal baseline included, on a log time axis (ioreq round trips and
in-Xen handling differ by orders of magnitude)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on lab runners
import matplotlib.pyplot as plt  # noqa: E402


def latency_distribution_png(series: dict[str, list[float]], path: Path, title: str) -> Path:
    """``series``: label -> samples in ns.  Draws an empirical CDF per label
    with its p50/p99 in the legend."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, samples in series.items():
        values = sorted(samples)
        if not values:
            continue
        n = len(values)
        ys = [(i + 1) / n for i in range(n)]
        p50 = values[max(0, (n + 1) // 2 - 1)]
        p99 = values[max(0, int(0.99 * n + 0.999) - 1)]
        ax.step(values, ys, where="post", label=f"{label}: p50 {p50:.0f} ns, p99 {p99:.0f} ns")
    ax.set_xscale("log")
    ax.set_xlabel("access latency (ns, log scale)")
    ax.set_ylabel("fraction of accesses")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
