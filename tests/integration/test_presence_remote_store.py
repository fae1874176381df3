"""svc_presence's Redis side of presence across regions, against a real
redis-server and a real Redis Cluster with the clock injected: the apply
script keeps exactly what region_merge.takes keeps (random pushes from two
regions, late and repeated ones included) and publishes when the combined
view flips; local transitions reach the export channel; the digest lists the
online accounts; one process holds the export lease at a time."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from parley_core.config import RedisSettings
from parley_core.storage.liveness import Liveness, PresenceKeys
from parley_core.storage.redis import Redis
from parley_dev.process import ManagedProcess
from svc_presence.domain.region_merge import remote_view, takes
from svc_presence.model import ExportEntry, PresenceStats, RegionEntry
from svc_presence.storage.export import ExportSource, LocalChange
from svc_presence.storage.remote import RemotePresenceStore
from tests.redis_server import REDIS_KINDS, RedisUnderTest, cluster_settings, own_redis_server

T0 = 1_900_000_000_000
SHARDS = 16
ACCOUNTS = [f"acct-{i}" for i in range(6)]
REGIONS = ["eu", "ap"]
STEPS = 300


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[str, ManagedProcess]]:
    async with own_redis_server(tmp_path_factory.mktemp("remote_presence_redis")) as server:
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
    client = await target.fresh()
    yield client
    await client.aclose()


def keys_of(redis: Redis) -> PresenceKeys:
    return PresenceKeys.of(redis, cluster_shards=SHARDS)


async def collect(
    redis: Redis, channels: list[str], got: list[tuple[str, bytes]]
) -> asyncio.Task[None]:
    subscription = redis.subscription()
    await subscription.subscribe(*channels)

    async def read() -> None:
        async for heard in subscription.listen():
            if heard.kind == "message":
                got.append((heard.channel, heard.data))

    return asyncio.create_task(read())


async def settle(got: list[tuple[str, bytes]], count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def test_the_apply_script_keeps_what_takes_keeps_and_publishes_each_flip(
    redis: Redis,
) -> None:
    keys = keys_of(redis)
    store = RemotePresenceStore(redis, keys, PresenceStats())
    rng = random.Random(20)
    model: dict[str, dict[str, RegionEntry]] = {a: {} for a in ACCOUNTS}
    published: list[tuple[str, bytes]] = []
    reader = await collect(redis, [keys.channel(a) for a in ACCOUNTS], published)
    expected_flips = 0
    now = T0
    try:
        for _ in range(STEPS):
            now += rng.choice([0, 5, 200, 3000])
            region = rng.choice(REGIONS)
            batch = []
            for account in rng.sample(ACCOUNTS, rng.randint(1, 3)):
                seen = now - rng.choice([0, 0, 10, 500, 5000])  # late pushes too
                online = rng.random() < 0.6
                batch.append(ExportEntry(account, online, seen, rng.choice([1000, 6000])))
            for entry in batch:
                before = remote_view(model[entry.account_id], now_ms=now)
                incoming = RegionEntry(entry.online, entry.seen_ms, now + entry.expires_in_ms)
                held = model[entry.account_id].get(region)
                if takes(incoming, held, now_ms=now):
                    model[entry.account_id][region] = incoming
                after = remote_view(model[entry.account_id], now_ms=now)
                if before.online != after.online or (
                    not after.online and before.seen_ms != after.seen_ms
                ):
                    expected_flips += 1
            await store.apply(region, batch, now_ms=now)
            stored = await store.entries(ACCOUNTS)
            for account in ACCOUNTS:
                assert remote_view(stored.get(account, {}), now_ms=now) == remote_view(
                    model[account], now_ms=now
                ), account
        await settle(published, expected_flips)
        assert len(published) == expected_flips
        assert all(payload.startswith(b"r") for _, payload in published)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_local_transitions_reach_the_export_channel_and_the_digest(
    redis: Redis,
) -> None:
    live = Liveness(redis, ttl_seconds=30, persist_seconds=60, cluster_shards=SHARDS)
    source = ExportSource(redis, redis, live.keys)
    changes: list[LocalChange] = []

    async def listen() -> None:
        async for change in source.changes():
            changes.append(change)

    listener = asyncio.create_task(listen())
    try:
        await asyncio.sleep(0.3)  # subscribed
        await live.touch("a1", "d1", stream=False, now_ms=T0)
        await live.touch("a2", "d1", stream=True, now_ms=T0 + 1)
        await live.touch("a1", "d2", stream=False, now_ms=T0 + 2)  # already online: nothing
        await live.drop("a2", "d1", stream=True, now_ms=T0 + 5)
        await live.sweep(now_ms=T0 + 10)
        deadline = time.monotonic() + 5
        while len(changes) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert changes == [
            LocalChange("a1", True, T0),
            LocalChange("a2", True, T0 + 1),
            LocalChange("a2", False, T0 + 5),
        ]
        online = [
            page
            for shard in range(source.shards)
            for page in await source.online_page(shard, now_ms=T0 + 10, offset=0, limit=100)
        ]
        assert online == [("a1", T0 + 2)]
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_one_process_holds_the_export_lease_at_a_time(redis: Redis) -> None:
    source = ExportSource(redis, redis, keys_of(redis))
    assert await source.hold_lease("one", ttl_ms=500)
    assert not await source.hold_lease("two", ttl_ms=500)
    assert await source.hold_lease("one", ttl_ms=500)  # renewed
    await source.release_lease("two")  # not its to release
    assert not await source.hold_lease("two", ttl_ms=500)
    await source.release_lease("one")
    assert await source.hold_lease("two", ttl_ms=200)
    await asyncio.sleep(0.4)  # lapsed
    assert await source.hold_lease("one", ttl_ms=500)
