"""Helpers shared by the test suite: channels, auth metadata, bounded waits."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley_core.limits import LimitName
from parley_dev.limits import unreached_limits

Metadata = tuple[tuple[str, str], ...]

# For stacks whose tests are legitimate floods by the limits' standards:
# hundreds of sign-ups from one address, or sends as fast as a test can make
# them. The limits are still taken, none refuses; but the bundle-fetch limits
# keep their defaults, which the key directory's tests check. The others are
# tested on a stack of their own (tests/integration/test_rate_limits.py).
TEST_LIMITS = {
    "limits": unreached_limits(
        keep=(LimitName.BUNDLE_FETCH_PER_TARGET, LimitName.BUNDLE_FETCH_PER_REQUESTER)
    )
}


def channel(target: str) -> grpc.aio.Channel:
    """An insecure channel to ``target``; use as ``async with channel(t) as ch:``."""
    return grpc.aio.insecure_channel(target)


def auth(token: str) -> Metadata:
    """Call metadata carrying an access token."""
    return (("authorization", f"Bearer {token}"),)


async def health_status(target: str, service: str = "", timeout: float = 2.0) -> int:
    """The grpc.health.v1 status of ``service`` at ``target`` (raises AioRpcError if down)."""
    async with channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return int(reply.status)


SERVING = int(health_pb2.HealthCheckResponse.SERVING)


async def is_serving(target: str, timeout: float = 2.0) -> bool:
    try:
        return await health_status(target, timeout=timeout) == SERVING
    except grpc.aio.AioRpcError:
        return False


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    """Poll an async ``condition`` until it is true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if await condition():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET, run off the event loop (metrics endpoints)."""

    def fetch() -> tuple[int, str]:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()

    return await asyncio.to_thread(fetch)
