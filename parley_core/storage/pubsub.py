"""Pub/sub over a single Redis or a Redis Cluster, behind one interface.

A ``Subscription`` is one logical connection: subscribe and unsubscribe
channels, read what arrives (in publish order per channel), ping. Whatever
breaks it ends ``listen`` with an error, after which its owner opens a new
one and resyncs, since messages may have been missed meanwhile.

- Single server: one connection, classic SUBSCRIBE (what PUBLISH reaches).
- Cluster: channels are sharded (SSUBSCRIBE, reached by SPUBLISH): each lives
  on the master of its hash slot, which alone carries its messages, so
  nothing is broadcast over the cluster bus. The subscription holds one
  connection per master it needs, sends one SSUBSCRIBE per slot (Redis
  refuses one spanning slots) and reads them all. Any of them failing fails
  the subscription, as the single server's connection would: a killed
  master resets its connections, and a master that lost its slots (a
  failover, a migration) unsubscribes its clients, which counts as failing
  too. A new subscription first refreshes the slot map, so after a failover
  it finds the new master. The node connections never reconnect by
  themselves: a silent reconnect would hide a gap in the messages.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio import Redis as ServerClient
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

# Every error a Redis call may end with when Redis (or part of a cluster) is
# unreachable or moving; RedisClusterException is no RedisError. OSError
# covers TimeoutError, so asyncio's deadlines too.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)

# What a message of each kind is called on the wire, sharded or not.
_KINDS = {
    "message": "message",
    "smessage": "message",
    "subscribe": "subscribe",
    "ssubscribe": "subscribe",
    "unsubscribe": "unsubscribe",
    "sunsubscribe": "unsubscribe",
    "pong": "pong",
}


@dataclass(frozen=True, slots=True)
class Heard:
    """One thing read from a subscription."""

    # "message", "subscribe" and "unsubscribe" (confirmations), or "pong".
    kind: str
    channel: str
    data: bytes


def _heard(message: dict[str, Any]) -> Heard:
    kind = message["type"]
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    channel = message.get("channel") or b""
    data = message.get("data")
    return Heard(
        kind=_KINDS.get(kind, kind),
        channel=channel.decode() if isinstance(channel, bytes) else str(channel),
        data=data if isinstance(data, bytes) else b"",
    )


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def subscribe(self, *channels: str) -> None:
        """Ask for these channels; each is confirmed by a ``subscribe`` Heard."""

    @abc.abstractmethod
    async def unsubscribe(self, *channels: str) -> None: ...

    @abc.abstractmethod
    def listen(self) -> AsyncIterator[Heard]:
        """What arrives, until the subscription breaks (raises) or is closed.
        Subscribe first: a single server's listening ends when no channel is
        held (every user here keeps one)."""

    @abc.abstractmethod
    async def ping(self) -> int:
        """PING every connection; the number of ``pong`` Heards to expect."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class ServerSubscription(Subscription):
    """Classic pub/sub on a single server: one connection of ``client``."""

    def __init__(self, client: ServerClient) -> None:
        self._pubsub = client.pubsub()

    async def subscribe(self, *channels: str) -> None:
        await self._pubsub.subscribe(*channels)

    async def unsubscribe(self, *channels: str) -> None:
        await self._pubsub.unsubscribe(*channels)

    async def listen(self) -> AsyncIterator[Heard]:
        async for message in self._pubsub.listen():
            yield _heard(message)

    async def ping(self) -> int:
        await self._pubsub.ping()
        return 1

    async def aclose(self) -> None:
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]


class ClusterSubscription(Subscription):
    """Sharded pub/sub on a cluster: one connection per master (see the module
    docstring). ``pool_for(host, port)`` makes the pool of a node's connection."""

    def __init__(
        self, cluster: RedisCluster, pool_for: Callable[[str, int], ConnectionPool]
    ) -> None:
        self._cluster = cluster
        self._pool_for = pool_for
        self._pools: dict[str, ConnectionPool] = {}
        self._nodes: dict[str, PubSub] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        # Channel -> the node holding its subscription.
        self._where: dict[str, str] = {}
        # Unsubscribes sent and not yet confirmed, per channel: any other
        # unsubscribe of a wanted channel came from the server.
        self._leaving: Counter[str] = Counter()
        self._heard: asyncio.Queue[Heard | BaseException] = asyncio.Queue()
        self._failure: BaseException | None = None
        self._mapped = False
        # One change at a time: a node's connection is opened by its first
        # command, and two first commands at once would open two, one of
        # which nobody reads.
        self._changing = asyncio.Lock()

    async def subscribe(self, *channels: str) -> None:
        async with self._changing:
            await self._subscribe(channels)

    async def _subscribe(self, channels: Iterable[str]) -> None:
        self._check()
        try:
            if not self._mapped:
                # The client's slot map is refreshed by its own commands; a
                # subscription opened after a failover must not trust it. (The
                # client itself is set up first: a refreshed map alone would
                # leave its command parser unset.)
                await self._cluster.initialize()
                await self._cluster.nodes_manager.initialize()
                self._mapped = True
            for name, groups in self._by_node(channels).items():
                pubsub = self._connection(name)
                for group in groups:
                    await pubsub.ssubscribe(*group)
                    self._where.update(dict.fromkeys(group, name))
                self._start_reader(name, pubsub)
        except REDIS_ERRORS as exc:
            self._fail(exc)
            raise

    async def unsubscribe(self, *channels: str) -> None:
        async with self._changing:
            await self._unsubscribe(channels)

    async def _unsubscribe(self, channels: Iterable[str]) -> None:
        self._check()
        held: dict[str, list[str]] = defaultdict(list)
        for channel in channels:
            name = self._where.pop(channel, None)
            if name is not None:
                held[name].append(channel)
        try:
            for name, mine in held.items():
                for group in self._per_slot(mine):
                    self._leaving.update(group)
                    await self._nodes[name].sunsubscribe(*group)
        except REDIS_ERRORS as exc:
            self._fail(exc)
            raise

    async def listen(self) -> AsyncIterator[Heard]:
        while True:
            item = await self._heard.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def ping(self) -> int:
        async with self._changing:
            self._check()
            # Only connections in subscribed mode answer PING with a pong message.
            busy = set(self._where.values())
            try:
                for name in busy:
                    await self._nodes[name].ping()
            except REDIS_ERRORS as exc:
                self._fail(exc)
                raise
            return len(busy)

    async def aclose(self) -> None:
        readers = list(self._readers.values())
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for pubsub in self._nodes.values():
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        for pool in self._pools.values():
            with contextlib.suppress(Exception):
                await pool.disconnect()
        self._readers.clear()
        self._nodes.clear()
        self._pools.clear()
        self._where.clear()

    # -- internals ----------------------------------------------------------------

    def _check(self) -> None:
        if self._failure is not None:
            raise RedisConnectionError(f"the subscription failed: {self._failure!r}")

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
            self._heard.put_nowait(error)

    def _per_slot(self, channels: Iterable[str]) -> list[list[str]]:
        slots: dict[int, list[str]] = defaultdict(list)
        for channel in channels:
            slots[self._cluster.keyslot(channel)].append(channel)
        return list(slots.values())

    def _by_node(self, channels: Iterable[str]) -> dict[str, list[list[str]]]:
        """The channels per node name, each node's grouped per slot."""
        nodes: dict[str, list[str]] = defaultdict(list)
        for channel in channels:
            node = self._cluster.get_node_from_key(channel)
            if node is None:
                raise RedisConnectionError(f"no master serves the slot of {channel!r}")
            if node.name not in self._pools:
                self._pools[node.name] = self._pool_for(node.host, int(node.port))
            nodes[node.name].append(channel)
        return {name: self._per_slot(mine) for name, mine in nodes.items()}

    def _connection(self, name: str) -> PubSub:
        pubsub = self._nodes.get(name)
        if pubsub is None:
            pubsub = self._nodes[name] = PubSub(connection_pool=self._pools[name])
        return pubsub

    def _start_reader(self, name: str, pubsub: PubSub) -> None:
        reader = self._readers.get(name)
        # A reader ends by itself once its node holds no channel of ours.
        if reader is None or reader.done():
            self._readers[name] = asyncio.create_task(self._read(pubsub))

    async def _read(self, pubsub: PubSub) -> None:
        try:
            async for message in pubsub.listen():
                heard = _heard(message)
                if heard.kind == "unsubscribe":
                    if self._leaving[heard.channel] > 0:
                        self._leaving[heard.channel] -= 1
                        if self._leaving[heard.channel] == 0:
                            del self._leaving[heard.channel]
                    elif heard.channel in self._where:
                        # The master gave the slot up (failover, migration).
                        raise RedisConnectionError(f"{heard.channel} was unsubscribed by Redis")
                self._heard.put_nowait(heard)
        except REDIS_ERRORS as exc:
            self._fail(exc)
        except Exception as exc:
            # Whatever else stops a reader ends the subscription the way its
            # owners handle: as a lost connection.
            self._fail(RedisConnectionError(f"a pub/sub reader failed: {exc!r}"))
