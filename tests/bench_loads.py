"""Made-up load results for tests of the bench's reports."""

from __future__ import annotations

from parley_dev.bench.load import LoadResult


def load_result(completed: int, latencies_ms: list[float], window_s: float = 2.0) -> LoadResult:
    return LoadResult(
        window_s=window_s,
        completed=completed,
        latencies_ns=[int(ms * 1e6) for ms in latencies_ms],
    )
