"""A replica's copy of another region's conversation against real SecantusDB:
the trim deletes what is older than its retention and records the floor
first; pages and feed replays reaching below the floor are refused (the
region routing then asks the owner) and the rest read as before; a copy
re-sent below the floor never hides the gap, and the next trim takes it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley_core.errors import FailedPrecondition, Reason
from parley_dev.stack import LocalStack
from svc_message.domain.messages import NEWEST
from svc_message.domain.replica_trim import ReplicaTrimmer
from svc_message.model.replica_floor import HistoryAtOwner, ReplicaFloor
from svc_message.storage.archive import ArchiveLedger
from svc_message.storage.hot_log import HotLog
from svc_message.storage.replica_floor import ReplicaFloors, ReplicaHistoryStore
from tests.archive_world import DAY, NOW, World, days_spread, open_world, write_history

pytestmark = pytest.mark.slow

COUNT = 40
RETENTION_DAYS = 37


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    stack = LocalStack.with_free_ports(root=tmp_path_factory.mktemp("floor") / "stack")
    try:
        await stack.start_backends()
        yield stack
    finally:
        await stack.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def world(backends: LocalStack) -> AsyncIterator[World]:
    client: AsyncMongoClient = AsyncMongoClient(
        backends.mongo_uri, retryWrites=False, tz_aware=True
    )
    opened = await open_world(backends, client)
    try:
        yield opened
    finally:
        await opened.objects.close()
        await client.close()


def _replica(world: World, floors: ReplicaFloors) -> ReplicaHistoryStore:
    return ReplicaHistoryStore(
        world.db,
        ArchiveLedger(world.db),
        HotLog(world.db),
        world.objects,
        floors=floors,
        owns=lambda _: False,
    )


async def test_a_trimmed_copy_refuses_what_it_lacks_and_serves_the_rest(world: World) -> None:
    conversation = "conv-replica"
    changes = await write_history(
        world.store,
        conversation,
        days_spread(COUNT, first_days_ago=80, last_days_ago=1),
    )
    floors = ReplicaFloors(world.db)
    replica = _replica(world, floors)
    hot = HotLog(world.db)
    trimmer = ReplicaTrimmer(
        hot,
        floors,
        retention_seconds=RETENTION_DAYS * DAY,
        entries_per_conversation=1000,
        messages_per_second=0,
    )
    old = [c for c in changes if c.created_at.timestamp() < NOW - RETENTION_DAYS * DAY]
    assert 0 < len(old) < COUNT

    assert await trimmer.trim_all([conversation], now=NOW) == len(old)
    floor = await floors.get(conversation)
    assert floor == ReplicaFloor(version=len(old), seq=len(old))
    held_from = len(old) + 1
    assert await replica.held_from(conversation) == held_from
    # A second pass finds nothing more to take.
    assert await trimmer.trim_all([conversation], now=NOW) == 0

    # Backward from the newest past the floor: the owner's.
    with pytest.raises(HistoryAtOwner):
        await replica.page(conversation, start_seq=NEWEST, forward=False, limit=COUNT)
    # Backward pages the copy holds whole are served here.
    page = await replica.page(conversation, start_seq=COUNT, forward=False, limit=5)
    assert [m.seq for m in page] == list(range(COUNT, COUNT - 5, -1))
    ends_at_floor = COUNT - held_from + 1
    page = await replica.page(conversation, start_seq=COUNT, forward=False, limit=ends_at_floor)
    assert [m.seq for m in page][-1] == held_from
    with pytest.raises(HistoryAtOwner):
        await replica.page(conversation, start_seq=held_from + 1, forward=False, limit=3)
    # Forward from below the floor: the owner's; from the floor: here.
    with pytest.raises(HistoryAtOwner):
        await replica.page(conversation, start_seq=1, forward=True, limit=5)
    with pytest.raises(HistoryAtOwner):
        await replica.page(conversation, start_seq=held_from - 1, forward=True, limit=5)
    page = await replica.page(conversation, start_seq=held_from, forward=True, limit=5)
    assert [m.seq for m in page] == list(range(held_from, held_from + 5))

    # A feed replay from below the floor is told where to resume.
    with pytest.raises(FailedPrecondition) as refused:
        await replica.changes(conversation, after_version=0, until_version=None, limit=10)
    assert refused.value.reason is Reason.HISTORY_ARCHIVED
    assert refused.value.metadata["version_hi"] == str(floor.version)
    resumed = await replica.changes(
        conversation, after_version=floor.version, until_version=None, limit=10
    )
    assert resumed[0].version == floor.version + 1

    # A message hidden from the reader leaves a gap that is no hole.
    await world.db["messages"].update_one(
        {"conversation_id": conversation, "seq": COUNT - 1}, {"$set": {"hidden_for": ["bob"]}}
    )
    page = await replica.page(
        conversation, start_seq=COUNT, forward=False, limit=3, hidden_for="bob"
    )
    assert [m.seq for m in page] == [COUNT, COUNT - 2, COUNT - 3]

    # A trimmed message re-sent (a later state of it replicated) does not
    # paper over the hole below the floor; the next trim takes it again.
    stray = await world.store.by_id(old[-3].change_id)
    assert stray is None
    await world.store.insert_ordered([old[-3]])
    with pytest.raises(HistoryAtOwner):
        await replica.page(conversation, start_seq=held_from + 1, forward=False, limit=3)
    with pytest.raises(HistoryAtOwner):
        await replica.page(conversation, start_seq=old[-3].message.seq, forward=True, limit=5)
    assert await trimmer.trim_all([conversation], now=NOW) == 1
    assert await world.store.by_id(old[-3].change_id) is None
    assert await floors.get(conversation) == floor


async def test_conversations_owned_here_read_as_before(world: World) -> None:
    conversation = "conv-owned"
    await write_history(
        world.store, conversation, days_spread(10, first_days_ago=80, last_days_ago=60)
    )
    await world.db["messages"].delete_many({"conversation_id": conversation, "seq": {"$lt": 4}})
    owned = ReplicaHistoryStore(
        world.db,
        ArchiveLedger(world.db),
        HotLog(world.db),
        world.objects,
        floors=ReplicaFloors(world.db),
        owns=lambda _: True,
    )
    page = await owned.page(conversation, start_seq=NEWEST, forward=False, limit=20)
    assert [m.seq for m in page] == list(range(10, 3, -1))
