"""The history archive against real SecantusDB and SeaweedFS: the archiver
moves old weeks to Parquet, reads page and replay across the tiers with no gap
and no duplicate, changes after archiving are overlaid then folded, a crash at
any step of a move is repaired by a rerun, and account erasure's rewrite
removes ciphertext from the objects."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley_dev.stack import LocalStack
from svc_message.domain import archiver as archiver_module
from svc_message.domain.archive_transforms import tombstone_sender
from svc_message.domain.archiver import STEPS
from svc_message.domain.messages import NEWEST
from svc_message.model import ChangeKind, Message
from svc_message.storage.archive_format import SCHEMA_VERSION
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

pytestmark = pytest.mark.slow

# 120 messages from 84 days ago to 2 days ago: about 12 weeks, 9 of them older
# than the 30-day window.
COUNT = 120


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    stack = LocalStack.with_free_ports(root=tmp_path_factory.mktemp("archive") / "stack")
    try:
        await stack.start_backends()
        yield stack
    finally:
        await stack.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def mongo(backends: LocalStack) -> AsyncIterator[AsyncMongoClient]:
    client: AsyncMongoClient = AsyncMongoClient(
        backends.mongo_uri, retryWrites=False, tz_aware=True
    )
    try:
        yield client
    finally:
        await client.close()


_OPEN: list[World] = []


@pytest_asyncio.fixture(autouse=True, loop_scope="session")
async def _close_worlds() -> AsyncIterator[None]:
    yield
    while _OPEN:
        await _OPEN.pop().objects.close()


async def _world(backends: LocalStack, mongo: AsyncMongoClient, **kwargs: object) -> World:
    world = await open_world(backends, mongo, **kwargs)  # type: ignore[arg-type]
    _OPEN.append(world)
    return world


async def page_all(world: World, conversation: str, *, forward: bool, size: int) -> list[Message]:
    items: list[Message] = []
    start = 1 if forward else NEWEST
    for _ in range(COUNT + 5):
        page = await world.store.page(conversation, start_seq=start, forward=forward, limit=size)
        items += page
        if len(page) < size:
            return items
        start = page[-1].seq + (1 if forward else -1)
        if start < 1:
            return items
    raise AssertionError("paging did not end")


def state(items: list[Message]) -> list[tuple[int, bytes, bool, tuple[str, ...]]]:
    return [(m.seq, m.body, m.deleted, m.media_ids) for m in items]


async def test_pages_and_replay_cross_the_tiers_at_every_boundary(
    backends: LocalStack, mongo: AsyncMongoClient
) -> None:
    world = await _world(backends, mongo)
    conversation = "c-paging"
    await write_history(
        world.store,
        conversation,
        days_spread(COUNT, first_days_ago=84, last_days_ago=2),
        media={3: ("m-old",), COUNT: ("m-new",)},
    )
    reference = await page_all(world, conversation, forward=True, size=COUNT)
    replay = await world.store.changes(conversation, after_version=0, until_version=None, limit=500)
    heads_before = await world.store.heads(conversation)

    report = await world.archiver.run_pass(NOW)
    head = await world.archiver._ledger.head(conversation)
    assert report.moved == head.version > 30, report
    assert 0 < head.seq < COUNT
    hot_left = await world.db["messages"].count_documents({"conversation_id": conversation})
    assert hot_left == COUNT - head.version
    assert await world.store.heads(conversation) == heads_before, "the newest entry stays hot"
    # Every item left hot is inside the window or in the newest item's week.
    oldest_hot = await world.db["messages"].find_one(
        {"conversation_id": conversation}, sort=[("version", 1)]
    )
    assert oldest_hot["created_at"].timestamp() > NOW - 37 * DAY

    assert state(await page_all(world, conversation, forward=True, size=COUNT)) == state(reference)
    for size in (1, 2, 50):
        for forward in (True, False):
            got = await page_all(world, conversation, forward=forward, size=size)
            want = reference if forward else reference[::-1]
            assert state(got) == state(want), (size, forward)
        for start in (head.seq - 1, head.seq, head.seq + 1):
            for forward in (True, False):
                got = await world.store.page(
                    conversation, start_seq=start, forward=forward, limit=size
                )
                if forward:
                    want = [m for m in reference if m.seq >= start][:size]
                else:
                    want = [m for m in reversed(reference) if m.seq <= start][:size]
                assert state(got) == state(want), (size, start, forward)
    # Bounds (a member's visible window) hold on both sides of the boundary.
    bounded = await world.store.page(
        conversation,
        start_seq=NEWEST,
        forward=False,
        limit=50,
        floor_seq=head.seq - 3,
        ceiling_seq=head.seq + 2,
    )
    assert seqs(bounded) == list(range(head.seq + 2, head.seq - 4, -1))

    # Replay by version (a device resuming from before the window) sees the
    # whole feed from cold then hot, in any page size.
    for size in (1, 7, 500):
        got = []
        after = 0
        for _ in range(COUNT + 5):
            page = await world.store.changes(
                conversation, after_version=after, until_version=None, limit=size
            )
            got += page
            if len(page) < size:
                break
            after = page[-1].version
        assert [(c.version, c.change_id) for c in got] == [(c.version, c.change_id) for c in replay]
    bounded_replay = await world.store.changes(
        conversation, after_version=head.version - 2, until_version=head.version + 2, limit=50
    )
    assert [c.version for c in bounded_replay] == list(range(head.version - 1, head.version + 3))

    # Lookups by id and media references find archived messages.
    old = reference[2]
    assert (await world.store.by_id(old.message_id)) == old
    assert [m.message_id for m in await world.store.many([old.message_id])] == [old.message_id]
    assert await world.store.media_reference_counts(["m-old", "m-new"]) == {
        "m-old": 1,
        "m-new": 1,
    }

    # A second pass at the same time finds nothing more to move.
    assert (await world.archiver.run_pass(NOW)).moved == 0


async def test_changes_after_archiving_are_overlaid_then_folded(
    backends: LocalStack, mongo: AsyncMongoClient
) -> None:
    world = await _world(backends, mongo)
    conversation = "c-overlay"
    changes = await write_history(
        world.store,
        conversation,
        days_spread(40, first_days_ago=80, last_days_ago=40),
        media={1: ("m-deleted",), 2: ("m-kept",)},
    )
    # Something recent, so the old weeks are not the newest.
    tail = await write_history(world.store, "c-tail", [at(1)])
    del tail
    newest = changes[-1]
    extra = await world.store.insert_ordered([])
    del extra
    await world.db["messages"].insert_one(
        {
            "_id": "z-recent",
            "conversation_id": conversation,
            "version": 41,
            "seq": 41,
            "kind": ChangeKind.MESSAGE,
            "sender_id": "alice",
            "created_at": at(1),
            "request_id": "recent",
            "type": 1,
            "body": b"recent",
        }
    )
    await world.archiver.run_pass(NOW)
    head = await world.archiver._ledger.head(conversation)
    assert head.seq == 40
    first, second = (c.message for c in changes[:2])
    assert first is not None and second is not None and newest.message is not None

    # Changes made now (inside the window) to archived messages.
    await write_change(
        world.store,
        first,
        kind=ChangeKind.EDIT,
        version=42,
        account_id="bob",
        when=at(0.5),
        body=b"edited ciphertext",
    )
    await write_change(
        world.store,
        first,
        kind=ChangeKind.DELETE,
        version=43,
        account_id="bob",
        when=at(0.5),
        for_everyone=True,
    )
    await write_change(
        world.store,
        second,
        kind=ChangeKind.REACTION,
        version=44,
        account_id="carol",
        when=at(0.5),
        emoji="+1",
    )
    await write_change(
        world.store,
        second,
        kind=ChangeKind.HIDE,
        version=45,
        account_id="bob",
        when=at(0.5),
        only_for="bob",
    )
    await write_change(
        world.store,
        second,
        kind=ChangeKind.EDIT,
        version=46,
        account_id="bob",
        when=at(0.4),
        body=b"second edited",
    )

    async def check() -> None:
        page = await world.store.page(conversation, start_seq=1, forward=True, limit=2)
        deleted, reacted = page
        assert (deleted.deleted, deleted.body, deleted.media_ids) == (True, b"", ())
        assert reacted.body == b"second edited" and reacted.edited_at is not None
        assert reacted.reactions == (("+1", ("carol",)),)
        assert reacted.media_ids == ("m-kept",)
        hidden = await world.store.page(
            conversation, start_seq=1, forward=True, limit=2, hidden_for="bob"
        )
        assert seqs(hidden) == [1, 3]
        assert await world.store.hidden_seqs(conversation, "bob", 1, 40) == {2}
        assert (await world.store.by_id(first.message_id)).deleted  # type: ignore[union-attr]
        counts = await world.store.media_reference_counts(["m-deleted", "m-kept"])
        assert counts == {"m-kept": 1}

    await check()
    keys_before = world.object_keys()
    # 40 days on, the changes' own week leaves the log: the archiver first
    # folds them into the archived chunk (a rewrite), then moves them.
    await world.db["messages"].insert_one(
        {
            "_id": "zz-later",
            "conversation_id": conversation,
            "version": 47,
            "seq": 42,
            "kind": ChangeKind.MESSAGE,
            "sender_id": "alice",
            "created_at": at(-40),
            "request_id": "later",
            "type": 1,
            "body": b"later",
        }
    )
    report = await world.archiver.run_pass(NOW + 40 * DAY)
    assert report.rewritten >= 1, report
    overlays = await world.db["messages"].count_documents(
        {"conversation_id": conversation, "target_seq": {"$exists": True}}
    )
    assert overlays == 0, "the changes left the log"
    await check()
    keys_after = world.object_keys()
    assert keys_after != keys_before
    assert len(keys_after) == len(set(await world.archiver._ledger.object_keys()))
    # No object still holds the deleted message's ciphertext.
    for key in keys_after:
        assert b"ciphertext c-overlay #1c" not in world.object_bytes(key)


async def test_a_pass_reads_the_log_in_batches_up_to_what_stays(
    backends: LocalStack, mongo: AsyncMongoClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archiver_module, "READ_BATCH", 7)
    world = await _world(backends, mongo)
    times = days_spread(40, first_days_ago=70, last_days_ago=1)
    await write_history(world.store, "c-batches", times)
    due = sum(1 for t in times if t.timestamp() < NOW - 37 * DAY)
    # At most 10 entries per conversation and pass: behind, then the rest.
    world.archiver._entries_per_conversation = 10
    first = await world.archiver.run_pass(NOW)
    assert first.moved == 10 and first.lag_seconds > 0, first
    world.archiver._entries_per_conversation = 1000
    rest = await world.archiver.run_pass(NOW)
    head = await world.archiver._ledger.head("c-batches")
    # Every entry of a week that ended before the window moved, none after.
    assert first.moved + rest.moved == head.version >= due, (first, rest, due)
    left = [d async for d in world.db["messages"].find({"conversation_id": "c-batches"})]
    assert left and all(d["created_at"].timestamp() > NOW - 37 * DAY for d in left)
    assert len(left) == 40 - head.version


async def test_request_ids_of_archived_entries_still_find_their_first_attempt(
    backends: LocalStack, mongo: AsyncMongoClient
) -> None:
    """The log's unique request index no longer sees archived entries: the
    archiver keeps their request ids (hashed) so a late retry is recognised."""
    world = await _world(backends, mongo)
    conversation = "c-retry"
    changes = await write_history(
        world.store, conversation, days_spread(10, first_days_ago=60, last_days_ago=1)
    )
    await world.archiver.run_pass(NOW)
    head = await world.archiver._ledger.head(conversation)
    assert 0 < head.version < 10
    old, new = changes[0], changes[-1]
    asked = [
        (conversation, old.account_id, old.request_id),
        (conversation, new.account_id, new.request_id),
        (conversation, "mallory", old.request_id),
        (conversation, old.account_id, "r-never-sent"),
    ]
    assert await world.store.archived_retries(asked) == {asked[0]}
    found = await world.store.by_request(conversation, old.account_id, old.request_id)
    assert found is not None and (found.version, found.change_id) == (old.version, old.change_id)
    assert found.message is not None and found.message.body == old.message.body  # type: ignore[union-attr]
    hot = await world.store.by_request(conversation, new.account_id, new.request_id)
    assert hot is not None and hot.change_id == new.change_id
    assert await world.store.by_request(conversation, "mallory", old.request_id) is None
    # One document per archived entry, and none names an account.
    docs = [d async for d in world.db["archive_requests"].find({})]
    assert len(docs) == head.version
    assert not [d for d in docs if "alice" in repr(d) or "bob" in repr(d)]


async def _crash_at(step: str):  # type: ignore[no-untyped-def]
    class Crash(Exception):
        pass

    async def hook(name: str) -> None:
        if name == step:
            raise Crash(step)

    return Crash, hook


@pytest.mark.parametrize("step", STEPS)
async def test_a_crash_at_any_step_then_a_rerun_loses_nothing_and_doubles_nothing(
    backends: LocalStack, mongo: AsyncMongoClient, step: str
) -> None:
    crash, hook = await _crash_at(step)
    world = await _world(backends, mongo, on_step=hook, target_object_bytes=4096)
    conversations = [f"c-crash-{i}" for i in range(3)]
    for conversation in conversations:
        await write_history(
            world.store, conversation, days_spread(30, first_days_ago=70, last_days_ago=1)
        )
    reference = {c: await page_all(world, c, forward=True, size=100) for c in conversations}
    with pytest.raises(crash):
        await world.archiver.run_pass(NOW)
    written = world.object_keys()
    assert written, "the first object was written before the crash"
    # The rerun (no crash this time) on the same data at the same time.
    world.archiver._on_step = None
    await world.archiver.run_pass(NOW)
    after = world.object_keys()
    assert set(written) <= set(after), "the rerun wrote the same object again"
    assert after == sorted(await world.archiver._ledger.object_keys()), "no orphan object"
    rows, objects, _ = await world.archiver._ledger.totals()
    hot = await world.db["messages"].count_documents({})
    assert rows + hot == 90 and objects == len(after), (rows, hot)
    for conversation in conversations:
        got = await page_all(world, conversation, forward=True, size=7)
        assert state(got) == state(reference[conversation])
        back = await page_all(world, conversation, forward=False, size=7)
        assert state(back) == state(reference[conversation][::-1])
        head = await world.archiver._ledger.head(conversation)
        assert head.seq > 0
        assert not await world.db["messages"].count_documents(
            {"conversation_id": conversation, "version": {"$lte": head.version}}
        )


async def test_quiet_conversations_share_objects_that_others_can_read(
    backends: LocalStack, mongo: AsyncMongoClient, tmp_path: Path
) -> None:
    world = await _world(backends, mongo, target_object_bytes=2048)
    for i in range(12):
        await write_history(
            world.store, f"c-quiet-{i:02d}", [at(60), at(59), at(1)], senders=("alice",)
        )
    report = await world.archiver.run_pass(NOW)
    assert report.moved == 24 and report.conversations == 12
    keys = world.object_keys()
    assert 1 < len(keys) < 12, "several conversations per object"
    sizes = [len(world.object_bytes(k)) for k in keys]
    del sizes
    data = world.object_bytes(keys[0])
    parquet = pq.ParquetFile(io.BytesIO(data))
    assert parquet.schema_arrow.metadata[b"schema_version"] == SCHEMA_VERSION.encode()
    assert parquet.num_row_groups > 1, "one row group per (conversation, week)"
    table = parquet.read()
    assert set(table.column("kind").to_pylist()) == {"message"}
    path = tmp_path / "archive.parquet"
    path.write_bytes(data)
    con = duckdb.connect()
    rows = con.execute(
        "SELECT conversation_id, week, count(*), min(seq), max(seq), "
        "bool_and(octet_length(body) > 0) "
        f"FROM read_parquet('{path}') GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert rows and all(r[2] == 2 and r[3] == 1 and r[4] == 2 and r[5] for r in rows), rows


async def test_erasure_rewrite_tombstones_an_account_in_cold_objects(
    backends: LocalStack, mongo: AsyncMongoClient
) -> None:
    world = await _world(backends, mongo)
    conversation = "c-erase"
    await write_history(
        world.store,
        conversation,
        days_spread(20, first_days_ago=70, last_days_ago=1),
        senders=("alice", "mallory"),
        media={1: ("m-mallory",)},
    )
    await world.archiver.run_pass(NOW)
    mallory_bodies = [f"ciphertext {conversation} #{i}ciphertext".encode() for i in range(1, 20, 2)]
    old_keys = world.object_keys()
    assert any(b in world.object_bytes(k) for k in old_keys for b in mallory_bodies)
    stale = await world.archiver._ledger.of_conversations([conversation], limit=100)
    world.store._objects._cache.clear()  # as another process would, with nothing cached
    rewritten = await world.archiver.rewrite_weeks_with(
        tombstone_sender("mallory"), conversation_ids=[conversation]
    )
    assert rewritten >= 1
    keys = world.object_keys()
    assert keys == sorted(await world.archiver._ledger.object_keys()), "no orphan object"
    for key in keys:
        data = world.object_bytes(key)
        assert not any(b in data for b in mallory_bodies), key
    head = await world.archiver._ledger.head(conversation)
    for key in keys:
        table = pq.read_table(io.BytesIO(world.object_bytes(key)))
        for row in table.to_pylist():
            if row["sender_id"] == "mallory":
                assert (row["body"], row["media"], row["deleted"]) == (b"", None, True)
            else:
                assert row["body"]
    # A reader holding manifest entries from before the rewrite follows each
    # chunk to its new object.
    assert any(e.object_key not in keys for e in stale)
    for entry in stale:
        docs = await world.store.chunk_docs(entry)
        assert all(not d["body"] for d in docs if d["sender_id"] == "mallory")
    cold = await world.store.page(conversation, start_seq=1, forward=True, limit=head.seq)
    assert all(m.deleted for m in cold if m.sender_account_id == "mallory")
    assert await world.store.media_reference_counts(["m-mallory"]) == {}
    # Idempotent: nothing left to change.
    assert (
        await world.archiver.rewrite_weeks_with(
            tombstone_sender("mallory"), conversation_ids=[conversation]
        )
        == 0
    )
    # With a pseudonym, the account id itself leaves every object.
    await world.archiver.rewrite_weeks_with(
        tombstone_sender("mallory", pseudonym="erased-1"), conversation_ids=None
    )
    for key in world.object_keys():
        rows = pq.read_table(io.BytesIO(world.object_bytes(key))).to_pylist()
        assert rows and not [r for r in rows if "mallory" in repr(r)], key


async def test_operator_commands_pause_resume_run_and_report(
    backends: LocalStack, mongo: AsyncMongoClient
) -> None:
    """``python -m svc_message archive ...`` against the stack's config: pause
    is seen by every archiver (this test's too), run makes one pass."""
    world = await _world(backends, mongo, stack_database=True)

    async def archive(action: str) -> dict[str, object]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "svc_message",
            "archive",
            action,
            "--config",
            str(backends.config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, err.decode()[-2000:]
        return json.loads(out)  # type: ignore[no-any-return]

    try:
        assert (await archive("pause"))["paused"] is True
        assert (await world.archiver.tick()) is None, "paused for every process"
        ran = await archive("run")
        assert ran["ran"] is False
        resumed = await archive("resume")
        assert resumed["paused"] is False
        ran = await archive("run")
        assert ran["ran"] is True, ran
        status = await archive("status")
        assert {"hot_entries", "hot_bytes", "cold_rows", "cold_objects", "cold_bytes"} <= set(
            status
        )
    finally:
        await world.archiver.set_paused(False)


async def test_objects_no_chunk_names_are_swept_once_old_enough(
    backends: LocalStack, mongo: AsyncMongoClient
) -> None:
    """A move that crashed after writing and was then bundled differently
    leaves an object nothing names; the daily sweep deletes it."""
    world = await _world(backends, mongo)
    await write_history(world.store, "c-orphan", [at(60), at(59), at(1)])
    await world.archiver.run_pass(NOW)
    named = world.object_keys()
    stray = f"{world.prefix}c-orphan/2026-W40/9/{'0' * 64}.parquet"
    world.s3().put_object(Bucket=backends.s3_bucket, Key=stray, Body=b"x")
    assert await world.archiver.sweep_orphans(time.time(), min_age_seconds=3600) == 0, "too young"
    assert await world.archiver.sweep_orphans(time.time() + 7200, min_age_seconds=3600) == 1
    assert world.object_keys() == named


async def test_one_lease_holder_a_rate_limit_and_the_lag(
    backends: LocalStack, mongo: AsyncMongoClient
) -> None:
    world = await _world(backends, mongo)
    ledger = world.archiver._ledger
    assert await ledger.take_lease("a", now=NOW, seconds=60)
    assert await ledger.take_lease("a", now=NOW + 30, seconds=60), "renewed by its holder"
    assert not await ledger.take_lease("b", now=NOW + 60, seconds=60), "held until it expires"
    assert await ledger.take_lease("b", now=NOW + 91, seconds=60), "then another takes it"
    await ledger.release_lease("b")
    assert await ledger.take_lease("a", now=NOW + 92, seconds=60), "released: free at once"
    await ledger.release_lease("a")

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    world.archiver._sleep = sleep
    world.archiver._rate = 10.0
    world.archiver._conversations_per_pass = 2
    for i in range(3):
        await write_history(world.store, f"c-rate-{i}", [at(60), at(59), at(58), at(1)])
    before = await world.archiver.sample()
    assert (before.hot_entries, before.hot_bytes) == (None, None), "no pass has measured it"
    report = await world.archiver.run_pass(NOW)
    assert report.moved == 6 and sum(slept) == pytest.approx(0.6), slept
    # Two conversations per pass: one was left, 60 days old, 30 past the window.
    assert report.lag_seconds == pytest.approx(30 * DAY, abs=2 * DAY), report
    # The metrics' sample reports the hot log as the pass left it, without
    # reading the log again; the CLI's status reads it now.
    live = await world.archiver.status()
    world.archiver.sampled = await world.archiver.sample()
    assert world.archiver.sampled.hot_entries == live.hot_entries == 6
    assert world.archiver.sampled.hot_bytes == live.hot_bytes
    assert world.archiver.sampled.hot_bytes and world.archiver.sampled.cold_bytes > 0
    assert world.archiver.lag_seconds(NOW) >= report.lag_seconds
    assert (await world.archiver.run_pass(NOW)).moved == 3
    assert world.archiver.last.lag_seconds == 0.0


async def test_quiet_conversations_do_not_crowd_out_the_others(
    backends: LocalStack, mongo: AsyncMongoClient
) -> None:
    """A conversation silent for months keeps its newest week in the log, so it
    stays a candidate; passes take candidates in turns."""
    world = await _world(backends, mongo)
    world.archiver._conversations_per_pass = 2
    for i in range(4):
        await write_history(world.store, f"c-silent-{i}", [at(200 + i)])
    await write_history(world.store, "c-busy", [at(60), at(59), at(1)])
    moved = 0
    for _ in range(4):
        moved += (await world.archiver.run_pass(NOW)).moved
    assert moved == 2, "c-busy's old week moved within a few passes"


async def test_a_replica_never_archives_another_regions_conversations(
    backends: LocalStack, mongo: AsyncMongoClient
) -> None:
    """Archive objects are the owner region's: a replica keeps its copies in the log."""
    world = await _world(backends, mongo)
    world.archiver._owns = lambda conversation_id: conversation_id.startswith("c-owned")
    await write_history(world.store, "c-owned-1", [at(60), at(59), at(1)])
    await write_history(world.store, "c-replica-1", [at(60), at(59), at(1)])
    report = await world.archiver.run_pass(NOW)
    assert report.moved == 2 and report.conversations == 1
    stored = b"".join(world.object_bytes(key) for key in world.object_keys())
    assert b"c-owned-1" in stored and b"c-replica-1" not in stored
    replica = await page_all(world, "c-replica-1", forward=True, size=10)
    assert seqs(replica) == [1, 2, 3]
