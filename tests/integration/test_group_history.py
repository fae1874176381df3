"""Messages that are not there, and what removed and late-joining members see.

Calls that name a message of another conversation, an unknown conversation,
or a deleted or system message; a removed member's view (live and offline)
ends at the removal; a member added later sees history from the system
message that added them; a channel subscriber sees the whole history.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from parley.message.v1 import messages_pb2 as mpb
from tests.feed_view import DeviceView
from tests.groups import FOR_EVERYONE, FOR_ME, THUMBS_UP, Setup, expect
from tests.users import (
    all_messages,
    error_fields,
    link_device,
    rid,
    rpc,
    send,
    sign_up,
    sign_up_many,
)

# -- messages that are not there ---------------------------------------------------------


async def test_messages_must_belong_to_the_conversation(keys, messages) -> None:
    setup = Setup(keys, messages)
    world, elsewhere = await setup.world("group"), await setup.world("direct")
    owner, cid = world.owner, world.conversation_id
    foreign = {"conversation_id": cid, "message_id": elsewhere.other.message_id}
    not_found = (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_MESSAGE_NOT_FOUND")
    for scope in (FOR_ME, FOR_EVERYONE):
        await expect(rpc(messages, "DeleteMessage", owner, **foreign, scope=scope), *not_found)
    await expect(rpc(messages, "EditMessage", owner, **foreign, body=b"x"), *not_found)
    await expect(rpc(messages, "ReactToMessage", owner, **foreign, emoji=THUMBS_UP), *not_found)
    await expect(rpc(messages, "ListReactions", owner, **foreign), *not_found)
    text = {"conversation_id": cid, "type": mpb.MESSAGE_TYPE_TEXT, "body": b"re"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rpc(messages, "SendMessage", owner, **text, reply_to_message_id=foreign["message_id"])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_fields(refused.value) == ["reply_to_message_id"]
    # A reply inside the conversation is fine and says what it answers.
    reply = await rpc(
        messages,
        "SendMessage",
        owner,
        **text,
        reply_to_message_id=world.other.message_id,
        forwarded=True,
    )
    assert reply.message.reply_to_message_id == world.other.message_id
    assert reply.message.forwarded


async def test_unknown_conversation_is_not_found(keys, messages) -> None:
    someone, unknown = await sign_up(keys), rid()
    not_found = (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_CONVERSATION_NOT_FOUND")
    await expect(rpc(messages, "GetConversation", someone, conversation_id=unknown), *not_found)
    await expect(rpc(messages, "ListMessages", someone, conversation_id=unknown), *not_found)


async def test_deleted_and_system_messages_cannot_change(keys, messages) -> None:
    world = await Setup(keys, messages).world("group")
    owner, member, cid = world.owner, world.people["member"], world.conversation_id
    mine = {
        "conversation_id": cid,
        "message_id": (await send(messages, member, cid, b"x")).message_id,
    }
    await rpc(messages, "DeleteMessage", member, **mine, scope=FOR_EVERYONE)
    deleted = (grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_MESSAGE_DELETED")
    await expect(rpc(messages, "EditMessage", member, **mine, body=b"y"), *deleted)
    await expect(rpc(messages, "ReactToMessage", owner, **mine, emoji="\u2764"), *deleted)
    history = await all_messages(messages, owner, cid)
    tombstone = next(m for m in history if m.message_id == mine["message_id"])
    assert (tombstone.deleted, tombstone.body) == (True, b"")
    system = next(m for m in history if m.type == mpb.MESSAGE_TYPE_SYSTEM)
    await expect(
        rpc(
            messages,
            "EditMessage",
            owner,
            conversation_id=cid,
            message_id=system.message_id,
            body=b"x",
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_NOT_THE_SENDER",
    )


# -- what removed and late members see ---------------------------------------------------


async def wait_views(views: list[DeviceView], done: Callable[[DeviceView], bool]) -> None:
    for view in views:
        assert view.stream is not None

        def caught_up(_: object, view: DeviceView = view) -> bool:
            view.follow()
            return done(view)

        await view.stream.wait_for(caught_up)


def seqs_of(view: DeviceView, cid: str) -> list[int]:
    return [s.seq for s in view.shown(cid)]


async def test_a_removed_member_sees_nothing_after_the_removal(keys, messages, messages_b) -> None:
    owner, stay, gone = await sign_up_many(keys, 3)
    gone_tablet = await link_device(keys, gone, "tablet")
    members = [stay.account_id, gone.account_id]
    view = await rpc(messages, "CreateGroup", owner, title="removal", member_account_ids=members)
    cid = view.conversation.conversation_id
    before = [await send(messages, owner, cid, f"before {i}".encode()) for i in range(2)]
    own = await send(messages, gone, cid, b"mine")

    watching, live, offline = DeviceView(stay), DeviceView(gone), DeviceView(gone_tablet)
    for device_view, stub in ((watching, messages), (live, messages_b), (offline, messages)):
        await device_view.connect(stub)
    await wait_views([watching, live, offline], lambda v: v.synced and own.seq in seqs_of(v, cid))
    await offline.disconnect()  # the tablet is away during the removal

    await rpc(messages, "RemoveMember", owner, conversation_id=cid, account_id=gone.account_id)
    mine = await rpc(messages_b, "GetConversation", gone, conversation_id=cid)
    assert mine.membership_state == mpb.MEMBERSHIP_STATE_LEFT
    removed_at = mine.visible_until_seq
    assert removed_at == own.seq + 1

    # After the removal: a message, an edit and a reaction on what the removed
    # member had, a deletion of their own message, a rename.
    after = await send(messages, owner, cid, b"after")
    first, second = ({"conversation_id": cid, "message_id": m.message_id} for m in before)
    await rpc(messages, "EditMessage", owner, **first, body=b"new")
    await rpc(messages, "ReactToMessage", stay, **second, emoji="\u2764")
    await rpc(
        messages,
        "DeleteMessage",
        owner,
        conversation_id=cid,
        message_id=own.message_id,
        scope=FOR_EVERYONE,
    )
    renamed = await rpc(messages, "UpdateConversationInfo", owner, conversation_id=cid, title="2")
    last_version = renamed.conversation.last_version

    # The remaining member saw everything; by then the removed one's live
    # stream has long had its chance to see it too.
    await wait_views([watching], lambda v: v.conversations[cid].version == last_version)
    await offline.connect(messages_b)
    await wait_views([live, offline], lambda v: v.synced and removed_at in seqs_of(v, cid))
    for name, device_view in (("live", live), ("offline", offline)):
        device_view.follow()
        feed = device_view.conversations[cid]
        seqs = seqs_of(device_view, cid)
        assert seqs == list(range(seqs[0], removed_at + 1)), name
        assert (feed.seq, device_view.problems) == (removed_at, []), name
        assert feed.version < last_version
        last = device_view.shown(cid)[-1]
        assert last.system_action == mpb.SystemEvent.ACTION_MEMBER_REMOVED
        assert last.system_targets == (gone.account_id,)
        items = {s.message_id: s for s in device_view.shown(cid)}
        assert items[before[0].message_id].body == b"before 0", "no edit after the removal"
        assert items[before[1].message_id].reaction_counts == ()
        assert not items[own.message_id].deleted
        assert after.message_id not in items

    history = await all_messages(messages_b, gone, cid)
    assert history[-1].seq == removed_at
    backward = await rpc(messages, "ListMessages", gone, conversation_id=cid)
    assert backward.messages[0].seq == removed_at
    forward = await rpc(
        messages,
        "ListMessages",
        gone,
        conversation_id=cid,
        direction=mpb.DIRECTION_FORWARD,
        start_seq=removed_at + 1,
    )
    assert list(forward.messages) == []
    inbox = await rpc(messages, "ListConversations", gone, archive_filter=mpb.ARCHIVE_FILTER_ALL)
    assert cid not in [c.conversation.conversation_id for c in inbox.conversations]
    for device_view in (watching, live, offline):
        await device_view.disconnect()


async def test_a_member_added_later_sees_history_from_joining(keys, messages, messages_b) -> None:
    owner, early, late = await sign_up_many(keys, 3)
    view = await rpc(
        messages, "CreateGroup", owner, title="late", member_account_ids=[early.account_id]
    )
    cid = view.conversation.conversation_id
    old = [await send(messages, early, cid, f"old {i}".encode()) for i in range(3)]

    newcomer = DeviceView(late)
    await newcomer.connect(messages_b)
    await wait_views([newcomer], lambda v: v.synced)
    added = await rpc(
        messages, "AddMembers", owner, conversation_id=cid, account_ids=[late.account_id]
    )
    joined_seq = added.conversation.last_seq
    mine = await rpc(messages_b, "GetConversation", late, conversation_id=cid)
    assert (mine.joined_seq, mine.membership_state) == (joined_seq, mpb.MEMBERSHIP_STATE_ACTIVE)
    assert mine.unread_count == 0, "history before joining is not unread"
    page = await rpc(messages, "ListMembers", late, conversation_id=cid)
    assert {m.account_id: m.joined_seq for m in page.members}[late.account_id] == joined_seq

    # Changes to messages from before the join do not reach the newcomer.
    first, second = ({"conversation_id": cid, "message_id": m.message_id} for m in old[:2])
    await rpc(messages, "EditMessage", early, **first, body=b"edit")
    await rpc(messages, "ReactToMessage", owner, **second, emoji="\u2764")
    third = {"conversation_id": cid, "message_id": old[2].message_id}
    await rpc(messages, "DeleteMessage", owner, **third, scope=FOR_EVERYONE)
    welcome = await send(messages, early, cid, b"welcome")
    await wait_views([newcomer], lambda v: welcome.seq in seqs_of(v, cid))
    assert seqs_of(newcomer, cid) == [joined_seq, welcome.seq]
    first_shown = newcomer.shown(cid)[0]
    assert first_shown.system_action == mpb.SystemEvent.ACTION_MEMBERS_ADDED
    assert first_shown.system_targets == (late.account_id,)
    assert newcomer.problems == []

    history = await all_messages(messages_b, late, cid)
    assert [m.seq for m in history] == [joined_seq, welcome.seq]
    newest = await rpc(
        messages, "ListMessages", late, conversation_id=cid, page_size=1, start_seq=welcome.seq
    )
    assert [m.seq for m in newest.messages] == [welcome.seq]
    rest = await rpc(
        messages, "ListMessages", late, conversation_id=cid, page_token=newest.next_page_token
    )
    assert ([m.seq for m in rest.messages], rest.next_page_token) == ([joined_seq], "")
    # A new device starting from nothing gets the same.
    await newcomer.disconnect()
    fresh = DeviceView(await link_device(keys, late, "tablet"))
    await fresh.connect(messages)
    await wait_views([fresh], lambda v: v.synced)
    assert (seqs_of(fresh, cid), fresh.problems) == ([joined_seq, welcome.seq], [])
    await fresh.disconnect()


async def test_a_channel_subscriber_sees_the_whole_history(keys, messages) -> None:
    owner, reader = await sign_up_many(keys, 2)
    view = await rpc(messages, "CreateChannel", owner, title="news", public=True)
    cid = view.conversation.conversation_id
    posts = [await send(messages, owner, cid, f"post {i}".encode()) for i in range(3)]
    subscribed = await rpc(messages, "SubscribeChannel", reader, conversation_id=cid)
    assert (subscribed.joined_seq, subscribed.role) == (0, mpb.ROLE_SUBSCRIBER)
    seen = [m.message_id for m in await all_messages(messages, reader, cid)]
    assert all(p.message_id in seen for p in posts)
    # Subscribing again changes nothing, for a subscriber or the owner.
    again = await rpc(messages, "SubscribeChannel", reader, conversation_id=cid)
    assert again.conversation.last_version == subscribed.conversation.last_version
    owner_again = await rpc(messages, "SubscribeChannel", owner, conversation_id=cid)
    assert owner_again.role == mpb.ROLE_OWNER
