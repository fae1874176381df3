"""Inbox controls per member, end to end on the session stack (the store
alone: test_inbox_store.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from tests.helpers import wait_until
from tests.integration.test_accounts import details
from tests.users import Device, Stream, direct, link_device, open_stream, rid, send, sign_up, synced

CAP = 5
ORDER_TIMEOUT_SECONDS = 10.0


async def rpc_error(call: object) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    reason, fields = details(caught.value)
    return caught.value.code(), reason, fields


async def listing(
    messages: mgrpc.MessageServiceStub,
    device: Device,
    *,
    archive_filter: int = mpb.ARCHIVE_FILTER_UNSPECIFIED,
    page_size: int = 100,
) -> list[mpb.ConversationView]:
    """Every page of the device's inbox, following the page tokens."""
    result: list[mpb.ConversationView] = []
    token = ""
    for _ in range(200):
        page = await messages.ListConversations(
            mpb.ListConversationsRequest(
                page_size=page_size, page_token=token, archive_filter=archive_filter
            ),
            metadata=device.md,
        )
        assert len(page.conversations) <= page_size
        result += page.conversations
        token = page.next_page_token
        if not token:
            return result
    raise AssertionError("the inbox did not end")


async def listed_ids(
    messages: mgrpc.MessageServiceStub, device: Device, **kwargs: int
) -> list[str]:
    return [v.conversation.conversation_id for v in await listing(messages, device, **kwargs)]


async def listed(
    messages: mgrpc.MessageServiceStub, device: Device, conversation_id: str, **kwargs: int
) -> mpb.ConversationView:
    views = [
        v
        for v in await listing(messages, device, **kwargs)
        if v.conversation.conversation_id == conversation_id
    ]
    assert len(views) == 1, f"{conversation_id} is not listed once"
    return views[0]


def ts(value: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(value)
    return result


async def control(
    messages: mgrpc.MessageServiceStub,
    device: Device,
    rpc: str,
    conversation_id: str,
    *,
    request_id: str | None = None,
    **fields: Any,
) -> mpb.ConversationView:
    """One inbox control RPC (SetMuted, SetPinned, SetArchived, MarkUnread) by name."""
    request = getattr(mpb, f"{rpc}Request")(
        request_id=request_id or rid(), conversation_id=conversation_id, **fields
    )
    view: mpb.ConversationView = await getattr(messages, rpc)(request, metadata=device.md)
    return view


def set_muted(
    messages: mgrpc.MessageServiceStub,
    device: Device,
    conversation_id: str,
    *,
    until: datetime | Timestamp | None = None,
    **fields: Any,
) -> Awaitable[mpb.ConversationView]:
    if until is not None:
        fields["until"] = ts(until) if isinstance(until, datetime) else until
    return control(messages, device, "SetMuted", conversation_id, **fields)


def set_pinned(
    messages: mgrpc.MessageServiceStub, device: Device, c: str, pinned: bool = True, **kw: Any
) -> Awaitable[mpb.ConversationView]:
    return control(messages, device, "SetPinned", c, pinned=pinned, **kw)


def set_archived(
    messages: mgrpc.MessageServiceStub, device: Device, c: str, archived: bool = True, **kw: Any
) -> Awaitable[mpb.ConversationView]:
    return control(messages, device, "SetArchived", c, archived=archived, **kw)


def mark_unread(
    messages: mgrpc.MessageServiceStub, device: Device, c: str, **kw: Any
) -> Awaitable[mpb.ConversationView]:
    return control(messages, device, "MarkUnread", c, **kw)


async def mark_read(
    messages: mgrpc.MessageServiceStub, device: Device, conversation_id: str, seq: int
) -> None:
    await messages.MarkRead(
        mpb.MarkReadRequest(request_id=rid(), conversation_id=conversation_id, seq=seq),
        metadata=device.md,
    )


async def people(keys: kgrpc.AccountServiceStub, count: int) -> list[Device]:
    return list(await asyncio.gather(*(sign_up(keys) for _ in range(count))))


async def test_mute_until_forever_and_unmute(keys, messages, messages_b) -> None:
    alice, bob = await people(keys, 2)
    conversation = await direct(messages, alice, bob)
    until = (datetime.now(UTC) + timedelta(hours=8)).replace(microsecond=0)
    view = await set_muted(messages, alice, conversation, until=until)
    assert view.settings.conversation_id == conversation
    assert view.settings.muted_until.ToDatetime(tzinfo=UTC) == until
    listed_view = await listed(messages_b, alice, conversation)
    assert listed_view.settings.muted_until.ToDatetime(tzinfo=UTC) == until
    # Only the caller's own settings: bob is not muted.
    assert not (await listed(messages, bob, conversation)).settings.HasField("muted_until")

    view = await set_muted(messages_b, alice, conversation, forever=True)
    assert view.settings.muted_until.ToDatetime(tzinfo=UTC).year == 9999
    view = await set_muted(messages, alice, conversation)
    assert not view.settings.HasField("muted_until")
    # A time already past is an unmute too.
    await set_muted(messages, alice, conversation, forever=True)
    view = await set_muted(messages, alice, conversation, until=until - timedelta(days=1))
    assert not view.settings.HasField("muted_until")
    assert not (await listed(messages, alice, conversation)).settings.HasField("muted_until")


async def test_pins_come_first_newest_pin_first_and_at_most_five(keys, messages, messages_b):
    me, *others = await people(keys, 8)
    conversations = [await direct(messages, me, other) for other in others]
    for conversation in conversations:
        await send(messages, me, conversation, b"hello")
    pinned = [conversations[i] for i in (4, 0, 6, 2, 5)]
    for i, conversation in enumerate(pinned):
        view = await set_pinned(messages if i % 2 else messages_b, me, conversation)
        assert view.settings.pinned
    # Pinning again changes nothing.
    again = await set_pinned(messages, me, pinned[-1])
    assert again.settings.pinned and again.settings.pin_rank > 0

    code, reason, _ = await rpc_error(set_pinned(messages, me, conversations[1]))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_TOO_MANY_PINS")

    newest_pin_first = pinned[::-1]
    rest = [c for c in conversations[::-1] if c not in pinned]

    async def in_order() -> bool:
        # The order follows last activity, written behind the log: wait until
        # every send is in it, or the pages below would see it move.
        views = await listing(messages, me)
        settled = all(v.last_message.seq == v.conversation.last_seq for v in views)
        return (
            settled and [v.conversation.conversation_id for v in views] == newest_pin_first + rest
        )

    await wait_until(in_order, timeout=ORDER_TIMEOUT_SECONDS, what="pinned first, then activity")
    views = await listing(messages, me)
    ranks = [v.settings.pin_rank for v in views[:5]]
    assert ranks == sorted(ranks, reverse=True) and all(v.settings.pinned for v in views[:5])
    assert not any(v.settings.pinned for v in views[5:])
    # Every page size walks the same list; pinned ones come on the first pages only.
    for page_size in (1, 2, 3, 5, 6):
        assert await listed_ids(messages_b, me, page_size=page_size) == newest_pin_first + rest

    await set_pinned(messages, me, pinned[0], False)
    view = await set_pinned(messages, me, conversations[1])
    assert view.settings.pinned
    assert (await listed_ids(messages, me))[0] == conversations[1]


async def test_the_pin_cap_holds_under_concurrent_calls(keys, messages, messages_b) -> None:
    me, *others = await people(keys, 10)
    conversations = [await direct(messages, me, other) for other in others]
    results = await asyncio.gather(
        *(
            set_pinned(messages if i % 2 else messages_b, me, c)
            for i, c in enumerate(conversations)
        ),
        return_exceptions=True,
    )
    pinned = [
        c for c, r in zip(conversations, results, strict=True) if not isinstance(r, Exception)
    ]
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(pinned) == CAP
    for failure in failures:
        assert isinstance(failure, grpc.aio.AioRpcError)
        assert failure.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert details(failure)[0] == "ERROR_REASON_TOO_MANY_PINS"
    views = await listing(messages, me)
    assert {v.conversation.conversation_id for v in views if v.settings.pinned} == set(pinned)
    assert [v.conversation.conversation_id for v in views[:CAP]] == [
        v.conversation.conversation_id for v in views if v.settings.pinned
    ]


async def test_archive_hides_until_the_peer_writes_unless_muted(keys, messages, messages_b):
    me, bob, carol, dave = await people(keys, 4)
    with_bob = await direct(messages, me, bob)
    with_carol = await direct(messages, me, carol)
    with_dave = await direct(messages, me, dave)
    for conversation, peer in ((with_bob, bob), (with_carol, carol), (with_dave, dave)):
        await send(messages, peer, conversation, b"hi")
    view = await set_archived(messages, me, with_bob)
    assert view.settings.archived
    await set_archived(messages_b, me, with_carol)
    await set_muted(messages, me, with_carol, forever=True)

    assert await listed_ids(messages, me) == [with_dave]
    assert set(await listed_ids(messages, me, archive_filter=mpb.ARCHIVE_FILTER_ACTIVE)) == {
        with_dave
    }
    archived = await listing(messages, me, archive_filter=mpb.ARCHIVE_FILTER_ARCHIVED)
    assert {v.conversation.conversation_id for v in archived} == {with_bob, with_carol}
    assert all(v.settings.archived for v in archived)
    everything = await listed_ids(messages, me, archive_filter=mpb.ARCHIVE_FILTER_ALL)
    assert set(everything) == {with_bob, with_carol, with_dave}
    # The peer's side is untouched.
    assert not (await listed(messages, bob, with_bob)).settings.archived

    await send(messages_b, bob, with_bob, b"news")
    await send(messages_b, carol, with_carol, b"news while muted")
    assert set(await listed_ids(messages, me)) == {with_bob, with_dave}
    assert not (await listed(messages, me, with_bob)).settings.archived
    assert await listed_ids(messages, me, archive_filter=mpb.ARCHIVE_FILTER_ARCHIVED) == [
        with_carol
    ]

    async def bob_first() -> bool:
        return (await listed_ids(messages, me))[0] == with_bob

    await wait_until(bob_first, timeout=ORDER_TIMEOUT_SECONDS, what="bob's news on top")

    # Unmuting does not bring back what came while muted; the next news does.
    view = await set_muted(messages, me, with_carol)
    assert view.settings.archived and not view.settings.HasField("muted_until")
    assert with_carol not in await listed_ids(messages, me)
    await send(messages, carol, with_carol, b"news after the mute")
    assert with_carol in await listed_ids(messages, me)

    # Unarchive by hand.
    await set_archived(messages, me, with_dave)
    assert with_dave not in await listed_ids(messages, me)
    view = await set_archived(messages, me, with_dave, False)
    assert not view.settings.archived
    assert with_dave in await listed_ids(messages, me)


async def test_mark_unread_until_marked_read(keys, messages, messages_b) -> None:
    me, bob = await people(keys, 2)
    conversation = await direct(messages, me, bob)
    await send(messages, bob, conversation, b"one")
    second = await send(messages, bob, conversation, b"two")
    await mark_read(messages, me, conversation, second.seq)
    view = await mark_unread(messages_b, me, conversation)
    assert view.settings.marked_unread
    assert view.unread_count == 0
    assert (await listed(messages, me, conversation)).settings.marked_unread
    assert not (await listed(messages, bob, conversation)).settings.marked_unread

    third = await send(messages, bob, conversation, b"three")
    assert (await listed(messages, me, conversation)).settings.marked_unread
    await mark_read(messages_b, me, conversation, third.seq)
    view = await listed(messages, me, conversation)
    assert not view.settings.marked_unread
    assert view.unread_count == 0


async def unread(messages: mgrpc.MessageServiceStub, device: Device, conversation_id: str) -> int:
    return (await listed(messages, device, conversation_id)).unread_count


async def test_unread_counts_in_a_group_of_three(keys, messages, messages_b) -> None:
    alice, bob, carol = await people(keys, 3)
    group = await messages.CreateGroup(
        mpb.CreateGroupRequest(
            request_id=rid(),
            title="three",
            member_account_ids=[bob.account_id, carol.account_id],
        ),
        metadata=alice.md,
    )
    conversation = group.conversation.conversation_id
    before = {d.account_id: await unread(messages, d, conversation) for d in (alice, bob, carol)}
    for body in (b"a1", b"a2", b"a3"):
        await send(messages, alice, conversation, body)
    last = await send(messages_b, bob, conversation, b"b1")

    # What a member sent counts as read by them.
    assert await unread(messages, alice, conversation) == before[alice.account_id] + 1
    assert await unread(messages, bob, conversation) == 0
    assert await unread(messages_b, carol, conversation) == before[carol.account_id] + 4
    await mark_read(messages, carol, conversation, last.seq)
    assert await unread(messages_b, carol, conversation) == 0
    assert await unread(messages_b, alice, conversation) == 1

    view = await mark_unread(messages, carol, conversation)
    assert view.settings.marked_unread
    view = await set_pinned(messages, carol, conversation)
    assert view.settings.pinned


async def test_unread_counts_in_a_channel(keys, messages, messages_b) -> None:
    owner, reader = await people(keys, 2)
    channel = await messages.CreateChannel(
        mpb.CreateChannelRequest(request_id=rid(), title="news", public=True),
        metadata=owner.md,
    )
    conversation = channel.conversation.conversation_id
    await messages_b.SubscribeChannel(
        mpb.SubscribeChannelRequest(request_id=rid(), conversation_id=conversation),
        metadata=reader.md,
    )
    before = await unread(messages, reader, conversation)
    await send(messages, owner, conversation, b"first")
    last = await send(messages, owner, conversation, b"second")
    assert await unread(messages, reader, conversation) == before + 2
    assert await unread(messages, owner, conversation) == 0
    await mark_read(messages, reader, conversation, last.seq)
    assert await unread(messages_b, reader, conversation) == 0

    view = await set_muted(messages, reader, conversation, forever=True)
    assert view.settings.HasField("muted_until")
    await set_archived(messages, reader, conversation)
    await send(messages, owner, conversation, b"muted news")
    assert conversation not in await listed_ids(messages, reader)
    assert await listed_ids(messages, reader, archive_filter=mpb.ARCHIVE_FILTER_ARCHIVED) == [
        conversation
    ]


async def test_only_active_members_change_settings(keys, messages) -> None:
    alice, bob, eve = await people(keys, 3)
    conversation = await direct(messages, alice, bob)
    denied = [
        set_muted(messages, eve, conversation, forever=True),
        set_pinned(messages, eve, conversation),
        set_archived(messages, eve, conversation),
        mark_unread(messages, eve, conversation),
    ]
    for call in denied:
        code, reason, _ = await rpc_error(call)
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_NOT_A_MEMBER")
    code, reason, _ = await rpc_error(set_pinned(messages, alice, rid()))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_CONVERSATION_NOT_FOUND")

    # A member who left: denied, and the conversation leaves their inbox.
    group = await messages.CreateGroup(
        mpb.CreateGroupRequest(request_id=rid(), title="g", member_account_ids=[bob.account_id]),
        metadata=alice.md,
    )
    group_id = group.conversation.conversation_id
    await set_pinned(messages, bob, group_id)
    await messages.LeaveConversation(
        mpb.LeaveConversationRequest(request_id=rid(), conversation_id=group_id),
        metadata=bob.md,
    )
    code, _, _ = await rpc_error(set_archived(messages, bob, group_id))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert group_id not in await listed_ids(messages, bob)


async def test_retries_with_the_same_request_id_change_nothing_twice(
    keys, messages, messages_b
) -> None:
    me, bob = await people(keys, 2)
    conversation = await direct(messages, me, bob)
    await send(messages, bob, conversation, b"hi")

    archive = rid()
    views = await asyncio.gather(
        set_archived(messages, me, conversation, request_id=archive),
        set_archived(messages_b, me, conversation, request_id=archive),
    )
    assert all(v.settings.archived for v in views)
    await send(messages, bob, conversation, b"news")
    assert not (await listed(messages, me, conversation)).settings.archived
    # The retry does not archive it a second time.
    view = await set_archived(messages_b, me, conversation, request_id=archive)
    assert not view.settings.archived
    assert conversation in await listed_ids(messages, me)
    # A new request does.
    view = await set_archived(messages, me, conversation)
    assert view.settings.archived

    pin = rid()
    assert (await set_pinned(messages, me, conversation, request_id=pin)).settings.pinned
    await set_pinned(messages, me, conversation, False)
    assert not (await set_pinned(messages_b, me, conversation, request_id=pin)).settings.pinned

    mark = rid()
    assert (await mark_unread(messages, me, conversation, request_id=mark)).settings.marked_unread
    newest = await send(messages, bob, conversation, b"more")
    await mark_read(messages, me, conversation, newest.seq)
    view = await mark_unread(messages_b, me, conversation, request_id=mark)
    assert not view.settings.marked_unread

    mute = rid()
    await set_muted(messages, me, conversation, forever=True, request_id=mute)
    await set_muted(messages, me, conversation)
    view = await set_muted(messages_b, me, conversation, forever=True, request_id=mute)
    assert not view.settings.HasField("muted_until")


async def test_bad_requests_name_the_field(keys, messages) -> None:
    alice, bob = await people(keys, 2)
    conversation = await direct(messages, alice, bob)
    soon = datetime.now(UTC) + timedelta(hours=1)

    def inbox(**fields: Any) -> Awaitable[mpb.ListConversationsResponse]:
        return messages.ListConversations(mpb.ListConversationsRequest(**fields), metadata=alice.md)

    cases = [
        (set_muted(messages, alice, conversation, until=soon, forever=True), ["until"]),
        (set_muted(messages, alice, conversation, until=Timestamp(seconds=10**12)), ["until"]),
        (set_pinned(messages, alice, "not-an-id"), ["conversation_id"]),
        (set_archived(messages, alice, conversation, request_id="nope"), ["request_id"]),
        (mark_unread(messages, alice, conversation, request_id="x" * 36), ["request_id"]),
        (inbox(archive_filter=99), ["archive_filter"]),
        (inbox(page_token="garbage"), ["page_token"]),
    ]
    for call, fields in cases:
        code, _, got = await rpc_error(call)
        assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, fields)

    # A token is bound to its filter; UNSPECIFIED and ACTIVE are the same list.
    for other in await people(keys, 2):
        await direct(messages, alice, other)
    token = (await inbox(page_size=1)).next_page_token
    assert token
    code, reason, fields = await rpc_error(
        inbox(page_size=1, page_token=token, archive_filter=mpb.ARCHIVE_FILTER_ALL)
    )
    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_PAGE_TOKEN_INVALID",
        ["page_token"],
    )
    same = await inbox(page_size=1, page_token=token, archive_filter=mpb.ARCHIVE_FILTER_ACTIVE)
    assert len(same.conversations) == 1


async def test_settings_reach_the_accounts_other_devices(keys, messages, messages_b) -> None:
    me, bob = await people(keys, 2)
    laptop = await link_device(keys, me)
    conversation = await direct(messages, me, bob)
    stream = await open_stream(messages_b, laptop)
    try:
        await stream.wait_for(synced)
        await set_pinned(messages, me, conversation)

        def settings(s: Stream) -> list[mpb.InboxSettings]:
            return [e.settings for e in s.events if e.WhichOneof("kind") == "settings"]

        await stream.wait_for(lambda s: settings(s))
        (changed,) = settings(stream)
        assert changed.conversation_id == conversation and changed.pinned
    finally:
        await stream.close()
