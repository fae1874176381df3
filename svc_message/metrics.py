"""Domain metrics of svc_message, read from the components at scrape time.

The components keep plain counters; this collector exports them, so the
domain and storage layers need no Prometheus client of their own.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from parley_core.sampling import SampledCount
from svc_message.domain.delivery import DeliveryService
from svc_message.domain.identity_notices import IdentityNotifier
from svc_message.domain.leases import StreamLeases
from svc_message.domain.media import MediaReservations
from svc_message.domain.projection import Projector
from svc_message.domain.sending import SendPipeline
from svc_message.domain.streams import Hub
from svc_message.domain.typing_indicators import REASONS, TypingRelay
from svc_message.model import CHANNEL, DIRECT, GROUP
from svc_message.storage.doorbell import Doorbell
from svc_message.storage.recent import RecentCache

CONVERSATION_TYPES = {DIRECT: "direct", GROUP: "group", CHANNEL: "channel"}
Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily


class MessageMetrics(Collector):
    def __init__(
        self,
        *,
        hub: Hub,
        pipeline: SendPipeline,
        projector: Projector,
        recent: RecentCache,
        doorbell: Doorbell,
        typing: TypingRelay | None = None,
        leases: StreamLeases | None = None,
        identity: IdentityNotifier | None = None,
        delivery: DeliveryService | None = None,
        identity_pending: SampledCount | None = None,
        media: MediaReservations | None = None,
    ) -> None:
        self._media = media
        self._hub = hub
        self._pipeline = pipeline
        self._projector = projector
        self._recent = recent
        self._doorbell = doorbell
        self._typing = typing
        self._leases = leases
        self._identity = identity
        self._delivery = delivery
        self._identity_pending = identity_pending

    def collect(self) -> Iterator[Family]:
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
        sent = CounterMetricFamily(
            "parley_messages_sent",
            "Messages (not system messages, edits, deletes or reactions) committed by "
            "this process, by conversation type.",
            labels=["conversation_type"],
        )
        for kind, name in CONVERSATION_TYPES.items():
            sent.add_metric([name], self._pipeline.sent_by_type.get(kind, 0))
        yield sent
        yield self._hub.fanout.family(
            "parley_fanout_streams",
            "Delivery streams of this process one doorbell event was handed to.",
        )
        if self._delivery is not None:
            yield self._delivery.lag.family(
                "parley_delivery_lag_seconds",
                "From a message's commit to its write on a recipient's delivery stream "
                "(live events, not replays).",
            )
        if self._identity_pending is not None and self._identity_pending.value is not None:
            yield GaugeMetricFamily(
                "parley_identity_changes_pending",
                "Identity changes waiting to be announced in the accounts' conversations "
                "(all processes; sampled every 5 s).",
                value=self._identity_pending.value,
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
        if self._typing is not None:
            yield from self._typing_metrics(self._typing)
        if self._leases is not None:
            yield from self._lease_metrics(self._leases)
        if self._identity is not None:
            yield from self._identity_metrics(self._identity)
        if self._media is not None:
            yield from self._media_metrics(self._media)

    @staticmethod
    def _media_metrics(media: MediaReservations) -> Iterator[CounterMetricFamily]:
        reservations = CounterMetricFamily(
            "parley_message_media_reservations",
            "Sends naming media whose reservation at svc_media this process asked for, "
            "by result (refused: svc_media refused or could not be reached).",
            labels=["result"],
        )
        reservations.add_metric(["reserved"], media.reserved)
        reservations.add_metric(["refused"], media.refused)
        yield reservations
        yield CounterMetricFamily(
            "parley_message_media_release_failures",
            "Releases of deleted messages' media svc_media did not take (its garbage "
            "collector re-checks them).",
            value=media.release_failures,
        )

    @staticmethod
    def _identity_metrics(identity: IdentityNotifier) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "parley_identity_changes_announced",
            "Identity changes this process wrote system messages for (a redo after a "
            "lost lease counts again).",
            value=identity.changes_done,
        )
        yield CounterMetricFamily(
            "parley_identity_change_messages",
            "Identity-change system messages this process submitted (found already "
            "written included).",
            value=identity.messages_written,
        )
        yield CounterMetricFamily(
            "parley_identity_change_failures",
            "Identity changes left for their lease to run out after an error.",
            value=identity.failures,
        )

    @staticmethod
    def _typing_metrics(
        typing: TypingRelay,
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily(
            "parley_typing_events_received",
            "Typing events devices sent on their delivery streams.",
            value=typing.received,
        )
        yield CounterMetricFamily(
            "parley_typing_events_forwarded",
            "Typing events published to the conversation's streams.",
            value=typing.forwarded,
        )
        dropped = CounterMetricFamily(
            "parley_typing_events_dropped",
            "Typing events not forwarded, by reason (stale, forbidden, rate limited, "
            "Redis unavailable...).",
            labels=["reason"],
        )
        for reason in REASONS:
            dropped.add_metric([reason], typing.dropped[reason])
        yield dropped
        yield GaugeMetricFamily(
            "parley_typing_outbox",
            "Typing events waiting for their publish.",
            value=typing.queued,
        )

    @staticmethod
    def _lease_metrics(
        leases: StreamLeases,
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "parley_stream_lease_devices",
            "Devices this process keeps online through their delivery streams.",
            value=leases.live_devices,
        )
        ops = CounterMetricFamily(
            "parley_stream_lease_operations",
            "Presence lease writes for delivery streams, by operation.",
            labels=["operation"],
        )
        ops.add_metric(["touch"], leases.touched)
        ops.add_metric(["drop"], leases.dropped)
        yield ops
        yield CounterMetricFamily(
            "parley_stream_lease_failures",
            "Lease writes Redis did not take (presence only: streams are not affected).",
            value=leases.failures,
        )
