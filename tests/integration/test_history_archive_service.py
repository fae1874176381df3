"""Archived history through the public API of a running svc_message: pages of
ListMessages (recent cache off, so the log answers) and a device resuming its
stream from an old position get the same messages before and after the
archiver moved the conversation's old weeks to S3, and a retry of an archived
send gets its first attempt's message."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc
from parley_dev.stack import LocalStack
from svc_message.archive_wiring import build_archive
from tests.helpers import TEST_LIMITS, channel
from tests.users import all_messages, direct, open_stream, send, sign_up, synced

pytestmark = pytest.mark.slow

SENT = 30


async def pages_backward(
    messages: messages_pb2_grpc.MessageServiceStub, device: object, conversation: str, size: int
) -> list[mpb.Message]:
    found: list[mpb.Message] = []
    token = ""
    for _ in range(SENT + 5):
        page = await messages.ListMessages(
            mpb.ListMessagesRequest(
                conversation_id=conversation,
                page_size=size,
                page_token=token,
                direction=mpb.DIRECTION_BACKWARD,
            ),
            metadata=device.md,  # type: ignore[attr-defined]
        )
        found += page.messages
        token = page.next_page_token
        if not token:
            return found
    raise AssertionError("history did not end")


def shown(items: list[mpb.Message]) -> list[tuple[str, int, bytes]]:
    return [(m.message_id, m.seq, m.body) for m in items]


async def test_list_messages_and_resume_read_through_the_archive(tmp_path: Path) -> None:
    stack = LocalStack.with_free_ports(
        root=tmp_path / "stack",
        shutdown_grace_seconds=2,
        extra_config={
            **TEST_LIMITS,
            "message": {"recent_cache_messages": 0},
            # The service's own archiver stays off: this test runs one with its clock.
            "archive": {"enabled": False},
        },
    )
    await stack.start()
    mongo: AsyncMongoClient = AsyncMongoClient(stack.mongo_uri, retryWrites=False, tz_aware=True)
    try:
        async with (
            channel(stack.keys_target) as kc,
            channel(stack.message_targets[0]) as mc,
        ):
            keys = accounts_pb2_grpc.AccountServiceStub(kc)
            messages = messages_pb2_grpc.MessageServiceStub(mc)
            alice, bob = await sign_up(keys), await sign_up(keys)
            conversation = await direct(messages, alice, bob)
            request_ids = [str(uuid.uuid4()) for _ in range(SENT)]
            for i, request_id in enumerate(request_ids):
                await send(
                    messages, alice, conversation, f"ciphertext {i}".encode(), request_id=request_id
                )
            before = await all_messages(messages, bob, conversation)
            assert len(before) == SENT

            # The log's entries as if written over the last ten weeks; the
            # newest three stay recent.
            db = mongo[stack.settings.mongo.database]
            docs = [
                d
                async for d in db["messages"]
                .find({"conversation_id": conversation})
                .sort("version", 1)
            ]
            now = time.time()
            start = datetime.fromtimestamp(now, UTC) - timedelta(days=70)
            for i, doc in enumerate(docs[:-3]):
                await db["messages"].update_one(
                    {"_id": doc["_id"]}, {"$set": {"created_at": start + timedelta(days=2 * i)}}
                )
            _, archiver, objects = await build_archive(stack.settings, db)
            try:
                # Two months on: the ids (UUIDv7, which find the candidates)
                # are then old too; weeks still come from created_at, and the
                # newest entries' week stays hot.
                report = await archiver.run_pass(now + 60 * 86400)
            finally:
                await objects.close()
            assert report.moved >= 10, report
            left = await db["messages"].count_documents({"conversation_id": conversation})
            assert left == len(docs) - report.moved

            assert shown(await all_messages(messages, bob, conversation)) == shown(before)
            for size in (1, 2, 7, 50):
                got = await pages_backward(messages, bob, conversation, size)
                assert shown(got) == shown(before[::-1]), size

            # A retry of the first send, long archived, is still a retry: the
            # first attempt's message, not a second one.
            retried = await send(
                messages, alice, conversation, b"ciphertext 0", request_id=request_ids[0]
            )
            assert (retried.message_id, retried.seq) == (before[0].message_id, 1)
            assert shown(await all_messages(messages, bob, conversation)) == shown(before)

            # A device that last held the first version resumes: the replay
            # comes from the archive, then the log.
            stream = await open_stream(messages, bob, positions={conversation: 1})
            try:
                await stream.wait_for(synced, timeout=20)
                replayed = [e.message for e in stream.events if e.WhichOneof("kind") == "message"]
                ids = [m.message_id for m in replayed]
                assert len(ids) == len(set(ids)), "nothing twice"
                assert [m.seq for m in replayed] == sorted(m.seq for m in replayed)
                assert {m.message_id for m in before[1:]} <= set(ids), "nothing missed"
            finally:
                await stream.close()
    finally:
        await mongo.close()
        await stack.stop()
