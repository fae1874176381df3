"""Subscriptions of the Redis handle (parley_core.storage.pubsub) against a
single Redis and a Redis Cluster: what a subscriber hears, confirmations and
pongs from every connection, and, on a cluster, that a master handing its
slots to its replica (a manual failover, as in a rolling upgrade of Redis)
fails the subscription, after which a new one hears the new master."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from redis.asyncio import Redis as NodeClient

from parley_core.config import RedisSettings
from parley_core.storage.redis import Heard, Redis, Subscription
from parley_dev.process import ManagedProcess
from parley_dev.redis_cluster import LocalRedisCluster
from tests.redis_server import REDIS_KINDS, RedisUnderTest, cluster_settings, own_redis_server

# Channels spread over every master of a three-master cluster.
CHANNELS = [f"parley:c:conversation-{i}" for i in range(12)]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[str, ManagedProcess]]:
    async with own_redis_server(tmp_path_factory.mktemp("pubsub_redis")) as server:
        yield server


@pytest.fixture(scope="module", params=REDIS_KINDS)
def target(
    request: pytest.FixtureRequest, redis_server: tuple[str, ManagedProcess]
) -> RedisUnderTest:
    if request.param == "single":
        return RedisUnderTest("single", RedisSettings(url=redis_server[0]))
    return RedisUnderTest("cluster", cluster_settings(request.getfixturevalue("redis_cluster")))


@pytest_asyncio.fixture(loop_scope="session")
async def redis(target: RedisUnderTest) -> AsyncIterator[Redis]:
    client = target.connect()
    yield client
    await client.aclose()


class Reader:
    """Everything a subscription hears, read in the background."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.heard: list[Heard] = []
        self.error: BaseException | None = None
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for heard in self.subscription.listen():
                self.heard.append(heard)
        except Exception as exc:
            self.error = exc

    def of(self, kind: str) -> list[Heard]:
        return [h for h in self.heard if h.kind == kind]

    async def until(self, condition: Callable[[Reader], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition(self):
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.heard}"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.subscription.aclose()


async def test_a_subscription_hears_its_channels_and_answers_pings(redis: Redis) -> None:
    subscription = redis.subscription()
    await subscription.subscribe(*CHANNELS)
    reader = Reader(subscription)
    try:
        await reader.until(lambda r: len(r.of("subscribe")) == len(CHANNELS), "confirmations")
        assert sorted(h.channel for h in reader.of("subscribe")) == sorted(CHANNELS)
        for channel in CHANNELS:
            await redis.publish(channel, channel.encode())
        await redis.publish_many([(CHANNELS[0], b"second"), ("parley:c:nobody", b"x")])
        await reader.until(lambda r: len(r.of("message")) == len(CHANNELS) + 1, "messages")
        assert [(h.channel, h.data) for h in reader.of("message")] == [
            *((c, c.encode()) for c in CHANNELS),
            (CHANNELS[0], b"second"),
        ]
        # One pong per connection: one on a single server, one per master here.
        pongs = await reader.subscription.ping()
        assert pongs == (3 if redis.cluster else 1)
        await reader.until(lambda r: len(r.of("pong")) == pongs, "pongs")
        await reader.subscription.unsubscribe(*CHANNELS[1:])
        await reader.until(lambda r: len(r.of("unsubscribe")) == len(CHANNELS) - 1, "leaving")
        await redis.publish(CHANNELS[1], b"gone")
        await redis.publish(CHANNELS[0], b"barrier")
        await reader.until(lambda r: r.of("message")[-1].data == b"barrier", "the barrier")
        assert b"gone" not in [h.data for h in reader.heard]
        assert reader.error is None
    finally:
        await reader.close()


async def test_subscribes_at_the_same_time_are_all_heard(redis: Redis) -> None:
    """Streams open side by side: their subscribes run concurrently, also
    while the connection to a master they need is still being opened."""
    subscription = redis.subscription()
    await subscription.subscribe("parley:membership")
    reader = Reader(subscription)
    try:
        await asyncio.gather(*(subscription.subscribe(c) for c in CHANNELS))
        await reader.until(lambda r: len(r.of("subscribe")) == len(CHANNELS) + 1, "confirmations")
        for channel in CHANNELS:
            await redis.publish(channel, channel.encode())
        await reader.until(lambda r: len(r.of("message")) == len(CHANNELS), "every message")
        assert reader.error is None
    finally:
        await reader.close()


async def test_a_master_giving_its_slots_up_fails_the_subscription(
    redis_cluster: LocalRedisCluster,
) -> None:
    redis = RedisUnderTest("cluster", cluster_settings(redis_cluster)).connect()
    channel = CHANNELS[0]
    old = await redis_cluster.master_of(channel)
    subscription = redis.subscription()
    await subscription.subscribe(channel)
    reader = Reader(subscription)
    try:
        await reader.until(lambda r: bool(r.of("subscribe")), "the confirmation")
        await promote_replica_of(redis_cluster, old)
        await reader.until(lambda r: r.error is not None, "the subscription to fail")
        # Not a reset connection: the old master lives on as a replica and
        # told its subscribers the slot was gone.
        assert "unsubscribed by Redis" in str(reader.error), reader.error
        await reader.close()
        assert await redis_cluster.master_of(channel) != old
        # A new subscription refreshes the slot map and hears the new master.
        subscription = redis.subscription()
        await subscription.subscribe(channel)
        reader = Reader(subscription)
        await reader.until(lambda r: bool(r.of("subscribe")), "the new confirmation")
        await redis.publish(channel, b"after")
        await reader.until(lambda r: bool(r.of("message")), "a message from the new master")
        assert reader.of("message")[0].data == b"after"
    finally:
        await reader.close()
        await redis.aclose()
    await redis_cluster.wait_ready()


async def promote_replica_of(cluster: LocalRedisCluster, master: int) -> None:
    """CLUSTER FAILOVER on the master's replica: the slots move while both
    run. Asked again if the master did not act on it (a master that heard of
    its replica only just now may still ignore the request)."""
    master_port = cluster.ports[master]
    replica = None
    for state in await cluster.states():
        if not state.master and state.roles.get(state.port) == master_port:
            replica = NodeClient(host="127.0.0.1", port=state.port)
    assert replica is not None, f"no replica follows the master on port {master_port}"
    try:
        for _ in range(3):
            await replica.cluster("FAILOVER")
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                if (await replica.info("replication")).get("role") == "master":
                    return
                await asyncio.sleep(0.1)
        raise AssertionError("the replica was not promoted")
    finally:
        await replica.aclose()
