"""Composition root of svc_presence: builds every dependency once and runs the host."""

from __future__ import annotations

import asyncio
import secrets

import grpc
import structlog

from parley.presence.v1 import internal_pb2_grpc, presence_pb2_grpc
from parley_core.config import Settings
from parley_core.errors import Reason, Unavailable
from parley_core.limits import LimitName
from parley_core.rpc.server import ServiceHost
from parley_core.runtime import open_runtime, service_main
from parley_core.storage.liveness import Liveness
from parley_core.tasks import stop_tasks
from parley_core.telemetry import build_tracing
from svc_presence.domain.erasure import PresenceErasure
from svc_presence.domain.export import Exporter
from svc_presence.domain.presence import PresenceHandler
from svc_presence.domain.region_intake import RegionIntake
from svc_presence.domain.rules import RuleLoader
from svc_presence.domain.subscriptions import Hub
from svc_presence.domain.sweeper import SeenBuffer, Sweeper
from svc_presence.metrics import PresenceMetrics
from svc_presence.model import PresenceStats, RegionStats
from svc_presence.peers.regions import PresencePeerClient
from svc_presence.servicer.internal import INTERNAL_SERVICE_NAME, PresenceInternalServicer
from svc_presence.servicer.presence import SERVICE_NAME, PresenceServicer
from svc_presence.servicer.regions import REGION_SERVICE_NAME, PresenceRegionServicer
from svc_presence.storage.channels import PresenceChannels
from svc_presence.storage.contacts import ContactStore
from svc_presence.storage.documents import LastSeenStore, SettingsStore
from svc_presence.storage.erasure import PresenceErasureStore
from svc_presence.storage.export import ExportSource
from svc_presence.storage.live import LiveStore, connect_fast, connect_listener
from svc_presence.storage.remote import RemotePresenceStore

log = structlog.get_logger(__name__)

# The abuse limits svc_presence applies (docs/ARCHITECTURE.md, Abuse limits).
# Heartbeats are not limited: each is one O(1) Redis script, renewing a lease.
LIMITS = (LimitName.CONTACT_ADD_PER_ACCOUNT, LimitName.PRESENCE_SUBSCRIBE_PER_ACCOUNT)


async def build(settings: Settings) -> ServiceHost:
    config = settings.presence
    tracing = build_tracing(
        settings.telemetry.tracing, service="svc_presence", region=settings.region
    )
    runtime = await open_runtime(settings, service="presence", tracing=tracing)
    stats = PresenceStats()
    # Presence's own Redis clients: short timeouts, so its RPCs fail fast
    # when Redis is down (the runtime's client is for the revocation feed).
    fast = connect_fast(settings.redis, timeout_seconds=config.redis_timeout_seconds)
    listener = connect_listener(settings.redis, timeout_seconds=config.redis_timeout_seconds)
    liveness = Liveness(
        fast,
        ttl_seconds=config.device_ttl_seconds,
        persist_seconds=config.last_seen_persist_seconds,
        cluster_shards=settings.redis.cluster_presence_shards,
    )
    live = LiveStore(liveness, stats)
    region_stats = RegionStats()
    remote = RemotePresenceStore(fast, liveness.keys, stats)

    def has_peers() -> bool:
        topology = runtime.topology
        return topology is not None and bool(topology.peers)

    settings_store = SettingsStore(runtime.db)
    contacts = ContactStore(runtime.mongo, runtime.db)
    await contacts.ensure_indexes()
    last_seen = LastSeenStore(runtime.db)
    rules = RuleLoader(settings_store, contacts)
    buffer = SeenBuffer(last_seen, stats)
    sweeper = Sweeper(live, buffer, stats, interval_seconds=config.sweep_interval_seconds)
    presence = PresenceHandler(
        live,
        settings_store,
        contacts,
        last_seen,
        rules,
        stats,
        limits=runtime.limiter(LIMITS),
        max_contacts=config.max_contacts,
        after_drop=sweeper.poke,
        remote=remote,
        has_peers=has_peers,
    )
    hub: Hub
    channels = PresenceChannels(
        listener,
        keys=liveness.keys,
        timeout_seconds=config.redis_timeout_seconds,
        on_message=lambda account_id, payload: hub.on_message(account_id, payload),
        on_disconnect=lambda: hub.on_disconnect(),
    )
    hub = Hub(
        channels,
        live,
        rules,
        last_seen,
        stats,
        max_sessions=config.max_subscriptions,
        max_per_viewer=config.max_subscriptions_per_account,
        remote=remote,
        has_peers=has_peers,
    )
    await runtime.start_revocation_feed()
    runtime.start_topology_watcher()
    peers = PresencePeerClient(runtime.current_topology, credential=runtime.service_credential())
    # Idle (one look at the topology every few seconds) while it names no peer.
    exporter = Exporter(
        ExportSource(fast, listener, liveness.keys),
        peers,
        region_stats,
        topology=runtime.current_topology,
        regions=runtime.region_map,
        holder=secrets.token_hex(8),
    )
    runtime.registry.register(
        PresenceMetrics(stats, hub, channels, region_stats, leading=lambda: exporter.leading)
    )
    tasks = [
        asyncio.create_task(channels.run()),
        asyncio.create_task(hub.run()),
        asyncio.create_task(sweeper.run()),
        asyncio.create_task(sweeper.run_flusher()),
        asyncio.create_task(hub.run_remote_expiry()),
        asyncio.create_task(exporter.run()),
    ]

    async def stop() -> None:
        await stop_tasks(tasks)
        await exporter.release()
        await peers.close()
        # Last seen taken from Redis but not yet written would otherwise be lost.
        try:
            await buffer.flush()
        except Exception as exc:
            log.warning("last_seen_final_flush_failed", error=repr(exc))
        await fast.aclose()
        await listener.aclose()
        await runtime.close()

    servicer = PresenceServicer(presence, hub)
    internal = PresenceInternalServicer(
        PresenceErasure(PresenceErasureStore(runtime.db, fast, liveness.keys), contacts, buffer)
    )
    regions = PresenceRegionServicer(
        RegionIntake(remote, region_stats, topology=runtime.current_topology)
    )

    def register(server: grpc.aio.Server) -> None:
        presence_pb2_grpc.add_PresenceServiceServicer_to_server(servicer, server)
        internal_pb2_grpc.add_PresenceInternalServiceServicer_to_server(internal, server)
        internal_pb2_grpc.add_PresenceRegionServiceServicer_to_server(regions, server)

    return ServiceHost(
        name="svc_presence",
        settings=config.server,
        interceptors=runtime.interceptors(
            public_methods=(), internal_services=[INTERNAL_SERVICE_NAME, REGION_SERVICE_NAME]
        ),
        register=register,
        service_names=[SERVICE_NAME, INTERNAL_SERVICE_NAME, REGION_SERVICE_NAME],
        registry=runtime.registry,
        on_stop=[stop],
        on_draining=[
            lambda: hub.fail_all(
                Unavailable(
                    "this server is shutting down; subscribe again",
                    reason=Reason.SHUTTING_DOWN,
                )
            )
        ],
    )


def main(argv: list[str] | None = None) -> None:
    service_main(
        argv,
        name="svc_presence",
        description="Parley presence",
        build=build,
        server=lambda settings: settings.presence.server,
    )
