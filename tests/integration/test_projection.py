"""Conversation metadata written behind the log, and changes not yet applied
to their messages, survive a crash, without Redis."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from bson import Binary
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc
from parley_core.ids import new_id
from parley_dev.stack import LocalStack
from tests.users import direct, open_stream, send, sign_up, synced

pytestmark = pytest.mark.chaos


async def test_projection_lost_in_a_crash_is_replayed(tmp_path: Path) -> None:
    stack = LocalStack.with_free_ports(
        root=tmp_path / "stack",
        message_instances=1,
        shutdown_grace_seconds=2,
        # Flushes so rare that nothing is projected before the kill.
        extra_config={
            "message": {"projector_interval_seconds": 60, "projector_heartbeat_seconds": 0.5}
        },
    )
    await stack.start()
    mongo: AsyncMongoClient = AsyncMongoClient(stack.mongo_uri, retryWrites=False)
    try:
        async with (
            grpc.aio.insecure_channel(stack.keys_target) as kc,
            grpc.aio.insecure_channel(stack.message_targets[0]) as mc,
        ):
            keys = accounts_pb2_grpc.AccountServiceStub(kc)
            messages = messages_pb2_grpc.MessageServiceStub(mc)
            alice, bob = await sign_up(keys), await sign_up(keys)
            conversation = await direct(messages, alice, bob)
            await asyncio.sleep(1.0)  # the flush cycle starts from here
            for i in range(7):
                await send(messages, alice, conversation, f"{i}".encode())
            conversations = mongo[stack.settings.mongo.database]["conversations"]
            stored = await conversations.find_one({"_id": conversation})
            assert stored["last_seq"] == 0, "the metadata was meant to be behind"
            view = await messages.GetConversation(
                mpb.GetConversationRequest(conversation_id=conversation), metadata=bob.md
            )
            assert (view.conversation.last_seq, view.unread_count) == (7, 7), "Redis is current"
            # An edit whose feed entry is stored but which the process died
            # before applying to its message.
            first = await mongo[stack.settings.mongo.database]["messages"].find_one(
                {"conversation_id": conversation, "seq": 1}
            )
            await mongo[stack.settings.mongo.database]["messages"].insert_one(
                {
                    "_id": new_id(),
                    "conversation_id": conversation,
                    "version": 8,
                    "kind": "edit",
                    "sender_id": alice.account_id,
                    "created_at": datetime.now(UTC),
                    "request_id": str(uuid.uuid4()),
                    "target": first["_id"],
                    "target_seq": 1,
                    "body": Binary(b"edited"),
                }
            )

        await stack.kill_message(0)
        # Redis loses everything too: recovery must come from the log.
        redis = aioredis.Redis.from_url(stack.redis_url)
        await redis.flushall()
        await redis.aclose()
        await stack.start_message(0)

        for _ in range(100):
            stored = await conversations.find_one({"_id": conversation})
            if stored["last_seq"] == 7:
                break
            await asyncio.sleep(0.1)
        assert stored["last_seq"] == 7
        assert stored["sent"][alice.account_id] == 7
        assert stored["last_message"]["seq"] == 7
        assert stored["last_version"] == 8
        edited = await mongo[stack.settings.mongo.database]["messages"].find_one(
            {"conversation_id": conversation, "seq": 1}
        )
        assert (bytes(edited["body"]), edited["state_version"]) == (b"edited", 8)
        assert edited["edited_at"] is not None

        async with grpc.aio.insecure_channel(stack.message_targets[0]) as mc:
            messages = messages_pb2_grpc.MessageServiceStub(mc)
            # Bob's new device replays everything from the log.
            stream = await open_stream(messages, bob)
            try:
                await stream.wait_for(synced)
                assert [m.seq for m in stream.messages(conversation)] == list(range(1, 8))
                assert stream.messages(conversation)[0].body == b"edited"
                assert "edit" in stream.kinds()
            finally:
                await stream.close()
            view = await messages.GetConversation(
                mpb.GetConversationRequest(conversation_id=conversation), metadata=alice.md
            )
            assert view.unread_count == 0
    finally:
        await mongo.close()
        await stack.stop()
