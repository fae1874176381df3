"""History exports ("download my history") on a real stack: SecantusDB,
Redis, the services over loopback gRPC, and moto as the object store (the one
local S3 with glacier objects and restores). The stack's own archiver is off:
the tests move history to the archive (and its oldest weeks to glacier) with
an archiver of their own clock, as the glacier tests do; the stack's export
worker does the rest.

Covered: an export of everything holds exactly the caller's readable messages
(member windows, deleted for everyone and deleted for itself left out, hot,
cold and glacier), its progress only rises and reaches 100 % exactly at
READY, the requesting device is told on its stream, nobody else sees it; a
SIGKILL of svc_message mid-job is resumed; cancel and retry; expiry."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from botocore.exceptions import ClientError
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc
from parley_dev.stack import LocalStack
from parley_sdk import Client, ExportState
from parley_sdk.errors import FailedPreconditionError
from svc_message.archive_wiring import build_archive
from tests.archive_world import DAY
from tests.groups import expect
from tests.helpers import TEST_LIMITS, channel
from tests.integration.test_history_glacier import s3_client
from tests.moto_server import MotoS3, own_moto_server
from tests.users import Device, Stream, direct, open_stream, rid, send, sign_up

pytestmark = pytest.mark.slow

State = mpb.HistoryExport
# Seconds a test waits at most for a job to reach a state.
WAIT_SECONDS = 60.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def moto(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MotoS3]:
    async with own_moto_server(Path(tmp_path_factory.mktemp("export_moto"))) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, moto: MotoS3
) -> AsyncIterator[LocalStack]:
    config: dict[str, Any] = {
        **TEST_LIMITS,
        "s3": moto.settings.model_dump(mode="json"),
        "message": {"recent_cache_messages": 0},
        "archive": {
            "enabled": False,
            "cold_window_days": 365,
            "glacier_transition": "copy",
            "prefix": "history-export-e2e/",
            "export_poll_seconds": 0.2,
            # Slow enough that a test sees a job mid-way (and can kill it there).
            "export_messages_per_second": 40,
            "export_part_messages": 20,
            # A killed worker's job is taken over soon.
            "export_lease_seconds": 5,
        },
    }
    async with LocalStack.with_free_ports(
        root=Path(tmp_path_factory.mktemp("export_stack")),
        shutdown_grace_seconds=2.0,
        extra_config=config,
    ) as stack:
        yield stack


@dataclass
class World:
    stack: LocalStack
    keys: accounts_pb2_grpc.AccountServiceStub
    messages: messages_pb2_grpc.MessageServiceStub
    db: Any


@pytest_asyncio.fixture(loop_scope="session")
async def world(stack: LocalStack) -> AsyncIterator[World]:
    mongo: AsyncMongoClient = AsyncMongoClient(stack.mongo_uri, retryWrites=False, tz_aware=True)
    try:
        async with channel(stack.keys_target) as kc, channel(stack.message_targets[0]) as mc:
            yield World(
                stack,
                accounts_pb2_grpc.AccountServiceStub(kc),
                messages_pb2_grpc.MessageServiceStub(mc),
                mongo[stack.settings.mongo.database],
            )
    finally:
        await mongo.close()


async def request_export(w: World, device: Device, conversation_id: str = "") -> mpb.HistoryExport:
    scope: dict[str, Any] = (
        {"conversation_id": conversation_id} if conversation_id else {"all": True}
    )
    return await w.messages.RequestHistoryExport(
        mpb.RequestHistoryExportRequest(request_id=rid(), **scope), metadata=device.md
    )


async def get_export(w: World, device: Device, export_id: str) -> mpb.HistoryExport:
    return await w.messages.GetHistoryExport(
        mpb.GetHistoryExportRequest(export_id=export_id), metadata=device.md
    )


def fraction(done: int, total: int) -> float:
    return done / total if total else 0.0


async def watch(
    w: World, device: Device, export_id: str, until: set[int], seen: list[mpb.HistoryExport]
) -> mpb.HistoryExport:
    """Poll the export until its state is in ``until``, checking on every
    answer that progress only rises and is complete exactly when READY."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        export = await get_export(w, device, export_id)
        if seen:
            before = seen[-1]
            assert export.objects_done >= before.objects_done
            if before.objects_total and export.state != State.STATE_READY:
                assert export.objects_total == before.objects_total
                assert fraction(export.bytes_done, export.bytes_total) >= fraction(
                    before.bytes_done, before.bytes_total
                )
        complete = (
            export.objects_total > 0
            and export.objects_done == export.objects_total
            and export.bytes_done == export.bytes_total
        )
        # Complete exactly from READY on (an EXPIRED export was READY).
        assert complete == (export.state in (State.STATE_READY, State.STATE_EXPIRED)), export
        # A URL while READY and not yet expired (the worker expires it soon after).
        live = export.expire_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
        assert bool(export.download_url) == (export.state == State.STATE_READY and live), export
        seen.append(export)
        if export.state in until:
            return export
        assert time.monotonic() < deadline, f"export stuck: {export}"
        await asyncio.sleep(0.05)


def download(export: mpb.HistoryExport) -> list[dict[str, Any]]:
    with urllib.request.urlopen(export.download_url, timeout=10) as reply:
        data = reply.read()
    assert len(data) == export.bytes_total
    records = [json.loads(line) for line in data.splitlines()]
    assert len(records) == export.message_count
    return records


async def age_history(w: World, conversation_id: str, *, keep: int, days_ago: float) -> None:
    """Date the conversation's log (all but its newest ``keep`` entries) as if
    written from ``days_ago`` on, four days apart."""
    docs = [
        d
        async for d in w.db["messages"]
        .find({"conversation_id": conversation_id})
        .sort("version", 1)
    ]
    start = datetime.now(UTC) - timedelta(days=days_ago)
    for i, doc in enumerate(docs[: len(docs) - keep]):
        await w.db["messages"].update_one(
            {"_id": doc["_id"]}, {"$set": {"created_at": start + timedelta(days=4 * i)}}
        )


async def archive(w: World) -> None:
    _, archiver, objects = await build_archive(w.stack.settings, w.db)
    try:
        # Two months on, so the ids (which find candidates) are old too.
        report = await archiver.run_pass(time.time() + 60 * DAY)
    finally:
        await objects.close()
    assert report.moved > 0 and report.to_glacier > 0, report


async def delete(
    w: World, device: Device, conversation_id: str, message_id: str, scope: int
) -> None:
    await w.messages.DeleteMessage(
        mpb.DeleteMessageRequest(
            request_id=rid(), conversation_id=conversation_id, message_id=message_id, scope=scope
        ),
        metadata=device.md,
    )


def export_notices(stream: Stream) -> list[mpb.ExportNotice]:
    return [e.export_notice for e in stream.events if e.WhichOneof("kind") == "export_notice"]


async def test_an_export_holds_exactly_the_readable_history_and_only_its_owner_sees_it(
    world: World, moto: MotoS3
) -> None:
    w = world
    alice, bob, carol = await sign_up(w.keys), await sign_up(w.keys), await sign_up(w.keys)
    # Connected before there is history (a replay from the start would meet
    # the glacier tier).
    stream = await open_stream(w.messages, alice)
    # A direct conversation, its old part archived and the oldest in glacier.
    pair = await direct(w.messages, alice, bob)
    sent = [
        await send(w.messages, alice if i % 2 else bob, pair, f"pair {i}".encode())
        for i in range(30)
    ]
    await age_history(w, pair, keep=5, days_ago=500)
    await archive(w)
    # Deleted for everyone (hot) and for alice only (hot), and for bob only.
    await delete(w, bob, pair, sent[26].message_id, mpb.DELETE_SCOPE_FOR_EVERYONE)
    await delete(w, alice, pair, sent[27].message_id, mpb.DELETE_SCOPE_FOR_ME)
    await delete(w, bob, pair, sent[28].message_id, mpb.DELETE_SCOPE_FOR_ME)
    # A group alice joins late: what was said before is not hers.
    group = (
        await w.messages.CreateGroup(
            mpb.CreateGroupRequest(
                request_id=rid(), title="g", member_account_ids=[bob.account_id]
            ),
            metadata=carol.md,
        )
    ).conversation.conversation_id
    before = [await send(w.messages, carol, group, f"before {i}".encode()) for i in range(3)]
    await w.messages.AddMembers(
        mpb.AddMembersRequest(
            request_id=rid(), conversation_id=group, account_ids=[alice.account_id]
        ),
        metadata=carol.md,
    )
    after = [await send(w.messages, bob, group, f"after {i}".encode()) for i in range(3)]
    # Carol's own conversation with bob: nothing of it is alice's.
    other = await direct(w.messages, carol, bob)
    await send(w.messages, carol, other, b"not alice's")

    try:
        first = await request_export(w, alice)
        assert first.state == State.STATE_QUEUED
        seen: list[mpb.HistoryExport] = []
        ready = await watch(w, alice, first.export_id, {State.STATE_READY}, seen)
        # Through the states in order (a poll may miss a short one).
        states = list(dict.fromkeys(s.state for s in seen))
        order = [State.STATE_QUEUED, State.STATE_RESTORING, State.STATE_RUNNING, State.STATE_READY]
        assert states == [s for s in order if s in states]
        doc = await w.db["history_exports"].find_one({"_id": first.export_id})
        assert doc["glacier_keys"], "the plan found glacier objects to restore"
        assert ready.expire_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) + timedelta(days=6)
        await stream.wait_for(lambda s: export_notices(s))
        (notice,) = export_notices(stream)
        assert notice.export_id == first.export_id
        assert notice.kind == mpb.ExportNotice.KIND_EXPORT_READY
    finally:
        await stream.close()

    records = download(ready)
    texts = [r for r in records if not r["system"]]
    expected = {(pair, m.message_id, m.body) for i, m in enumerate(sent) if i not in (26, 27)} | {
        (group, m.message_id, m.body) for m in after
    }
    assert {
        (r["conversation_id"], r["message_id"], base64.b64decode(r["body"])) for r in texts
    } == expected
    assert not {m.message_id for m in before} & {r["message_id"] for r in records}
    assert {r["conversation_id"] for r in records} == {pair, group}
    # In seq order per conversation, each record in the documented format.
    for conversation_id in (pair, group):
        seqs = [r["seq"] for r in records if r["conversation_id"] == conversation_id]
        assert seqs == sorted(seqs)
    assert {r["format"] for r in records} == {"parley.history_export.v1"}

    # Nobody else sees it, by id or in their list, nor cancels it.
    await expect(
        get_export(w, bob, first.export_id),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_EXPORT_NOT_FOUND",
    )
    await expect(
        w.messages.CancelHistoryExport(
            mpb.CancelHistoryExportRequest(export_id=first.export_id), metadata=bob.md
        ),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_EXPORT_NOT_FOUND",
    )
    listed = await w.messages.ListHistoryExports(mpb.ListHistoryExportsRequest(), metadata=bob.md)
    assert not listed.exports
    mine = await w.messages.ListHistoryExports(mpb.ListHistoryExportsRequest(), metadata=alice.md)
    assert [e.export_id for e in mine.exports] == [first.export_id]
    # A READY export can no longer be cancelled; an export of a conversation
    # one never was in is refused.
    await expect(
        w.messages.CancelHistoryExport(
            mpb.CancelHistoryExportRequest(export_id=first.export_id), metadata=alice.md
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_EXPORT_OVER",
    )
    await expect(
        request_export(w, alice, other),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_NOT_A_MEMBER",
    )

    # Expiry: past expire_at the worker removes the object.
    key = (await w.db["history_exports"].find_one({"_id": first.export_id}))["object_key"]
    await w.db["history_exports"].update_one(
        {"_id": first.export_id}, {"$set": {"expire_at": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    expired = await watch(w, alice, first.export_id, {State.STATE_EXPIRED}, [])
    assert not expired.download_url
    assert key.startswith("exports/")
    s3 = s3_client(moto)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=moto.settings.bucket, Key=key)
    listed = s3.list_objects_v2(Bucket=moto.settings.bucket, Prefix="exports/parts/")
    assert not listed.get("Contents"), "parts are removed once the export is joined"


async def test_a_job_survives_sigkill_of_svc_message_and_can_be_cancelled_and_retried(
    world: World,
) -> None:
    w = world
    alice, bob = await sign_up(w.keys), await sign_up(w.keys)
    pair = await direct(w.messages, alice, bob)
    bodies = [f"m {i}".encode() for i in range(120)]
    for body in bodies:
        await send(w.messages, bob, pair, body)

    # Cancel, then retry with a new request.
    doomed = await request_export(w, alice, pair)
    cancelled = await w.messages.CancelHistoryExport(
        mpb.CancelHistoryExportRequest(export_id=doomed.export_id), metadata=alice.md
    )
    assert cancelled.state == State.STATE_CANCELLED
    again = await w.messages.CancelHistoryExport(
        mpb.CancelHistoryExportRequest(export_id=doomed.export_id), metadata=alice.md
    )
    assert again.state == State.STATE_CANCELLED
    retry = await request_export(w, alice, pair)
    assert retry.export_id != doomed.export_id

    # Mid-way (120 messages at 40/s in parts of 20: six parts, then the
    # join), svc_message is killed; on restart the job resumes there.
    seen: list[mpb.HistoryExport] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while not (seen and seen[-1].state == State.STATE_RUNNING and seen[-1].objects_done >= 2):
        assert time.monotonic() < deadline
        await watch(w, alice, retry.export_id, {State.STATE_RUNNING}, seen)
        await asyncio.sleep(0.05)
    assert seen[-1].objects_total == 7
    assert seen[-1].objects_done < 7
    await w.stack.kill_message(0)
    await w.stack.start_message(0)
    async with channel(w.stack.message_targets[0]) as mc:
        w.messages = messages_pb2_grpc.MessageServiceStub(mc)
        ready = await watch(w, alice, retry.export_id, {State.STATE_READY}, seen)
        records = download(ready)
        assert [base64.b64decode(r["body"]) for r in records] == bodies
        # The cancelled job left nothing behind, and stays cancelled.
        assert (await get_export(w, alice, doomed.export_id)).state == State.STATE_CANCELLED

    async def plans_left() -> int:
        return await w.db["history_export_parts"].count_documents(
            {"export_id": {"$in": [doomed.export_id, retry.export_id]}}
        )

    # Cleaned up right after READY (the test may look a moment before).
    deadline = time.monotonic() + WAIT_SECONDS
    while await plans_left():
        assert time.monotonic() < deadline, "the plans of finished jobs stay"
        await asyncio.sleep(0.1)


async def test_the_sdk_requests_watches_lists_and_downloads_an_export(world: World) -> None:
    w = world
    alice = await Client.sign_up(
        handle=f"exporter_{uuid.uuid4().hex[:8]}",
        device_name="test",
        keys_target=w.stack.keys_target,
        message_target=w.stack.message_targets[0],
        presence_target=w.stack.presence_target,
    )
    async with alice:
        bob = await sign_up(w.keys)
        view = await alice.create_direct_conversation(bob.account_id)
        conversation_id = view.conversation.conversation_id
        for i in range(3):
            await alice.send_message(conversation_id, f"sdk {i}".encode())

        started = await alice.request_history_export(conversation_id)
        assert started.state is ExportState.QUEUED
        assert started.conversation_id == conversation_id
        assert [e.export_id async for e in alice.iter_history_exports(page_size=1)] == [
            started.export_id
        ]
        with pytest.raises(FailedPreconditionError):
            await alice.download_history_export(started.export_id)
        deadline = time.monotonic() + WAIT_SECONDS
        export = started
        while export.state is not ExportState.READY:
            assert time.monotonic() < deadline, export
            await asyncio.sleep(0.1)
            export = await alice.get_history_export(started.export_id)
        assert export.progress == 1.0 and export.message_count == 3
        records = await alice.download_history_export(started.export_id)
        assert [base64.b64decode(r["body"]) for r in records] == [b"sdk 0", b"sdk 1", b"sdk 2"]
        with pytest.raises(FailedPreconditionError):
            await alice.cancel_history_export(started.export_id)
