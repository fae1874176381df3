"""The Redis doorbell: tells the processes holding a user's streams that
something happened. Never the only copy: a lost publish is made good by sync
from the database.

One channel per account. Each process subscribes to the accounts that have a
live stream on it, over a single pub/sub connection that reconnects by itself;
after a reconnect the owner is told to resync, since events may have been
missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable

import structlog
from redis.exceptions import RedisError

from parley_core.storage.redis import Redis

CHANNEL_PREFIX = "parley:u:"
log = structlog.get_logger(__name__)


def channel(account_id: str) -> str:
    return CHANNEL_PREFIX + account_id


class Doorbell:
    def __init__(
        self,
        redis: Redis,
        *,
        on_event: Callable[[str, bytes], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._redis = redis
        self._on_event = on_event
        self._on_reconnect = on_reconnect
        self._wanted: Counter[str] = Counter()
        self._pubsub: object | None = None
        self._connected = asyncio.Event()
        self.publish_failures = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def publish(self, deliveries: Iterable[tuple[Iterable[str], bytes]]) -> bool:
        """Ring every account's channel; False when Redis did not take it."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for account_ids, payload in deliveries:
                    for account_id in account_ids:
                        pipe.publish(channel(account_id), payload)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.publish_failures += 1
            log.warning("doorbell_publish_failed", error=str(exc))
            return False
        return True

    async def subscribe(self, account_id: str) -> None:
        self._wanted[account_id] += 1
        if self._wanted[account_id] == 1 and self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.subscribe(channel(account_id))  # type: ignore[attr-defined]

    async def unsubscribe(self, account_id: str) -> None:
        self._wanted[account_id] -= 1
        if self._wanted[account_id] <= 0:
            del self._wanted[account_id]
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(channel(account_id))  # type: ignore[attr-defined]

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        backoff = 0.05
        first = True
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                # A placeholder channel keeps the connection in subscribe mode
                # even while no stream is open.
                await pubsub.subscribe("parley:doorbell", *(channel(a) for a in self._wanted))
                self._pubsub = pubsub
                self._connected.set()
                backoff = 0.05
                if not first:
                    log.info("doorbell_reconnected")
                    self._on_reconnect()
                first = False
                async for message in pubsub.listen():
                    name = message["channel"]
                    name = name.decode() if isinstance(name, bytes) else name
                    if name.startswith(CHANNEL_PREFIX):
                        self._on_event(name[len(CHANNEL_PREFIX) :], message["data"])
            except (RedisError, OSError) as exc:
                if self._connected.is_set():
                    log.warning("doorbell_disconnected", error=str(exc))
            finally:
                self._connected.clear()
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            first = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
