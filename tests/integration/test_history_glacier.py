"""The glacier tier of the history archive against moto (the one local S3
with archived objects) and real SecantusDB: objects whose weeks are older
than the cold window go to the GLACIER class (copied in tests, a bucket
lifecycle rule in production), the manifest records the tier, every read of
that history is FAILED_PRECONDITION HISTORY_ARCHIVED naming the range while
the rest of the conversation reads as before, and a rewrite (account
erasure) restores the objects first."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.session
import grpc
import pytest
import pytest_asyncio
from botocore.config import Config
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc
from parley_core.errors import FailedPrecondition, Reason, Unavailable
from parley_dev.stack import LocalStack
from svc_message.archive_wiring import build_archive
from svc_message.domain.archive_transforms import tombstone_sender
from svc_message.domain.messages import NEWEST
from svc_message.model import ChangeKind
from svc_message.model.archive import ManifestEntry, Tier
from svc_message.storage.archive_format import iso_week
from svc_message.storage.archive_lifecycle import GLACIER_RULE
from tests.archive_world import (
    DAY,
    NOW,
    World,
    at,
    days_spread,
    open_world,
    seqs,
    write_change,
    write_history,
)
from tests.groups import expect
from tests.helpers import TEST_LIMITS, channel
from tests.media_world import error_info
from tests.moto_server import MotoS3, own_moto_server
from tests.users import direct, send, sign_up

pytestmark = pytest.mark.slow

COLD_DAYS = 365
# 80 messages from 500 days ago to 2 days ago: the oldest weeks are past the
# cold window, the middle ones cold, the newest hot.
COUNT = 80
GLACIER_COPY = {"cold_window_days": COLD_DAYS, "glacier_transition": "copy"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    stack = LocalStack.with_free_ports(root=tmp_path_factory.mktemp("glacier") / "stack")
    try:
        await stack.start_backends()
        yield stack
    finally:
        await stack.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def moto(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MotoS3]:
    async with own_moto_server(Path(tmp_path_factory.mktemp("glacier_moto"))) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def mongo(backends: LocalStack) -> AsyncIterator[AsyncMongoClient]:
    client: AsyncMongoClient = AsyncMongoClient(
        backends.mongo_uri, retryWrites=False, tz_aware=True
    )
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def worlds() -> AsyncIterator[list[World]]:
    opened: list[World] = []
    yield opened
    for world in opened:
        await world.objects.close()


def s3_client(moto: MotoS3) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        region_name=moto.settings.region,
        endpoint_url=moto.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


async def manifest(world: World, conversation_id: str) -> list[ManifestEntry]:
    return sorted(
        await world.store._ledger.of_conversations([conversation_id], limit=1000),
        key=lambda e: e.seq_lo,
    )


def glacier_week() -> str:
    """Weeks before this one are past the cold window at NOW."""
    return iso_week(at(COLD_DAYS))


async def archived_world(
    backends: LocalStack,
    mongo: AsyncMongoClient,
    moto: MotoS3,
    worlds: list[World],
    conversation_id: str,
    **archive: Any,
) -> World:
    world = await open_world(
        backends, mongo, s3=moto.settings, archive=archive, target_object_bytes=4096
    )
    worlds.append(world)
    await write_history(
        world.store,
        conversation_id,
        days_spread(COUNT, first_days_ago=500, last_days_ago=2),
    )
    return world


def assert_tiers_by_newest_week(entries: list[ManifestEntry], s3: Any, bucket: str) -> None:
    """An object moves whole, once its newest week is past the cold window:
    the manifest and the store agree on it."""
    by_object: dict[str, list[ManifestEntry]] = {}
    for entry in entries:
        by_object.setdefault(entry.object_key, []).append(entry)
    for key, chunks in by_object.items():
        head = s3.head_object(Bucket=bucket, Key=key)
        due = max(c.week for c in chunks) < glacier_week()
        assert {c.tier for c in chunks} == {Tier.GLACIER if due else Tier.COLD}, key
        assert head.get("StorageClass", "STANDARD") == ("GLACIER" if due else "STANDARD"), key


def archived_error(excinfo: pytest.ExceptionInfo[FailedPrecondition]) -> dict[str, str]:
    assert excinfo.value.reason is Reason.HISTORY_ARCHIVED
    return excinfo.value.metadata


async def test_old_objects_go_to_glacier_and_reads_of_them_answer_history_archived(
    backends: LocalStack, mongo: AsyncMongoClient, moto: MotoS3, worlds: list[World]
) -> None:
    world = await archived_world(backends, mongo, moto, worlds, "g1", **GLACIER_COPY)
    report = await world.archiver.run_pass(NOW)
    assert report.moved > 0 and report.to_glacier > 0, report

    entries = await manifest(world, "g1")
    frozen = [e for e in entries if e.tier is Tier.GLACIER]
    cold = [e for e in entries if e.tier is Tier.COLD]
    assert frozen and cold
    assert_tiers_by_newest_week(entries, s3_client(moto), moto.settings.bucket)
    s3 = s3_client(moto)
    # The glacier tier is a prefix of the archive (by seq).
    boundary = max(e.seq_hi for e in frozen)
    assert boundary < min(e.seq_lo for e in cold)

    # Everything after the boundary reads as before, across cold and hot.
    rest = await world.store.page("g1", start_seq=boundary + 1, forward=True, limit=COUNT)
    assert seqs(rest) == list(range(boundary + 1, COUNT + 1))
    back = await world.store.page("g1", start_seq=NEWEST, forward=False, limit=COUNT - boundary)
    assert seqs(back) == list(range(COUNT, boundary, -1))

    # Reading into the glacier tier, either way, and lookups by id.
    with pytest.raises(FailedPrecondition) as backward:
        await world.store.page("g1", start_seq=NEWEST, forward=False, limit=COUNT)
    meta = archived_error(backward)
    assert meta["conversation_id"] == "g1"
    # One error names the whole glacier range the read cannot pass.
    assert (meta["seq_lo"], meta["seq_hi"]) == ("1", str(boundary))
    assert (meta["version_lo"], meta["version_hi"]) == ("1", str(boundary))
    with pytest.raises(FailedPrecondition) as forward:
        await world.store.page("g1", start_seq=1, forward=True, limit=5)
    assert archived_error(forward)["seq_lo"] == "1"
    oldest = (await world.store._ledger.by_seq("g1", 1, 1))[0]
    with pytest.raises(FailedPrecondition):
        await world.store.chunk_docs(oldest)
    with pytest.raises(FailedPrecondition) as replayed:
        await world.store.changes("g1", after_version=0, until_version=None, limit=10)
    # A device resumes past the range the error names.
    past = int(archived_error(replayed)["version_hi"])
    resumed = await world.store.changes("g1", after_version=past, until_version=None, limit=1)
    assert [c.version for c in resumed] == [past + 1]
    # Replay from a position in the cold tier works.
    replay = await world.store.changes("g1", after_version=boundary, until_version=None, limit=5)
    assert [c.version for c in replay] == list(range(boundary + 1, boundary + 6))

    # A rerun moves nothing again; the store's GET of a glacier object is refused.
    again = await world.archiver.run_pass(NOW)
    assert (again.moved, again.to_glacier) == (0, 0)
    error = s3.exceptions.ClientError
    with pytest.raises(error) as refused:
        s3.get_object(Bucket=moto.settings.bucket, Key=frozen[0].object_key)
    assert refused.value.response["Error"]["Code"] == "InvalidObjectState"


async def test_a_rewrite_restores_glacier_objects_first(
    backends: LocalStack, mongo: AsyncMongoClient, moto: MotoS3, worlds: list[World]
) -> None:
    world = await archived_world(backends, mongo, moto, worlds, "g2", **GLACIER_COPY)
    await world.archiver.run_pass(NOW)
    frozen_keys = {e.object_key for e in await manifest(world, "g2") if e.tier is Tier.GLACIER}
    assert frozen_keys

    erase = tombstone_sender("alice", pseudonym="erased")
    # The first call asks the store for restored copies and says to come back.
    with pytest.raises(Unavailable):
        await world.archiver.rewrite_weeks_with(erase, conversation_ids=["g2"])
    rewritten = await world.archiver.rewrite_weeks_with(erase, conversation_ids=["g2"])
    assert rewritten > 0
    entries = await manifest(world, "g2")
    assert not frozen_keys & {e.object_key for e in entries}, "old objects replaced"
    s3 = s3_client(moto)
    listed = s3.list_objects_v2(Bucket=moto.settings.bucket, Prefix=world.prefix)
    keys = {item["Key"] for item in listed.get("Contents", ())}
    assert not frozen_keys & keys, "old objects deleted"
    # Rewritten objects are new (readable) until the next pass moves them again.
    for entry in entries:
        docs = await world.store.chunk_docs(entry)
        assert all(d["sender_id"] != "alice" for d in docs)
        assert all(not d.get("body") for d in docs if d["sender_id"] == "erased")
    report = await world.archiver.run_pass(NOW)
    assert report.to_glacier > 0
    assert_tiers_by_newest_week(await manifest(world, "g2"), s3, moto.settings.bucket)


async def test_lifecycle_rule_beside_others_and_the_tier_the_store_reports(
    backends: LocalStack, mongo: AsyncMongoClient, moto: MotoS3, worlds: list[World]
) -> None:
    s3 = s3_client(moto)
    bucket = moto.settings.bucket
    operators = {
        "ID": "operator-expire-tmp",
        "Status": "Enabled",
        "Filter": {"Prefix": "tmp/"},
        "Expiration": {"Days": 7},
    }
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [operators]}
    )
    world = await archived_world(
        backends, mongo, moto, worlds, "g3", cold_window_days=COLD_DAYS, hot_window_days=30
    )
    report = await world.archiver.run_pass(NOW)
    assert report.moved > 0 and report.to_glacier == 0, "the store has not moved anything yet"
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["operator-expire-tmp"]["Expiration"] == {"Days": 7}
    ours = rules[GLACIER_RULE]
    assert ours["Transitions"] == [{"Days": COLD_DAYS - 30, "StorageClass": "GLACIER"}]
    assert ours["Filter"]["And"]["Prefix"] == world.prefix

    # The store moves the oldest object (as its rule would): the next read of
    # it finds out and records it, before any pass does.
    entries = await manifest(world, "g3")
    oldest = entries[0]
    s3.copy_object(
        Bucket=bucket,
        Key=oldest.object_key,
        CopySource={"Bucket": bucket, "Key": oldest.object_key},
        StorageClass="GLACIER",
    )
    with pytest.raises(FailedPrecondition) as read:
        await world.store.page("g3", start_seq=1, forward=True, limit=3)
    assert archived_error(read)["conversation_id"] == "g3"
    assert (await manifest(world, "g3"))[0].tier is Tier.GLACIER

    # A pass HEADs the other due objects (once a day each) and records what
    # the store reports: none has moved, so none is glacier.
    later = await world.archiver.run_pass(NOW + DAY + 1)
    assert later.to_glacier == 0
    tiers = {e.object_key: e.tier for e in await manifest(world, "g3")}
    assert tiers[oldest.object_key] is Tier.GLACIER
    assert sum(t is Tier.GLACIER for t in tiers.values()) == 1


async def test_a_store_without_transitions_has_no_glacier_tier(
    backends: LocalStack, mongo: AsyncMongoClient, worlds: list[World]
) -> None:
    """SeaweedFS refuses transition rules (501): the archiver carries on,
    nothing is HEADed or recorded as glacier, everything stays readable."""
    world = await open_world(
        backends, mongo, archive={"cold_window_days": COLD_DAYS}, target_object_bytes=4096
    )
    worlds.append(world)
    await write_history(world.store, "g4", days_spread(COUNT, first_days_ago=500, last_days_ago=2))
    report = await world.archiver.run_pass(NOW)
    assert report.moved > 0 and report.to_glacier == 0
    assert {e.tier for e in await manifest(world, "g4")} == {Tier.COLD}
    items = await world.store.page("g4", start_seq=1, forward=True, limit=COUNT)
    assert seqs(items) == list(range(1, COUNT + 1))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def moto_stack(
    tmp_path_factory: pytest.TempPathFactory, moto: MotoS3
) -> AsyncIterator[LocalStack]:
    config: dict[str, Any] = {
        **TEST_LIMITS,
        "s3": moto.settings.model_dump(mode="json"),
        "message": {"recent_cache_messages": 0},
        # The service's own archiver stays off: the test runs one with its clock.
        "archive": {"enabled": False, **GLACIER_COPY, "prefix": "history-glacier-e2e/"},
    }
    async with LocalStack.with_free_ports(
        root=Path(tmp_path_factory.mktemp("glacier_stack")),
        shutdown_grace_seconds=2.0,
        extra_config=config,
    ) as stack:
        yield stack


async def test_list_messages_into_glacier_history_is_history_archived(
    moto_stack: LocalStack,
) -> None:
    stack = moto_stack
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
            for i in range(20):
                await send(messages, alice, conversation, f"ciphertext {i}".encode())
            # The log as if written over weeks well over a year ago; the
            # newest three stay recent.
            db = mongo[stack.settings.mongo.database]
            docs = [
                d
                async for d in db["messages"]
                .find({"conversation_id": conversation})
                .sort("version", 1)
            ]
            now = time.time()
            start = datetime.fromtimestamp(now, UTC) - timedelta(days=500)
            for i, doc in enumerate(docs[:-3]):
                await db["messages"].update_one(
                    {"_id": doc["_id"]}, {"$set": {"created_at": start + timedelta(days=4 * i)}}
                )
            _, archiver, objects = await build_archive(stack.settings, db)
            try:
                # Two months on, so the ids (which find candidates) are old too.
                report = await archiver.run_pass(now + 60 * DAY)
            finally:
                await objects.close()
            assert report.moved >= 10 and report.to_glacier >= 1, report

            def page(size: int) -> Any:
                return messages.ListMessages(
                    mpb.ListMessagesRequest(
                        conversation_id=conversation,
                        page_size=size,
                        direction=mpb.DIRECTION_BACKWARD,
                    ),
                    metadata=bob.md,
                )

            recent = await page(2)
            assert [m.body for m in recent.messages] == [b"ciphertext 19", b"ciphertext 18"]
            error = await expect(
                page(50), grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_HISTORY_ARCHIVED"
            )
            info = error_info(error)
            assert info.metadata["conversation_id"] == conversation
            assert 1 <= int(info.metadata["seq_lo"]) <= int(info.metadata["seq_hi"]) < 20
    finally:
        await mongo.close()


async def test_a_change_to_a_glacier_message_is_folded_after_a_restore(
    backends: LocalStack, mongo: AsyncMongoClient, moto: MotoS3, worlds: list[World]
) -> None:
    """A change (here a delete for everyone, made before its target went to
    glacier) leaves the log only folded into its target's object: while the
    store restores that object the change stays in the log, overlay and all."""
    world = await open_world(
        backends, mongo, s3=moto.settings, archive=GLACIER_COPY, target_object_bytes=4096
    )
    worlds.append(world)
    sent = await write_history(
        world.store, "g5", days_spread(COUNT, first_days_ago=500, last_days_ago=60)
    )
    first = await world.archiver.run_pass(NOW)
    assert first.to_glacier > 0
    oldest = sent[0].message
    assert oldest is not None
    await write_change(
        world.store,
        oldest,
        kind=ChangeKind.DELETE,
        version=COUNT + 1,
        account_id="bob",
        when=at(50),
        for_everyone=True,
    )
    newest = sent[-1].message
    assert newest is not None
    await write_change(
        world.store,
        newest,
        kind=ChangeKind.REACTION,
        version=COUNT + 2,
        account_id="carol",
        when=at(1),
        emoji="+1",
    )

    async def in_log(version: int) -> bool:
        found = await world.db["messages"].find_one({"conversation_id": "g5", "version": version})
        return found is not None

    held = await world.archiver.run_pass(NOW)
    assert held.rewritten == 0
    assert await in_log(COUNT + 1), "the change waits in the log for the restore"
    assert (await world.archiver._ledger.head("g5")).version < COUNT + 1

    folded = await world.archiver.run_pass(NOW)
    assert folded.rewritten > 0 and folded.to_glacier > 0, folded
    assert not await in_log(COUNT + 1)
    assert (await world.archiver._ledger.head("g5")).version == COUNT + 1
    assert await in_log(COUNT + 2), "the newest entry stays hot"
    # The target's object was rewritten with the delete folded in, and is
    # back in glacier: read it from a restored copy.
    (entry,) = await world.store._ledger.by_seq("g5", 1, 1)
    assert entry.tier is Tier.GLACIER
    s3_client(moto).restore_object(
        Bucket=moto.settings.bucket, Key=entry.object_key, RestoreRequest={"Days": 1}
    )
    rows = await world.store.chunk_docs(entry, restored=True)
    target = next(d for d in rows if d.get("seq") == 1 and d["_id"] == oldest.message_id)
    assert target["deleted"] and not target.get("body")
