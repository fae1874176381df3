"""Delivery streams keep their devices online: the lease each stream holds in
the presence record (``parley:p:<account>``, field ``s:<device>``, see
parley_core/storage/liveness.py), read straight from the stack's Redis.

The session stack has the default lease (45 s, renewed every 15 s); renewal
and the Redis outage run on a stack of this module's own with a 1.5 s lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.stack import LocalStack
from tests.chaos.clients import metric
from tests.users import Device, Stream, direct, link_device, open_stream, send, sign_up, synced

SHORT_TTL_SECONDS = 1.5
# As in tests/conftest.py: stopping a stack with streams open must not stall.
TEST_SHUTDOWN_GRACE_SECONDS = 2.0


def now_ms() -> int:
    return int(time.time() * 1000)


async def record(redis: aioredis.Redis, account: Device) -> dict[str, str]:
    fields: dict[str, str] = await redis.hgetall(f"parley:p:{account.account_id}")
    return fields


async def lease(redis: aioredis.Redis, device: Device) -> int | None:
    """When the device's stream lease runs out (Unix ms); None without one."""
    value = await redis.hget(f"parley:p:{device.account_id}", f"s:{device.device_id}")
    return None if value is None else int(value)


async def wait_lease(
    redis: aioredis.Redis, device: Device, *, present: bool, timeout: float = 10.0
) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        # A connection of this client from before a Redis restart fails once.
        with contextlib.suppress(RedisConnectionError):
            value = await lease(redis, device)
            if (value is not None) == present:
                return value
        if time.monotonic() > deadline:
            state = "a lease" if present else "no lease"
            raise AssertionError(f"device {device.device_id} still without {state}")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture(loop_scope="session")
async def redis(stack: LocalStack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def test_a_streaming_device_is_online_until_its_stream_ends(
    keys, messages, messages_b, redis: aioredis.Redis, stack: LocalStack
) -> None:
    bob = await sign_up(keys)
    laptop = await link_device(keys, bob)
    assert await record(redis, bob) == {}
    phone_s = await open_stream(messages, bob)
    laptop_s = await open_stream(messages_b, laptop)
    try:
        for stream in (phone_s, laptop_s):
            await stream.wait_for(synced)
        expiry = await wait_lease(redis, bob, present=True)
        await wait_lease(redis, laptop, present=True)
        assert expiry is not None
        ttl_ms = stack.settings.presence.device_ttl_seconds * 1000
        assert now_ms() < expiry <= now_ms() + ttl_ms
        fields = await record(redis, bob)
        assert fields["on"] == "1"
        assert int(fields["seen"]) <= now_ms()

        # A clean close drops that device's lease at once; the other holds.
        await phone_s.close()
        await wait_lease(redis, bob, present=False)
        assert await lease(redis, laptop) is not None
        await laptop_s.close()
        await wait_lease(redis, laptop, present=False)
    finally:
        await phone_s.close()
        await laptop_s.close()


async def test_a_device_reconnecting_to_the_same_process_keeps_its_lease(
    keys, messages, redis: aioredis.Redis
) -> None:
    bob = await sign_up(keys)
    tablet = await link_device(keys, bob, "tablet")
    old = await open_stream(messages, bob)
    new = await open_stream(messages, bob)
    other: Stream | None = None
    try:
        for stream in (old, new):
            await stream.wait_for(synced)
        await wait_lease(redis, bob, present=True)
        await old.close()
        # The same process handles a later close after this one: once the
        # tablet's lease is gone, the old stream's end has been handled.
        other = await open_stream(messages, tablet)
        await other.wait_for(synced)
        await wait_lease(redis, tablet, present=True)
        await other.close()
        await wait_lease(redis, tablet, present=False)
        assert await lease(redis, bob) is not None, "the new stream lost its lease"
        await new.close()
        await wait_lease(redis, bob, present=False)
    finally:
        for stream in (old, new, other):
            if stream is not None:
                await stream.close()


# -- a stack with a short lease --------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def short(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    async with LocalStack.with_free_ports(
        root=tmp_path_factory.mktemp("short_lease_stack"),
        message_instances=1,
        shutdown_grace_seconds=TEST_SHUTDOWN_GRACE_SECONDS,
        extra_config={"presence": {"device_ttl_seconds": SHORT_TTL_SECONDS}},
    ) as local:
        yield local


@pytest_asyncio.fixture(loop_scope="session")
async def short_stubs(
    short: LocalStack,
) -> AsyncIterator[tuple[kgrpc.AccountServiceStub, mgrpc.MessageServiceStub, aioredis.Redis]]:
    if not short.process("redis").alive():
        await short.start_redis()
    if not short.message_process(0).alive():
        await short.start_message(0)
    client = aioredis.Redis.from_url(short.redis_url, decode_responses=True)
    async with (
        grpc.aio.insecure_channel(short.keys_target) as keys_channel,
        grpc.aio.insecure_channel(short.message_targets[0]) as message_channel,
    ):
        yield (
            kgrpc.AccountServiceStub(keys_channel),
            mgrpc.MessageServiceStub(message_channel),
            client,
        )
    await client.aclose()


async def test_the_lease_is_renewed_while_the_stream_lives(short_stubs) -> None:
    keys, messages, redis = short_stubs
    bob = await sign_up(keys)
    stream = await open_stream(messages, bob)
    try:
        await stream.wait_for(synced)
        first = await wait_lease(redis, bob, present=True)
        assert first is not None
        renewals, latest = 0, first
        # Three lease lifetimes: without renewal it would have run out twice.
        deadline = time.monotonic() + 3 * SHORT_TTL_SECONDS
        while time.monotonic() < deadline:
            at = now_ms()
            value = await lease(redis, bob)
            assert value is not None and value > at, "the lease ran out while streaming"
            if value > latest:
                renewals, latest = renewals + 1, value
            await asyncio.sleep(0.05)
        # Every third of the lease, give or take a loaded machine.
        assert renewals >= 5, renewals
    finally:
        await stream.close()
    await wait_lease(redis, bob, present=False)


@pytest.mark.chaos
async def test_with_redis_down_streams_open_and_messages_are_delivered(
    short: LocalStack, short_stubs
) -> None:
    keys, messages, redis = short_stubs
    url = short.message_metrics_urls[0]
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    typist = await open_stream(messages, alice)
    late: Stream | None = None
    try:
        await typist.wait_for(synced)
        await wait_lease(redis, alice, present=True)
        failures = await metric(url, "parley_stream_lease_failures_total")
        unavailable = await metric(url, "parley_typing_events_dropped_total", reason="unavailable")

        await short.stop_redis()
        for i in range(3):
            await send(messages, alice, conversation, f"while down {i}".encode())
        started = time.monotonic()
        late = await open_stream(messages, bob)
        await late.wait_for(lambda s: synced(s) and len(s.messages(conversation)) == 3)
        opened_in = time.monotonic() - started
        print(f"\nstream opened and synced in {opened_in * 1000:.0f} ms with Redis down")
        # A typing event is lost, quietly: the typist's stream carries on.
        typist.outgoing.put_nowait(
            mpb.ClientEvent(typing=mpb.Typing(conversation_id=conversation, typing=True))
        )
        typist.outgoing.put_nowait(mpb.ClientEvent(ping=mpb.Ping(nonce=5)))
        await typist.wait_for(lambda s: "pong" in s.kinds())

        async def counted(name: str, before: float, **labels: str) -> None:
            for _ in range(100):
                if await metric(url, name, **labels) > before:
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"{name} {labels} did not count the failure")

        await counted("parley_typing_events_dropped_total", unavailable, reason="unavailable")
        # Renewals keep failing in the background without touching the streams.
        await counted("parley_stream_lease_failures_total", failures)
        assert typist.error is None and late.error is None

        await short.start_redis()
        # Redis came back empty: the next renewal puts both leases back,
        # including the one of the stream opened during the outage.
        await wait_lease(redis, bob, present=True, timeout=10)
        await wait_lease(redis, alice, present=True, timeout=10)
        sent = await send(messages, alice, conversation, b"after")
        await late.wait_for(lambda s: sent.seq in [m.seq for m in s.messages(conversation)])
        assert typist.error is None and late.error is None
    finally:
        await typist.close()
        if late is not None:
            await late.close()
        if not short.process("redis").alive():
            await short.start_redis()


@pytest.mark.chaos
async def test_a_shutting_down_process_leaves_its_leases_to_expire(
    short: LocalStack, short_stubs
) -> None:
    """Its devices are resuming on another instance: dropping their leases
    would show them offline and online again to everyone."""
    keys, messages, redis = short_stubs
    bob = await sign_up(keys)
    stream = await open_stream(messages, bob)
    stopping: asyncio.Task[None] | None = None
    try:
        await stream.wait_for(synced)
        await wait_lease(redis, bob, present=True)
        stopping = asyncio.create_task(short.stop_message(0))
        await stream.wait_for(lambda s: s.error is not None, timeout=30)
        assert stream.error is not None
        assert stream.error.code() == grpc.StatusCode.UNAVAILABLE
        # Watch the lease until it runs out by itself (svc_presence, when it
        # runs, then sweeps it): it must not go before.
        last = await lease(redis, bob)
        for _ in range(200):
            at = now_ms()
            value = await lease(redis, bob)
            if value is None:
                assert last is not None and at >= last, "the lease was dropped at shutdown"
                break
            last = value
            if at > value + 500:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the lease never ran out")
    finally:
        await stream.close()
        if stopping is not None:
            await stopping
        # A later test that needs the process starts it again (short_stubs).
