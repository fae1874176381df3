"""Stubs bound to the session stack's services, the media tests' own stack,
and the same stubs on either Redis for modules whose tests run on a single
Redis and on a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from parley.keys.v1 import accounts_pb2_grpc, keys_pb2_grpc
from parley.media.v1 import media_pb2_grpc as mgrpc
from parley.media.v1 import references_pb2_grpc as rgrpc
from parley.message.v1 import messages_pb2_grpc
from parley.presence.v1 import presence_pb2_grpc
from parley_dev.stack import LocalStack
from tests.helpers import TEST_LIMITS
from tests.media_stack import DAILY_QUOTA, PENDING_CAP, STORED_QUOTA
from tests.media_world import MessageStandIn
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


# -- svc_media against a stand-in for svc_message (tests/media_stack.py) ---------------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stand_in() -> AsyncIterator[MessageStandIn]:
    messages = MessageStandIn()
    await messages.start()
    yield messages
    await messages.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def media_stack(
    tmp_path_factory: pytest.TempPathFactory, stand_in: MessageStandIn
) -> AsyncIterator[LocalStack]:
    config: dict[str, Any] = {
        **TEST_LIMITS,
        "media": {
            "message_target": stand_in.target,
            "max_pending_uploads_per_account": PENDING_CAP,
            "quotas": {"daily_upload_bytes": DAILY_QUOTA, "stored_bytes": STORED_QUOTA},
        },
    }
    stack = LocalStack.with_free_ports(
        root=Path(tmp_path_factory.mktemp("media")),
        shutdown_grace_seconds=2.0,
        extra_config=config,
    )
    # The stand-in refuses anything but the deployment's service credential.
    stack.prepare_files()
    stand_in.expected_token = stack.service_token
    async with stack:
        yield stack


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def media_stubs(
    media_stack: LocalStack,
) -> AsyncIterator[tuple[accounts_pb2_grpc.AccountServiceStub, mgrpc.MediaServiceStub, Any, Any]]:
    keys_channel = grpc.aio.insecure_channel(media_stack.keys_target)
    media_channel = grpc.aio.insecure_channel(media_stack.media_target)
    yield (
        accounts_pb2_grpc.AccountServiceStub(keys_channel),
        mgrpc.MediaServiceStub(media_channel),
        mgrpc.MediaAdminServiceStub(media_channel),
        rgrpc.MediaReferenceServiceStub(media_channel),
    )
    await keys_channel.close()
    await media_channel.close()


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
