"""RED metrics per RPC: rate and errors (a counter by code) and duration."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005,
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
)


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry, *, service: str) -> None:
        self.requests = Counter(
            "parley_rpc_requests",
            "RPCs handled, by method and status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "parley_rpc_duration_seconds",
            "Time to handle an RPC (streams: their whole life).",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "parley_rpc_in_flight",
            "RPCs being handled now.",
            ["service", "method"],
            registry=registry,
        )
        self._service = service
        # labels() takes a lock and builds a key on every call; on the hot path
        # the children are looked up once per method (and code).
        self._in_flight: dict[str, Any] = {}
        self._duration: dict[str, Any] = {}
        self._requests: dict[tuple[str, str], Any] = {}

    def started(self, method: str) -> None:
        gauge = self._in_flight.get(method)
        if gauge is None:
            gauge = self._in_flight[method] = self.in_flight.labels(self._service, method)
        gauge.inc()

    def finished(self, method: str, code: str, seconds: float) -> None:
        self._in_flight[method].dec()
        counter = self._requests.get((method, code))
        if counter is None:
            counter = self._requests[(method, code)] = self.requests.labels(
                self._service, method, code
            )
        counter.inc()
        histogram = self._duration.get(method)
        if histogram is None:
            histogram = self._duration[method] = self.duration.labels(self._service, method)
        histogram.observe(seconds)
