"""Composition root of svc_search: builds every dependency once and runs the host."""

from __future__ import annotations

import asyncio

import grpc

from parley.search.v1 import internal_pb2_grpc, search_pb2_grpc
from parley_core.config import Settings
from parley_core.limits import LimitName
from parley_core.rpc.server import ServiceHost
from parley_core.runtime import open_runtime, service_main
from parley_core.tasks import stop_tasks
from parley_core.telemetry import build_tracing
from svc_search.domain.indexing import IndexHandler
from svc_search.domain.queries import SearchHandler
from svc_search.domain.sweeper import Sweeper
from svc_search.metrics import SearchMetrics
from svc_search.model import SearchStats, Shape
from svc_search.peers.messages import MessagePeerClient
from svc_search.servicer import internal as internal_servicer
from svc_search.servicer import search as search_servicer
from svc_search.storage.postings import PostingStore

# The abuse limits svc_search applies (docs/ARCHITECTURE.md, Abuse limits).
LIMITS = (LimitName.SEARCH_INDEX_PER_ACCOUNT, LimitName.SEARCH_QUERY_PER_ACCOUNT)


async def build(settings: Settings) -> ServiceHost:
    config = settings.search
    tracing = build_tracing(
        settings.telemetry.tracing, service="svc_search", region=settings.region
    )
    runtime = await open_runtime(settings, service="search", tracing=tracing)
    stats = SearchStats()
    shape = Shape(
        groups_per_query=config.groups_per_query,
        tokens_per_group=config.tokens_per_group,
        min_token_bytes=config.min_token_bytes,
        max_token_bytes=config.max_token_bytes,
        max_tokens_per_message=config.max_tokens_per_message,
    )
    store = PostingStore(runtime.db)
    await store.ensure_indexes()
    messages = MessagePeerClient(
        config.message_target,
        runtime.service_credential(),
        interceptors=tracing.client_interceptors(),
    )
    limits = runtime.limiter(LIMITS)
    indexing = IndexHandler(store, messages, limits, stats)
    searches = SearchHandler(store, messages, limits, stats)
    sweeper = Sweeper(
        store,
        messages,
        stats,
        interval_seconds=config.sweep_interval_seconds,
        batch=config.sweep_batch,
    )
    runtime.registry.register(SearchMetrics(stats))
    await runtime.start_revocation_feed()
    runtime.start_topology_watcher()
    tasks = [asyncio.create_task(sweeper.run())]

    async def stop() -> None:
        await stop_tasks(tasks)
        await messages.close()
        await runtime.close()

    search = search_servicer.SearchServicer(
        searches, indexing, shape, response_bucket_bytes=config.response_bucket_bytes
    )
    internal = internal_servicer.SearchInternalServicer(indexing)

    def register(server: grpc.aio.Server) -> None:
        search_pb2_grpc.add_SearchServiceServicer_to_server(search, server)
        internal_pb2_grpc.add_SearchInternalServiceServicer_to_server(internal, server)

    return ServiceHost(
        name="svc_search",
        settings=config.server,
        interceptors=runtime.interceptors(
            public_methods=(),
            internal_services=[internal_servicer.SERVICE_NAME],
            operator_services=[],
        ),
        register=register,
        service_names=[search_servicer.SERVICE_NAME, internal_servicer.SERVICE_NAME],
        registry=runtime.registry,
        on_stop=[stop],
    )


def main(argv: list[str] | None = None) -> None:
    service_main(
        argv,
        name="svc_search",
        description="Parley search",
        build=build,
        server=lambda settings: settings.search.server,
    )
