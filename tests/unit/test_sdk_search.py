"""The SDK keeps its search index in step with what the device reads: sends,
decrypts (direct, group, channel), edits, deletes and stream events, and a
backfill that indexes readable history resumably, over the in-memory server."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from parley.message.v1 import messages_pb2 as pb
from parley_sdk import (
    DeleteScope,
    MessageDeletedEvent,
    MessageEditedEvent,
    MessageEvent,
    NotEncryptedError,
    SearchIndex,
)
from parley_sdk._search_backfill import backfill
from parley_sdk._secure import E2EE
from tests.sdk_search_fakes import SearchFakeServer, online
from tests.unit.test_sdk_sender_key_calls import key_client

DIRECT = pb.CONVERSATION_TYPE_DIRECT
GROUP = pb.CONVERSATION_TYPE_GROUP
CHANNEL = pb.CONVERSATION_TYPE_CHANNEL


def found(device: E2EE, query: str, conversation_id: str | None = None) -> list[str]:
    page = device.search.search(query, conversation_id=conversation_id, page_size=100)
    return [r.text for r in page.results]


async def say(device: E2EE, conversation_id: str, text: str) -> pb.Message:
    sent = await device.send_text(conversation_id, text, reply_to_message_id="", forwarded=False)
    return sent.message


def forget_index(device: E2EE) -> None:
    """The store as an SDK without search left it: history, no index."""
    db = device.store.connection
    db.execute("DELETE FROM search_docs")
    db.execute("DELETE FROM search_backfill")
    db.execute("INSERT INTO search_fts (search_fts) VALUES ('delete-all')")


async def test_sent_and_decrypted_messages_are_indexed_in_every_kind() -> None:
    server = SearchFakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    direct = server.conversation(DIRECT, ["alice", "bob"])
    group = server.conversation(GROUP, ["alice", "bob"])
    channel = server.conversation(CHANNEL, ["alice", "bob"])
    messages = [
        await say(alice, direct, "lunch at the café?"),
        await say(alice, group, "group lunch on Friday"),
        await say(alice, channel, "canteen lunch menu"),
    ]
    # The sender indexes what it sends, with where and when.
    assert sorted(found(alice, "lunch")) == sorted(
        ["lunch at the café?", "group lunch on Friday", "canteen lunch menu"]
    )
    [result] = alice.search.search("cafe").results
    assert (result.conversation_id, result.seq, result.sender_account_id) == (direct, 1, "alice")
    assert result.sender_device_id == "a1"
    # The reader indexes what it decrypts.
    for message in messages:
        assert (await bob.decrypt(message)).text is not None
    assert found(bob, "lunch", group) == ["group lunch on Friday"]
    assert found(bob, "lunch", channel) == ["canteen lunch menu"]
    assert found(bob, "cafe") == ["lunch at the café?"]
    # Reading again writes nothing.
    assert bob.search.count() == 3


async def test_what_cannot_be_read_is_not_indexed() -> None:
    server = SearchFakeServer()
    alice = await online(server, "alice", "a1")
    await online(server, "bob", "b1")
    direct = server.conversation(DIRECT, ["alice", "bob"])
    before = await say(alice, direct, "before the phone existed")
    phone = await online(server, "bob", "b2")
    assert (await phone.decrypt(before)).error == "not encrypted for this device"
    assert phone.search.count() == 0


async def test_edits_reindex_on_both_sides() -> None:
    server = SearchFakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    for kind in (DIRECT, GROUP):
        cid = server.conversation(kind, ["alice", "bob"])
        sent = await say(alice, cid, "meet at noon")
        await bob.decrypt(sent)
        edit = await alice.edit_text(cid, sent.message_id, "meet at seven")
        assert found(alice, "noon", cid) == []
        assert found(alice, "seven", cid) == ["meet at seven"]
        # Bob learns of the edit on the stream.
        event = await bob.prepare(MessageEditedEvent(edit))
        assert isinstance(event, MessageEditedEvent) and event.text == "meet at seven"
        assert found(bob, "noon", cid) == []
        assert found(bob, "seven", cid) == ["meet at seven"]
        [result] = bob.search.search("seven", conversation_id=cid).results
        assert result.seq == sent.seq


async def test_deletes_leave_the_index() -> None:
    server = SearchFakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    cid = server.conversation(GROUP, ["alice", "bob"])
    first = await say(alice, cid, "delete me for everyone")
    second = await say(alice, cid, "delete me for bob")
    third = await say(alice, cid, "a tombstone on read")
    for message in (first, second, third):
        await bob.decrypt(message)
    assert len(found(bob, "delete")) == 2

    everyone = pb.MessageDeleted(
        conversation_id=cid,
        message_id=first.message_id,
        seq=first.seq,
        scope=int(DeleteScope.FOR_EVERYONE),  # type: ignore[arg-type]
    )
    await bob.prepare(MessageDeletedEvent(everyone))
    for_me = pb.MessageDeleted(
        conversation_id=cid,
        message_id=second.message_id,
        seq=second.seq,
        scope=int(DeleteScope.FOR_ME),  # type: ignore[arg-type]
    )
    await bob.prepare(MessageDeletedEvent(for_me))
    assert found(bob, "delete") == []
    # A tombstone read from history takes its message out too.
    tombstone = server.delete_for_everyone(cid, third.message_id)
    assert (await bob.decrypt(tombstone)).text is None
    assert found(bob, "tombstone") == []
    assert bob.search.count() == 0


async def test_stream_messages_are_indexed() -> None:
    server = SearchFakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    cid = server.conversation(DIRECT, ["alice", "bob"])
    sent = await say(alice, cid, "東京都に住んでいます")
    await bob.prepare(MessageEvent(sent))
    assert found(bob, "東京") == ["東京都に住んでいます"]


async def test_an_index_failure_does_not_fail_a_read(monkeypatch: pytest.MonkeyPatch) -> None:
    server = SearchFakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    cid = server.conversation(DIRECT, ["alice", "bob"])
    sent = await say(alice, cid, "disk full")

    def full(*args: object, **kwargs: object) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(SearchIndex, "index", full)
    assert (await bob.decrypt(sent)).text == "disk full"


# -- backfill ---------------------------------------------------------------


async def history(server: SearchFakeServer, alice: E2EE, bob: E2EE) -> dict[str, str]:
    """A direct chat bob read, a channel he never opened, and a group message he
    read then lost for himself; returns conversation ids by kind."""
    direct = server.conversation(DIRECT, ["alice", "bob"])
    channel = server.conversation(CHANNEL, ["alice", "bob"])
    group = server.conversation(GROUP, ["alice", "bob"])
    for number in range(1, 8):
        await bob.decrypt(await say(alice, direct, f"direct note {number}"))
    for number in range(1, 12):
        await say(alice, channel, f"channel post {number} 北京")
    hidden = await say(alice, group, "group note hidden")
    await bob.decrypt(hidden)
    await bob.decrypt(await say(alice, group, "group note kept"))
    server.delete_for("bob", hidden.message_id)
    return {"direct": direct, "channel": channel, "group": group}


async def test_a_backfill_indexes_what_the_device_can_read() -> None:
    server = SearchFakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    ids = await history(server, alice, bob)
    phone = await online(server, "bob", "b2")  # a new device: none of the E2EE history
    forget_index(bob)
    assert bob.search.count() == 0

    seen: list[tuple[int, int]] = []
    report = await backfill(
        bob._client,  # type: ignore[arg-type]
        bob,
        progress=lambda done, total: seen.append((done, total)),
        page_size=4,
    )
    assert report.total == 7 + 11 + 2 and report.done == report.total
    assert report.indexed == 7 + 11 + 1
    assert report.unreadable == 0
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert len(found(bob, "direct")) == 7
    assert len(found(bob, "北京", ids["channel"])) == 11
    assert found(bob, "group") == ["group note kept"]

    # The new device reads the channel, and nothing end-to-end encrypted.
    phone_report = await backfill(
        phone._client,  # type: ignore[arg-type]
        phone,
        progress=None,
        page_size=200,
    )
    assert phone_report.indexed == 11
    assert phone_report.unreadable == 7 + 1
    assert found(phone, "direct") == []

    # Done: the next backfill walks nothing.
    again = await backfill(bob._client, bob, progress=None, page_size=4)  # type: ignore[arg-type]
    assert (again.total, again.indexed) == (0, 0)
    await say(alice, ids["channel"], "one more post")
    again = await backfill(bob._client, bob, progress=None, page_size=4)  # type: ignore[arg-type]
    assert (again.total, again.indexed) == (1, 1)


class Killed(Exception):
    """Stands in for SIGKILL between two pages (the integration test kills for real)."""


async def test_an_interrupted_backfill_resumes_without_repeats(tmp_path: Path) -> None:
    server = SearchFakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1", tmp_path / "bob.db")
    ids = await history(server, alice, bob)
    forget_index(bob)
    db = bob.store.connection
    db.execute("CREATE TABLE writes (message_key NOT NULL)")
    db.execute(
        "CREATE TRIGGER count_writes AFTER INSERT ON search_docs"
        " BEGIN INSERT INTO writes VALUES (new.message_key); END"
    )

    killed_at: list[int] = []

    def kill_midway(done: int, total: int) -> None:
        if done >= 8:
            killed_at.append(done)
            raise Killed()

    with pytest.raises(Killed):
        await backfill(bob._client, bob, progress=kill_midway, page_size=4)  # type: ignore[arg-type]
    partial = bob.search.count()
    assert 0 < partial < 19
    bob.close()

    reopened = await online(server, "bob", "b1", tmp_path / "bob.db")
    seen: list[tuple[int, int]] = []
    report = await backfill(
        reopened._client,  # type: ignore[arg-type]
        reopened,
        progress=lambda done, total: seen.append((done, total)),
        page_size=4,
    )
    assert report.indexed == 19 - partial
    # It resumed after the last committed page.
    assert seen[0] == (0, 20 - killed_at[0])
    writes = [row[0] for row in reopened.store.connection.execute("SELECT message_key FROM writes")]
    assert len(writes) == len(set(writes)) == 19
    assert len(found(reopened, "北京", ids["channel"])) == 11
    reopened.close()


async def test_a_backfill_drops_what_was_deleted_meanwhile() -> None:
    server = SearchFakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    cid = server.conversation(GROUP, ["alice", "bob"])
    kept = await say(alice, cid, "still here")
    gone = await say(alice, cid, "deleted for me elsewhere")
    erased = await say(alice, cid, "deleted for everyone while offline")
    for message in (kept, gone, erased):
        await bob.decrypt(message)
    server.delete_for("bob", gone.message_id)
    server.delete_for_everyone(cid, erased.message_id)
    await backfill(bob._client, bob, progress=None, page_size=2)  # type: ignore[arg-type]
    assert found(bob, "deleted") == []
    assert found(bob, "still") == ["still here"]


async def test_search_needs_a_store() -> None:
    client, _ = key_client()
    async with client:
        with pytest.raises(NotEncryptedError):
            await client.search("hello")
        with pytest.raises(NotEncryptedError):
            await client.backfill_search_index()
        with pytest.raises(NotEncryptedError):
            _ = client.search_index


async def test_reading_again_takes_no_write_lock() -> None:
    server = SearchFakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    cid = server.conversation(GROUP, ["alice", "bob"])
    sent = await say(alice, cid, "read twice")
    await bob.decrypt(sent)
    statements: list[str] = []
    bob.store.connection.set_trace_callback(statements.append)
    await bob.decrypt(sent)
    bob.store.connection.set_trace_callback(None)
    assert not [s for s in statements if s.startswith(("BEGIN", "INSERT", "UPDATE", "DELETE"))]
