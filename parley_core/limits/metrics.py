"""The limiter's series, read from its plain counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from parley_core.limits.limiter import Limiter


class LimiterMetrics(Collector):
    def __init__(self, limiter: Limiter, *, service: str) -> None:
        self._limiter = limiter
        self._service = service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        refused = CounterMetricFamily(
            "parley_rate_limited",
            "Requests refused by a rate limit (RESOURCE_EXHAUSTED, RATE_LIMITED), by limit.",
            labels=["service", "limit"],
        )
        # Every limit of the service from the start, so a rate over 5 m is
        # defined before the first refusal.
        for name, count in self._limiter.refused.items():
            refused.add_metric([self._service, name.value], count)
        yield refused
        local = GaugeMetricFamily(
            "parley_rate_limit_local",
            "1 while this process's rate limits use its own in-memory buckets because Redis "
            "did not answer (the limits then loosen by the number of processes).",
            labels=["service"],
        )
        local.add_metric([self._service], 1 if self._limiter.degraded else 0)
        yield local
        remembered = CounterMetricFamily(
            "parley_rate_limit_remembered",
            "Refusals answered from this process's memory of an empty bucket, without a Redis "
            "round trip (a client resending before its RetryInfo delay).",
            labels=["service"],
        )
        remembered.add_metric([self._service], self._limiter.remembered_refusals)
        yield remembered
