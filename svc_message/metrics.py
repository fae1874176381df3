"""Domain metrics of svc_message, read from the components at scrape time.

The components keep plain counters; this collector exports them, so the
domain and storage layers need no Prometheus client of their own.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from svc_message.domain.projection import Projector
from svc_message.domain.sending import SendPipeline
from svc_message.domain.streams import Hub
from svc_message.storage.doorbell import Doorbell
from svc_message.storage.recent import RecentCache


class MessageMetrics(Collector):
    def __init__(
        self,
        *,
        hub: Hub,
        pipeline: SendPipeline,
        projector: Projector,
        recent: RecentCache,
        doorbell: Doorbell,
    ) -> None:
        self._hub = hub
        self._pipeline = pipeline
        self._projector = projector
        self._recent = recent
        self._doorbell = doorbell

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "parley_delivery_streams_open",
            "Delivery streams open on this process.",
            value=self._hub.stream_count,
        )
        yield CounterMetricFamily(
            "parley_messages_committed",
            "Messages durably committed by this process.",
            value=self._pipeline.committed,
        )
        yield CounterMetricFamily(
            "parley_send_batches",
            "Group-commit batches written (messages / batches = batch size).",
            value=self._pipeline.batches,
        )
        yield GaugeMetricFamily(
            "parley_projection_pending_conversations",
            "Conversations whose metadata waits for the projector.",
            value=self._projector.lag,
        )
        cache = CounterMetricFamily(
            "parley_recent_cache_reads",
            "History reads by whether the recent cache served them.",
            labels=["result"],
        )
        cache.add_metric(["hit"], self._recent.hits)
        cache.add_metric(["miss"], self._recent.misses)
        yield cache
        yield CounterMetricFamily(
            "parley_doorbell_publish_failures",
            "Doorbell publishes Redis did not take (delivery then relies on sync).",
            value=self._doorbell.publish_failures,
        )
