"""Push notification metrics of svc_message, read from the planner, the worker
and the projector at scrape time (they keep plain counters)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from svc_message.domain.projection import Projector
from svc_message.domain.push_planner import PushPlanner
from svc_message.domain.push_worker import PushWorker


class PushMetrics(Collector):
    def __init__(self, *, planner: PushPlanner, worker: PushWorker, projector: Projector) -> None:
        self._planner = planner
        self._worker = worker
        self._projector = projector

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        worker, planner = self._worker, self._planner
        if worker.depth is not None:
            yield GaugeMetricFamily(
                "parley_push_outbox_depth",
                "Notifications waiting in the outbox (pending, all processes; sampled).",
                value=worker.depth,
            )
        yield GaugeMetricFamily(
            "parley_push_planning_pending_messages",
            "Committed messages waiting to be planned for push on this process.",
            value=self._projector.push_lag,
        )
        yield CounterMetricFamily(
            "parley_push_jobs_written",
            "Outbox documents created or joined by the planner on this process.",
            value=planner.jobs_written,
        )
        yield CounterMetricFamily(
            "parley_push_sent",
            "Notifications a provider accepted, sent by this process's worker.",
            value=worker.sent,
        )
        yield CounterMetricFamily(
            "parley_push_retried",
            "Failed sends rescheduled with backoff.",
            value=worker.retried,
        )
        yield CounterMetricFamily(
            "parley_push_dead",
            "Notifications dead-lettered (rejected, token gone, or out of attempts).",
            value=worker.dead,
        )
        yield CounterMetricFamily(
            "parley_push_abandoned",
            "Committed messages whose push planning kept failing and was given up.",
            value=self._projector.pushes_abandoned,
        )
        suppressed = CounterMetricFamily(
            "parley_push_suppressed",
            "Device notifications not sent, by reason (muted, dnd, streaming, "
            "stale when planned; streaming, no_token, revoked when about to send).",
            labels=["reason"],
        )
        reasons = planner.suppressed + worker.suppressed
        for reason, count in sorted(reasons.items()):
            suppressed.add_metric([reason], count)
        yield suppressed
