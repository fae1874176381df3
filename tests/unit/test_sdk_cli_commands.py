"""The new `parley` commands without servers: parsing, naming things, rendering."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from parley.message.v1 import messages_pb2 as pb
from parley_dev.cli import build_parser
from parley_sdk import MessageDeletedEvent, MessageEditedEvent, ReactionChangedEvent
from parley_sdk._cli_chat import describe_change
from parley_sdk._cli_common import (
    UsageError,
    parse_duration,
    resolve_account,
    resolve_conversation,
    resolve_message,
)
from parley_sdk._cli_output import Directory, format_member, format_message, format_view

CONVERSATION = "0190f2a4-1111-7000-8000-000000000001"
MESSAGE = "0190f2a4-2222-7000-8000-000000000002"


class FakeClient:
    """What the command helpers call, answering from memory."""

    account_id = "me"

    def __init__(self, messages: list[pb.Message] | None = None) -> None:
        self.messages = messages or []
        self.handles = {"me": "ann", "b": "bob", "c": "cy"}
        self.listed: list[dict[str, Any]] = []

    async def get_account(self, *, account_id: str = "", handle: str = "") -> Any:
        if handle:
            ids = {h: a for a, h in self.handles.items()}
            return SimpleNamespace(account_id=ids[handle], handle=handle)
        return SimpleNamespace(account_id=account_id, handle=self.handles[account_id])

    async def create_direct_conversation(self, peer: str) -> pb.ConversationView:
        return pb.ConversationView(conversation=pb.Conversation(conversation_id=f"direct-{peer}"))

    async def list_messages(self, conversation_id: str, **options: Any) -> Any:
        self.listed.append(options)
        for message in self.messages:
            if message.seq >= options["start_seq"]:
                yield message


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


# -- parsing ---------------------------------------------------------------------------------


def test_group_and_channel_commands_parse() -> None:
    args = parse("group", "create", "Climbing", "@bob", "@cy", "--avatar", "obj")
    assert (args.title, args.members, args.avatar) == ("Climbing", ["@bob", "@cy"], "obj")
    args = parse("group", "role", CONVERSATION, "@bob", "admin", "--profile", "p2")
    assert (args.role, args.profile) == ("admin", "p2")
    args = parse("channel", "create", "News", "--public")
    assert args.public
    assert parse("channel", "subscribe", CONVERSATION).conversation == CONVERSATION
    for argv in (["group"], ["group", "role", CONVERSATION, "@bob", "king"]):
        with pytest.raises(SystemExit):
            parse(*argv)


def test_message_and_inbox_commands_parse() -> None:
    args = parse("react", CONVERSATION, "#3", "👍", "--remove")
    assert (args.message, args.emoji, args.remove) == ("#3", "👍", True)
    assert parse("delete", "@bob", "#2", "--for-everyone").for_everyone
    assert parse("edit", "@bob", "#2", "fixed", "typo").text == ["fixed", "typo"]
    assert parse("receipts", CONVERSATION, "#7").seq == 7
    assert parse("mute", "@bob", "--for", "8h").duration == timedelta(hours=8)
    until = parse("mute", "@bob", "--until", "2031-01-02T03:04").until
    assert until.tzinfo is not None, "a time without offset is read as local time"
    assert parse("mute", "@bob").duration is None
    with pytest.raises(SystemExit):
        parse("mute", "@bob", "--off", "--for", "1h")
    assert parse("pin", "@bob", "--off").off
    assert parse("inbox", "--archived").archived
    send = parse("send", CONVERSATION, "hi", "--reply-to", "#1", "--forwarded")
    assert (send.reply_to, send.forwarded) == ("#1", True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", 90), ("30m", 1800), ("8h", 28800), ("2d", 172800), ("1w", 604800), ("1.5h", 5400)],
)
def test_durations(text: str, expected: int) -> None:
    assert parse_duration(text) == timedelta(seconds=expected)


@pytest.mark.parametrize("text", ["", "8", "h", "-1h", "0m", "3y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


# -- naming conversations, accounts and messages ------------------------------------------------


async def test_targets_are_ids_or_handles() -> None:
    client: Any = FakeClient()
    assert await resolve_conversation(client, CONVERSATION) == CONVERSATION
    assert await resolve_conversation(client, "@bob") == "direct-b"
    assert await resolve_account(client, "@cy") == "c"
    assert await resolve_account(client, CONVERSATION) == CONVERSATION


async def test_messages_are_ids_or_seqs() -> None:
    client: Any = FakeClient(
        [pb.Message(seq=3, message_id="m3"), pb.Message(seq=5, message_id="m5")]
    )
    assert await resolve_message(client, "c1", MESSAGE) == MESSAGE
    assert await resolve_message(client, "c1", "#3") == "m3"
    assert await resolve_message(client, "c1", "5") == "m5"
    assert client.listed[0]["page_size"] == 1
    # #4 is hidden (deleted for me): the next message is not silently taken instead.
    with pytest.raises(UsageError, match="#4"):
        await resolve_message(client, "c1", "#4")
    with pytest.raises(UsageError):
        await resolve_message(client, "c1", "latest")


# -- rendering ---------------------------------------------------------------------------------


def system(action: Any, **fields: Any) -> pb.Message:
    return pb.Message(
        seq=4,
        type=pb.MESSAGE_TYPE_SYSTEM,
        system=pb.SystemEvent(action=action, actor_account_id="me", **fields),
    )


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (system(pb.SystemEvent.ACTION_CREATED, title="Climbing"), '* @ann created "Climbing"'),
        (
            system(pb.SystemEvent.ACTION_MEMBERS_ADDED, target_account_ids=["b", "c"]),
            "* @ann added @bob, @cy",
        ),
        (
            system(pb.SystemEvent.ACTION_MEMBER_REMOVED, target_account_ids=["b"]),
            "* @ann removed @bob",
        ),
        (system(pb.SystemEvent.ACTION_MEMBER_LEFT), "* @ann left"),
        (
            system(
                pb.SystemEvent.ACTION_ROLE_CHANGED, target_account_ids=["b"], role=pb.ROLE_ADMIN
            ),
            "* @ann made @bob admin",
        ),
        (system(pb.SystemEvent.ACTION_SUBSCRIBED), "* @ann subscribed"),
        (system(99), "* @ann unknown_99"),
    ],
)
async def test_system_messages_read_as_sentences(message: pb.Message, text: str) -> None:
    line = await format_message(message, Directory(FakeClient()))  # type: ignore[arg-type]
    assert line.startswith("#4 ")
    assert line.endswith(text)


async def test_message_lines_show_changes() -> None:
    directory = Directory(FakeClient())  # type: ignore[arg-type]
    message = pb.Message(
        seq=2,
        sender_account_id="b",
        type=pb.MESSAGE_TYPE_TEXT,
        body=b"hi\nthere",
        edited=True,
        forwarded=True,
        reply_to_message_id="m1",
        reactions=[pb.ReactionCount(emoji="👍", count=2)],
    )
    line = await format_message(message, directory)
    assert line.endswith("@bob: (forwarded) (reply to m1) hi\\nthere (edited) [👍2]")
    tombstone = pb.Message(seq=3, sender_account_id="b", deleted=True, edited=True)
    assert (await format_message(tombstone, directory)).endswith("@bob: <deleted>")
    # A plain message looks as it always did (scripts grep for it).
    plain = pb.Message(seq=1, sender_account_id="b", type=pb.MESSAGE_TYPE_TEXT, body=b"hello")
    assert (await format_message(plain, directory)).endswith("@bob: hello")


async def test_inbox_rows_name_groups_and_show_flags() -> None:
    directory = Directory(FakeClient())  # type: ignore[arg-type]
    group = pb.ConversationView(
        conversation=pb.Conversation(
            conversation_id="g1", type=pb.CONVERSATION_TYPE_GROUP, title="Climbing", member_count=3
        ),
        role=pb.ROLE_ADMIN,
        unread_count=2,
        settings=pb.InboxSettings(pinned=True, archived=True, marked_unread=True),
    )
    group.settings.muted_until.FromDatetime(datetime(9999, 12, 31, tzinfo=UTC))
    row = await format_view(group, directory, "me")
    assert row == (
        'group "Climbing" members=3 role=admin unread=2 last=none '
        "pinned muted archived marked-unread conversation=g1"
    )
    direct = pb.ConversationView(
        conversation=pb.Conversation(
            conversation_id="d1", type=pb.CONVERSATION_TYPE_DIRECT, member_account_ids=["me", "b"]
        ),
        membership_state=pb.MEMBERSHIP_STATE_ACTIVE,
    )
    direct.settings.muted_until.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    assert await format_view(direct, directory, "me") == "@bob unread=0 last=none conversation=d1"


async def test_members_and_changes_render() -> None:
    directory = Directory(FakeClient())  # type: ignore[arg-type]
    member = pb.Member(account_id="b", role=pb.ROLE_OWNER, joined_seq=1)
    assert await format_member(member, directory) == "@bob role=owner joined=#1 account=b"
    edit = MessageEditedEvent(pb.MessageEdited(conversation_id="c", seq=2, body=b"new"))
    assert (await describe_change(edit, directory) or "").endswith(": new")
    deletion = MessageDeletedEvent(
        pb.MessageDeleted(seq=2, scope=pb.DELETE_SCOPE_FOR_EVERYONE, account_id="b")
    )
    assert await describe_change(deletion, directory) == "#2 deleted for everyone by @bob"
    reaction = ReactionChangedEvent(
        pb.ReactionChanged(seq=2, account_id="c", emoji="🎉", removed=True)
    )
    assert await describe_change(reaction, directory) == "#2 @cy -🎉"
