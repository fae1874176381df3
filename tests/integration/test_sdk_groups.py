"""parley_sdk's issue-4 surface against the real local stack: groups, channels, message
changes, receipts, inbox controls, the versioned stream, and the CLI commands for them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from parley_dev.stack import LocalStack
from parley_sdk import (
    ArchiveFilter,
    Client,
    ConversationType,
    DeleteScope,
    DeliveryStream,
    Direction,
    ErrorReason,
    GroupReceiptsEvent,
    InvalidArgumentError,
    LastOwnerError,
    MembershipState,
    MessageDeletedError,
    MessageDeletedEvent,
    MessageEditedEvent,
    MessageEvent,
    NotTheSenderError,
    PermissionDeniedError,
    ReactionChangedEvent,
    ReceiptEvent,
    Role,
    RoleRequiredError,
    SettingsEvent,
    StreamEvent,
    StreamPosition,
    SyncCompleteEvent,
    SystemAction,
    SystemMessageEvent,
    TooManyPinsError,
    WrongConversationTypeError,
    muted_forever,
    muted_until,
)
from tests.helpers import wait_until

CLI = [sys.executable, "-m", "parley_cli"]
WAIT = 20.0


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def sign_up(stack: LocalStack, prefix: str, *, instance: int = 0) -> Client:
    return await Client.sign_up(
        handle=unique(prefix),
        device_name="test",
        keys_target=stack.keys_target,
        message_target=stack.message_targets[instance % len(stack.message_targets)],
    )


@dataclass
class Collected:
    stream: DeliveryStream
    events: list[StreamEvent] = field(default_factory=list)

    def of(self, kind: type[StreamEvent], conversation_id: str | None = None) -> list[StreamEvent]:
        return [
            e
            for e in self.events
            if isinstance(e, kind)
            and (conversation_id is None or getattr(e, "conversation_id", None) == conversation_id)
        ]

    async def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        async def check() -> bool:
            return condition()

        await wait_until(check, timeout=WAIT, what=what)


@contextlib.asynccontextmanager
async def collecting(
    client: Client, *, positions: dict[str, StreamPosition] | None = None
) -> AsyncIterator[Collected]:
    """A device's stream drained into a list by a background task, synced first."""
    collected = Collected(client.events(positions=positions))

    async def drain() -> None:
        async for event in collected.stream:
            collected.events.append(event)

    task = asyncio.create_task(drain())
    try:
        await collected.wait_for(
            "the stream to sync", lambda: bool(collected.of(SyncCompleteEvent)) or task.done()
        )
        if task.done():
            task.result()
        yield collected
    finally:
        await collected.stream.close()
        await asyncio.wait_for(task, 10)


async def history(client: Client, conversation_id: str) -> list[int]:
    return [m.seq async for m in client.list_messages(conversation_id, direction=Direction.FORWARD)]


# -- groups ---------------------------------------------------------------------------------


async def test_group_membership_roles_and_visibility(stack: LocalStack) -> None:
    ann, bob, cy, dee = [await sign_up(stack, p, instance=i) for i, p in enumerate("abcd")]
    async with ann, bob, cy, dee:
        created = await ann.create_group(
            "Climbing", members=[bob.account_id, cy.account_id], avatar_ref="obj-1"
        )
        group = created.conversation
        gid = group.conversation_id
        assert ConversationType(group.type) is ConversationType.GROUP
        assert (group.title, group.avatar_ref, group.member_count) == ("Climbing", "obj-1", 3)
        assert Role(created.role) is Role.OWNER

        members = {m.account_id: Role(m.role) async for m in ann.list_members(gid)}
        assert members == {
            ann.account_id: Role.OWNER,
            bob.account_id: Role.MEMBER,
            cy.account_id: Role.MEMBER,
        }

        async with collecting(bob) as bob_events:
            hello = await ann.send_message(gid, b"hello group")
            await bob_events.wait_for(
                "bob to get ann's message",
                lambda: any(
                    e.message.message_id == hello.message_id
                    for e in bob_events.of(MessageEvent, gid)
                    if isinstance(e, MessageEvent)
                ),
            )
            added = await ann.add_members(gid, [dee.account_id])
            assert added.conversation.member_count == 4
            await bob_events.wait_for(
                "bob to see dee added",
                lambda: any(
                    isinstance(e, SystemMessageEvent)
                    and e.action is SystemAction.MEMBERS_ADDED
                    and e.target_account_ids == (dee.account_id,)
                    for e in bob_events.of(SystemMessageEvent, gid)
                ),
            )

        # Dee sees history from the message that added her, not before.
        dee_view = await dee.get_conversation(gid)
        assert dee_view.joined_seq > hello.seq
        dee_history = await history(dee, gid)
        assert all(seq >= dee_view.joined_seq for seq in dee_history)
        assert hello.seq not in dee_history

        # Admins manage members; members don't.
        with pytest.raises(RoleRequiredError):
            await cy.add_members(gid, [dee.account_id])
        with pytest.raises(RoleRequiredError):
            await dee.update_conversation_info(gid, title="Mine now")
        await ann.set_member_role(gid, bob.account_id, Role.ADMIN)
        renamed = await bob.update_conversation_info(gid, title="Bouldering")
        assert renamed.conversation.title == "Bouldering"
        removed = await bob.remove_member(gid, cy.account_id)
        assert removed.conversation.member_count == 3

        # A removed member reads up to the removal and can do nothing after it.
        cy_view = await cy.get_conversation(gid)
        assert MembershipState(cy_view.membership_state) is MembershipState.LEFT
        assert cy_view.visible_until_seq > hello.seq
        await ann.send_message(gid, b"after cy left")
        cy_history = await history(cy, gid)
        assert hello.seq in cy_history
        assert max(cy_history) <= cy_view.visible_until_seq
        with pytest.raises(PermissionDeniedError) as denied:
            await cy.send_message(gid, b"let me back")
        assert denied.value.reason == ErrorReason.NOT_A_MEMBER
        assert gid not in [v.conversation.conversation_id async for v in cy.list_conversations()]

        # The last owner cannot leave; after handing over, they can.
        with pytest.raises(LastOwnerError):
            await ann.leave_conversation(gid)
        await ann.set_member_role(gid, bob.account_id, Role.OWNER)
        left_seq = await ann.leave_conversation(gid)
        assert left_seq > 0
        final = {m.account_id: Role(m.role) async for m in bob.list_members(gid)}
        assert final == {bob.account_id: Role.OWNER, dee.account_id: Role.MEMBER}

        # Membership calls make no sense on a direct conversation.
        direct = await bob.create_direct_conversation(dee.account_id)
        with pytest.raises(WrongConversationTypeError):
            await bob.add_members(direct.conversation.conversation_id, [ann.account_id])


async def test_edits_deletes_reactions_and_replies(stack: LocalStack) -> None:
    ann, bob, cy = [await sign_up(stack, p, instance=i) for i, p in enumerate("abc")]
    async with ann, bob, cy:
        gid = (
            await ann.create_group("Edits", members=[bob.account_id, cy.account_id])
        ).conversation.conversation_id
        first = await ann.send_message(gid, b"frist")
        reply = await bob.send_message(
            gid, b"typo!", reply_to_message_id=first.message_id, forwarded=True
        )
        assert (reply.reply_to_message_id, reply.forwarded) == (first.message_id, True)
        with pytest.raises(InvalidArgumentError) as bad_reply:
            await bob.send_message(gid, b"?", reply_to_message_id=str(uuid.uuid4()))
        assert any("reply_to_message_id" in f for f, _ in bad_reply.value.field_violations)

        async with collecting(bob) as bob_events:
            with pytest.raises(NotTheSenderError):
                await bob.edit_message(gid, first.message_id, b"first")
            edited = await ann.edit_message(gid, first.message_id, b"first")
            assert edited.version > first.version
            assert edited.body == b"first"

            reacted = await bob.react_to_message(gid, first.message_id, "👍")
            assert reacted.changed and reacted.counts == {"👍": 1}
            again = await bob.react_to_message(gid, first.message_id, "👍")
            assert not again.changed
            await cy.react_to_message(gid, first.message_id, "👍")
            await cy.react_to_message(gid, first.message_id, "🎉")
            await cy.react_to_message(gid, first.message_id, "🎉", remove=True)

            # The owner may delete anyone's message for everyone; cy hides one for herself.
            deletion = await ann.delete_message(
                gid, reply.message_id, scope=DeleteScope.FOR_EVERYONE
            )
            assert DeleteScope(deletion.scope) is DeleteScope.FOR_EVERYONE
            await cy.delete_message(gid, first.message_id)

            await bob_events.wait_for(
                "bob to see the edit, the reactions and the deletion",
                lambda: (
                    bool(bob_events.of(MessageEditedEvent, gid))
                    and len(bob_events.of(ReactionChangedEvent, gid)) >= 4
                    and bool(bob_events.of(MessageDeletedEvent, gid))
                ),
            )
            # Per conversation, changes come in version order; cy's delete-for-me
            # is not bob's to see.
            versions = [
                e.version
                for e in bob_events.events
                if isinstance(
                    e,
                    MessageEvent | MessageEditedEvent | ReactionChangedEvent | MessageDeletedEvent,
                )
                and e.conversation_id == gid
            ]
            assert versions == sorted(versions)
            assert len(versions) == len(set(versions))
            deletions = bob_events.of(MessageDeletedEvent, gid)
            assert [
                d.deletion.message_id for d in deletions if isinstance(d, MessageDeletedEvent)
            ] == [reply.message_id]
            position = bob_events.stream.positions[gid]
            assert position.version == max(versions)

        with pytest.raises(MessageDeletedError):
            await bob.edit_message(gid, reply.message_id, b"undo")
        with pytest.raises(MessageDeletedError):
            await ann.react_to_message(gid, reply.message_id, "👍")

        by_id = {m.message_id: m async for m in bob.list_messages(gid)}
        assert by_id[first.message_id].edited and by_id[first.message_id].body == b"first"
        assert {r.emoji: r.count for r in by_id[first.message_id].reactions} == {"👍": 2}
        assert by_id[reply.message_id].deleted and by_id[reply.message_id].body == b""
        who = sorted(
            [(r.emoji, r.account_id) async for r in ann.list_reactions(gid, first.message_id)]
        )
        assert who == sorted([("👍", bob.account_id), ("👍", cy.account_id)])
        # Deleted for cy only.
        assert first.message_id not in {m.message_id async for m in cy.list_messages(gid)}
        assert first.message_id in {m.message_id async for m in ann.list_messages(gid)}


async def test_stream_resumes_from_versions(stack: LocalStack) -> None:
    ann, bob = [await sign_up(stack, p, instance=i) for i, p in enumerate("ab")]
    async with ann, bob:
        gid = (
            await ann.create_group("Resume", members=[bob.account_id])
        ).conversation.conversation_id
        first = await ann.send_message(gid, b"one")
        async with collecting(bob) as seen:
            await seen.wait_for(
                "bob to get #one",
                lambda: any(
                    isinstance(e, MessageEvent) and e.message.message_id == first.message_id
                    for e in seen.events
                ),
            )
            saved = seen.stream.positions
        assert saved[gid].seq >= first.seq and saved[gid].version >= first.version

        # While bob is away: an edit, a reaction and a new message.
        edit = await ann.edit_message(gid, first.message_id, b"one!")
        await ann.react_to_message(gid, first.message_id, "🔥")
        second = await ann.send_message(gid, b"two")

        async with collecting(bob, positions=saved) as resumed:
            await resumed.wait_for(
                "bob to catch up",
                lambda: any(
                    isinstance(e, MessageEvent) and e.message.message_id == second.message_id
                    for e in resumed.events
                ),
            )
            changes = [
                e
                for e in resumed.events
                if isinstance(e, MessageEvent | MessageEditedEvent | ReactionChangedEvent)
                and e.conversation_id == gid
            ]
            assert [type(e) for e in changes] == [
                MessageEditedEvent,
                ReactionChangedEvent,
                MessageEvent,
            ]
            assert changes[0].version == edit.version
            assert all(e.version > saved[gid].version for e in changes)
            after = resumed.stream.positions[gid]
        assert after == StreamPosition(seq=second.seq, version=second.version)
        # Edits and reactions use versions but not seqs.
        assert after.version > after.seq


# -- channels --------------------------------------------------------------------------------


async def test_channels_subscribe_post_and_leave(stack: LocalStack) -> None:
    ann, bob, cy = [await sign_up(stack, p, instance=i) for i, p in enumerate("abc")]
    async with ann, bob, cy:
        public = await ann.create_channel("News", public=True)
        cid = public.conversation.conversation_id
        assert ConversationType(public.conversation.type) is ConversationType.CHANNEL
        assert public.conversation.public
        post = await ann.send_message(cid, b"issue #1")

        subscribed = await bob.subscribe_channel(cid)
        assert Role(subscribed.role) is Role.SUBSCRIBER
        again = await bob.subscribe_channel(cid)  # idempotent
        assert again.conversation.member_count == subscribed.conversation.member_count
        assert post.seq in await history(bob, cid), "subscribers see the whole history"
        with pytest.raises(RoleRequiredError):
            await bob.send_message(cid, b"me too")
        with pytest.raises(RoleRequiredError):
            _ = [m async for m in bob.list_members(cid)]
        with pytest.raises(WrongConversationTypeError):
            await ann.list_message_receipts(cid, post.seq).fetch_counts()

        private = await ann.create_channel("Insiders")
        pid = private.conversation.conversation_id
        with pytest.raises(RoleRequiredError):
            await cy.subscribe_channel(pid)
        await ann.add_members(pid, [cy.account_id])
        assert Role((await cy.get_conversation(pid)).role) is Role.SUBSCRIBER

        group = await ann.create_group("Not a channel", members=[bob.account_id])
        with pytest.raises(WrongConversationTypeError):
            await cy.subscribe_channel(group.conversation.conversation_id)

        await bob.leave_conversation(cid)
        left = await bob.get_conversation(cid)
        assert MembershipState(left.membership_state) is MembershipState.LEFT


# -- receipts -----------------------------------------------------------------------------------


async def test_group_receipts_from_watermarks(stack: LocalStack) -> None:
    ann, bob, cy = [await sign_up(stack, p, instance=i) for i, p in enumerate("abc")]
    async with ann, bob, cy:
        gid = (
            await ann.create_group("Receipts", members=[bob.account_id, cy.account_id])
        ).conversation.conversation_id
        async with collecting(ann) as ann_events:
            sent = await ann.send_message(gid, b"read me")
            await bob.mark_read(gid, sent.seq)
            await cy.mark_delivered(gid, sent.seq)

            async def counted() -> bool:
                return await ann.list_message_receipts(gid, sent.seq).fetch_counts() == (2, 1)

            await wait_until(counted, timeout=WAIT, what="receipts to count bob's read")
            receipts = {
                r.account_id: (r.delivered, r.read)
                async for r in ann.list_message_receipts(gid, sent.seq)
            }
            assert receipts == {bob.account_id: (True, True), cy.account_id: (True, False)}

            def batched_read() -> bool:
                return any(
                    w.account_id == bob.account_id and w.read_seq >= sent.seq
                    for e in ann_events.of(GroupReceiptsEvent, gid)
                    if isinstance(e, GroupReceiptsEvent)
                    for w in e.watermarks
                )

            await ann_events.wait_for("ann's stream to report bob's read", batched_read)
            # Other members' group receipts come batched, never as 1:1 receipt events.
            assert not [
                e
                for e in ann_events.of(ReceiptEvent)
                if isinstance(e, ReceiptEvent)
                and e.watermarks.conversation_id == gid
                and e.watermarks.account_id != ann.account_id
            ]


# -- inbox controls --------------------------------------------------------------------------------


async def test_inbox_controls(stack: LocalStack) -> None:
    ann, bob = [await sign_up(stack, p, instance=i) for i, p in enumerate("ab")]
    async with ann, bob:
        linked = await ann.register_device(name="tablet")
        tablet = await Client.connect(
            credentials=linked.credentials,
            keys_target=stack.keys_target,
            message_target=stack.message_targets[-1],
        )
        async with tablet:
            groups = [
                (
                    await ann.create_group(f"G{i}", members=[bob.account_id])
                ).conversation.conversation_id
                for i in range(6)
            ]
            async with collecting(tablet) as tablet_events:
                for gid in groups[:5]:
                    pinned = await ann.set_pinned(gid, True)
                    assert pinned.settings.pinned
                with pytest.raises(TooManyPinsError):
                    await ann.set_pinned(groups[5], True)
                await tablet_events.wait_for(
                    "the tablet to hear of the pins",
                    lambda: (
                        {
                            e.settings.conversation_id
                            for e in tablet_events.of(SettingsEvent)
                            if isinstance(e, SettingsEvent) and e.settings.pinned
                        }
                        >= set(groups[:5])
                    ),
                )
            inbox = [v.conversation.conversation_id async for v in ann.list_conversations()]
            # Pinned first, newest pin first.
            assert inbox[:5] == list(reversed(groups[:5]))

            muted = await ann.set_muted(groups[0], forever=True)
            assert muted_forever(muted.settings)
            timed = await ann.set_muted(groups[1], until=timedelta(hours=8))
            until = muted_until(timed.settings)
            assert until is not None and not muted_forever(timed.settings)
            unmuted = await ann.set_muted(groups[0])
            assert muted_until(unmuted.settings) is None

            # Archive: hidden from the inbox, back when a new message arrives (not muted).
            await ann.set_pinned(groups[4], False)
            await ann.set_archived(groups[4], True)
            assert groups[4] not in [
                v.conversation.conversation_id async for v in ann.list_conversations()
            ]
            archived = [
                v.conversation.conversation_id
                async for v in ann.list_conversations(archive_filter=ArchiveFilter.ARCHIVED)
            ]
            assert archived == [groups[4]]
            await bob.send_message(groups[4], b"wake up")

            async def back_in_inbox() -> bool:
                ids = [v.conversation.conversation_id async for v in ann.list_conversations()]
                return groups[4] in ids

            await wait_until(back_in_inbox, timeout=WAIT, what="the archived chat to come back")

            # Mark unread holds until ann reads past it.
            sent = await bob.send_message(groups[5], b"later")
            await ann.mark_read(groups[5], sent.seq)
            flagged = await ann.mark_unread(groups[5])
            assert flagged.settings.marked_unread
            newer = await bob.send_message(groups[5], b"now")
            await ann.mark_read(groups[5], newer.seq)
            assert not (await ann.get_conversation(groups[5])).settings.marked_unread


# -- the CLI ---------------------------------------------------------------------------------------


async def run_cli(home: Path, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env={**os.environ, "PARLEY_HOME": str(home)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_cli_group_commands(stack: LocalStack, tmp_path: Path) -> None:
    home = tmp_path / "parley-home"
    targets = ["--keys-target", stack.keys_target, "--message-target", stack.message_targets[0]]
    handles = {name: unique(name) for name in ("ann", "bob", "cy")}
    for name, handle in handles.items():
        code, _, err = await run_cli(home, "signup", handle, "--profile", name, *targets)
        assert code == 0, err

    async def cli(profile: str, *args: str) -> str:
        code, out, err = await run_cli(home, *args, "--profile", profile)
        assert code == 0, f"parley {' '.join(args)}: {err}"
        return out

    bob, cy = f"@{handles['bob']}", f"@{handles['cy']}"
    out = await cli("ann", "group", "create", "Climbing", bob)
    assert out.startswith('created group "Climbing" members=2 ')
    gid = out.split("conversation=")[1].split()[0]

    await cli("ann", "group", "add", gid, cy)
    await cli("ann", "group", "role", gid, bob, "admin")
    members = (await cli("bob", "group", "members", gid)).splitlines()
    assert [line.split()[:2] for line in members] == [
        [f"@{handles['ann']}", "role=owner"],
        [bob, "role=admin"],
        [cy, "role=member"],
    ]

    sent = await cli("cy", "send", gid, "hello", "all")
    seq = sent.split()[1]  # "#N"
    await cli("ann", "react", gid, seq, "👍")
    await cli("cy", "edit", gid, seq, "hello", "everyone")
    lines = (await cli("bob", "history", gid)).splitlines()
    assert any(" * @" in line and "created" in line for line in lines)
    assert any(line.endswith(f"{cy}: hello everyone (edited) [👍1]") for line in lines)

    await cli("bob", "delete", gid, seq, "--for-everyone")
    assert any(
        line.endswith(f"{cy}: <deleted>")
        for line in (await cli("ann", "history", gid)).splitlines()
    )

    await cli("ann", "pin", gid)
    inbox = (await cli("ann", "inbox")).splitlines()
    assert inbox[0].startswith('group "Climbing" members=3 role=owner')
    assert " pinned " in inbox[0]

    code, _, err = await run_cli(home, "group", "leave", gid, "--profile", "ann")
    assert code == 1
    assert "LAST_OWNER" in err
    await cli("cy", "group", "leave", gid)

    out = await cli("ann", "channel", "create", "News", "--public")
    channel_id = out.split("conversation=")[1].split()[0]
    await cli("bob", "channel", "subscribe", channel_id)
    code, _, err = await run_cli(home, "send", channel_id, "hi", "--profile", "bob")
    assert code == 1
    assert "ROLE_REQUIRED" in err
