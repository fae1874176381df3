"""Redis servers of the tests' own, on free loopback ports: a single
redis-server, or a Redis Cluster of 3 masters and 3 replicas (node timeout
2 s), and ``RedisUnderTest``, either of them as the store tests use it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2_grpc
from parley_core.config import RedisSettings
from parley_core.storage import redis as redis_storage
from parley_dev.layout import find_executable
from parley_dev.probes import redis_ping, wait_until_ready
from parley_dev.process import ManagedProcess, free_port, free_ports
from parley_dev.redis_cluster import NODES, LocalRedisCluster

RedisKind = Literal["single", "cluster"]
# The parameters of a test that runs against both.
REDIS_KINDS: list[RedisKind] = ["single", "cluster"]


@contextlib.asynccontextmanager
async def own_redis_server(root: Path) -> AsyncIterator[tuple[str, ManagedProcess]]:
    """Its URL and process (tests may stop and restart it); stopped at the end."""
    port = free_port()
    process = ManagedProcess(
        "redis",
        [
            find_executable("redis-server", "apt-get install -y redis-server"),
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(root), "--daemonize", "no"),
        ],
        log_path=root / "redis.log",
        cwd=root,
    )
    process.start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        await wait_until_ready(process, lambda: redis_ping(url), what="PING", timeout=15)
        yield url, process
    finally:
        await process.terminate(10)


@contextlib.asynccontextmanager
async def own_redis_cluster(root: Path) -> AsyncIterator[LocalRedisCluster]:
    """A cluster ready to use (every replica synced, so a killed master fails
    over); its nodes are stopped by PID at the end."""
    ports = free_ports(2 * NODES)
    cluster = LocalRedisCluster(root=root, ports=ports[:NODES], bus_ports=ports[NODES:])
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


def cluster_settings(cluster: LocalRedisCluster) -> RedisSettings:
    return RedisSettings(url=cluster.url, cluster=True, cluster_nodes=tuple(cluster.other_nodes))


@dataclass(frozen=True, slots=True)
class RedisUnderTest:
    """A single server or a cluster, as a store test sees it."""

    kind: RedisKind
    settings: RedisSettings

    def connect(
        self, *, timeout_seconds: float | None = None, connection_retries: int | None = None
    ) -> redis_storage.Redis:
        return redis_storage.connect(
            self.settings, timeout_seconds=timeout_seconds, connection_retries=connection_retries
        )

    async def fresh(self) -> redis_storage.Redis:
        """A handle on an emptied Redis (every master of a cluster)."""
        redis = self.connect()
        await redis.client.flushall()
        return redis


@dataclass(frozen=True, slots=True)
class Stubs:
    """svc_keys and both svc_message instances of a stack (``redis_stubs``)."""

    keys: accounts_pb2_grpc.AccountServiceStub
    messages: messages_pb2_grpc.MessageServiceStub
    messages_b: messages_pb2_grpc.MessageServiceStub
