"""Redis connections. Redis is a doorbell and a cache, never the only copy of data.

``Redis`` is the one handle every store uses, over a single server or a Redis
Cluster (``redis.cluster``), so that the stores do not care which:

- plain commands go to ``client`` (redis-py's Redis or RedisCluster, which
  share the command API), several at once through ``pipeline()`` (on a
  cluster one pipeline per master, sent side by side; never atomic);
- scripts run through ``call`` and ``call_many`` (EVALSHA; a server that
  lost a script, restarted or newly promoted, has it loaded and only the
  calls it refused are sent again). Every key a script touches is in its
  KEYS, and on a cluster those keys share one hash tag: ``tag(part)`` is
  ``{part}`` on a cluster and ``part`` on a single server, whose key names
  therefore stay exactly what they were;
- channels: classic PUBLISH/SUBSCRIBE on a single server, sharded
  SPUBLISH/SSUBSCRIBE on a cluster (``publish``, ``publish_many``,
  ``publish_command`` for scripts, ``subscription()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio import ConnectionPool
from redis.asyncio.client import Pipeline as ServerPipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from parley_core.config import RedisSettings
from parley_core.storage.pubsub import (
    REDIS_ERRORS,
    ClusterSubscription,
    Heard,
    ServerSubscription,
    Subscription,
)

__all__ = [
    "REDIS_ERRORS",
    "Heard",
    "Redis",
    "Script",
    "ScriptCall",
    "Subscription",
    "connect",
]

Client = aioredis.Redis | RedisCluster
Pipeline = ServerPipeline | ClusterPipeline

# A cluster command that fails on a dead master is retried on a refreshed
# slot map this many times, briefly: during a failover (seconds) retries
# cannot succeed, and callers have fallbacks that should take over quickly.
CLUSTER_RETRIES = 3
CLUSTER_BACKOFF_BASE_SECONDS = 0.05
CLUSTER_BACKOFF_CAP_SECONDS = 0.5
HEALTH_CHECK_SECONDS = 10


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA-1, as EVALSHA names it."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> Script:
        # SHA-1 because EVALSHA names scripts by it; nothing secret here.
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


@dataclass(frozen=True, slots=True)
class ScriptCall:
    script: Script
    keys: Sequence[str]
    args: Sequence[Any]


class Redis:
    """See the module docstring. Build with ``connect``."""

    def __init__(self, client: Client, *, node_pool: _NodePools | None = None) -> None:
        self.client: Client = client
        self._node_pools = node_pool
        self.cluster = isinstance(client, RedisCluster)
        # The publish command for scripts that publish (on a cluster the
        # channel must then hash to the slot of the script's keys).
        self.publish_command = "SPUBLISH" if self.cluster else "PUBLISH"
        self._setup: asyncio.Task[Any] | None = None

    def tag(self, part: str) -> str:
        """``part`` as the hash tag of a key on a cluster; as is on a single server."""
        return f"{{{part}}}" if self.cluster else part

    @contextlib.asynccontextmanager
    async def pipeline(self) -> AsyncIterator[Pipeline]:
        await self._ready()
        async with self.client.pipeline(transaction=False) as pipe:
            yield pipe

    async def _ready(self) -> None:
        """On a cluster whose client must (re)load the slot map (at start,
        after a node failed), load it in a task of its own. Loading takes a
        few round trips (CLUSTER SLOTS, COMMAND); done inside a caller with
        a short deadline (the rate limiter's 0.25 s) it could be cancelled
        every time, and a cancelled load starts over from nothing."""
        if not isinstance(self.client, RedisCluster):
            return
        # redis-py keeps "needs loading" in a private flag; reading it saves a
        # task per call on the hot path.
        if not getattr(self.client, "_initialize", True):
            return
        if self._setup is None or self._setup.done():
            self._setup = asyncio.create_task(self.client.initialize())
            # Its failure is the awaiting callers' to see; a task nobody
            # awaits any more must not log it as never retrieved.
            self._setup.add_done_callback(_retrieved)
        await asyncio.shield(self._setup)

    # -- scripts ----------------------------------------------------------------

    async def call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return (await self.call_many([ScriptCall(script, keys, args)]))[0]

    async def call_many(
        self, calls: Sequence[ScriptCall], *, raise_on_error: bool = True
    ) -> list[Any]:
        """Every call in one round trip (one per master on a cluster); the
        replies in order. With ``raise_on_error`` off, failed calls' replies
        are their exceptions."""
        if not calls:
            return []
        replies = await self._evalsha(calls)
        refused = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if refused:
            for script in {calls[i].script for i in refused}:
                await self.load(script)
            # A refused call did not run, so it is sent once more; the others stand.
            again = await self._evalsha([calls[i] for i in refused])
            for i, reply in zip(refused, again, strict=True):
                replies[i] = reply
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    async def load(self, script: Script) -> None:
        """Load ``script`` (on every master of a cluster). Shielded: a caller
        that gives up meanwhile still leaves it loaded for the next call."""
        loading = asyncio.ensure_future(self.client.script_load(script.source))
        loading.add_done_callback(_retrieved)
        await asyncio.shield(loading)

    async def _evalsha(self, calls: Sequence[ScriptCall]) -> list[Any]:
        async with self.pipeline() as pipe:
            for call in calls:
                # execute_command: redis-py refuses evalsha() in cluster
                # pipelines, though routing EVALSHA by its keys works.
                pipe.execute_command(
                    "EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args
                )
            return list(await pipe.execute(raise_on_error=False))

    # -- channels ---------------------------------------------------------------

    async def publish(self, channel: str, payload: bytes | str) -> None:
        await self._ready()
        if isinstance(self.client, RedisCluster):
            await self.client.spublish(channel, payload)
        else:
            await self.client.publish(channel, payload)

    async def publish_many(self, messages: Iterable[tuple[str, bytes | str]]) -> None:
        """Publish each (channel, payload) in one round trip (one per master on a cluster)."""
        async with self.pipeline() as pipe:
            for channel, payload in messages:
                if self.cluster:
                    pipe.spublish(channel, payload)
                else:
                    pipe.publish(channel, payload)
            await pipe.execute()

    def subscription(self) -> Subscription:
        if isinstance(self.client, RedisCluster):
            assert self._node_pools is not None
            return ClusterSubscription(self.client, self._node_pools.pool)
        return ServerSubscription(self.client)

    # -- the connection ---------------------------------------------------------

    async def ping(self) -> None:
        await self.client.ping()

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass(frozen=True, slots=True)
class _NodePools:
    """Makes the connection pools of a cluster's pub/sub connections: the
    URL's credentials and TLS, at a node's address, never retrying."""

    url_options: dict[str, Any]
    timeout_seconds: float

    def pool(self, host: str, port: int) -> ConnectionPool:
        return ConnectionPool(
            **{**self.url_options, "host": host, "port": port, "db": 0},
            socket_timeout=self.timeout_seconds,
            socket_connect_timeout=self.timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port)


def connect(
    settings: RedisSettings,
    *,
    timeout_seconds: float | None = None,
    connection_retries: int | None = None,
) -> Redis:
    """The handle of ``settings``' Redis. ``timeout_seconds`` overrides the
    socket timeouts; ``connection_retries`` makes a refused or reset
    connection be retried that many times at once (a timeout never is)
    instead of the library's default retries."""
    timeout = settings.socket_timeout_seconds if timeout_seconds is None else timeout_seconds
    if not settings.cluster:
        options: dict[str, Any] = {}
        if connection_retries is not None:
            options["retry"] = Retry(
                NoBackoff(), connection_retries, supported_errors=(RedisConnectionError,)
            )
        return Redis(
            aioredis.Redis.from_url(
                settings.url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=HEALTH_CHECK_SECONDS,
                retry_on_timeout=False,
                **options,
            )
        )
    retries = CLUSTER_RETRIES if connection_retries is None else connection_retries
    cluster = RedisCluster.from_url(
        settings.url,
        startup_nodes=[ClusterNode(*_host_port(node)) for node in settings.cluster_nodes],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=HEALTH_CHECK_SECONDS,
        retry=Retry(
            ExponentialWithJitterBackoff(
                base=CLUSTER_BACKOFF_BASE_SECONDS, cap=CLUSTER_BACKOFF_CAP_SECONDS
            ),
            retries,
        ),
    )
    url_options = {k: v for k, v in parse_url(settings.url).items() if k not in ("host", "port")}
    return Redis(cluster, node_pool=_NodePools(url_options, timeout))
