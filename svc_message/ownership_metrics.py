"""Metrics of conversation ownership: shards held and feed changes forwarded.

Read from the ownership and the router at scrape time, like ``metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from svc_message.domain.ownership import ShardOwnership
from svc_message.domain.region_routing import RegionRouter
from svc_message.domain.routing import OwnerRouter


class OwnershipMetrics(Collector):
    def __init__(
        self,
        ownership: ShardOwnership,
        router: OwnerRouter,
        regions: RegionRouter | None = None,
    ) -> None:
        self._ownership = ownership
        self._router = router
        self._regions = regions

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        ownership = self._ownership
        yield GaugeMetricFamily(
            "parley_conversation_shards_owned",
            "Conversation shards whose feed changes this process sequences now.",
            value=ownership.owned(),
        )
        yield GaugeMetricFamily(
            "parley_conversation_shards",
            "Conversation shards of the region (every process uses the same count).",
            value=ownership.shards,
        )
        leases = CounterMetricFamily(
            "parley_shard_lease_changes",
            "Shard leases this process claimed or released (claimed after another's expired, "
            "or released when draining or rebalancing).",
            labels=["change"],
        )
        leases.add_metric(["claimed"], ownership.claims)
        leases.add_metric(["released"], ownership.releases)
        yield leases
        yield CounterMetricFamily(
            "parley_feed_changes_forwarded",
            "Feed changes (sends, edits, membership changes...) forwarded to the owner of their "
            "conversation and answered by it.",
            value=self._router.forwarded,
        )
        yield CounterMetricFamily(
            "parley_feed_changes_unowned",
            "Feed changes answered UNAVAILABLE because no owner of their conversation answered "
            "within message.ownership.owner_wait_seconds (clients retry them).",
            value=self._router.unowned,
        )
        forwards = CounterMetricFamily(
            "parley_region_forwards",
            "Requests forwarded to the region owning their conversation (or the new "
            "conversation) and answered by it, by that peer region.",
            # Not "region": Prometheus gives every series the scraped region's
            # name in that label, and the chart's ServiceMonitors honour the
            # services' labels, so the peer's name would replace it.
            labels=["peer"],
        )
        refusals = CounterMetricFamily(
            "parley_region_refusals",
            "Requests answered UNAVAILABLE (REGION_UNAVAILABLE) because the region owning their "
            "conversation could not be reached, by that peer region.",
            labels=["peer"],
        )
        if self._regions is not None:
            for region, count in sorted(self._regions.forwarded.items()):
                forwards.add_metric([region], count)
            for region, count in sorted(self._regions.refused.items()):
                refusals.add_metric([region], count)
        yield forwards
        yield refusals
