"""MessageStore's reads by seq against a real SecantusDB: SecantusDB answers
them from an index (its explain shows an IXSCAN, no COLLSCAN), a page reads
about ``limit`` keys however long the conversation, and a page with rows
hidden from the reader still holds ``limit`` visible rows, in order."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley_core.ids import new_id
from parley_core.storage.mongo import DURABLE
from parley_dev.stack import LocalStack
from svc_message.domain.messages import NEWEST
from svc_message.model import Change, ChangeKind, Message
from svc_message.storage.messages import MessageStore

# Long enough that a scan of the conversation (or the collection) reads many
# more keys than a page: two conversations of LENGTH history items each.
LENGTH = 400
LIMIT = 50
READER = "bob"
WHEN = datetime(2026, 12, 1, tzinfo=UTC)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def db_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    stack = LocalStack.with_free_ports(root=Path(tmp_path_factory.mktemp("pages")))
    try:
        stack.prepare_files()
        await stack.start_db()
        yield stack
    finally:
        await stack.stop()


class _Recording:
    """The messages collection, noting the filter of every read the store sends."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self.filters: list[dict[str, Any]] = []

    def find(self, *args: Any, **kwargs: Any) -> Any:
        self.filters.append(args[0] if args else kwargs["filter"])
        return self._collection.find(*args, **kwargs)

    async def find_one(self, *args: Any, **kwargs: Any) -> Any:
        self.filters.append(args[0] if args else kwargs["filter"])
        return await self._collection.find_one(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


class Log:
    def __init__(self, store: MessageStore, collection: Any) -> None:
        self.store = store
        self.collection = collection
        self.recording = _Recording(collection)
        store._messages = self.recording  # type: ignore[assignment]
        self.messages: dict[int, Message] = {}
        self.hidden: set[int] = set()

    async def write(self, conversation_id: str, count: int) -> None:
        changes = []
        for seq in range(1, count + 1):
            message_id = new_id(int(WHEN.timestamp() * 1000) + seq)
            message = Message(
                message_id=message_id,
                conversation_id=conversation_id,
                seq=seq,
                sender_account_id="alice",
                sender_device_id="d1",
                type=1,
                body=f"#{seq}".encode(),
                reply_to_message_id="",
                created_at=WHEN,
                request_id=f"r{seq}",
                version=seq,
            )
            self.messages[seq] = message
            changes.append(
                Change(
                    kind=ChangeKind.MESSAGE,
                    conversation_id=conversation_id,
                    version=seq,
                    change_id=message_id,
                    account_id="alice",
                    created_at=WHEN,
                    request_id=f"r{seq}",
                    message=message,
                )
            )
        assert (await self.store.insert_ordered(changes)).inserted == count

    async def hide(self, conversation_id: str, seqs: list[int], first_version: int) -> None:
        changes = [
            Change(
                kind=ChangeKind.HIDE,
                conversation_id=conversation_id,
                version=first_version + i,
                change_id=new_id(),
                account_id=READER,
                created_at=WHEN,
                target_id=self.messages[seq].message_id,
                target_seq=seq,
                request_id=f"h{first_version + i}",
                only_for=READER,
            )
            for i, seq in enumerate(seqs)
        ]
        assert (await self.store.insert_ordered(changes)).inserted == len(changes)
        await self.store.apply(changes)
        self.hidden |= set(seqs)

    async def plans(self) -> list[tuple[dict[str, Any], str, int]]:
        """Per find sent since the last call: its filter, SecantusDB's winning
        plan (as text) and the keys it examined."""
        found = []
        for query in self.recording.filters:
            explained = await self.collection.find(query).explain()
            plan = json.dumps(explained["queryPlanner"]["winningPlan"])
            found.append((query, plan, int(explained["executionStats"]["totalKeysExamined"])))
        self.recording.filters.clear()
        return found


@pytest_asyncio.fixture(loop_scope="session")
async def log(db_stack: LocalStack) -> AsyncIterator[Log]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        db_stack.mongo_uri, retryWrites=False, tz_aware=True
    )
    try:
        db = client.get_database(f"pages_{uuid.uuid4().hex[:8]}", write_concern=DURABLE)
        store = MessageStore(db)
        await store.ensure_indexes()
        world = Log(store, db["messages"])
        # Another conversation first: a collection scan would read it too.
        await world.write("other", LENGTH)
        await world.write("c", LENGTH)
        world.recording.filters.clear()
        yield world
    finally:
        await client.close()


def _expected(
    log: Log, start: int, *, forward: bool, floor: int = 1, ceiling: int = 0
) -> list[int]:
    top = min(ceiling or LENGTH, LENGTH)
    seqs = range(max(start, floor), top + 1) if forward else range(min(start, top), floor - 1, -1)
    return [s for s in seqs if s not in log.hidden][:LIMIT]


@pytest.mark.asyncio(loop_scope="session")
async def test_a_page_reads_an_index_and_about_limit_keys(log: Log) -> None:
    items = await log.store.page("c", start_seq=300, forward=False, limit=LIMIT)
    assert [m.seq for m in items] == list(range(300, 250, -1))
    plans = await log.plans()
    assert plans
    for query, plan, keys in plans:
        assert "COLLSCAN" not in plan and "IXSCAN" in plan, (query, plan)
        assert keys <= LIMIT, (query, keys)

    # The shape the store avoids, to show this explain does report a scan:
    # any field the index lacks (here hidden_for) makes SecantusDB scan.
    scanned = await log.collection.find(
        {"conversation_id": "c", "seq": {"$lte": 300}, "hidden_for": {"$ne": READER}}
    ).explain()
    assert "COLLSCAN" in json.dumps(scanned["queryPlanner"]["winningPlan"])


@pytest.mark.asyncio(loop_scope="session")
async def test_hidden_rows_leave_limit_visible_rows_in_order(log: Log) -> None:
    # Every third row, plus a run longer than a page, hidden from the reader.
    hidden = sorted({*range(3, LENGTH + 1, 3), *range(200, 281)})
    await log.hide("c", hidden, first_version=LENGTH + 1)
    log.recording.filters.clear()
    cases: list[dict[str, Any]] = [
        {"start_seq": NEWEST, "forward": False},
        {"start_seq": 300, "forward": False},
        {"start_seq": 290, "forward": False, "floor_seq": 150},
        {"start_seq": 1, "forward": True},
        {"start_seq": 190, "forward": True},
        {"start_seq": 190, "forward": True, "ceiling_seq": 330},
        {"start_seq": 360, "forward": True},
        {"start_seq": 30, "forward": False},
    ]
    for case in cases:
        items = await log.store.page("c", limit=LIMIT, hidden_for=READER, **case)
        want = _expected(
            log,
            case["start_seq"],
            forward=case["forward"],
            floor=case.get("floor_seq", 1),
            ceiling=case.get("ceiling_seq", 0),
        )
        assert [m.seq for m in items] == want, case
        assert all(READER not in m.hidden_for for m in items), case
    # Full pages where the log had enough visible rows.
    assert len(_expected(log, 300, forward=False)) == LIMIT
    assert len(_expected(log, 190, forward=True)) == LIMIT
    for query, plan, _ in await log.plans():
        assert "COLLSCAN" not in plan, (query, plan)

    # Others still see every row.
    items = await log.store.page("c", start_seq=260, forward=False, limit=LIMIT)
    assert [m.seq for m in items] == list(range(260, 210, -1))


@pytest.mark.asyncio(loop_scope="session")
async def test_hidden_seqs_and_heads_read_an_index(log: Log) -> None:
    await log.hide("c", [10, 11, 40], first_version=LENGTH + 1)
    log.recording.filters.clear()
    assert await log.store.hidden_seqs("c", READER, 5, 39) == {10, 11}
    assert await log.store.hidden_seqs("c", "carol", 1, LENGTH) == set()
    # The newest entry is a hide, not a history item: heads looks up the seq.
    assert await log.store.heads("c") == (LENGTH + 3, LENGTH)
    plans = await log.plans()
    assert len(plans) == 4
    for query, plan, _ in plans:
        assert "COLLSCAN" not in plan and "IXSCAN" in plan, (query, plan)


@pytest.mark.asyncio(loop_scope="session")
async def test_pages_at_the_ends_of_the_log(log: Log) -> None:
    assert [
        m.seq for m in await log.store.page("c", start_seq=LENGTH - 9, forward=True, limit=LIMIT)
    ] == list(range(LENGTH - 9, LENGTH + 1))
    assert [m.seq for m in await log.store.page("c", start_seq=5, forward=False, limit=LIMIT)] == [
        5,
        4,
        3,
        2,
        1,
    ]
    assert await log.store.page("c", start_seq=LENGTH + 1, forward=True, limit=LIMIT) == []
    assert await log.store.page("none", start_seq=NEWEST, forward=False, limit=LIMIT) == []
    newest = await log.store.page("c", start_seq=NEWEST, forward=False, limit=LIMIT)
    assert [m.seq for m in newest] == list(range(LENGTH, LENGTH - LIMIT, -1))
    for query, plan, _ in await log.plans():
        assert "COLLSCAN" not in plan, (query, plan)
