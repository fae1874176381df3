"""Stubs bound to the session stack's services, and the same on either
Redis for modules whose tests run on a single Redis and on a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from parley.keys.v1 import accounts_pb2_grpc, keys_pb2_grpc
from parley.message.v1 import messages_pb2_grpc
from parley.presence.v1 import presence_pb2_grpc
from parley_dev.stack import LocalStack
from tests.redis_server import REDIS_KINDS, Stubs


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def channels(stack: LocalStack) -> AsyncIterator[list[grpc.aio.Channel]]:
    opened = [grpc.aio.insecure_channel(t) for t in [stack.keys_target, *stack.message_targets]]
    yield opened
    for ch in opened:
        await ch.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def keys(channels: list[grpc.aio.Channel]) -> accounts_pb2_grpc.AccountServiceStub:
    return accounts_pb2_grpc.AccountServiceStub(channels[0])


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def key_service(channels: list[grpc.aio.Channel]) -> keys_pb2_grpc.KeyServiceStub:
    """The key directory, served by svc_keys beside AccountService."""
    return keys_pb2_grpc.KeyServiceStub(channels[0])


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def messages(channels: list[grpc.aio.Channel]) -> messages_pb2_grpc.MessageServiceStub:
    """svc_message instance 0."""
    return messages_pb2_grpc.MessageServiceStub(channels[1])


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def messages_b(channels: list[grpc.aio.Channel]) -> messages_pb2_grpc.MessageServiceStub:
    """svc_message instance 1: another process on another port."""
    return messages_pb2_grpc.MessageServiceStub(channels[2])


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def presence(stack: LocalStack) -> AsyncIterator[presence_pb2_grpc.PresenceServiceStub]:
    """svc_presence of the session stack."""
    async with grpc.aio.insecure_channel(stack.presence_target) as channel:
        yield presence_pb2_grpc.PresenceServiceStub(channel)


# -- on a single Redis and on a Redis Cluster ----------------------------------------
# A module whose tests should run on both binds its ``keys``, ``messages`` and
# ``messages_b`` to ``redis_stubs`` (module-scoped fixtures of the same
# names) and takes ``redis_stack`` where it needs the stack itself.


@pytest.fixture(scope="module", params=REDIS_KINDS)
def redis_stack(request: pytest.FixtureRequest) -> LocalStack:
    """The session stack, then its twin on a Redis Cluster."""
    stack: LocalStack = request.getfixturevalue(
        "stack" if request.param == "single" else "cluster_stack"
    )
    return stack


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def redis_stubs(redis_stack: LocalStack) -> AsyncIterator[Stubs]:
    """Stubs of ``redis_stack``: svc_keys and both svc_message instances."""
    opened = [
        grpc.aio.insecure_channel(t)
        for t in [redis_stack.keys_target, *redis_stack.message_targets]
    ]
    yield Stubs(
        keys=accounts_pb2_grpc.AccountServiceStub(opened[0]),
        messages=messages_pb2_grpc.MessageServiceStub(opened[1]),
        messages_b=messages_pb2_grpc.MessageServiceStub(opened[2]),
    )
    for channel in opened:
        await channel.close()
