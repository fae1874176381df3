"""Readiness probes: is a child answering yet? Each probe call is bounded by a timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from parley_dev.process import ManagedProcess

# Pause between failed probes; a server usually comes up within a second.
RETRY_SECONDS = 0.1
# Lines of the child's log quoted when it fails to come up.
LOG_TAIL_LINES = 30
# Upper bound on one probe call, whatever the client library's own timeouts do.
PROBE_CAP_SECONDS = 5.0


class StackError(RuntimeError):
    """A part of the local stack failed to start, answer or stop."""


Probe = Callable[[], Awaitable[None]]


async def mongo_ping(uri: str, timeout: float = 0.5) -> None:
    # A fresh client per attempt: one that failed server selection keeps no state
    # that could make the next attempt wait longer.
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        uri,
        retryWrites=False,
        serverSelectionTimeoutMS=int(timeout * 1000),
        connectTimeoutMS=int(timeout * 1000),
        socketTimeoutMS=int(timeout * 1000),
    )
    try:
        await client.admin.command("ping")
    finally:
        await client.close()


async def redis_ping(url: str, timeout: float = 0.5) -> None:
    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        if not await client.ping():
            raise StackError(f"redis at {url} did not answer PONG")
    finally:
        await client.aclose()


async def grpc_health_serving(target: str, service: str = "", timeout: float = 1.0) -> None:
    """Raise unless ``target`` reports SERVING for ``service`` on grpc.health.v1."""
    # A new channel per attempt: a channel that failed to connect backs off for up
    # to minutes before it tries again, far longer than a server takes to start.
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        raise StackError(f"{target} health is {status_name}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


async def wait_until_ready(
    process: ManagedProcess, probe: Probe, *, what: str, timeout: float
) -> None:
    """Poll ``probe`` until it passes; fail fast if the process dies, or at ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt finished"
    while True:
        if not process.alive():
            raise StackError(
                f"{process.name} exited with code {process.returncode} before {what}; "
                f"end of {process.log_path}:\n{process.log_tail(LOG_TAIL_LINES)}"
            )
        try:
            await asyncio.wait_for(probe(), PROBE_CAP_SECONDS)
        except Exception as exc:
            last_error = _describe(exc)
        else:
            return
        if time.monotonic() >= deadline:
            raise StackError(
                f"{process.name} (pid {process.pid}) not ready after {timeout:.0f}s: {what} "
                f"failed ({last_error}); end of {process.log_path}:\n"
                f"{process.log_tail(LOG_TAIL_LINES)}"
            )
        await asyncio.sleep(RETRY_SECONDS)
