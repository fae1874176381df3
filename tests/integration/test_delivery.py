"""The Connect stream against the real stack: live delivery, resume,
receipts; on a single Redis and on a Redis Cluster (the doorbell's channels
sharded)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from bson import Binary
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc
from parley_dev.stack import LocalStack
from tests.redis_server import Stubs
from tests.users import Stream, direct, link_device, open_stream, rid, send, sign_up, synced


@pytest.fixture(scope="module")
def keys(redis_stubs: Stubs) -> accounts_pb2_grpc.AccountServiceStub:
    return redis_stubs.keys


@pytest.fixture(scope="module")
def messages(redis_stubs: Stubs) -> messages_pb2_grpc.MessageServiceStub:
    return redis_stubs.messages


@pytest.fixture(scope="module")
def messages_b(redis_stubs: Stubs) -> messages_pb2_grpc.MessageServiceStub:
    return redis_stubs.messages_b


def bodies(stream: Stream, conversation_id: str) -> list[bytes]:
    return [m.body for m in stream.messages(conversation_id)]


async def test_live_delivery_to_every_device_of_the_recipient(keys, messages, messages_b) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    bob_laptop = await link_device(keys, bob)
    alice_laptop = await link_device(keys, alice)
    conversation = await direct(messages, alice, bob)
    streams = [
        await open_stream(messages, bob),
        await open_stream(messages_b, bob_laptop),
        await open_stream(messages_b, alice_laptop),
    ]
    try:
        for stream in streams:
            await stream.wait_for(synced)
        for i in range(5):
            await send(messages, alice, conversation, f"hi {i}".encode())
        expected = [f"hi {i}".encode() for i in range(5)]
        for stream in streams:  # the sender's other device sees its own messages too
            await stream.wait_for(lambda s: len(s.messages(conversation)) == 5)
            assert bodies(stream, conversation) == expected
            assert [m.seq for m in stream.messages(conversation)] == [1, 2, 3, 4, 5]
    finally:
        for stream in streams:
            await stream.close()


async def test_delivery_across_two_processes(keys, messages, messages_b) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    on_a = await open_stream(messages, bob)
    on_b = await open_stream(messages_b, alice)
    try:
        await on_a.wait_for(synced)
        await on_b.wait_for(synced)
        await send(messages_b, alice, conversation, b"from process b")
        await send(messages, bob, conversation, b"from process a")
        await on_a.wait_for(lambda s: len(s.messages(conversation)) == 2)
        await on_b.wait_for(lambda s: len(s.messages(conversation)) == 2)
        assert bodies(on_a, conversation) == [b"from process b", b"from process a"]
        assert bodies(on_b, conversation) == bodies(on_a, conversation)
    finally:
        await on_a.close()
        await on_b.close()


async def test_new_conversation_reaches_the_peer_live(keys, messages) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    stream = await open_stream(messages, bob)
    try:
        await stream.wait_for(synced)
        conversation = await direct(messages, alice, bob)
        await send(messages, alice, conversation, b"hello stranger")
        await stream.wait_for(lambda s: len(s.messages(conversation)) == 1)
        announced = [
            e.conversation for e in stream.events if e.WhichOneof("kind") == "conversation"
        ]
        assert [c.conversation_id for c in announced] == [conversation]
    finally:
        await stream.close()


async def test_resume_after_disconnect_misses_nothing(keys, messages, messages_b) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    other = await direct(messages, await sign_up(keys), bob)
    stream = await open_stream(messages, bob)
    await stream.wait_for(synced)
    for i in range(3):
        await send(messages, alice, conversation, f"a{i}".encode())
    await stream.wait_for(lambda s: len(s.messages(conversation)) == 3)
    positions = stream.positions()
    await stream.close()

    # While Bob is away: more messages, in two conversations, via both processes.
    for i in range(3, 250):
        await send(messages_b if i % 2 else messages, alice, conversation, f"a{i}".encode())
    view = await messages.GetConversation(
        mpb.GetConversationRequest(conversation_id=other), metadata=bob.md
    )
    stranger = view.conversation.member_account_ids
    assert bob.account_id in stranger

    resumed = await open_stream(messages_b, bob, positions=positions)
    try:
        await resumed.wait_for(synced, timeout=20)
        seqs = [m.seq for m in resumed.messages(conversation)]
        assert seqs == list(range(4, 251)), "replay is exactly what was missed, in order"
        await send(messages, alice, conversation, b"live again")
        await resumed.wait_for(lambda s: len(s.messages(conversation)) == 248)
    finally:
        await resumed.close()


async def test_acked_positions_are_remembered_per_device(keys, messages) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    stream = await open_stream(messages, bob)
    await stream.wait_for(synced)
    for i in range(4):
        await send(messages, alice, conversation, f"{i}".encode())
    await stream.wait_for(lambda s: len(s.messages(conversation)) == 4)
    await asyncio.sleep(0.3)  # acks are flushed in the background
    await stream.close()
    await send(messages, alice, conversation, b"while away")
    # No positions sent: the server resumes from what this device acked.
    again = await open_stream(messages, bob)
    try:
        await again.wait_for(synced)
        assert bodies(again, conversation) == [b"while away"]
    finally:
        await again.close()


async def test_lost_publish_is_filled_from_the_log(keys, messages, redis_stack: LocalStack) -> None:
    stack = redis_stack
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    stream = await open_stream(messages, bob)
    try:
        await stream.wait_for(synced)
        await send(messages, alice, conversation, b"one")
        await stream.wait_for(lambda s: len(s.messages(conversation)) == 1)
        # A message that reaches the log but whose doorbell never rings, as when
        # a publish is lost between the write and Redis.
        client: AsyncMongoClient = AsyncMongoClient(stack.mongo_uri, retryWrites=False)
        try:
            await client[stack.settings.mongo.database]["messages"].insert_one(
                {
                    "_id": rid(),
                    "conversation_id": conversation,
                    "version": 2,
                    "kind": "message",
                    "seq": 2,
                    "sender_id": alice.account_id,
                    "sender_device_id": alice.device_id,
                    "type": 1,
                    "body": Binary(b"silent"),
                    "reply_to": None,
                    "created_at": datetime.now(UTC),
                    "request_id": rid(),
                }
            )
        finally:
            await client.close()
        await asyncio.sleep(0.2)
        assert bodies(stream, conversation) == [b"one"]
        await send(messages, alice, conversation, b"three")
        await stream.wait_for(lambda s: len(s.messages(conversation)) == 3)
        assert bodies(stream, conversation) == [b"one", b"silent", b"three"]
    finally:
        await stream.close()


async def test_receipts_reach_the_sender(keys, messages, messages_b) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    alice_stream = await open_stream(messages, alice)
    bob_stream = await open_stream(messages_b, bob)  # acks what it gets
    try:
        await alice_stream.wait_for(synced)
        await bob_stream.wait_for(synced)
        sent = await send(messages, alice, conversation, b"did you get this?")

        def receipt(stream: Stream, field: str) -> bool:
            return any(
                e.WhichOneof("kind") == "receipt"
                and e.receipt.account_id == bob.account_id
                and getattr(e.receipt, field) >= sent.seq
                for e in stream.events
            )

        await alice_stream.wait_for(lambda s: receipt(s, "delivered_seq"))
        await messages_b.MarkRead(
            mpb.MarkReadRequest(request_id=rid(), conversation_id=conversation, seq=sent.seq),
            metadata=bob.md,
        )
        await alice_stream.wait_for(lambda s: receipt(s, "read_seq"))
    finally:
        await alice_stream.close()
        await bob_stream.close()


async def test_receipts_changed_while_away_are_replayed(keys, messages) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    sent = await send(messages, alice, conversation, b"read me later")
    # Past the sync-token slack, so the replay holds only what changes later.
    await asyncio.sleep(2.1)
    stream = await open_stream(messages, alice)
    await stream.wait_for(synced)
    token = next(
        e.sync_complete.sync_token for e in stream.events if e.WhichOneof("kind") == "sync_complete"
    )
    await stream.close()
    await messages.MarkRead(
        mpb.MarkReadRequest(request_id=rid(), conversation_id=conversation, seq=sent.seq),
        metadata=bob.md,
    )
    again = await open_stream(messages, alice, positions={conversation: sent.seq}, sync_token=token)
    try:
        await again.wait_for(synced)
        receipts = [e.receipt for e in again.events if e.WhichOneof("kind") == "receipt"]
        assert [(r.account_id, r.read_seq) for r in receipts] == [(bob.account_id, sent.seq)]
        assert again.messages(conversation) == []
    finally:
        await again.close()


async def test_stream_must_start_with_resume(keys, messages) -> None:
    bob = await sign_up(keys)

    async def requests():
        yield mpb.ClientEvent(ping=mpb.Ping(nonce=1))

    call = messages.Connect(requests(), metadata=bob.md)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_ping_is_answered_in_order(keys, messages) -> None:
    bob = await sign_up(keys)
    stream = await open_stream(messages, bob)
    try:
        await stream.wait_for(synced)
        stream.outgoing.put_nowait(mpb.ClientEvent(ping=mpb.Ping(nonce=42)))
        await stream.wait_for(lambda s: "pong" in s.kinds())
        assert next(e.pong.nonce for e in stream.events if e.WhichOneof("kind") == "pong") == 42
    finally:
        await stream.close()


async def test_revoking_a_device_closes_its_live_stream(keys, messages) -> None:
    bob = await sign_up(keys)
    laptop = await link_device(keys, bob)
    stream = await open_stream(messages, laptop)
    await stream.wait_for(synced)
    await keys.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=laptop.device_id), metadata=bob.md
    )
    for _ in range(50):
        if stream.error is not None:
            break
        await asyncio.sleep(0.1)
    assert stream.error is not None
    assert stream.error.code() == grpc.StatusCode.UNAUTHENTICATED
    await stream.close()
