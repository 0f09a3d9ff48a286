"""Latency summaries. Pure functions over lists of seconds; no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: The percentiles every table and JSON file reports.
PERCENTILES = (50.0, 95.0, 99.0)


@dataclass(frozen=True)
class LatencySummary:
    """Latencies of one run in milliseconds (0.0 everywhere when nothing completed)."""

    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "mean": round(self.mean_ms, 4),
            "p50": round(self.p50_ms, 4),
            "p95": round(self.p95_ms, 4),
            "p99": round(self.p99_ms, 4),
            "max": round(self.max_ms, 4),
        }


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of an ascending sequence (0.0 if empty).

    Nearest rank, not interpolation: every reported figure is a latency some
    request really had, and p100 is the maximum."""
    if not ordered:
        return 0.0
    if not 0.0 < pct <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    rank = math.ceil(pct / 100.0 * len(ordered))
    return ordered[max(rank, 1) - 1]


def summarize(latencies_s: Sequence[float]) -> LatencySummary:
    """Summarize latencies given in seconds."""
    ordered = sorted(latencies_s)
    if not ordered:
        return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    ms = 1000.0
    return LatencySummary(
        count=len(ordered),
        mean_ms=sum(ordered) / len(ordered) * ms,
        p50_ms=percentile(ordered, 50.0) * ms,
        p95_ms=percentile(ordered, 95.0) * ms,
        p99_ms=percentile(ordered, 99.0) * ms,
        max_ms=ordered[-1] * ms,
    )


def ratio(ours: float, theirs: float) -> float | None:
    """``ours / theirs``, or None when there is nothing to compare against."""
    if theirs <= 0.0:
        return None
    return ours / theirs
