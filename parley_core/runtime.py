"""What every service's composition root builds the same way.

Opens MongoDB and Redis, loads the token verification keys and the revocation
list, and makes the interceptor; the service's own app module adds its storage,
domain and servicers on top and hands everything to a ServiceHost.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from parley_core.auth.credentials import OperatorCredentials, Principal, ServiceCredential
from parley_core.auth.revocations import RevocationList
from parley_core.auth.tokens import TokenVerifier, load_public_keys
from parley_core.config import ConfigError, ServerSettings, Settings, load_settings
from parley_core.errors import Unauthenticated
from parley_core.limits import Limiter, LimitName, rates_from_settings
from parley_core.limits.metrics import LimiterMetrics
from parley_core.log_setup import configure_logging
from parley_core.regions import RegionMap
from parley_core.rpc.interceptor import ServiceInterceptor
from parley_core.rpc.metrics import RpcMetrics
from parley_core.rpc.server import ServiceHost, run
from parley_core.storage import mongo as mongo_storage
from parley_core.storage import redis as redis_storage
from parley_core.storage.metrics import DbWriteMetrics
from parley_core.storage.mongo import Database, MongoClient, WriteCounter
from parley_core.storage.probes import BackendMetrics, BackendProbe
from parley_core.storage.ratelimit import RedisBuckets
from parley_core.storage.revocations import RevocationFeed, RevocationStore
from parley_core.tasks import stop_tasks
from parley_core.telemetry import Tracing
from parley_core.topology import Topology, TopologyMetrics, TopologyWatcher, file_reader


@dataclass
class Runtime:
    settings: Settings
    service: str
    mongo: MongoClient
    db: Database
    redis: redis_storage.Redis
    revocations: RevocationList
    revocation_store: RevocationStore
    verifier: TokenVerifier
    registry: CollectorRegistry
    tracing: Tracing = field(default_factory=Tracing)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _feed: RevocationFeed | None = None
    topology_watcher: TopologyWatcher | None = None
    _region_map: tuple[Topology | None, RegionMap] | None = None

    def interceptor(
        self,
        *,
        public_methods: Iterable[str],
        internal_services: Iterable[str] = (),
        operator_services: Iterable[str] = (),
    ) -> ServiceInterceptor:
        """``internal_services`` and ``operator_services`` (full service names)
        take the service credential or an operator credential instead of an
        access token."""
        privileged: dict[str, Callable[[str], Principal]] = {}
        if internal_services:
            privileged.update(dict.fromkeys(internal_services, self.service_credential_check()))
        if operator_services:
            operators = OperatorCredentials.from_file(self.settings.auth.operator_tokens_file)
            privileged.update(dict.fromkeys(operator_services, operators.verify))
        return ServiceInterceptor(
            verifier=self.verifier,
            public_methods=public_methods,
            metrics=RpcMetrics(self.registry, service=self.service),
            privileged_services=privileged,
            refusal_hold_seconds=self.settings.limits.refusal_hold_seconds,
        )

    def interceptors(
        self,
        *,
        public_methods: Iterable[str],
        internal_services: Iterable[str] = (),
        operator_services: Iterable[str] = (),
    ) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """Tracing's (when on) around the service's own."""
        return [
            *self.tracing.server_interceptors(),
            self.interceptor(
                public_methods=public_methods,
                internal_services=internal_services,
                operator_services=operator_services,
            ),
        ]

    def service_credential(self) -> ServiceCredential | None:
        """The deployment's service credential, for outgoing internal calls;
        None when the config names no file."""
        path = self.settings.auth.service_token_file
        return None if path is None else ServiceCredential.from_file(path)

    def service_credential_check(self) -> Callable[[str], Principal]:
        credential = self.service_credential()
        if credential is not None:
            return credential.verify

        def refuse(_token: str) -> Principal:
            raise Unauthenticated("internal RPCs are off: no service credential is configured")

        return refuse

    def limiter(self, names: Iterable[LimitName]) -> Limiter:
        """The service's rate limiter over the limits it applies (``names``),
        with their rates from ``limits`` in the config; its refusals are
        exported as ``parley_rate_limited_total``. Build one per process."""
        config = self.settings.limits
        limiter = Limiter(
            RedisBuckets(
                self.redis,
                timeout_seconds=config.redis_timeout_seconds,
                fallback_seconds=config.fallback_seconds,
            ),
            rates_from_settings(config),
            names=names,
            enabled=config.enabled,
        )
        self.registry.register(LimiterMetrics(limiter, service=self.service))
        return limiter

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task for the life of the service."""
        self.tasks.append(asyncio.create_task(coro))

    async def start_revocation_feed(self, on_revoked: Callable[[str], None] | None = None) -> None:
        self._feed = RevocationFeed(
            self.revocation_store,
            self.redis,
            self.revocations,
            poll_seconds=self.settings.auth.revocation_poll_seconds,
            on_revoked=on_revoked,
        )
        await self._feed.load()
        self.tasks.append(asyncio.create_task(self._feed.run()))

    @property
    def topology(self) -> Topology | None:
        """The region topology in force; None in single-region (local) mode."""
        return None if self.topology_watcher is None else self.topology_watcher.current

    def current_topology(self) -> Topology | None:
        """``topology`` as a callable, for components that follow reloads."""
        return self.topology

    def region_map(self) -> RegionMap:
        """Where accounts, conversations and handles live under the topology
        in force (one region without one); rebuilt only when it changes."""
        topology = self.topology
        cached = self._region_map
        if cached is None or cached[0] is not topology:
            cached = (topology, RegionMap.from_topology(topology, region=self.settings.region))
            self._region_map = cached
        return cached[1]

    def start_topology_watcher(self) -> TopologyWatcher:
        """Load the topology file now, then follow its changes for the life of the service."""
        config = self.settings.topology
        read = file_reader(Path(config.path)) if config.path else _no_topology_file
        watcher = TopologyWatcher(read, poll_seconds=config.poll_seconds)
        watcher.poll()
        # Registered even when off, so /metrics always says generation 0.
        self.registry.register(TopologyMetrics(watcher))
        if config.path:
            self.spawn(watcher.run())
        self.topology_watcher = watcher
        return watcher

    async def close(self) -> None:
        await stop_tasks(self.tasks)
        await self.redis.aclose()
        await self.mongo.close()
        # Last, so the spans of everything above are exported.
        await self.tracing.shutdown()


def _no_topology_file() -> bytes | None:
    return None


async def open_runtime(
    settings: Settings, *, service: str, tracing: Tracing | None = None
) -> Runtime:
    if not settings.auth.public_key_files:
        raise ConfigError("auth.public_key_files: at least one token verification key is needed")
    try:
        public_keys = load_public_keys(settings.auth.public_key_files)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"auth.public_key_files: {exc}") from None
    writes = WriteCounter()
    mongo = mongo_storage.connect(settings.mongo, app_name=service, listeners=[writes])
    await mongo_storage.ping(mongo)
    db = mongo_storage.durable_database(mongo, settings.mongo)
    redis = redis_storage.connect(settings.redis)
    revocations = RevocationList()
    revocation_store = RevocationStore(
        db, redis, token_ttl_seconds=settings.auth.access_token_ttl_seconds
    )
    await revocation_store.ensure_indexes()
    registry = CollectorRegistry()
    registry.register(DbWriteMetrics(writes))
    probe = BackendProbe(mongo, redis)
    registry.register(BackendMetrics(probe, service=service))
    runtime = Runtime(
        settings=settings,
        service=service,
        mongo=mongo,
        db=db,
        redis=redis,
        revocations=revocations,
        revocation_store=revocation_store,
        verifier=TokenVerifier(public_keys, revocations),
        registry=registry,
        tracing=tracing or Tracing(),
    )
    runtime.spawn(probe.run())
    return runtime


def service_main(
    argv: list[str] | None,
    *,
    name: str,
    description: str,
    build: Callable[[Settings], Awaitable[ServiceHost]],
    server: Callable[[Settings], ServerSettings],
) -> None:
    """The entry point of a service: settings, logs, then serve until a signal."""
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--config", type=Path, help="YAML config file (or PARLEY_CONFIG)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        raise SystemExit(f"{name}: {exc}") from None
    configure_logging(service=name, level=settings.log_level, fmt=settings.log_format)

    async def serve() -> None:
        host = await build(settings)
        await host.start()
        await host.serve_until_signalled()

    run(serve, event_loop=server(settings).event_loop)
