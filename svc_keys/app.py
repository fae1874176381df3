"""Composition root of svc_keys: builds every dependency once and runs the host."""

from __future__ import annotations

from datetime import timedelta

import grpc

from parley.keys.v1 import accounts_pb2_grpc, keys_pb2_grpc, regions_pb2_grpc
from parley_core.auth.credentials import ServiceCredential
from parley_core.auth.tokens import TokenIssuer, load_private_key
from parley_core.config import ConfigError, Settings
from parley_core.limits import LimitName
from parley_core.rpc.address import ClientAddresses
from parley_core.rpc.server import ServiceHost
from parley_core.runtime import open_runtime, service_main
from parley_core.sampling import SampledCount
from parley_core.storage.key_notices import IdentityChanges, PreKeyLows
from parley_core.storage.ratelimit import BucketEraser
from parley_core.telemetry import Tracing, build_tracing
from parley_core.topology import Topology
from svc_keys.domain.accounts import AccountsHandler
from svc_keys.domain.erasure import ErasureHandler, ErasurePolicy
from svc_keys.domain.key_routing import KeyRegionRouter
from svc_keys.domain.keys import KeysHandler
from svc_keys.domain.regions import HandleRegistry
from svc_keys.domain.revocation_push import RevocationPush
from svc_keys.domain.sender_keys import SenderKeysHandler
from svc_keys.metrics import KeyMetrics, RevocationPushMetrics
from svc_keys.peers.cold import NoColdErasure
from svc_keys.peers.erasers import MediaEraser, MessageEraser, PresenceEraser, SearchEraser
from svc_keys.peers.regions import RegionPeerClient
from svc_keys.servicer.accounts import PUBLIC_METHODS, SERVICE_NAME, AccountServicer
from svc_keys.servicer.keys import SERVICE_NAME as KEY_SERVICE_NAME
from svc_keys.servicer.keys import KeyServicer
from svc_keys.servicer.regions import REGION_SERVICE_NAME, AccountRegionServicer
from svc_keys.storage.accounts import AccountStore
from svc_keys.storage.erasures import ErasureStore
from svc_keys.storage.handle_reservations import HandleReservationStore
from svc_keys.storage.keys import KeyStore
from svc_keys.storage.notices import KeyNoticePublisher
from svc_keys.storage.sender_keys import SenderKeyStore

# The abuse limits svc_keys applies (docs/ARCHITECTURE.md, Abuse limits).
LIMITS = (
    LimitName.SIGNUP_PER_ADDRESS,
    LimitName.SIGNUP_OVERALL,
    LimitName.REFRESH_PER_ADDRESS,
    LimitName.REFRESH_PER_DEVICE,
    LimitName.DEVICE_REGISTER_PER_ACCOUNT,
    LimitName.KEY_UPLOAD_PER_DEVICE,
    LimitName.SENDER_KEYS_PER_DEVICE,
    LimitName.BUNDLE_FETCH_PER_TARGET,
    LimitName.BUNDLE_FETCH_PER_REQUESTER,
)


def _erasers(
    settings: Settings,
    credential: ServiceCredential | None,
    tracing: Tracing,
    topology: Topology | None,
) -> list[MessageEraser | PresenceEraser | MediaEraser | SearchEraser]:
    """The other services' parts of an account erasure, in the job's order:
    this region's services, then svc_message of every peer region (the
    account's messages and memberships in conversations owned there), which
    the job runs after its own steps and independently of each other, so an
    unreachable region delays only its own part."""
    config = settings.keys
    options = {"credential": credential, "interceptors": tracing.client_interceptors()}
    erasers: list[MessageEraser | PresenceEraser | MediaEraser | SearchEraser] = [
        MessageEraser(config.message_target, **options),
        PresenceEraser(config.presence_target, **options),
    ]
    if config.media_target:
        erasers.append(MediaEraser(config.media_target, **options))
    if config.search_target:
        erasers.append(SearchEraser(config.search_target, **options))
    for peer in topology.peers if topology is not None else ():
        address = peer.peer_address("message")
        if address is not None:
            erasers.append(MessageEraser(address, step=f"message@{peer.name}", **options))
    return erasers


async def build(settings: Settings) -> ServiceHost:
    if settings.auth.private_key_file is None:
        raise ConfigError("auth.private_key_file: svc_keys signs tokens and needs the private key")
    try:
        signing_key = load_private_key(settings.auth.private_key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"auth.private_key_file: {exc}") from None
    tracing = build_tracing(settings.telemetry.tracing, service="svc_keys", region=settings.region)
    runtime = await open_runtime(settings, service="keys", tracing=tracing)
    store = AccountStore(runtime.db)
    await store.ensure_indexes()
    key_store = KeyStore(runtime.db)
    await key_store.ensure_indexes()
    pre_key_lows = PreKeyLows(runtime.db)
    await pre_key_lows.ensure_indexes()
    identity_changes = IdentityChanges(runtime.db)
    await identity_changes.ensure_indexes()
    sender_key_store = SenderKeyStore(runtime.db)
    await sender_key_store.ensure_indexes()
    erasure_store = ErasureStore(runtime.db)
    await erasure_store.ensure_indexes()
    notices = KeyNoticePublisher(runtime.redis)
    await runtime.start_revocation_feed()
    runtime.start_topology_watcher()
    limiter = runtime.limiter(LIMITS)
    keys = KeysHandler(
        key_store,
        store,
        limiter,
        pre_key_lows=pre_key_lows,
        identity_changes=identity_changes,
        notices=notices,
        sender_keys=sender_key_store,
        max_pre_keys=settings.keys.max_pre_keys_per_device,
    )
    sender_keys = SenderKeysHandler(
        sender_key_store,
        key_store,
        store,
        notices,
        limiter=limiter,
        max_waiting_per_device=settings.keys.max_unclaimed_sender_keys_per_device,
    )
    regions = runtime.region_map
    region_peers = RegionPeerClient(
        runtime.current_topology,
        credential=runtime.service_credential(),
        interceptors=tracing.client_interceptors(),
    )

    def peer_regions() -> list[str]:
        topology = runtime.topology
        return [] if topology is None else [peer.name for peer in topology.peers]

    revocations = RevocationPush(runtime.revocation_store, region_peers, peers=peer_regions)
    runtime.spawn(revocations.run())
    handle_reservations = HandleReservationStore(runtime.db)
    handles = HandleRegistry(regions, handle_reservations, region_peers, erasures=erasure_store)
    accounts = AccountsHandler(
        store,
        TokenIssuer(signing_key, ttl_seconds=settings.auth.access_token_ttl_seconds),
        revocations,
        keys,
        limiter=limiter,
        max_devices=settings.keys.max_devices_per_account,
        refresh_ttl_seconds=settings.auth.refresh_token_ttl_seconds,
        erasures=erasure_store,
        regions=regions,
        handles=handles,
        peers=region_peers,
    )
    erasers = _erasers(settings, runtime.service_credential(), tracing, runtime.topology)
    erasure_handler = ErasureHandler(
        erasure_store,
        store,
        key_store,
        sender_key_store,
        pre_key_lows,
        identity_changes,
        revocations,
        erasers=erasers,
        cold=NoColdErasure(),
        buckets=BucketEraser(runtime.redis),
        policy=ErasurePolicy(
            handle_cooling_off=timedelta(days=settings.keys.handle_cooling_off_days),
            cold_window=timedelta(days=settings.keys.cold_erasure_days),
            lease=timedelta(seconds=settings.keys.erasure_lease_seconds),
            poll_seconds=settings.keys.erasure_poll_seconds,
            settle=timedelta(seconds=settings.auth.revocation_poll_seconds + 1),
        ),
        handles=handles,
        peers=peer_regions,
    )
    runtime.spawn(erasure_handler.run())
    low_devices = SampledCount("pre_key_low_devices", pre_key_lows.devices_below)
    runtime.spawn(low_devices.run())
    erasures_running = SampledCount("erasures_running", erasure_handler.running)
    runtime.spawn(erasures_running.run())
    runtime.registry.register(KeyMetrics(keys, low_devices, erasure_handler, erasures_running))
    runtime.registry.register(RevocationPushMetrics(revocations))
    key_router = KeyRegionRouter(regions, region_peers)
    servicer = AccountServicer(
        accounts,
        addresses=ClientAddresses(settings.limits.trusted_proxies),
        erasure=erasure_handler,
        router=key_router,
    )
    key_servicer = KeyServicer(keys, sender_keys, router=key_router)
    region_servicer = AccountRegionServicer(handles, revocations)

    def register(server: grpc.aio.Server) -> None:
        accounts_pb2_grpc.add_AccountServiceServicer_to_server(servicer, server)
        keys_pb2_grpc.add_KeyServiceServicer_to_server(key_servicer, server)
        regions_pb2_grpc.add_AccountRegionServiceServicer_to_server(region_servicer, server)

    return ServiceHost(
        name="svc_keys",
        settings=settings.keys.server,
        interceptors=runtime.interceptors(
            public_methods=PUBLIC_METHODS, internal_services=[REGION_SERVICE_NAME]
        ),
        register=register,
        service_names=[SERVICE_NAME, KEY_SERVICE_NAME, REGION_SERVICE_NAME],
        registry=runtime.registry,
        on_stop=[*(e.close for e in erasers), region_peers.close, runtime.close],
    )


def main(argv: list[str] | None = None) -> None:
    service_main(
        argv,
        name="svc_keys",
        description="Parley accounts and keys",
        build=build,
        server=lambda settings: settings.keys.server,
    )
