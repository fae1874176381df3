"""The inbox settings store on a SecantusDB of its own: the pin cap rests on
its unique index, concurrent writers from two connections (two processes'
worth), documents written before the CRDT state, and the index migration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from parley_core.config import MongoSettings
from parley_core.hlc import HybridClock
from parley_core.storage.mongo import Database, connect, durable_database
from parley_dev.stack import LocalStack
from svc_message.domain.inbox_settings import InboxSettings
from svc_message.model.inbox import Pin
from svc_message.storage.inbox import InboxSettingsStore
from tests.users import rid

CAP = 5


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def inbox_databases(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[list[Database]]:
    """Two connections to one database: two processes' worth."""
    local = LocalStack.with_free_ports(root=Path(tmp_path_factory.mktemp("inbox_db")))
    local.prepare_files()
    await local.start_db()
    settings = MongoSettings(uri=local.mongo_uri, database="inbox_test")
    clients = [connect(settings, app_name="test_inbox") for _ in range(2)]
    try:
        yield [durable_database(c, settings) for c in clients]
    finally:
        for client in clients:
            await client.close()
        await local.stop_db()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def inbox_store(
    inbox_databases: list[Database],
) -> AsyncIterator[tuple[InboxSettings, InboxSettings]]:
    """Two stores, one per connection, each with its own hybrid logical
    clock, as each process has."""
    stores = [InboxSettingsStore(db) for db in inbox_databases]
    await stores[0].ensure_indexes()
    one, other = (
        InboxSettings(
            store,
            clock=HybridClock(f"test.{i}"),
            physical_ms=lambda: int(time.time() * 1000),
        )
        for i, store in enumerate(stores)
    )
    yield one, other


async def test_the_pin_cap_holds_under_concurrent_pins(inbox_store) -> None:
    one, other = inbox_store
    account = rid()
    conversations = [rid() for _ in range(16)]
    outcomes = await asyncio.gather(
        *(
            (one if i % 2 else other).pin(c, account, now_ms=1000, request_id=rid(), cap=CAP)
            for i, c in enumerate(conversations)
        )
    )
    assert outcomes.count(Pin.PINNED) == CAP
    assert outcomes.count(Pin.FULL) == len(conversations) - CAP
    pins = await one.pinned(account)
    assert len(pins) == CAP
    assert {p.pin_slot for p in pins} == set(range(CAP))
    assert {p.conversation_id for p in pins} == {
        c for c, o in zip(conversations, outcomes, strict=True) if o is Pin.PINNED
    }
    # Ranks are distinct and the listing is newest pin first.
    ranks = [p.pin_rank for p in pins]
    assert ranks == sorted(set(ranks), reverse=True)


async def test_concurrent_pins_of_one_conversation_pin_it_once(inbox_store) -> None:
    one, other = inbox_store
    account, conversation = rid(), rid()
    outcomes = await asyncio.gather(
        *(
            store.pin(conversation, account, now_ms=5, request_id=rid(), cap=CAP)
            for store in (one, other) * 4
        )
    )
    assert outcomes.count(Pin.PINNED) == 1
    assert outcomes.count(Pin.UNCHANGED) == len(outcomes) - 1
    assert [p.conversation_id for p in await one.pinned(account)] == [conversation]


async def test_a_request_applies_once(inbox_store) -> None:
    one, other = inbox_store
    account, conversation = rid(), rid()
    request = rid()
    first = await asyncio.gather(
        *(
            store.set_muted(conversation, account, until=None, request_id=request)
            for store in (one, other) * 3
        )
    )
    assert first.count(True) == 1
    # Different requests racing to create the document all apply.
    account2 = rid()
    applied = await asyncio.gather(
        *(
            store.mark_unread(conversation, account2, read_seq=i, request_id=rid())
            for i, store in enumerate((one, other) * 3)
        )
    )
    assert applied == [True] * 6
    # Unpinning, then a retry of the pin: nothing changes.
    pin_request = rid()
    assert await one.pin(conversation, account, now_ms=1, request_id=pin_request, cap=CAP) is (
        Pin.PINNED
    )
    assert await one.unpin(conversation, account, request_id=rid())
    assert await one.pin(conversation, account, now_ms=2, request_id=pin_request, cap=CAP) is (
        Pin.UNCHANGED
    )
    assert await one.pinned(account) == []


async def test_settings_read_back(inbox_store) -> None:
    store, _ = inbox_store
    account = rid()
    a, b, c = rid(), rid(), rid()
    until = datetime(2031, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert await store.set_muted(a, account, until=until, request_id=rid())
    assert await store.pin(b, account, now_ms=10, request_id=rid(), cap=CAP) is Pin.PINNED
    assert await store.set_archived(b, account, archived=True, archived_seq=4, request_id=rid())
    assert await store.mark_unread(c, account, read_seq=3, request_id=rid())
    settings = await store.of_account(account, [a, b, c, rid()])
    assert set(settings) == {a, b, c}
    assert settings[a].muted_until == until
    # Archiving unpinned it.
    assert not settings[b].pinned and settings[b].archived and settings[b].archived_seq == 4
    assert settings[c].unread_mark_seq == 3
    assert [s.conversation_id for s in await store.archived(account)] == [b]
    assert await store.pinned(account) == []
    await store.clear_unread_mark(c, account)
    assert (await store.one(c, account)).unread_mark_seq is None  # type: ignore[union-attr]
    assert await store.of_account(rid(), [a, b, c]) == {}


async def test_a_document_written_before_the_crdt_state_reads_and_changes(
    inbox_store, inbox_databases
) -> None:
    one, other = inbox_store
    account, pinned, muted = rid(), rid(), rid()
    until = datetime(2031, 1, 2, tzinfo=UTC)
    # As the store wrote them before it kept a state and a version.
    await inbox_databases[0]["inbox_settings"].insert_many(
        [
            {
                "_id": f"{pinned}:{account}",
                "account_id": account,
                "conversation_id": pinned,
                "pinned": True,
                "pin_slot": 0,
                "pin_rank": 7,
                "archived": False,
                "archived_seq": 0,
                "muted_until": None,
                "requests": ["old"],
            },
            {
                "_id": f"{muted}:{account}",
                "account_id": account,
                "conversation_id": muted,
                "muted_until": until,
                "archived": True,
                "archived_seq": 3,
                "requests": [],
            },
        ]
    )
    assert [(p.conversation_id, p.pin_rank) for p in await one.pinned(account)] == [(pinned, 7)]
    read = await one.of_account(account, [muted])
    assert read[muted].muted_until == until and read[muted].archived_seq == 3
    # A retry of a request it remembers changes nothing; a new one applies once.
    assert not await other.set_archived(
        pinned, account, archived=True, archived_seq=1, request_id="old"
    )
    changed = await asyncio.gather(
        one.unpin(pinned, account, request_id=rid()),
        other.set_muted(muted, account, until=None, request_id=rid()),
    )
    assert changed == [True, True]
    assert await one.pinned(account) == []
    assert (await other.one(muted, account)).muted_until is None  # type: ignore[union-attr]


async def test_the_index_before_merged_pins_is_replaced(inbox_databases: list[Database]) -> None:
    """The unique (account, slot) index over every pin, from before settings
    merged across regions, would refuse merged pins (which hold no slot)."""
    settings = inbox_databases[0]["inbox_settings"]
    await settings.create_index(
        [("account_id", 1), ("pin_slot", 1)],
        name="pinned",
        unique=True,
        partialFilterExpression={"pinned": True},
    )
    await InboxSettingsStore(inbox_databases[0]).ensure_indexes()
    names = set(await settings.index_information())
    assert "pinned" not in names
    assert {"pin_slots", "pinned_list", "archived"} <= names
