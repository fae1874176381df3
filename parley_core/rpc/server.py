"""Hosting a service: gRPC server, health, reflection, metrics, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from parley_core.config import ServerSettings

log = structlog.get_logger(__name__)


@dataclass
class ServiceHost:
    """Runs one service's gRPC server until a signal, then stops gracefully.

    ``register`` adds servicers to the server; ``service_names`` are the full
    names reported by health and reflection; ``on_stop`` hooks run after the
    server stopped taking calls and in-flight calls finished (flush buffers,
    close connections).
    """

    name: str
    settings: ServerSettings
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]]
    register: Callable[[grpc.aio.Server], None]
    service_names: Sequence[str]
    registry: CollectorRegistry
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Run first when stopping: end long-lived streams so their clients move to
    # another instance now instead of waiting out the grace period.
    on_draining: list[Callable[[], None]] = field(default_factory=list)
    port: int = 0
    metrics_port: int | None = None
    _server: grpc.aio.Server | None = None
    _health: HealthServicer | None = None
    _metrics_http: Any = None
    _stopping: bool = False
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> int:
        server = grpc.aio.server(
            interceptors=list(self.interceptors),
            options=[
                ("grpc.max_receive_message_length", self.settings.max_receive_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                # Mobile clients keep idle delivery streams alive with pings;
                # gRPC's default refuses any more often than every 5 minutes
                # and answers with GOAWAY too_many_pings.
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        self.register(server)
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        self.port = server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {self.settings.host}:{self.settings.port}")
        await server.start()
        self._server = server
        if self.settings.metrics_port is not None:
            httpd, _thread = start_http_server(
                self.settings.metrics_port, addr=self.settings.host, registry=self.registry
            )
            self._metrics_http = httpd
            self.metrics_port = httpd.server_port
        for service_name in ("", *self.service_names):
            await self._health.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "service_started",
            name=self.name,
            address=f"{self.settings.host}:{self.port}",
            metrics_port=self.metrics_port,
        )
        return self.port

    async def stop(self) -> None:
        if self._server is None or self._stopping:
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_seconds
        log.info("service_stopping", name=self.name, grace_seconds=grace)
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        for drain in self.on_draining:
            try:
                drain()
            except Exception:
                log.exception("drain_hook_failed", name=self.name)
        # New calls are refused from here; calls in flight get `grace` to finish.
        await self._server.stop(grace)
        for hook in self.on_stop:
            try:
                await hook()
            except Exception:
                log.exception("stop_hook_failed", name=self.name)
        if self._metrics_http is not None:
            threading.Thread(target=self._metrics_http.shutdown, daemon=True).start()
        log.info("service_stopped", name=self.name)
        self._done.set()

    async def serve_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))
        await self._done.wait()


def run(main: Callable[[], Coroutine[Any, Any, None]], *, event_loop: str) -> None:
    """Run a service's async main on the configured event loop."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
