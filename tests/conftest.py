"""Shared fixtures: real local stacks (SecantusDB, Redis, services) on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from parley_dev.redis_cluster import LocalRedisCluster
from parley_dev.stack import LocalStack
from tests.helpers import TEST_LIMITS
from tests.moto_server import MotoS3, own_moto_server
from tests.redis_server import own_redis_cluster

# Short, so stopping a stack with delivery streams still open does not stall the suite.
TEST_SHUTDOWN_GRACE_SECONDS = 2.0


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    """One stack for the whole session, with two svc_message instances. Do not break it."""
    async with LocalStack.with_free_ports(
        root=tmp_path_factory.mktemp("stack"),
        message_instances=2,
        shutdown_grace_seconds=TEST_SHUTDOWN_GRACE_SECONDS,
        extra_config=TEST_LIMITS,
    ) as local:
        yield local


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    """The session stack's twin on a Redis Cluster (3 masters, 3 replicas), for
    the modules whose tests run on both (tests/integration/conftest.py,
    ``redis_stack``). Do not break it either."""
    async with LocalStack.with_free_ports(
        root=tmp_path_factory.mktemp("cluster_stack"),
        message_instances=2,
        shutdown_grace_seconds=TEST_SHUTDOWN_GRACE_SECONDS,
        extra_config=TEST_LIMITS,
        redis_cluster=True,
    ) as local:
        yield local


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    """A stack of its own (one svc_message instance) for tests that kill or stop parts."""
    async with LocalStack.with_free_ports(
        root=tmp_path / "stack",
        message_instances=1,
        shutdown_grace_seconds=TEST_SHUTDOWN_GRACE_SECONDS,
        extra_config=TEST_LIMITS,
    ) as local:
        yield local


@pytest_asyncio.fixture(loop_scope="session")
async def moto_s3(tmp_path: Path) -> AsyncIterator[MotoS3]:
    """A moto S3 server with the media bucket, for tests that need archived
    objects (GLACIER, RestoreObject); everything else uses SeaweedFS."""
    async with own_moto_server(tmp_path / "moto") as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[LocalRedisCluster]:
    """One Redis Cluster (3 masters, 3 replicas) for the store tests of the
    session, which empty it first. Do not break it: tests that kill nodes
    start a cluster of their own."""
    async with own_redis_cluster(tmp_path_factory.mktemp("redis_cluster")) as cluster:
        yield cluster
