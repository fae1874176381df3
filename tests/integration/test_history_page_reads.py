"""What a history page costs across the tiers, against real SecantusDB and
SeaweedFS: a page the log holds whole is one read of the log (no cold head,
no manifest, no overlay), a page at the boundary still crosses it, and a cold
page decodes its Parquet row group once per process while changes made since
still show."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient, monitoring

from parley_dev.stack import LocalStack
from svc_message.model import ChangeKind
from svc_message.storage import tiered
from tests.archive_world import NOW, World, at, days_spread, open_world, write_change, write_history

pytestmark = pytest.mark.slow

COUNT = 120


class Commands(monitoring.CommandListener):
    """(command name, collection) of every command started."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.seen.append((event.command_name, str(event.command.get(event.command_name, ""))))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    stack = LocalStack.with_free_ports(root=tmp_path_factory.mktemp("pages") / "stack")
    try:
        await stack.start_backends()
        yield stack
    finally:
        await stack.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def world(backends: LocalStack) -> AsyncIterator[tuple[World, Commands]]:
    commands = Commands()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        backends.mongo_uri, retryWrites=False, tz_aware=True, event_listeners=[commands]
    )
    built = await open_world(backends, client)
    try:
        yield built, commands
    finally:
        await built.objects.close()
        await client.close()


async def test_a_page_the_log_holds_whole_is_one_read(world: tuple[World, Commands]) -> None:
    w, commands = world
    conversation = "c-hot"
    await write_history(
        w.store, conversation, days_spread(COUNT, first_days_ago=84, last_days_ago=2)
    )
    await w.archiver.run_pass(NOW)
    head = await w.archiver._ledger.head(conversation)
    assert 0 < head.seq < COUNT - 30

    for start, forward in ((COUNT, False), (head.seq + 11, False), (head.seq + 1, True)):
        commands.seen.clear()
        page = await w.store.page(conversation, start_seq=start, forward=forward, limit=10)
        want = range(start, start + 10) if forward else range(start, start - 10, -1)
        assert [m.seq for m in page] == list(want)
        assert commands.seen == [("find", "messages")], (start, forward)

    # The last page forward ends early: still whole, still one read.
    commands.seen.clear()
    page = await w.store.page(conversation, start_seq=COUNT - 3, forward=True, limit=10)
    assert [m.seq for m in page] == list(range(COUNT - 3, COUNT + 1))
    assert commands.seen == [("find", "messages")]

    # Across the boundary: the head says where the archive takes over.
    commands.seen.clear()
    page = await w.store.page(conversation, start_seq=head.seq + 5, forward=False, limit=10)
    assert [m.seq for m in page] == list(range(head.seq + 5, head.seq - 5, -1))
    assert ("find", "archive_heads") in commands.seen


async def test_a_cold_page_decodes_its_row_group_once_and_shows_later_changes(
    world: tuple[World, Commands], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = world
    conversation = "c-cold"
    changes = await write_history(
        w.store, conversation, days_spread(COUNT, first_days_ago=84, last_days_ago=2)
    )
    await w.archiver.run_pass(NOW)
    head = await w.archiver._ledger.head(conversation)
    decoded: list[int] = []
    read_row_group = tiered.read_row_group

    def counted(data: bytes, index: int) -> list[dict[str, Any]]:
        decoded.append(index)
        return read_row_group(data, index)

    monkeypatch.setattr(tiered, "read_row_group", counted)
    first = await w.store.page(conversation, start_seq=head.seq, forward=False, limit=3)
    assert [m.seq for m in first] == [head.seq, head.seq - 1, head.seq - 2]
    assert len(decoded) == 1

    target = changes[head.seq - 1].message
    assert target is not None and target.seq == head.seq
    await write_change(
        w.store,
        target,
        kind=ChangeKind.EDIT,
        version=COUNT + 1,
        account_id=target.sender_account_id,
        when=at(1),
        body=b"edited after archiving",
    )
    again = await w.store.page(conversation, start_seq=head.seq, forward=False, limit=3)
    assert len(decoded) == 1, "the row group was decoded again"
    assert again[0].body == b"edited after archiving"
    assert [m.body for m in again[1:]] == [m.body for m in first[1:]]
    # The overlay went on a copy: the decoded rows are still as archived.
    (kept,) = [
        d
        for docs in w.store._decoded.values()
        for d in docs
        if d["conversation_id"] == conversation and d.get("seq") == head.seq
    ]
    assert kept["body"] == target.body
