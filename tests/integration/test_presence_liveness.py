"""The Redis scripts behind presence (parley_core.storage.liveness) against a
real redis-server and a real Redis Cluster, with the clock injected through
``now_ms``: online and offline transitions, each published exactly once,
leases of several devices and kinds, durable last seen hand-off, and the
cost of a heartbeat; then svc_presence's pub/sub listener."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from parley_core.config import RedisSettings
from parley_core.storage import redis as redis_storage
from parley_core.storage.liveness import Liveness, PresenceKeys, WentOffline
from parley_core.storage.redis import Redis, Subscription
from parley_dev.probes import redis_ping, wait_until_ready
from parley_dev.process import ManagedProcess
from svc_presence.model import PresenceStoreDown
from svc_presence.storage.channels import LIVENESS_FLOOR_SECONDS, PresenceChannels
from svc_presence.storage.live import connect_listener
from tests.redis_server import REDIS_KINDS, RedisUnderTest, cluster_settings, own_redis_server

T0 = 1_700_000_000_000
TTL = 30_000
# Fewer shards than the default, so shards hold several of a test's accounts.
SHARDS = 16


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[str, ManagedProcess]]:
    async with own_redis_server(tmp_path_factory.mktemp("liveness_redis")) as server:
        yield server


@pytest.fixture(scope="module", params=REDIS_KINDS)
def target(
    request: pytest.FixtureRequest, redis_server: tuple[str, ManagedProcess]
) -> RedisUnderTest:
    if request.param == "single":
        return RedisUnderTest("single", RedisSettings(url=redis_server[0]))
    return RedisUnderTest("cluster", cluster_settings(request.getfixturevalue("redis_cluster")))


async def running(redis_server: tuple[str, ManagedProcess]) -> str:
    url, process = redis_server
    if not process.alive():
        process.start()
    await wait_until_ready(process, lambda: redis_ping(url), what="PING", timeout=15)
    return url


@pytest_asyncio.fixture(loop_scope="session")
async def redis(
    target: RedisUnderTest, redis_server: tuple[str, ManagedProcess]
) -> AsyncIterator[Redis]:
    await running(redis_server)
    client = await target.fresh()
    yield client
    await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def single_redis(redis_server: tuple[str, ManagedProcess]) -> AsyncIterator[Redis]:
    """The single server alone, for what a cluster cannot show (commandstats)."""
    url = await running(redis_server)
    client = redis_storage.connect(RedisSettings(url=url))
    await client.client.flushdb()
    yield client
    await client.aclose()


def liveness(redis: Redis) -> Liveness:
    return Liveness(redis, ttl_seconds=TTL / 1000, persist_seconds=60, cluster_shards=SHARDS)


async def queued(redis: Redis, live: Liveness, set_of: Callable[[int], str]) -> int:
    """Accounts in every shard's due (or save) set."""
    return sum([await redis.client.zcard(set_of(s)) for s in range(live.keys.shards)])


class Listener:
    """Everything published on some presence channels, in order."""

    def __init__(self, redis: Redis) -> None:
        self.subscription: Subscription = redis.subscription()
        self.keys = PresenceKeys.of(redis, cluster_shards=SHARDS)
        self.got: list[tuple[str, bytes]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self, *accounts: str) -> None:
        await self.subscription.subscribe(*(self.keys.channel(a) for a in accounts))

        async def read() -> None:
            async for heard in self.subscription.listen():
                if heard.kind == "message":
                    self.got.append((self.keys.account_of(heard.channel) or "?", heard.data))

        self.task = asyncio.create_task(read())

    async def settle(self, count: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.got) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # anything extra would show up here
        return self.got

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.subscription.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def listener(redis: Redis) -> AsyncIterator[Listener]:
    subscribed = Listener(redis)
    yield subscribed
    await subscribed.close()


async def test_heartbeat_online_then_expiry_offline_with_last_seen(
    redis: Redis, listener: Listener
) -> None:
    live = liveness(redis)
    await listener.start("a")
    first = await live.touch("a", "d1", stream=False, now_ms=T0)
    again = await live.touch("a", "d1", stream=False, now_ms=T0 + 10_000)
    assert (first.came_online, again.came_online) == (True, False)
    states = await live.states(["a", "nobody"])
    assert states["a"].online and states["a"].seen_ms == T0 + 10_000
    assert not states["nobody"].online and states["nobody"].seen_ms is None
    # Not yet expired: the renewal moved the expiry to T0 + 40 s.
    assert await live.sweep(now_ms=T0 + TTL + 1) == []
    assert await live.sweep(now_ms=T0 + 10_000 + TTL) == [WentOffline("a", T0 + 10_000)]
    assert await live.sweep(now_ms=T0 + 100_000) == []
    assert not (await live.states(["a"]))["a"].online
    assert await listener.settle(2) == [
        ("a", f"1:{T0}".encode()),
        ("a", f"0:{T0 + 10_000}".encode()),
    ]
    assert await queued(redis, live, live.keys.due) == 0


async def test_each_transition_is_published_once_however_many_sweep(
    redis: Redis, listener: Listener
) -> None:
    live = liveness(redis)
    accounts = [f"u{i}" for i in range(300)]
    await listener.start(*accounts)
    replies = await live.touch_many([(a, "d") for a in accounts], stream=True, now_ms=T0)
    assert all(r.came_online for r in replies)
    # Eight sweepers race for the same due accounts.
    batches = await asyncio.gather(*(live.sweep(now_ms=T0 + TTL, limit=50) for _ in range(8)))
    swept = [w.account_id for batch in batches for w in batch]
    while len(swept) < len(accounts):
        more = await live.sweep(now_ms=T0 + TTL, limit=500)
        assert more, "due accounts left behind"
        swept.extend(w.account_id for w in more)
    assert sorted(swept) == sorted(accounts)
    got = await listener.settle(600)
    assert sorted(got) == sorted(
        [(a, f"1:{T0}".encode()) for a in accounts] + [(a, f"0:{T0}".encode()) for a in accounts]
    )


async def test_devices_and_lease_kinds_keep_the_account_online_together(
    redis: Redis, listener: Listener
) -> None:
    live = liveness(redis)
    await listener.start("a")
    await live.touch("a", "phone", stream=True, now_ms=T0)
    await live.touch("a", "laptop", stream=False, now_ms=T0 + 5_000)
    # The phone's stream closes: the laptop's heartbeat still holds.
    await live.drop("a", "phone", stream=True, now_ms=T0 + 6_000)
    assert await live.sweep(now_ms=T0 + 6_000) == []
    assert (await live.states(["a"]))["a"].online
    assert await live.streaming_devices(["a"], now_ms=T0 + 6_000) == {}
    # The same device's heartbeat and stream are separate leases.
    await live.touch("a", "laptop", stream=True, now_ms=T0 + 7_000)
    await live.drop("a", "laptop", stream=False, now_ms=T0 + 8_000)
    assert await live.sweep(now_ms=T0 + 8_000) == []
    assert await live.streaming_devices(["a"], now_ms=T0 + 8_000) == {"a": {"laptop"}}
    # GoOffline of the last one: offline at the next sweep, last seen the drop.
    await live.drop("a", "laptop", stream=True, now_ms=T0 + 9_000)
    assert await live.sweep(now_ms=T0 + 9_000) == [WentOffline("a", T0 + 9_000)]
    assert await listener.settle(2) == [
        ("a", f"1:{T0}".encode()),
        ("a", f"0:{T0 + 9_000}".encode()),
    ]


async def test_a_drop_of_an_unknown_lease_changes_nothing(redis: Redis) -> None:
    live = liveness(redis)
    await live.touch("a", "d", stream=False, now_ms=T0)
    await live.drop("a", "other", stream=False, now_ms=T0 + 1_000)
    await live.drop("a", "d", stream=True, now_ms=T0 + 1_000)
    assert await live.sweep(now_ms=T0 + 1_000) == []
    assert (await live.states(["a"]))["a"].seen_ms == T0


async def test_a_late_drop_from_the_old_process_keeps_the_new_stream_lease(
    redis: Redis,
) -> None:
    live = liveness(redis)
    # The device streams through process A, then reconnects through B before
    # A notices its stream ended; A's drop arrives last.
    first = await live.touch("a", "phone", stream=True, now_ms=T0)
    (second,) = await live.touch_many([("a", "phone")], stream=True, now_ms=T0 + 2_000)
    assert (first.expiry_ms, second.expiry_ms) == (T0 + TTL, T0 + 2_000 + TTL)
    await live.drop("a", "phone", stream=True, now_ms=T0 + 2_500, if_expiry_ms=first.expiry_ms)
    assert await live.sweep(now_ms=T0 + 2_500) == []
    assert await live.streaming_devices(["a"], now_ms=T0 + 2_500) == {"a": {"phone"}}
    # B's own drop, guarded by what B wrote, does end it.
    await live.drop("a", "phone", stream=True, now_ms=T0 + 3_000, if_expiry_ms=second.expiry_ms)
    assert await live.sweep(now_ms=T0 + 3_000) == [WentOffline("a", T0 + 3_000)]


async def test_last_seen_never_moves_backwards(redis: Redis) -> None:
    """Processes' clocks differ a little: a late touch with an older now
    must not make the user look less recently active."""
    live = liveness(redis)
    await live.touch("a", "d1", stream=False, now_ms=T0 + 500)
    await live.touch("a", "d2", stream=True, now_ms=T0)
    assert (await live.states(["a"]))["a"].seen_ms == T0 + 500
    await live.drop("a", "d2", stream=True, now_ms=T0 + 100)
    assert (await live.states(["a"]))["a"].seen_ms == T0 + 500


async def test_last_seen_is_handed_out_for_storage_once_per_interval(redis: Redis) -> None:
    live = liveness(redis)
    touches = [
        await live.touch("a", "d", stream=True, now_ms=T0 + step * 20_000) for step in range(7)
    ]
    # At T0, T0 + 60 s and T0 + 120 s.
    assert [t.persist_seen for t in touches] == [True, False, False, True, False, False, True]
    # The first save waited in the queue; draining hands out the current last seen once.
    assert await live.drain_seen(now_ms=T0 + 120_000) == [WentOffline("a", T0 + 120_000)]
    assert await live.drain_seen(now_ms=T0 + 120_000) == []
    await live.touch("b", "d", stream=False, now_ms=T0)
    # Going offline stores last seen with the transition: no separate save.
    assert await live.sweep(now_ms=T0 + TTL) == [WentOffline("b", T0)]
    assert await live.drain_seen(now_ms=T0 + TTL) == []
    assert await queued(redis, live, live.keys.save) == 0


async def test_sweep_batch_says_when_more_are_due(redis: Redis) -> None:
    live = liveness(redis)
    await live.touch_many([(f"u{i}", "d") for i in range(25)], stream=False, now_ms=T0)
    first = await live.sweep_batch(now_ms=T0 + TTL, limit=10)
    assert (first.scanned, len(first.went_offline)) == (10, 10)
    rest = await live.sweep_batch(now_ms=T0 + TTL, limit=100)
    assert (rest.scanned, len(rest.went_offline)) == (15, 15)


async def test_a_heartbeat_costs_constant_redis_work(single_redis: Redis) -> None:
    """O(1) per heartbeat: the same commands whether 10 or 5000 users are online."""
    redis = single_redis.client
    live = liveness(single_redis)

    async def commands_per_touch(online: int) -> float:
        await redis.flushdb()
        await live.touch_many([(f"u{i}", "d") for i in range(online)], stream=False, now_ms=T0)
        await redis.config_resetstat()
        for i in range(50):
            await live.touch(f"u{i % 10}", "d", stream=False, now_ms=T0 + 1_000 + i)
        info = await redis.info("commandstats")
        calls = sum(
            v["calls"] for k, v in info.items() if k.startswith("cmdstat_") and "config" not in k
        )
        return calls / 50

    small, large = await commands_per_touch(10), await commands_per_touch(5000)
    assert small == large
    started = time.perf_counter()
    touches = 2000
    for i in range(0, touches, 100):
        await live.touch_many(
            [(f"u{j}", "d") for j in range(i, i + 100)], stream=False, now_ms=T0 + 2_000
        )
    rate = touches / (time.perf_counter() - started)
    print(f"\npipelined heartbeats: {rate:.0f}/s; redis commands per heartbeat: {small:.1f}")


# -- the pub/sub listener of svc_presence ------------------------------------------------


class Heard:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects = 0

    def on_message(self, account_id: str, payload: bytes) -> None:
        self.messages.append((account_id, payload))

    def on_disconnect(self) -> None:
        self.disconnects += 1


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_channels_are_reference_counted_and_confirmed(
    target: RedisUnderTest, redis: Redis
) -> None:
    """On a cluster the accounts' channels live on different masters: each is
    confirmed there, and the watchdog pings every connection that holds one."""
    heard = Heard()
    client = connect_listener(target.settings, timeout_seconds=0.5)
    keys = PresenceKeys.of(client, cluster_shards=SHARDS)
    channels = PresenceChannels(
        client,
        keys=keys,
        timeout_seconds=0.5,
        on_message=heard.on_message,
        on_disconnect=heard.on_disconnect,
        watchdog_seconds=0.1,
    )
    accounts = [f"acc{i}" for i in range(12)]
    running = asyncio.create_task(channels.run())
    try:
        await channels.subscribe(accounts)
        await channels.subscribe(accounts[:1])
        # Confirmed on return: publishes right now are heard.
        for account in accounts:
            await redis.publish(keys.channel(account), f"1:{account}".encode())
        await until(lambda: len(heard.messages) == len(accounts), 5, "the messages")
        assert sorted(heard.messages) == sorted((a, f"1:{a}".encode()) for a in accounts)
        channels.unsubscribe(accounts)
        await until(lambda: channels.channel_count == 1, 5, "all but one released")
        # Several watchdog rounds pass without a false alarm.
        await asyncio.sleep(0.5)
        assert (heard.disconnects, channels.connected) == (0, True)
        await redis.publish(keys.channel(accounts[1]), b"0:1")
        await redis.publish(keys.channel(accounts[0]), b"0:0")
        await until(lambda: heard.messages[-1] == (accounts[0], b"0:0"), 5, "the one still held")
        assert (accounts[1], b"0:1") not in heard.messages
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await client.aclose()


async def test_channels_survive_redis_failures(
    redis_server: tuple[str, ManagedProcess], single_redis: Redis
) -> None:
    url, process = redis_server
    redis = single_redis.client
    heard = Heard()
    client = connect_listener(RedisSettings(url=url), timeout_seconds=0.5)
    channels = PresenceChannels(
        client,
        keys=PresenceKeys(1),
        timeout_seconds=0.5,
        on_message=heard.on_message,
        on_disconnect=heard.on_disconnect,
        watchdog_seconds=0.3,
    )
    running = asyncio.create_task(channels.run())
    try:
        await channels.subscribe(["a", "b"])
        await channels.subscribe(["a"])
        # Confirmed on return: a publish right now is heard.
        await redis.publish("parley:p:c:a", b"1:5")
        await until(lambda: heard.messages == [("a", b"1:5")], 5, "the message")
        channels.unsubscribe(["a"])
        channels.unsubscribe(["b"])
        await until(lambda: channels.channel_count == 1, 5, "b released")

        async def listeners(name: str) -> int:
            counts = dict(await redis.pubsub_numsub(f"parley:p:c:{name}"))
            return int(counts[f"parley:p:c:{name}".encode()])

        for _ in range(100):
            if await listeners("b") == 0:
                break
            await asyncio.sleep(0.01)
        assert (await listeners("a"), await listeners("b")) == (1, 0)

        # Redis stops: subscribers are told, and new subscriptions fail fast.
        await process.terminate(10)
        await until(lambda: heard.disconnects == 1, 5, "the disconnect")
        started = time.monotonic()
        with pytest.raises(PresenceStoreDown):
            await channels.subscribe(["c"])
        assert time.monotonic() - started < 0.6
        process.start()
        await wait_until_ready(process, lambda: redis_ping(url), what="PING", timeout=15)
        await until(lambda: channels.connected, 5, "the reconnect")
        # What was still held is listened to again (a fresh publisher: the
        # fixture's pooled connection died with the server).
        publisher = redis_storage.connect(RedisSettings(url=url))
        await publisher.publish("parley:p:c:a", b"0:6")
        await publisher.aclose()
        await until(lambda: heard.messages[-1] == ("a", b"0:6"), 5, "a after the restart")

        # Redis hangs: the watchdog notices within seconds.
        process.signal(signal.SIGSTOP)
        try:
            took = await until(lambda: heard.disconnects == 2, 10, "the hang to be noticed")
        finally:
            process.signal(signal.SIGCONT)
        assert took < 0.3 + max(0.5 * 2 + 1.0, LIVENESS_FLOOR_SECONDS) + 0.5
        await until(lambda: channels.connected, 10, "the reconnect after the hang")
        channels.unsubscribe(["a"])
        await until(lambda: channels.channel_count == 0, 5, "all released")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await client.aclose()
