"""Group delivery ticks: current in Redis at once, durable in the database
behind; on a single Redis and on a Redis Cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2_grpc
from parley_core.storage import redis as redis_storage
from parley_dev.stack import LocalStack
from tests.users import open_stream, rpc, send, sign_up_many, synced

pytestmark = pytest.mark.chaos


async def receipts(
    messages: messages_pb2_grpc.MessageServiceStub, device: object, cid: str, seq: int
) -> tuple[int, int]:
    reply = await rpc(messages, "ListMessageReceipts", device, conversation_id=cid, seq=seq)
    return reply.delivered_count, reply.read_count


@pytest.mark.parametrize("redis_cluster", [False, True], ids=["single", "cluster"])
async def test_group_delivery_ticks_are_live_then_durable(
    tmp_path: Path, redis_cluster: bool
) -> None:
    stack = LocalStack.with_free_ports(
        root=tmp_path / "stack",
        message_instances=1,
        shutdown_grace_seconds=2,
        redis_cluster=redis_cluster,
        extra_config={
            "message": {
                "group_ack_flush_seconds": 0.2,
                "group_delivered_persist_seconds": 1.0,
                # The conversation document's head stays behind the log for the
                # whole test, so wiping Redis leaves only the log to say the
                # message exists (receipts and MarkRead must ask it).
                "projector_interval_seconds": 60,
            }
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
            owner, a, b = await sign_up_many(keys, 3)
            view = await rpc(
                messages,
                "CreateGroup",
                owner,
                title="ticks",
                member_account_ids=[a.account_id, b.account_id],
            )
            cid = view.conversation.conversation_id
            sender = await open_stream(messages, owner)
            streams = [await open_stream(messages, member) for member in (a, b)]
            try:
                for stream in (sender, *streams):
                    await stream.wait_for(synced)
                hello = await send(messages, owner, cid, b"hello")
                for stream in streams:
                    await stream.wait_for(lambda s: hello.seq in [m.seq for m in s.messages(cid)])

                async def delivered_to_both() -> bool:
                    return (await receipts(messages, owner, cid, hello.seq))[0] == 2

                for _ in range(100):
                    if await delivered_to_both():
                        break
                    await asyncio.sleep(0.05)
                assert await receipts(messages, owner, cid, hello.seq) == (2, 0)
                # The sender's stream hears each member's tick once, batched.
                await sender.wait_for(
                    lambda s: (
                        {
                            w.account_id
                            for e in s.events
                            if e.WhichOneof("kind") == "receipts"
                            for w in e.receipts.watermarks
                            if w.delivered_seq >= hello.seq
                        }
                        == {a.account_id, b.account_id}
                    )
                )
            finally:
                for stream in (sender, *streams):
                    await stream.close()

            # Behind Redis, the database catches up; with Redis wiped, the
            # durable copy still answers.
            members = mongo[stack.settings.mongo.database]["members"]
            for _ in range(100):
                docs = await members.find({"conversation_id": cid}).to_list(None)
                if sum(1 for d in docs if d.get("delivered_seq", 0) >= hello.seq) >= 2:
                    break
                await asyncio.sleep(0.1)
            redis = redis_storage.connect(stack.settings.redis)
            await redis.client.flushall()
            await redis.aclose()
            assert await receipts(messages, owner, cid, hello.seq) == (2, 0)
            await rpc(messages, "MarkRead", a, conversation_id=cid, seq=hello.seq)
            assert await receipts(messages, owner, cid, hello.seq) == (2, 1)
    finally:
        await mongo.close()
        await stack.stop()
