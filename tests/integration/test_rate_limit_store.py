"""The shared limiter's Redis store (parley_core.storage.ratelimit) against a
real redis-server, with the clock injected: a group of buckets is taken
atomically by one script call, groups on other tags go in the same round trip
and get their token back when another refuses, buckets expire once full, a
server that lost the script is reloaded, and a Redis that stops answering
makes the takes local without failing (and Redis is used again when back).
Each runs against a single Redis and a Redis Cluster, but stopping Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.crc import key_slot

from parley_core.config import RedisSettings
from parley_core.errors import ResourceExhausted
from parley_core.limits import Limiter, LimitName, Rate, Take
from parley_core.storage import redis as redis_storage
from parley_core.storage.ratelimit import RedisBuckets
from parley_core.storage.redis import Redis
from parley_dev.probes import redis_ping, wait_until_ready
from parley_dev.process import ManagedProcess
from tests.redis_server import REDIS_KINDS, RedisUnderTest, cluster_settings, own_redis_server

T0 = 1_700_000_000.0
RATES = {name: Rate(1000, 1000) for name in LimitName} | {
    LimitName.SEND_PER_DEVICE: Rate(2, 60),
    LimitName.SEND_PER_ACCOUNT: Rate(3, 60),
    LimitName.SEND_PER_CONVERSATION: Rate(3, 60),
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[str, ManagedProcess]]:
    async with own_redis_server(tmp_path_factory.mktemp("ratelimit_redis")) as server:
        yield server


@pytest.fixture(scope="module", params=REDIS_KINDS)
def target(
    request: pytest.FixtureRequest, redis_server: tuple[str, ManagedProcess]
) -> RedisUnderTest:
    if request.param == "single":
        return RedisUnderTest("single", RedisSettings(url=redis_server[0]))
    return RedisUnderTest("cluster", cluster_settings(request.getfixturevalue("redis_cluster")))


@pytest_asyncio.fixture(loop_scope="session")
async def redis(
    target: RedisUnderTest, redis_server: tuple[str, ManagedProcess]
) -> AsyncIterator[Redis]:
    url, process = redis_server
    if not process.alive():
        process.start()
    await wait_until_ready(process, lambda: redis_ping(url), what="PING", timeout=15)
    client = await target.fresh()
    yield client
    await client.aclose()


def limiter(redis: Redis) -> Limiter:
    store = RedisBuckets(redis, timeout_seconds=0.5, fallback_seconds=2.0)
    return Limiter(store, RATES, names=list(LimitName))


DEVICE = Take(LimitName.SEND_PER_DEVICE, "alice", key="phone")
ACCOUNT = Take(LimitName.SEND_PER_ACCOUNT, "alice")
GROUP = Take(LimitName.SEND_PER_CONVERSATION, "group-1")


async def refused_by(limits: Limiter, *takes: Take, now: float) -> str | None:
    try:
        await limits.take(*takes, now=now)
    except ResourceExhausted as refused:
        return refused.metadata["limit"]
    return None


async def test_a_send_takes_its_account_and_conversation_in_one_go(redis: Redis) -> None:
    limits = limiter(redis)
    assert await refused_by(limits, DEVICE, ACCOUNT, GROUP, now=T0) is None
    assert await refused_by(limits, DEVICE, ACCOUNT, GROUP, now=T0) is None
    assert await refused_by(limits, DEVICE, ACCOUNT, GROUP, now=T0) == "send_per_device"
    tokens = float(await redis.client.hget(DEVICE.bucket_key, "t"))
    assert tokens == 0
    # The refused send gave the group its token back: another member still posts.
    bob = (
        Take(LimitName.SEND_PER_DEVICE, "bob", key="pc"),
        Take(LimitName.SEND_PER_ACCOUNT, "bob"),
    )
    assert await refused_by(limits, *bob, GROUP, now=T0) is None
    assert await refused_by(limits, *bob, GROUP, now=T0) == "send_per_conversation"
    # ...and the group's refusal gave bob's account its token back (3 - 1 left = 2).
    assert float(await redis.client.hget(bob[1].bucket_key, "t")) == 2
    assert limits.refused[LimitName.SEND_PER_DEVICE] == 1
    assert limits.refused[LimitName.SEND_PER_CONVERSATION] == 1
    # One token a second comes back.
    assert await refused_by(limits, DEVICE, ACCOUNT, GROUP, now=T0 + 1) is None


async def test_one_tags_buckets_share_a_cluster_slot_and_expire_once_full(redis: Redis) -> None:
    assert key_slot(DEVICE.bucket_key.encode()) == key_slot(ACCOUNT.bucket_key.encode())
    limits = limiter(redis)
    await limits.take(DEVICE, ACCOUNT, now=T0)
    # Refilling one token at 1/s takes 1 s; the key lives that long plus a second.
    ttl = await redis.client.pttl(DEVICE.bucket_key)
    assert 1000 < ttl <= 2000


async def test_a_server_that_lost_the_script_gets_it_again(redis: Redis) -> None:
    limits = limiter(redis)
    await limits.take(DEVICE, ACCOUNT, GROUP, now=T0)
    await redis.client.script_flush()
    await limits.take(DEVICE, ACCOUNT, GROUP, now=T0)
    await redis.client.script_flush()
    await limits.take(Take(LimitName.EDIT_PER_ACCOUNT, "alice"), now=T0)
    # Nothing was taken twice by the reload: two sends took two tokens.
    assert float(await redis.client.hget(ACCOUNT.bucket_key, "t")) == 1
    assert float(await redis.client.hget(GROUP.bucket_key, "t")) == 1
    assert not limits.degraded


async def test_without_redis_takes_are_local_and_redis_is_used_again_once_back(
    redis_server: tuple[str, ManagedProcess],
) -> None:
    url, process = redis_server
    if not process.alive():
        process.start()
    await wait_until_ready(process, lambda: redis_ping(url), what="PING", timeout=15)
    redis = redis_storage.connect(RedisSettings(url=url), timeout_seconds=1)
    try:
        await redis.client.flushdb()
        limits = limiter(redis)
        await limits.take(DEVICE, now=T0)
        await process.terminate(10)
        # Local buckets start full: the limit loosens (per process) but still holds.
        outcomes = [await refused_by(limits, DEVICE, ACCOUNT, now=T0 + 0.01) for _ in range(3)]
        assert outcomes == [None, None, "send_per_device"]
        assert limits.degraded
        process.start()
        await wait_until_ready(process, lambda: redis_ping(url), what="PING", timeout=15)
        # Within the fallback window the takes stay local; after it Redis is asked.
        assert await refused_by(limits, DEVICE, ACCOUNT, now=T0 + 1.5) is None
        assert limits.degraded
        assert await refused_by(limits, DEVICE, ACCOUNT, now=T0 + 3) is None
        assert not limits.degraded
        assert await redis.client.exists(DEVICE.bucket_key)
    finally:
        await redis.aclose()


async def test_concurrent_takes_share_round_trips_and_never_overspend(redis: Redis) -> None:
    """Takes of concurrent requests go out in batches; a bucket still gives
    exactly its burst, whoever asks and however they interleave."""
    limits = limiter(redis)
    group = Take(LimitName.SEND_PER_CONVERSATION, "crowded")

    async def member(n: int) -> str | None:
        own = Take(LimitName.SEND_PER_DEVICE, f"m{n}", key="phone")
        return await refused_by(limits, own, group, now=T0)

    outcomes = await asyncio.gather(*(member(n) for n in range(40)))
    assert outcomes.count(None) == 3
    assert set(outcomes) == {None, "send_per_conversation"}
    # Every refused member got its device's token back: each of the 40 has
    # one left for a send elsewhere (burst 2, one spent at most).
    elsewhere = [
        await refused_by(limits, Take(LimitName.SEND_PER_DEVICE, f"m{n}", key="phone"), now=T0)
        for n in range(40)
    ]
    assert elsewhere == [None] * 40
