"""Fixtures of the failure suite.

``chaos_stack`` is one stack (two svc_message instances) shared by the tests of
this folder that break parts of it: each test starts from a stack where every
process runs (``chaos`` restarts what an earlier test left dead) and creates its
own users, so tests do not see each other's data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley_dev.stack import LocalStack
from tests.chaos.clients import Channels
from tests.helpers import TEST_LIMITS, is_serving, wait_until

# As in tests/conftest.py: stopping a stack with streams open must not stall.
TEST_SHUTDOWN_GRACE_SECONDS = 2.0


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    async with LocalStack.with_free_ports(
        root=tmp_path_factory.mktemp("chaos_stack"),
        message_instances=2,
        shutdown_grace_seconds=TEST_SHUTDOWN_GRACE_SECONDS,
        extra_config=TEST_LIMITS,
    ) as local:
        yield local


@pytest_asyncio.fixture(loop_scope="session")
async def chaos(chaos_stack: LocalStack) -> AsyncIterator[LocalStack]:
    """The shared chaos stack with every process running and serving."""
    await ensure_running(chaos_stack)
    yield chaos_stack


async def ensure_running(stack: LocalStack) -> None:
    for name in stack.component_names:
        if not stack.process(name).alive():
            await stack.start_component(name)
    for target in [
        stack.keys_target,
        *stack.message_targets,
        stack.presence_target,
        stack.search_target,
    ]:

        async def serving(target: str = target) -> bool:
            return await is_serving(target)

        await wait_until(serving, timeout=30, what=f"{target} SERVING")


@pytest_asyncio.fixture(loop_scope="session")
async def keys_stub(chaos: LocalStack) -> AsyncIterator[kgrpc.AccountServiceStub]:
    async with grpc.aio.insecure_channel(chaos.keys_target) as channel:
        yield kgrpc.AccountServiceStub(channel)


@pytest_asyncio.fixture(loop_scope="session")
async def channels(chaos: LocalStack) -> AsyncIterator[Channels]:
    opened = Channels(chaos.message_targets)
    try:
        yield opened
    finally:
        await opened.close()
