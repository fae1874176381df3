"""Pure measurement helpers: percentiles, latency summaries and ratios (targets: ``targets``).

No I/O and no clock here, so every figure the report prints can be checked by
unit tests against hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

NS_PER_MS = 1_000_000


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ascending samples, interpolating between ranks.

    Linear interpolation (numpy's default) instead of nearest rank: with the few
    hundred samples of a --quick run, nearest rank makes p99 jump between
    neighbouring samples from run to run.
    """
    if not sorted_samples:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} not in 0..100")
    position = (len(sorted_samples) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_samples) - 1)
    fraction = position - low
    return sorted_samples[low] + (sorted_samples[high] - sorted_samples[low]) * fraction


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latencies in milliseconds; every figure is None when there were no samples."""

    count: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
        }


def summarize_ns(samples_ns: Sequence[int]) -> LatencySummary:
    """Summary of nanosecond samples (any order), in milliseconds."""
    if not samples_ns:
        return LatencySummary(0, None, None, None, None, None)
    ms = sorted(s / NS_PER_MS for s in samples_ns)
    return LatencySummary(
        count=len(ms),
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        max_ms=ms[-1],
        mean_ms=sum(ms) / len(ms),
    )


def per_second(count: int, seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("a rate needs a positive duration")
    return count / seconds


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, or None when either is missing or the baseline is not positive."""
    if value is None or baseline is None or baseline <= 0:
        return None
    return value / baseline


def half_rate(send_rps: float, *, floor: float = 1.0) -> float:
    """The delivery phase's offered rate: half the measured maximum, never below ``floor``."""
    return max(floor, send_rps / 2.0)
