"""Metrics of region replication: per peer, how far behind it is and how many
changes it has not acknowledged; per direction, what the replicas applied and
what they already held. Read from the replicators' and the applier's state at
scrape time, like ``metrics``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from svc_message.domain.replication import ReplicaApplier
from svc_message.domain.replicator import Replicator


class ReplicationMetrics(Collector):
    def __init__(
        self, replicators: Sequence[Replicator], applier: ReplicaApplier | None = None
    ) -> None:
        self._replicators = replicators
        self._applier = applier

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "parley_replication_lag_seconds",
            "Age of the oldest change read from the feed and not yet acknowledged by the peer "
            "region (after an acknowledgement: of the newest acknowledged one; 0 when idle).",
            labels=["peer"],
        )
        backlog = GaugeMetricFamily(
            "parley_replication_backlog",
            "Feed changes read by the replicator to the peer region and not yet acknowledged.",
            labels=["peer"],
        )
        sent = CounterMetricFamily(
            "parley_replication_sent_changes",
            "Changes the peer region acknowledged, by outcome: applied (wrote something) or "
            "duplicate (it already held them as new or newer).",
            labels=["peer", "outcome"],
        )
        snapshots = CounterMetricFamily(
            "parley_replication_snapshots",
            "Snapshots sent to the peer region (a new peer, or a resume point the database "
            "refused).",
            labels=["peer"],
        )
        # A copy: a topology reload may start or stop replicators meanwhile.
        for r in list(self._replicators):
            lag.add_metric([r.peer], r.state.lag_seconds)
            backlog.add_metric([r.peer], r.state.backlog)
            sent.add_metric([r.peer, "applied"], r.state.applied)
            sent.add_metric([r.peer, "duplicate"], r.state.already_present)
            snapshots.add_metric([r.peer], r.state.snapshots)
        yield lag
        yield backlog
        yield sent
        yield snapshots
        if self._applier is not None:
            received = CounterMetricFamily(
                "parley_replication_received_changes",
                "Changes replicated here from the source region, by outcome: applied or duplicate.",
                labels=["source", "outcome"],
            )
            for source, outcome in sorted(self._applier.counts.items()):
                received.add_metric([source, "applied"], outcome.applied)
                received.add_metric([source, "duplicate"], outcome.already_present)
            yield received
