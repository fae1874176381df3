"""RED metrics per RPC: rate and errors (a counter by code) and duration."""

from __future__ import annotations

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

    def started(self, method: str) -> None:
        self.in_flight.labels(self._service, method).inc()

    def finished(self, method: str, code: str, seconds: float) -> None:
        self.in_flight.labels(self._service, method).dec()
        self.requests.labels(self._service, method, code).inc()
        self.duration.labels(self._service, method).observe(seconds)
