"""Pure policy of svc_keys and svc_message."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from parley_core.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from svc_keys.domain.handles import handle_key, handle_problem
from svc_message.domain.conversations import Membership, direct_key, inbox_entry
from svc_message.domain.streams import (
    StreamSession,
    decode_sync_token,
    encode_sync_token,
    valid_sync_token,
)
from svc_message.model import DIRECT, Conversation, Envelope, EventKind, Watermarks


@pytest.mark.parametrize("handle", ["abc", "Alice", "a_b.c9", "x" * 32])
def test_good_handles(handle: str) -> None:
    assert handle_problem(handle) is None


@pytest.mark.parametrize(
    "handle", ["ab", "x" * 33, "9lives", "a b", "ünï", "a..b", "dot.", "Admin"]
)
def test_bad_handles(handle: str) -> None:
    assert handle_problem(handle) is not None


def test_handles_compare_without_case() -> None:
    assert handle_key("AliCe") == handle_key("alice")


def test_direct_key_is_the_same_from_both_sides() -> None:
    assert direct_key("b", "a") == direct_key("a", "b") == "a|b"


def test_unread_is_last_seq_minus_read_watermark() -> None:
    conversation = Conversation(
        conversation_id="c",
        type=DIRECT,
        member_ids=("a", "b"),
        created_at=datetime.now(UTC),
        last_seq=10,
    )
    entry = inbox_entry(
        member(conversation, "a"), conversation, [Watermarks("c", "a", delivered_seq=9, read_seq=7)]
    )
    assert entry.unread_count == 3
    assert [w.account_id for w in entry.watermarks] == ["a", "b"]
    assert entry.watermarks[1] == Watermarks("c", "b")
    assert inbox_entry(member(conversation, "b"), conversation, []).unread_count == 10


def test_what_a_member_sent_counts_as_read_by_them() -> None:
    conversation = Conversation(
        conversation_id="c",
        type=DIRECT,
        member_ids=("a", "b"),
        created_at=datetime.now(UTC),
        last_seq=9,
        sent=(("a", 9), ("b", 4)),
    )
    entry = inbox_entry(
        member(conversation, "b"), conversation, [Watermarks("c", "b", delivered_seq=6, read_seq=2)]
    )
    assert entry.watermarks == (Watermarks("c", "a", 9, 9), Watermarks("c", "b", 6, 4))
    assert entry.unread_count == 5
    assert inbox_entry(member(conversation, "a"), conversation, []).unread_count == 0


def test_unread_of_a_member_starts_at_joining_and_stops_at_leaving() -> None:
    conversation = Conversation(
        conversation_id="c", type=2, member_ids=("a",), created_at=datetime.now(UTC), last_seq=50
    )
    joined = Membership(conversation, "b", 3, True, joined_seq=40)
    assert inbox_entry(joined, conversation, []).unread_count == 10
    left = Membership(conversation, "b", 3, False, joined_seq=40, left_seq=45)
    entry = inbox_entry(left, conversation, [Watermarks("c", "b", 42, 42)])
    assert entry.unread_count == 3 and entry.visible_until_seq == 45 and not entry.active


def member(conversation: Conversation, account_id: str) -> Membership:
    return Membership(conversation, account_id, 3, True)


def test_sync_tokens_round_trip_with_slack() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    decoded = decode_sync_token(encode_sync_token(at))
    assert decoded is not None and decoded < at
    assert decode_sync_token("") is None
    assert valid_sync_token("1700000000000") and not valid_sync_token("abc")


def envelope(seq: int) -> Envelope:
    return Envelope(EventKind.MESSAGE, "c", seq, object(), version=seq)


async def test_session_batches_and_ends_a_slow_consumer() -> None:
    session = StreamSession(account_id="a", device_id="d", expires_at=1e12, queue_limit=3)
    for seq in (1, 2, 3):
        session.offer(envelope(seq))
    assert [e.seq for e in await session.next_batch(clock=lambda: 0.0)] == [1, 2, 3]
    for seq in range(4, 8):
        session.offer(envelope(seq))  # the fourth overflows the bound of three
    with pytest.raises(ResourceExhausted):
        await session.next_batch(clock=lambda: 0.0)


async def test_a_finished_session_hands_out_what_is_queued_then_ends() -> None:
    session = StreamSession(account_id="a", device_id="d", expires_at=1e12, queue_limit=8)
    waiter = asyncio.create_task(session.next_batch(clock=lambda: 0.0))
    await asyncio.sleep(0.01)
    session.offer(envelope(1))
    session.finish()
    assert [e.seq for e in await asyncio.wait_for(waiter, timeout=2)] == [1]
    assert session.finished
    assert await asyncio.wait_for(session.next_batch(clock=lambda: 0.0), timeout=2) == []


async def test_a_finished_session_is_not_done_while_events_are_queued() -> None:
    session = StreamSession(account_id="a", device_id="d", expires_at=1e12, queue_limit=8)
    session.offer(envelope(1))
    session.finish()
    assert not session.finished
    assert [e.seq for e in await session.next_batch(clock=lambda: 0.0)] == [1]
    assert session.finished


async def test_a_session_closed_with_an_error_ends_with_it_even_once_half_closed() -> None:
    session = StreamSession(account_id="a", device_id="d", expires_at=1e12, queue_limit=8)
    session.close(InvalidArgument.field("kind", "not a client event"))
    session.finish()
    assert not session.finished
    with pytest.raises(InvalidArgument):
        await session.next_batch(clock=lambda: 0.0)


async def test_session_ends_when_its_token_expires() -> None:
    now = [100.0]
    session = StreamSession(account_id="a", device_id="d", expires_at=100.05, queue_limit=3)
    waiter = asyncio.create_task(session.next_batch(clock=lambda: now[0]))
    await asyncio.sleep(0.01)
    now[0] = 101.0
    with pytest.raises(Unauthenticated):
        await asyncio.wait_for(waiter, timeout=2)


def test_pages_encoded_from_cached_messages_parse_as_the_api_message() -> None:
    from parley.message.v1 import messages_pb2 as mpb
    from svc_message.model import Message
    from svc_message.servicer.convert import encode_list_messages, history_entry, message_proto

    messages = [
        Message(
            message_id=f"m{i}",
            conversation_id="c",
            seq=i,
            sender_account_id="a",
            sender_device_id="d",
            type=1,
            body=b"\x00" * (i * 100),
            reply_to_message_id="",
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        for i in range(1, 4)
    ]
    wire = encode_list_messages([history_entry(message_proto(m)) for m in messages], "tok" * 50)
    parsed = mpb.ListMessagesResponse.FromString(wire)
    assert list(parsed.messages) == [message_proto(m) for m in messages]
    assert parsed.next_page_token == "tok" * 50
    assert mpb.ListMessagesResponse.FromString(encode_list_messages([], "")).messages == []


def test_acks_raise_delivery_only_for_others_messages() -> None:
    from svc_message.domain.delivery import DeliveryService

    session = StreamSession(account_id="me", device_id="d", expires_at=1e12, queue_limit=8)
    session.follow("c", kind=DIRECT, position=0, own_last=0)
    for seq, sender in ((1, "peer"), (2, "peer"), (3, "me"), (4, "me")):
        session.note_sent(Envelope(EventKind.MESSAGE, "c", seq, object(), sender, version=seq + 1))
    # An edit moves the position, not delivery.
    session.note_sent(Envelope(EventKind.CHANGE, "c", 0, object(), version=6))

    def ackable(conversation_id: str, seq: int, version: int) -> tuple[int, int]:
        at, delivered, _ = DeliveryService.ackable(
            None,  # type: ignore[arg-type]
            session,
            conversation_id,
            seq=seq,
            version=version,
        )
        return at, delivered

    # The device's position moves to what it acked; delivery only to others' messages.
    assert ackable("c", 4, 6) == (6, 2)
    assert ackable("c", 1, 2) == (2, 1)
    # Nothing beyond what this stream sent, nothing in other conversations.
    assert ackable("c", 4, 7) == (0, 0)
    assert ackable("x", 1, 1) == (0, 0)


def test_group_receipts_reach_a_sender_once_per_member_and_tick() -> None:
    session = StreamSession(account_id="me", device_id="d", expires_at=1e12, queue_limit=8)
    session.follow("g", kind=2, position=0, own_last=5)
    first = session.filter_receipts(
        "g", [Watermarks("g", "x", 5, 0), Watermarks("g", "y", 4, 4), Watermarks("g", "me", 5, 5)]
    )
    assert first == [Watermarks("g", "x", 5, 0)]
    assert session.filter_receipts("g", [Watermarks("g", "x", 6, 0)]) == []  # nothing new for 5
    assert session.filter_receipts("g", [Watermarks("g", "x", 6, 5)]) == [
        Watermarks("g", "x", 6, 5)
    ]
    # A newer own message starts over.
    session.note_sent(Envelope(EventKind.MESSAGE, "g", 7, object(), "me", version=9))
    assert session.filter_receipts("g", [Watermarks("g", "x", 7, 5)]) == [
        Watermarks("g", "x", 7, 5)
    ]


async def test_session_queue_is_bounded_in_bytes_too() -> None:
    session = StreamSession(
        account_id="a", device_id="d", expires_at=1e12, queue_limit=1000, queue_bytes=100_000
    )
    for seq in range(1, 4):
        session.offer(Envelope(EventKind.MESSAGE, "c", seq, object(), "b", 30_000))
    batch = await session.next_batch(clock=lambda: 0.0)
    assert [e.seq for e in batch] == [1, 2, 3]  # taking them frees their bytes
    for seq in range(4, 8):
        session.offer(Envelope(EventKind.MESSAGE, "c", seq, object(), "b", 30_000))
    with pytest.raises(ResourceExhausted):  # the fourth 30 kB event passes 100 kB
        await session.next_batch(clock=lambda: 0.0)


def test_live_events_are_written_as_framed_bytes_that_parse_as_server_events() -> None:
    from parley.message.v1 import messages_pb2 as mpb
    from svc_message.servicer.convert import ProtoEventCodec
    from svc_message.servicer.stream import server_events

    events = [
        mpb.Event(message=mpb.Message(conversation_id="c", seq=seq, body=b"x" * 40))
        for seq in (1, 2, 3)
    ]
    codec = ProtoEventCodec()
    decoded = [codec.decode(e.SerializeToString()) for e in events]
    live = [e for e in decoded if e is not None]
    [whole] = server_events(live)
    assert isinstance(whole, bytes)
    assert mpb.ServerEvent.FromString(whole) == mpb.ServerEvent(events=events)
    # Chunked by size as before: two framed events per ServerEvent here.
    chunks = server_events(live, max_bytes=2 * len(live[0].framed))
    assert [len(mpb.ServerEvent.FromString(c).events) for c in chunks] == [2, 1]
    # An event built here (not from the doorbell) makes the batch a message again.
    built = Envelope(EventKind.MESSAGE, "c", 4, mpb.Event(message=mpb.Message(seq=4)))
    [mixed] = server_events([*live, built])
    assert isinstance(mixed, mpb.ServerEvent)
    assert [e.message.seq for e in mixed.events] == [1, 2, 3, 4]


def test_conversation_member_lookups_follow_replace() -> None:
    from dataclasses import replace

    from svc_message.model import CHANNEL, GROUP, MEMBER, OWNER, SUBSCRIBER

    group = Conversation(
        conversation_id="g",
        type=GROUP,
        member_ids=("a", "b"),
        created_at=datetime.now(UTC),
        roles=(("a", OWNER),),
        joined=(("b", (7, 9)),),
    )
    assert (group.role_of("a"), group.role_of("b")) == (OWNER, MEMBER)
    assert (group.joined_at("b"), group.joined_at("a")) == ((7, 9), (0, 0))
    moved = replace(group, roles=(("b", OWNER),), joined=(("a", (1, 1)),))
    assert (moved.role_of("a"), moved.role_of("b")) == (MEMBER, OWNER)
    assert (moved.joined_at("a"), moved.joined_at("b")) == ((1, 1), (0, 0))
    assert moved == replace(moved)
    assert replace(group, type=CHANNEL, roles=()).role_of("a") == SUBSCRIBER
