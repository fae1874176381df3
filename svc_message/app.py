"""Composition root of svc_message: builds every dependency once and runs the host."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

from parley_core.config import Settings
from parley_core.errors import Reason, Unavailable
from parley_core.ids import random_id
from parley_core.limits import LimitName
from parley_core.rpc.server import ServiceHost
from parley_core.runtime import open_runtime, service_main
from parley_core.sampling import SampledCount
from parley_core.storage.key_notices import IdentityChanges, PreKeyLows
from parley_core.storage.liveness import Liveness
from parley_core.telemetry import build_tracing
from svc_message.archive_metrics import ArchiveMetrics
from svc_message.archive_wiring import build_archive, build_history_exports
from svc_message.domain.acks import AckBatcher
from svc_message.domain.changes import ChangesHandler
from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.delivery import DeliveryService
from svc_message.domain.erasure import AccountErasure
from svc_message.domain.groups import GroupsHandler
from svc_message.domain.identity_notices import IdentityNotifier
from svc_message.domain.inbox import InboxHandler
from svc_message.domain.leases import StreamLeases
from svc_message.domain.limits import FeedLimits
from svc_message.domain.media import MediaAccess, MediaNotices, MediaReservations
from svc_message.domain.messages import MessagesHandler
from svc_message.domain.ownership import ShardOwnership, dialable
from svc_message.domain.projection import Projector
from svc_message.domain.push_devices import PushDevices
from svc_message.domain.push_planner import PushPlanner
from svc_message.domain.push_worker import PushWorker
from svc_message.domain.region_routing import RegionRouter
from svc_message.domain.routing import OwnerRouter
from svc_message.domain.search_access import SearchAccess
from svc_message.domain.search_setting import ServerSearchSetting
from svc_message.domain.sending import SendPipeline
from svc_message.domain.streams import Hub
from svc_message.domain.typing_indicators import TypingRelay
from svc_message.domain.typing_limits import TypingLimits
from svc_message.export_metrics import ExportMetrics
from svc_message.metrics import MessageMetrics
from svc_message.model import MemberSettings
from svc_message.model.broadcast import Broadcast
from svc_message.ownership_metrics import OwnershipMetrics
from svc_message.peers.keys import AccountDirectory
from svc_message.peers.media import MediaReferenceClient
from svc_message.peers.owners import OwnerChannels
from svc_message.peers.push import Router, build_providers
from svc_message.peers.regions import RegionChannels
from svc_message.push_metrics import PushMetrics
from svc_message.replication_wiring import (
    build_inbox_settings,
    build_replication,
    replicator_clock,
    replicator_settings,
)
from svc_message.servicer.changes import ChangesServicer
from svc_message.servicer.convert import ProtoEventCodec
from svc_message.servicer.groups import GroupsServicer
from svc_message.servicer.history_export import HistoryExportServicer
from svc_message.servicer.inbox import InboxServicer
from svc_message.servicer.media import SERVICE_NAME as INTERNAL_SERVICE_NAME
from svc_message.servicer.media import MessageInternalServicer
from svc_message.servicer.messages import MessageUnaryServicer
from svc_message.servicer.push import PushServicer
from svc_message.servicer.region_routing import RegionRouting
from svc_message.servicer.replication import SERVICE_NAME as REPLICATION_SERVICE_NAME
from svc_message.servicer.routing import OwnerRouting
from svc_message.servicer.search import ServerSearchServicer
from svc_message.servicer.service import SERVICE_NAME, register
from svc_message.servicer.stream import StreamServicer
from svc_message.storage.conversations import ConversationStore
from svc_message.storage.delivered import DeliveredMarks
from svc_message.storage.doorbell import Doorbell
from svc_message.storage.erasure import ErasureStore
from svc_message.storage.inbox import InboxSettingsStore
from svc_message.storage.projection import ProjectorStore
from svc_message.storage.push import MuteLookup, PushOutbox, PushSettingsStore, PushTokenStore
from svc_message.storage.recent import RecentCache
from svc_message.storage.shard_leases import ShardLeaseStore


class SettingsPublisher:
    """Tells the account's other devices that its inbox settings changed."""

    def __init__(self, doorbell: Doorbell, codec: ProtoEventCodec) -> None:
        self._doorbell = doorbell
        self._codec = codec

    async def settings_changed(self, account_id: str, settings: MemberSettings) -> None:
        envelope = self._codec.settings(settings)
        await self._doorbell.publish(
            [Broadcast(self._codec.encode(envelope), accounts=(account_id,))]
        )


# Seconds between reads of the archive's sizes for the metrics.
ARCHIVE_SAMPLE_SECONDS = 30.0

# The abuse limits svc_message applies (docs/ARCHITECTURE.md, Abuse limits).
LIMITS = (
    LimitName.SEND_PER_DEVICE,
    LimitName.SEND_PER_ACCOUNT,
    LimitName.SEND_PER_CONVERSATION,
    LimitName.EDIT_PER_ACCOUNT,
    LimitName.DELETE_PER_ACCOUNT,
    LimitName.REACT_PER_ACCOUNT,
    LimitName.DIRECT_CREATE_PER_ACCOUNT,
    LimitName.GROUP_CREATE_PER_ACCOUNT,
    LimitName.ADD_MEMBERS_PER_ACCOUNT,
    LimitName.GROUP_ADMIN_PER_ACCOUNT,
    LimitName.CHANNEL_SUBSCRIBE_PER_ACCOUNT,
    LimitName.PUSH_TOKEN_PER_DEVICE,
)


async def build(settings: Settings) -> ServiceHost:
    config = settings.message
    clock = time.time
    tracing = build_tracing(
        settings.telemetry.tracing, service="svc_message", region=settings.region
    )
    runtime = await open_runtime(settings, service="message", tracing=tracing)
    conversation_store = ConversationStore(runtime.db)
    # The log is read across its tiers (hot MongoDB, archived Parquet on S3).
    # Only conversations owned here: a replica never writes archive objects
    # for another region's conversations (docs/design/regions.md).
    message_store, archiver, archive_objects = await build_archive(
        settings,
        runtime.db,
        clock=clock,
        owns=lambda conversation_id: (
            runtime.region_map().region_or_self(conversation_id) == runtime.region_map().self_region
        ),
    )
    projector_store = ProjectorStore(runtime.db)
    await conversation_store.ensure_indexes()
    await projector_store.ensure_indexes()
    lease_store = ShardLeaseStore(runtime.db)
    await lease_store.ensure_indexes()

    codec = ProtoEventCodec()
    hub: Hub
    conversations: ConversationsHandler
    doorbell = Doorbell(
        runtime.redis,
        on_event=lambda broadcast: hub.dispatch(broadcast),
        on_reconnect=lambda: hub.resync_all(),
        on_membership_change=lambda conversation_id: conversations.forget(conversation_id),
        on_replicated=lambda kind, replicated_id: replicated_here(kind, replicated_id),
    )

    def replicated_here(kind: str, replicated_id: str) -> None:
        if kind == "c":
            conversations.forget(replicated_id)
            hub.resync_conversation(replicated_id)
        elif kind == "a":
            hub.resync_account(replicated_id)

    hub = Hub(doorbell, codec)
    accounts = AccountDirectory(config.keys_target, interceptors=tracing.client_interceptors())
    recent = RecentCache(
        runtime.redis,
        capacity=config.recent_cache_messages,
        ttl_seconds=config.recent_cache_ttl_seconds,
    )
    limits = FeedLimits(runtime.limiter(LIMITS), message_store)
    conversations = ConversationsHandler(
        conversation_store,
        recent,
        accounts,
        doorbell,
        codec,
        log=message_store,
        limits=limits,
        region_number=lambda: runtime.region_map().self_number,
    )
    # Push notifications: planned by the projector, delivered by the worker.
    push_config = config.push
    push_tokens = PushTokenStore(runtime.db)
    push_outbox = PushOutbox(runtime.db, retention=timedelta(seconds=push_config.retention_seconds))
    await push_tokens.ensure_indexes()
    await push_outbox.ensure_indexes()
    push_settings = PushSettingsStore(runtime.db)
    push_devices = PushDevices(
        push_tokens, push_settings, push_outbox, limits=limits.limiter, clock=clock
    )
    # Device leases in Redis: delivery streams keep theirs (the record
    # svc_presence reads), and push skips devices that hold one.
    liveness = Liveness(
        runtime.redis,
        ttl_seconds=settings.presence.device_ttl_seconds,
        persist_seconds=settings.presence.last_seen_persist_seconds,
        cluster_shards=settings.redis.cluster_presence_shards,
    )
    push_router = Router(build_providers(push_config, clock=clock))
    push_worker = PushWorker(
        push_outbox,
        push_tokens,
        liveness,
        push_router,
        conversation_store,
        is_revoked=lambda device_id: runtime.revocations.is_revoked(
            device_id=device_id, issued_at=0.0
        ),
        max_attempts=push_config.max_attempts,
        backoff_base_seconds=push_config.backoff_base_seconds,
        backoff_max_seconds=push_config.backoff_max_seconds,
        lease_seconds=push_config.lease_seconds,
        poll_seconds=push_config.poll_seconds,
        concurrency=push_config.concurrency,
        clock=clock,
    )
    push_planner = PushPlanner(
        conversations,
        push_tokens,
        push_settings,
        MuteLookup(runtime.db),
        push_outbox,
        liveness,
        collapse_seconds=push_config.collapse_seconds,
        clock=clock,
        on_enqueued=push_worker.due_at,
    )
    projector = Projector(
        conversation_store,
        message_store,
        projector_store,
        heartbeat_seconds=config.projector_heartbeat_seconds,
        interval_seconds=config.projector_interval_seconds,
        clock=clock,
        push=push_planner,
    )
    pipeline = SendPipeline(
        message_store,
        projector,
        recent,
        doorbell,
        codec,
        batch_max=config.send_batch_max,
        clock=clock,
        trace_context=tracing.capture if tracing.enabled else None,
    )
    # Media references: svc_media asks about them (MessageInternalService),
    # and sends and deletes tell it (MediaReferenceService).
    media_references = MediaReferenceClient(
        config.media_target,
        credential=runtime.service_credential(),
        interceptors=tracing.client_interceptors(),
    )
    media_access = MediaAccess(message_store, conversations)
    media = MediaReservations(media_access, media_references, message_store)
    messages = MessagesHandler(conversations, message_store, recent, pipeline, codec, limits, media)
    inbox_store = InboxSettingsStore(runtime.db)
    await inbox_store.ensure_indexes()
    inbox_settings = build_inbox_settings(
        inbox_store, region=settings.region, skew_ms=config.settings_clock_skew_ms
    )
    inbox = InboxHandler(inbox_settings, conversations, listener=SettingsPublisher(doorbell, codec))
    groups = GroupsHandler(
        conversations, message_store, pipeline, accounts, doorbell, doorbell, codec, limits
    )
    delivered = DeliveredMarks(runtime.redis)
    changes = ChangesHandler(conversations, message_store, pipeline, limits, delivered, media)
    leases = StreamLeases(
        liveness,
        ttl_seconds=settings.presence.device_ttl_seconds,
        clock=clock,
    )
    typing = TypingRelay(
        conversations,
        doorbell,
        codec,
        limits=TypingLimits(
            expires_seconds=config.typing_expires_seconds,
            min_interval_seconds=config.typing_min_interval_seconds,
            burst=config.typing_burst,
            per_second=config.typing_per_second,
        ),
    )
    # The key directory's records: svc_keys writes them, this service reads
    # them (and polls the outbox, whose index either side may create first).
    identity_changes = IdentityChanges(runtime.db)
    await identity_changes.ensure_indexes()
    identity_notifier = IdentityNotifier(
        identity_changes,
        conversation_store,
        pipeline,
        poll_seconds=config.identity_poll_seconds,
        lease_seconds=config.identity_lease_seconds,
        clock=clock,
    )
    delivery = DeliveryService(
        hub,
        conversation_store,
        conversations,
        message_store,
        codec,
        queue_limit=config.stream_queue_events,
        queue_bytes=config.stream_queue_bytes,
        replay_page_size=config.replay_page_size,
        clock=clock,
        leases=leases,
        pre_keys=PreKeyLows(runtime.db),
    )
    acks = AckBatcher(
        conversation_store,
        doorbell,
        codec,
        flush_seconds=config.ack_flush_seconds,
        cursor_flush_seconds=config.cursor_flush_seconds,
        group_flush_seconds=config.group_ack_flush_seconds,
        group_persist_seconds=config.group_delivered_persist_seconds,
        delivered=delivered,
        write_rate=config.ack_write_rate,
        clock=clock,
    )
    identity_pending = SampledCount("identity_changes_pending", identity_changes.pending)
    runtime.registry.register(
        MessageMetrics(
            delivery=delivery,
            identity_pending=identity_pending,
            hub=hub,
            pipeline=pipeline,
            projector=projector,
            recent=recent,
            doorbell=doorbell,
            typing=typing,
            leases=leases,
            identity=identity_notifier,
            media=media,
        )
    )

    runtime.registry.register(
        PushMetrics(planner=push_planner, worker=push_worker, projector=projector)
    )

    def device_revoked(device_id: str) -> None:
        hub.device_revoked(device_id)
        push_devices.device_revoked(device_id)

    await runtime.start_revocation_feed(on_revoked=device_revoked)
    runtime.start_topology_watcher()

    # One owner per conversation: the topology's shard routing when there is
    # one. The shard count is fixed for the life of the process.
    ownership_config = config.ownership
    topology = runtime.topology
    shards = (
        topology.routing.conversation_shards if topology is not None else ownership_config.shards
    )

    bind = config.server.host
    if bind in ("", "0.0.0.0", "::"):
        # Bound to every interface: the address the host name resolves to (a
        # pod's own IP in Kubernetes), which the other processes can reach.
        try:
            bind = socket.gethostbyname(socket.gethostname())
        except OSError:
            bind = "127.0.0.1"

    def own_address() -> str:
        if ownership_config.address:
            return dialable(ownership_config.address)
        port = config.server.port or host.port
        return f"{bind}:{port}" if port else ""

    ownership = ShardOwnership(
        lease_store,
        instance_id=random_id(),
        address=own_address,
        shards=shards,
        lease_seconds=ownership_config.lease_seconds,
        renew_seconds=ownership_config.renew_seconds,
        clock=clock,
        on_acquired=lambda acquired: pipeline.forget_positions(
            lambda conversation_id: ownership.shard_of(conversation_id) in acquired
        ),
    )
    owner_channels = OwnerChannels(interceptors=tracing.client_interceptors())
    router = OwnerRouter(
        ownership,
        owner_channels,
        wait_seconds=ownership_config.owner_wait_seconds,
        forward_timeout_seconds=ownership_config.forward_timeout_seconds,
        clock=time.monotonic,
    )
    # Before serving: alone, this process owns every shard from its first request.
    await ownership.tick()
    runtime.spawn(doorbell.run())
    await projector.start()
    runtime.spawn(projector.run())
    runtime.spawn(pipeline.run())
    runtime.spawn(ownership.run())
    runtime.spawn(recent.run())
    runtime.spawn(acks.run())
    # Every process samples the outbox depth; those configured to also deliver.
    runtime.spawn(push_worker.run() if push_config.worker else push_worker.sample_depth_forever())
    runtime.spawn(typing.run())
    runtime.spawn(leases.run())
    runtime.spawn(identity_notifier.run())
    runtime.spawn(identity_pending.run())
    runtime.registry.register(ArchiveMetrics(archiver, clock=clock))
    runtime.spawn(archiver.sample_forever(ARCHIVE_SAMPLE_SECONDS))
    if settings.archive.enabled:
        runtime.spawn(archiver.run())
    exports, export_worker, export_objects = await build_history_exports(
        settings,
        runtime.db,
        message_store,
        archive_objects,
        conversations,
        doorbell,
        codec,
        clock=clock,
    )
    runtime.registry.register(ExportMetrics(export_worker))
    runtime.spawn(export_worker.sample_forever(ARCHIVE_SAMPLE_SECONDS))
    if settings.archive.export_worker:
        runtime.spawn(export_worker.run())

    unary = MessageUnaryServicer(
        conversations, messages, inbox, max_body_bytes=config.max_body_bytes, clock=clock
    )
    servicers = [
        InboxServicer(inbox, conversations, clock=clock),
        GroupsServicer(groups, clock=clock),
        ServerSearchServicer(
            ServerSearchSetting(conversations, conversation_store, pipeline, doorbell, limits),
            clock=clock,
        ),
        ChangesServicer(changes, max_body_bytes=config.max_body_bytes),
        HistoryExportServicer(exports, clock=clock),
        PushServicer(push_devices),
        unary,
    ]
    stream = StreamServicer(delivery, acks, codec, typing, tracing=tracing)

    def owned_here(conversation_id: str) -> bool:
        regions = runtime.region_map()
        return regions.region_or_self(conversation_id) == regions.self_region

    erasure_store = ErasureStore(runtime.db, runtime.redis)
    await erasure_store.ensure_indexes()
    erasure = AccountErasure(
        erasure_store,
        conversations,
        pipeline,
        media_references,
        doorbell,
        archive=archiver,
        owned=owned_here,
        tombstone_window_seconds=config.replication.tombstone_window_days * 86400.0,
    )
    search_access = SearchAccess(message_store, conversations, conversation_store)
    internal = MessageInternalServicer(
        media_access, MediaNotices(doorbell, codec), erasure, search_access
    )

    async def stop() -> None:
        await ownership.leave()
        await owner_channels.close()
        await acks.flush()
        await projector.drain()
        await push_worker.drain()
        await push_router.close()
        await media.drain()
        await media_references.close()
        await accounts.close()
        # Handed over at once rather than when the lease expires; a pass still
        # running meanwhile is harmless (every step of a move is idempotent).
        await archiver.release()
        await export_worker.release()
        await replication.close()
        await runtime.close()
        await archive_objects.close()
        await export_objects.close()

    def drain() -> None:
        # Shards are handed back first, so other processes take them over
        # while this one finishes what it was given.
        ownership.drain()
        hub.close_all(
            Unavailable(
                "this server is shutting down; reconnect to resume",
                reason=Reason.SHUTTING_DOWN,
            )
        )

    replication = build_replication(
        runtime.db,
        doorbell=doorbell,
        topology=runtime.current_topology,
        regions=runtime.region_map,
        credential=runtime.service_credential(),
        instance_id=random_id(),
        settings=replicator_settings(config.replication),
        clock=replicator_clock(config.replication.clock_offset_file),
        inbox_settings=inbox_settings,
        settings_merged=lambda c, a: inbox.settings_replicated(c, a, now=clock()),
    )
    runtime.registry.register(replication.metrics)
    if settings.topology.path:
        runtime.spawn(replication.run(poll_seconds=settings.topology.poll_seconds))
    routing = OwnerRouting(router)
    region_router = RegionRouter(
        runtime.region_map,
        RegionChannels(runtime.current_topology, owner_channels),
        forward_timeout_seconds=ownership_config.forward_timeout_seconds,
    )
    runtime.registry.register(OwnershipMetrics(ownership, router, region_router))
    region_routing = RegionRouting(region_router)
    host = ServiceHost(
        name="svc_message",
        settings=config.server.model_copy(
            update={"max_receive_message_bytes": config.receive_limit_bytes}
        ),
        interceptors=runtime.interceptors(
            public_methods=(),
            internal_services=[INTERNAL_SERVICE_NAME, REPLICATION_SERVICE_NAME],
        ),
        register=lambda server: register(
            server, servicers, stream, routing, internal, region_routing, replication.servicer
        ),
        service_names=[SERVICE_NAME, INTERNAL_SERVICE_NAME, REPLICATION_SERVICE_NAME],
        registry=runtime.registry,
        on_stop=[stop],
        on_draining=[drain],
    )
    return host


def main(argv: list[str] | None = None) -> None:
    service_main(
        argv,
        name="svc_message",
        description="Parley messaging",
        build=build,
        server=lambda settings: settings.message.server,
    )
