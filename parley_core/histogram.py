"""A histogram kept as plain ints, for hot paths.

Observing is a bisect and two additions, with no lock and no label lookup;
a Prometheus collector reads it at scrape time (``family``), so components
that keep one need no Prometheus client of their own.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# Seconds, for latencies that matter from a millisecond to a minute.
LATENCY_BOUNDS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    60.0,
)
# Counts that grow in powers of two up to a large group (1,024 members) and beyond.
SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        # One more than the bounds: the +Inf bucket.
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: Prometheus buckets count value <= le.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            # Formatted as prometheus_client formats its own (1.0, +Inf).
            buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)
