"""Composition root of svc_media: builds every dependency once and runs the host."""

from __future__ import annotations

import asyncio

import grpc
import structlog

from parley.media.v1 import media_pb2_grpc, references_pb2_grpc
from parley_core.config import Settings
from parley_core.limits import LimitName
from parley_core.rpc.server import ServiceHost
from parley_core.runtime import open_runtime, service_main
from parley_core.tasks import stop_tasks
from parley_core.telemetry import build_tracing
from svc_media.domain.access import AccessCheck
from svc_media.domain.admin import AdminHandler
from svc_media.domain.collector import Collector, Sweeper
from svc_media.domain.decisions import DECISION_SECONDS, DownloadDecisions
from svc_media.domain.downloads import DownloadHandler
from svc_media.domain.message_regions import RegionalMessages, RegionalNotices
from svc_media.domain.policy import MediaPolicy
from svc_media.domain.references import ReferenceHandler
from svc_media.domain.region_routing import MediaRegionRouter
from svc_media.domain.restores import RestoreHandler, RestorePolicy, RestorePoller
from svc_media.domain.tiers import ArchiveHorizon, keep_tiers, lifecycle_plan
from svc_media.domain.uploads import UploadHandler
from svc_media.metrics import Inventory, MediaMetrics
from svc_media.model import MediaStats
from svc_media.peers.messages import MessagePeerClient
from svc_media.peers.regions import MediaRegionClient, MessagePeers
from svc_media.servicer import admin as admin_servicer
from svc_media.servicer import media as media_servicer
from svc_media.servicer import references as reference_servicer
from svc_media.servicer.region_routing import RegionRoutedMedia, RegionRoutedReferences
from svc_media.storage.admin import AuditStore, QuarantineStore
from svc_media.storage.media import MediaStore
from svc_media.storage.objects import S3Objects
from svc_media.storage.restores import RestoreStore
from svc_media.storage.sessions import UploadStore
from svc_media.storage.usage import UsageStore

log = structlog.get_logger(__name__)

# The abuse limits svc_media applies (docs/ARCHITECTURE.md, Abuse limits).
LIMITS = (
    LimitName.MEDIA_UPLOAD_PER_ACCOUNT,
    LimitName.MEDIA_DOWNLOAD_PER_ACCOUNT,
    LimitName.MEDIA_RESTORE_PER_ACCOUNT,
)


async def build(settings: Settings) -> ServiceHost:
    config = settings.media
    tracing = build_tracing(settings.telemetry.tracing, service="svc_media", region=settings.region)
    runtime = await open_runtime(settings, service="media", tracing=tracing)
    stats = MediaStats()
    policy = MediaPolicy.from_settings(config)
    uploads_store = UploadStore(runtime.db)
    media_store = MediaStore(runtime.db)
    audit = AuditStore(runtime.db)
    restore_store = RestoreStore(runtime.db)
    for store in (uploads_store, media_store, audit, restore_store):
        await store.ensure_indexes()
    usage = UsageStore(runtime.db)
    quarantine = QuarantineStore(runtime.db)
    objects = await S3Objects.open(settings.s3, timeout_seconds=config.s3_timeout_seconds)
    # Started down-or-up as the store answers; media RPCs refuse while it is down,
    # the service itself starts either way (messaging never waits for media).
    await objects.probe()
    messages = MessagePeerClient(
        config.message_target,
        runtime.service_credential(),
        interceptors=tracing.client_interceptors(),
    )
    # Peer regions: their svc_message answers for messages replicated only
    # there; their svc_media holds the objects their ids name.
    message_peers = MessagePeers(
        runtime.current_topology,
        credential=runtime.service_credential(),
        interceptors=tracing.client_interceptors(),
    )
    every_region_messages = RegionalMessages(messages, message_peers)
    region_link = MediaRegionClient(
        runtime.current_topology,
        credential=runtime.service_credential(),
        interceptors=tracing.client_interceptors(),
    )
    region_router = MediaRegionRouter(runtime.region_map, region_link)
    access = AccessCheck(every_region_messages)
    limits = runtime.limiter(LIMITS)
    uploads = UploadHandler(
        uploads=uploads_store,
        media=media_store,
        usage=usage,
        quarantine=quarantine,
        objects=objects,
        access=access,
        limits=limits,
        policy=policy,
        stats=stats,
        region_number=region_router.region_number,
    )
    horizon = ArchiveHorizon()
    decisions = DownloadDecisions(ttl=min(DECISION_SECONDS, float(config.get_url_seconds)))
    downloads = DownloadHandler(
        horizon=horizon,
        decisions=decisions,
        media=media_store,
        quarantine=quarantine,
        objects=objects,
        access=access,
        limits=limits,
        policy=policy,
        stats=stats,
    )
    restore_policy = RestorePolicy.from_settings(config.tiers)
    restores = RestoreHandler(
        downloads=downloads,
        restores=restore_store,
        quarantine=quarantine,
        objects=objects,
        notices=RegionalNotices(messages, message_peers, region_router.home_of),
        limits=limits,
        policy=restore_policy,
        stats=stats,
    )
    references = ReferenceHandler(
        media=media_store,
        quarantine=quarantine,
        policy=policy,
        stats=stats,
        messages=every_region_messages,
    )
    admin = AdminHandler(quarantine=quarantine, audit=audit, decisions=decisions)
    collector = Collector(
        media=media_store,
        usage=usage,
        objects=objects,
        messages=every_region_messages,
        policy=policy,
        stats=stats,
    )
    inventory = Inventory(media_store)
    sweeper = Sweeper(
        uploads,
        collector,
        stats,
        interval_seconds=config.sweep_interval_seconds,
        batch=config.sweep_batch,
        after_pass=inventory.refresh,
    )
    runtime.registry.register(
        MediaMetrics(
            stats,
            inventory,
            lambda: objects.available,
            region_forwards=region_router.forwarded,
            region_refusals=region_router.refused,
        )
    )
    await runtime.start_revocation_feed()
    runtime.start_topology_watcher()
    poller = RestorePoller(restores, interval_seconds=restore_policy.poll_seconds)
    tasks = [
        asyncio.create_task(objects.run_probe()),
        asyncio.create_task(sweeper.run()),
        asyncio.create_task(poller.run()),
        # Beside serving: a store that does not answer yet must not hold up the start.
        asyncio.create_task(keep_tiers(objects, lifecycle_plan(config), horizon)),
    ]

    async def stop() -> None:
        await stop_tasks(tasks)
        await messages.close()
        await message_peers.close()
        await region_link.close()
        await objects.close()
        await runtime.close()

    media = RegionRoutedMedia(
        media_servicer.MediaServicer(uploads, downloads, restores), region_router
    )
    operators = admin_servicer.MediaAdminServicer(admin)
    internal = RegionRoutedReferences(
        reference_servicer.MediaReferenceServicer(references, uploads), region_router
    )

    def register(server: grpc.aio.Server) -> None:
        media_pb2_grpc.add_MediaServiceServicer_to_server(media, server)
        media_pb2_grpc.add_MediaAdminServiceServicer_to_server(operators, server)
        references_pb2_grpc.add_MediaReferenceServiceServicer_to_server(internal, server)

    return ServiceHost(
        name="svc_media",
        settings=config.server,
        interceptors=runtime.interceptors(
            public_methods=(),
            internal_services=[reference_servicer.SERVICE_NAME],
            operator_services=[admin_servicer.SERVICE_NAME],
        ),
        register=register,
        service_names=[
            media_servicer.SERVICE_NAME,
            admin_servicer.SERVICE_NAME,
            reference_servicer.SERVICE_NAME,
        ],
        registry=runtime.registry,
        on_stop=[stop],
    )


def main(argv: list[str] | None = None) -> None:
    service_main(
        argv,
        name="svc_media",
        description="Parley media",
        build=build,
        server=lambda settings: settings.media.server,
    )
