"""The presence scenario's instruments: subscriptions that time each change
of the watched user at every subscriber, and Redis command counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import redis.asyncio as aioredis

from parley.presence.v1 import presence_pb2 as ppb
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley_dev.bench.population import User
from parley_dev.bench.presence_report import (
    WATCHED_CHANNEL,
    RedisCost,
    calls_between,
    command_calls,
)

# Subscriptions are opened this many at a time, each batch's snapshots awaited.
OPEN_BATCH = 64
SNAPSHOT_TIMEOUT_SECONDS = 30.0
CLOSE_TIMEOUT_SECONDS = 5.0
REDIS_TIMEOUT_SECONDS = 5.0
# How long one read of the publish counter waits before looking again.
PUBSUB_POLL_SECONDS = 1.0
_GOLDEN = (5**0.5 - 1) / 2


def offline_delays(changes: int, interval_s: float) -> list[float]:
    """Pauses before each offline change, spread evenly over one sweep interval.

    A user goes offline at a random moment of the sweeper's cycle; toggling
    back to back instead would lock every GoOffline to the same phase of it
    (just after a sweep) and time only the worst case. The golden-ratio
    sequence covers the interval evenly for any number of changes.
    """
    return [((k * _GOLDEN) % 1.0) * interval_s for k in range(changes)]


def allowed_mask(subscribers: int, allowed: int) -> list[bool]:
    """Which subscribers are on the watched user's contact list: exactly
    ``allowed`` of them, spread evenly (so over every channel alike)."""
    if not 0 <= allowed <= subscribers:
        raise ValueError("allowed must be between 0 and subscribers")
    return [
        (i + 1) * allowed // subscribers > i * allowed // subscribers for i in range(subscribers)
    ]


# -- Redis accounting -----------------------------------------------------------------


class RedisStats:
    """The stack's Redis as the bench sees it: ``INFO commandstats``, and every
    message published on it, counted by channel (a PSUBSCRIBE to everything).

    commandstats counts PUBLISH on all channels, svc_presence's own pub/sub
    keepalive among them; the channel counts tell which were presence changes.
    """

    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        self.published: Counter[str] = Counter()
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        await self._pubsub.psubscribe("*")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=PUBSUB_POLL_SECONDS
            )
            if message is not None and message["type"] == "pmessage":
                self.published[_text(message["channel"])] += 1

    async def calls(self) -> dict[str, int]:
        return command_calls(await self._redis.info("commandstats"))

    async def idle_rate(self, seconds: float) -> dict[str, float]:
        """Commands per second while the bench does nothing."""
        before = await self.calls()
        began = time.monotonic()
        await asyncio.sleep(seconds)
        after = await self.calls()
        elapsed = time.monotonic() - began
        return {name: count / elapsed for name, count in calls_between(before, after).items()}

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self._redis.aclose()


def channel_kinds(published: Counter[str], watched_channel: str) -> dict[str, int]:
    """Published messages by kind of channel: the watched user's own, and the
    rest with their last ``:``-separated part (an id) replaced by ``*``."""
    kinds: Counter[str] = Counter()
    for name, count in published.items():
        if name == watched_channel:
            kinds[WATCHED_CHANNEL] += count
        else:
            prefix, sep, _ = name.rpartition(":")
            kinds[f"{prefix}{sep}*" if sep else name] += count
    return dict(sorted(kinds.items()))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def counted(
    stats: RedisStats | None,
    work: Callable[[], Awaitable[int]],
    background: dict[str, float],
) -> tuple[RedisCost | None, int]:
    """Run ``work`` (it returns how many units it did) between two snapshots."""
    if stats is None:
        return None, await work()
    before = await stats.calls()
    began = time.monotonic()
    units = await work()
    seconds = time.monotonic() - began
    after = await stats.calls()
    return RedisCost(units, seconds, calls_between(before, after), background), units


# -- subscriptions --------------------------------------------------------------------


@dataclass
class ChangeRecorder:
    """What the subscribers saw of the watched user, change by change."""

    watched: str
    allowed: int
    # Non-snapshot PresenceEvents at all subscribers.
    events: int = 0
    hidden_deliveries: int = 0
    duplicates: int = 0
    # Presences of someone else, of the wrong availability, or outside a change.
    unexpected: int = 0
    snapshots: dict[str, Counter[str]] = field(
        default_factory=lambda: {"allowed": Counter(), "hidden": Counter()}
    )
    arrived: dict[int, int] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _expected: int | None = None
    _started_ns: int = 0

    def begin(self, expected: int) -> int:
        self.arrived, self.done = {}, asyncio.Event()
        self._expected = expected
        self._started_ns = time.perf_counter_ns()
        return self._started_ns

    def end(self) -> list[int]:
        self._expected = None
        return list(self.arrived.values())

    def on_snapshot(self, allowed: bool, event: ppb.PresenceEvent) -> None:
        group = self.snapshots["allowed" if allowed else "hidden"]
        for presence in event.presences:
            if presence.account_id == self.watched:
                group[ppb.Availability.Name(presence.availability)] += 1

    def on_change(self, index: int, allowed: bool, event: ppb.PresenceEvent, now_ns: int) -> None:
        self.events += 1
        for presence in event.presences:
            if not allowed:
                self.hidden_deliveries += 1
            elif presence.account_id != self.watched or presence.availability != self._expected:
                self.unexpected += 1
            elif index in self.arrived:
                self.duplicates += 1
            else:
                self.arrived[index] = now_ns - self._started_ns
                if len(self.arrived) >= self.allowed:
                    self.done.set()


class Watcher:
    """One subscriber's SubscribePresence([watched]) stream, read in a task."""

    def __init__(
        self,
        index: int,
        user: User,
        allowed: bool,
        stub: pgrpc.PresenceServiceAsyncStub,
        recorder: ChangeRecorder,
    ) -> None:
        self.index, self.user, self.allowed = index, user, allowed
        self._stub, self._recorder = stub, recorder
        self.snapshot = asyncio.Event()
        self.error: str | None = None
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None

    def open(self) -> None:
        self._call = self._stub.SubscribePresence(
            ppb.SubscribePresenceRequest(account_ids=[self._recorder.watched]),
            metadata=self.user.metadata,
        )
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self._call:
                now = time.perf_counter_ns()
                if event.snapshot and not self.snapshot.is_set():
                    self._recorder.on_snapshot(self.allowed, event)
                    self.snapshot.set()
                else:
                    self._recorder.on_change(self.index, self.allowed, event, now)
            self.error = f"{self.user.handle}: the stream ended"
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{self.user.handle}: {exc.code().name}: {exc.details()}"
        finally:
            # A stream that failed before its snapshot must not hold up setup.
            self.snapshot.set()

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, CLOSE_TIMEOUT_SECONDS)


async def open_watchers(
    subscribers: Sequence[User],
    mask: Sequence[bool],
    stubs: Sequence[pgrpc.PresenceServiceAsyncStub],
    recorder: ChangeRecorder,
) -> list[Watcher]:
    watchers: list[Watcher] = []
    try:
        for start in range(0, len(subscribers), OPEN_BATCH):
            batch = [
                Watcher(i, subscribers[i], mask[i], stubs[i % len(stubs)], recorder)
                for i in range(start, min(start + OPEN_BATCH, len(subscribers)))
            ]
            watchers.extend(batch)
            for watcher in batch:
                watcher.open()
            async with asyncio.timeout(SNAPSHOT_TIMEOUT_SECONDS):
                await asyncio.gather(*(w.snapshot.wait() for w in batch))
            failed = [w.error for w in batch if w.error]
            if failed:
                raise RuntimeError(f"SubscribePresence failed: {failed[0]}")
    except BaseException:
        await close_watchers(watchers)
        raise
    return watchers


async def close_watchers(watchers: Sequence[Watcher]) -> None:
    await asyncio.gather(*(w.close() for w in watchers))
