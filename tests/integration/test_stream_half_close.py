"""A client that half-closes its Connect stream (done writing) gets the stream
ended by the server, with OK, once what was pending for it is written; the
device's stream lease (what keeps it online) goes with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest_asyncio
import redis.asyncio as aioredis

from parley.message.v1 import messages_pb2 as mpb
from parley_dev.stack import LocalStack
from tests.users import Device, direct, send, sign_up

# Far more than the server needs, far less than a lease (45 s) or the 30 s
# a stream waits for its resume: ending by expiry would fail the test.
ENDS_WITHIN_SECONDS = 5.0


@pytest_asyncio.fixture(loop_scope="session")
async def redis(stack: LocalStack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def lease(redis: aioredis.Redis, device: Device) -> str | None:
    """The device's stream lease in its presence record (parley_core/storage/liveness.py)."""
    value: str | None = await redis.hget(f"parley:p:{device.account_id}", f"s:{device.device_id}")
    return value


async def wait_lease(redis: aioredis.Redis, device: Device, *, present: bool) -> None:
    async with asyncio.timeout(ENDS_WITHIN_SECONDS):
        while (await lease(redis, device) is not None) != present:
            await asyncio.sleep(0.05)


async def read_until(
    call: grpc.aio.StreamStreamCall,  # type: ignore[type-arg]
    kind: str | None,
) -> list[str]:
    """Event kinds read up to and including ``kind``; None: to the end of the stream."""
    kinds: list[str] = []
    async with asyncio.timeout(ENDS_WITHIN_SECONDS):
        while True:
            server_event = await call.read()
            if server_event is grpc.aio.EOF:
                assert kind is None, f"the stream ended before {kind}: {kinds}"
                return kinds
            kinds.extend(e.WhichOneof("kind") or "" for e in server_event.events)
            if kind is not None and kind in kinds:
                return kinds


def resume() -> mpb.ClientEvent:
    return mpb.ClientEvent(resume=mpb.Resume())


async def test_a_half_closed_stream_ends_ok_and_the_device_goes_offline(
    keys, messages, redis: aioredis.Redis
) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    await send(messages, alice, conversation, b"while bob was away")
    call = messages.Connect(metadata=bob.md)
    try:
        await call.write(resume())
        synced = await read_until(call, "sync_complete")
        assert synced.count("message") == 1
        await wait_lease(redis, bob, present=True)

        await call.done_writing()
        assert await read_until(call, None) == []
        async with asyncio.timeout(ENDS_WITHIN_SECONDS):
            assert await call.code() == grpc.StatusCode.OK
        await wait_lease(redis, bob, present=False)
    finally:
        call.cancel()


async def test_a_stream_half_closed_right_after_resume_still_gets_its_whole_sync(
    keys, messages, redis: aioredis.Redis
) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    for i in range(3):
        await send(messages, alice, conversation, f"missed {i}".encode())
    call = messages.Connect(metadata=bob.md)
    try:
        await call.write(resume())
        await call.done_writing()
        kinds = await read_until(call, None)
        assert kinds.count("message") == 3
        assert kinds.index("sync_complete") > max(
            i for i, kind in enumerate(kinds) if kind == "message"
        )
        async with asyncio.timeout(ENDS_WITHIN_SECONDS):
            assert await call.code() == grpc.StatusCode.OK
        await wait_lease(redis, bob, present=False)
    finally:
        call.cancel()
