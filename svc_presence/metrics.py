"""Domain metrics of svc_presence, read from plain counters at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from svc_presence.domain.subscriptions import Hub
from svc_presence.model import PresenceStats, RegionStats
from svc_presence.storage.channels import PresenceChannels


class PresenceMetrics(Collector):
    def __init__(
        self,
        stats: PresenceStats,
        hub: Hub,
        channels: PresenceChannels,
        regions: RegionStats | None = None,
        *,
        leading: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stats = stats
        self._hub = hub
        self._channels = channels
        self._regions = regions or RegionStats()
        self._leading = leading
        self._clock = clock

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._stats
        yield CounterMetricFamily(
            "parley_presence_heartbeats",
            "Heartbeats taken by this process.",
            value=stats.heartbeats,
        )
        transitions = CounterMetricFamily(
            "parley_presence_transitions",
            "Online/offline transitions made by this process (its heartbeats bringing "
            "users online, its sweeps taking them offline).",
            labels=["to"],
        )
        transitions.add_metric(["online"], stats.came_online)
        transitions.add_metric(["offline"], stats.went_offline)
        yield transitions
        yield GaugeMetricFamily(
            "parley_presence_subscriptions_open",
            "SubscribePresence streams open on this process.",
            value=self._hub.session_count,
        )
        yield GaugeMetricFamily(
            "parley_presence_watched_accounts",
            "Accounts whose presence channel this process listens to for subscribers.",
            value=self._hub.watched_accounts,
        )
        yield CounterMetricFamily(
            "parley_presence_events_pushed",
            "PresenceEvents sent to subscribers (snapshots included).",
            value=stats.events_pushed,
        )
        yield CounterMetricFamily(
            "parley_presence_redis_errors",
            "Redis calls of presence that failed or timed out.",
            value=stats.redis_errors,
        )
        yield GaugeMetricFamily(
            "parley_presence_channels_connected",
            "1 while the presence pub/sub connection is up.",
            value=1 if self._channels.connected else 0,
        )
        yield CounterMetricFamily(
            "parley_presence_sweeps", "Sweeps for expired devices.", value=stats.sweeps
        )
        yield CounterMetricFamily(
            "parley_presence_sweep_seconds",
            "Time spent in sweeps (divide by sweeps for the cost of one).",
            value=stats.sweep_seconds,
        )
        yield CounterMetricFamily(
            "parley_presence_last_seen_written",
            "Last seen records written to MongoDB.",
            value=stats.last_seen_written,
        )
        yield CounterMetricFamily(
            "parley_presence_last_seen_write_failures",
            "Batches of last seen MongoDB did not take (kept for the next flush).",
            value=stats.last_seen_write_failures,
        )
        yield from self._region_metrics()

    def _region_metrics(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        regions = self._regions
        for name, help_text, counter in (
            (
                "parley_presence_region_entries_sent",
                "Presence entries pushed to each peer region (changes and digests).",
                regions.sent,
            ),
            (
                "parley_presence_region_entries_received",
                "Presence entries pushed by each peer region.",
                regions.received,
            ),
            (
                "parley_presence_region_export_failures",
                "Pushes to each peer region that did not get through (retried, "
                "or made good by the next digest).",
                regions.failures,
            ),
            (
                "parley_presence_region_changes_dropped",
                "Local changes dropped from a peer region's full queue "
                "(the next digest repairs them).",
                regions.dropped,
            ),
        ):
            family = CounterMetricFamily(name, help_text, labels=["peer"])
            for peer, value in sorted(counter.items()):
                family.add_metric([peer], value)
            yield family
        now = self._clock()
        age = GaugeMetricFamily(
            "parley_presence_region_digest_age_seconds",
            "Seconds since the last full presence digest sent to (direction=sent) or "
            "received from (direction=received) each peer region.",
            labels=["peer", "direction"],
        )
        for direction, stamps in (
            ("sent", regions.digest_sent_at),
            ("received", regions.digest_received_at),
        ):
            for peer, at in sorted(stamps.items()):
                age.add_metric([peer, direction], max(0.0, now - at))
        yield age
        yield GaugeMetricFamily(
            "parley_presence_region_exporter",
            "1 while this process holds the region's presence export lease.",
            value=1 if self._leading() else 0,
        )
