"""The recent-messages cache in Redis stays consistent with the log, on a
single Redis and on a Redis Cluster."""

from __future__ import annotations

import pytest

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc
from parley_core.storage import redis as redis_storage
from parley_dev.stack import LocalStack
from tests.helpers import http_get
from tests.redis_server import Stubs
from tests.users import direct, send, sign_up


@pytest.fixture(scope="module")
def keys(redis_stubs: Stubs) -> accounts_pb2_grpc.AccountServiceStub:
    return redis_stubs.keys


@pytest.fixture(scope="module")
def messages(redis_stubs: Stubs) -> messages_pb2_grpc.MessageServiceStub:
    return redis_stubs.messages


@pytest.fixture(scope="module")
def messages_b(redis_stubs: Stubs) -> messages_pb2_grpc.MessageServiceStub:
    return redis_stubs.messages_b


def cached(stack: LocalStack, conversation: str) -> str:
    """The key of the conversation's cached messages (a hash tag on a cluster)."""
    tag = f"{{{conversation}}}" if stack.settings.redis.cluster else conversation
    return f"parley:recent:{tag}"


async def newest(messages, device, conversation: str, size: int = 50) -> list[int]:
    page = await messages.ListMessages(
        mpb.ListMessagesRequest(conversation_id=conversation, page_size=size), metadata=device.md
    )
    return [m.seq for m in page.messages]


async def test_reads_fill_the_cache_and_commits_keep_it_current(
    keys, messages, messages_b, redis_stack: LocalStack
) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    for i in range(60):
        await send(messages, alice, conversation, f"{i}".encode())
    assert await newest(messages, bob, conversation) == list(range(60, 10, -1))

    redis = redis_storage.connect(redis_stack.settings.redis)
    try:
        held = await redis.client.zrange(cached(redis_stack, conversation), 0, -1, withscores=True)
        assert [int(score) for _, score in held] == list(range(10, 61))
        # Commits through either process land in the cache before the ack.
        for i in range(5):
            stub = messages_b if i % 2 else messages
            sent = await send(stub, bob, conversation, f"late {i}".encode())
            assert (await newest(messages_b, alice, conversation, size=1)) == [sent.seq]
        page = await messages.ListMessages(
            mpb.ListMessagesRequest(conversation_id=conversation, page_size=3), metadata=bob.md
        )
        assert [m.body for m in page.messages] == [b"late 4", b"late 3", b"late 2"]
        assert page.messages[0].sender_account_id == bob.account_id
        assert page.messages[0].create_time.seconds > 0
    finally:
        await redis.aclose()


async def test_a_lost_cache_add_is_never_served(keys, messages, redis_stack: LocalStack) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    for i in range(20):
        await send(messages, alice, conversation, f"{i}".encode())
    await newest(messages, bob, conversation)
    redis = redis_storage.connect(redis_stack.settings.redis)
    try:
        # As if the add of seq 15 never reached Redis.
        removed = await redis.client.zremrangebyscore(cached(redis_stack, conversation), 15, 15)
        assert removed == 1
        assert await newest(messages, bob, conversation) == list(range(20, 0, -1))
        # The read from the log filled the hole again.
        assert await redis.client.zcount(cached(redis_stack, conversation), 15, 15) == 1
    finally:
        await redis.aclose()


async def test_an_old_page_does_not_pass_for_the_newest(keys, messages) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    for i in range(30):
        await send(messages, alice, conversation, f"{i}".encode())
    old = await messages.ListMessages(
        mpb.ListMessagesRequest(conversation_id=conversation, page_size=5, start_seq=7),
        metadata=bob.md,
    )
    assert [m.seq for m in old.messages] == [7, 6, 5, 4, 3]
    assert await newest(messages, bob, conversation, size=5) == [30, 29, 28, 27, 26]
    forward = await messages.ListMessages(
        mpb.ListMessagesRequest(
            conversation_id=conversation,
            page_size=5,
            start_seq=28,
            direction=mpb.DIRECTION_FORWARD,
        ),
        metadata=bob.md,
    )
    assert [m.seq for m in forward.messages] == [28, 29, 30]
    assert forward.next_page_token == ""


async def test_domain_metrics_are_exported(keys, messages, redis_stack: LocalStack) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    await send(messages, alice, conversation, b"counted")
    await newest(messages, bob, conversation)
    await newest(messages, bob, conversation)
    texts = []
    for url in redis_stack.message_metrics_urls:
        status, text = await http_get(url)
        assert status == 200
        texts.append(text)
    text = texts[0]

    def value(line_start: str, text: str = text) -> float:
        line = next(ln for ln in text.splitlines() if ln.startswith(line_start))
        return float(line.rsplit(" ", 1)[1])

    # The conversation's owner commits, which may be the other instance.
    assert sum(value("parley_messages_committed_total", t) for t in texts) >= 1
    assert sum(value("parley_send_batches_total", t) for t in texts) >= 1
    assert value('parley_recent_cache_reads_total{result="hit"}') >= 1
    assert value('parley_recent_cache_reads_total{result="miss"}') >= 1
    assert value("parley_delivery_streams_open") >= 0
    assert value("parley_projection_pending_conversations") >= 0
    assert value("parley_doorbell_publish_failures_total") == 0
    assert 'parley_rpc_requests_total{code="OK",method="SendMessage",service="message"}' in text
