"""The `parley` chat commands (parley_cli) without servers: parsing, naming things, rendering."""

from __future__ import annotations

import argparse
import asyncio
import io
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from parley.message.v1 import messages_pb2 as pb
from parley_cli import build_parser
from parley_cli.chat import describe_change, run_chat
from parley_cli.common import (
    UsageError,
    parse_duration,
    resolve_account,
    resolve_conversation,
    resolve_message,
)
from parley_cli.output import Directory, format_member, format_message, format_view
from parley_cli.presence import format_presence, format_presence_settings
from parley_cli.profiles import Profile, ProfileStore
from parley_cli.push import (
    clock_time,
    dnd_from_args,
    format_push_settings,
    local_time_zone,
)
from parley_sdk import (
    DEFAULT_PRESENCE_TARGET,
    Availability,
    Credentials,
    DoNotDisturb,
    MessageDeletedEvent,
    MessageEditedEvent,
    MessageEvent,
    Presence,
    PresenceSettings,
    PushSettings,
    ReactionChangedEvent,
    TypingIndicatorEvent,
    Visibility,
)

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
        (
            system(pb.SystemEvent.ACTION_SEARCH_CHANGED, server_search=True),
            "* @ann turned server search on",
        ),
        (system(pb.SystemEvent.ACTION_SEARCH_CHANGED), "* @ann turned server search off"),
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


# -- presence, contacts and push --------------------------------------------------------------


def test_presence_and_contacts_commands_parse() -> None:
    args = parse("presence", "get", "@bob", CONVERSATION, "--presence-target", "127.0.0.1:1")
    assert (args.accounts, args.presence_target) == (["@bob", CONVERSATION], "127.0.0.1:1")
    assert parse("presence", "watch", "@bob", "--exit-after", "2").exit_after == 2.0
    args = parse("presence", "settings", "--online", "contacts", "--last-seen", "nobody")
    assert (args.online, args.last_seen, args.invisible) == ("contacts", "nobody", None)
    assert parse("presence", "settings", "--invisible").invisible is True
    assert parse("presence", "settings", "--visible").invisible is False
    assert parse("presence", "settings").online is None
    assert parse("contacts", "add", "@bob", "@cy").accounts == ["@bob", "@cy"]
    assert parse("contacts", "remove", "@bob").accounts == ["@bob"]
    assert parse("contacts", "list").profile == "default"
    for argv in (
        ["presence", "get"],
        ["presence", "settings", "--online", "friends"],
        ["presence", "settings", "--invisible", "--visible"],
        ["contacts"],
    ):
        with pytest.raises(SystemExit):
            parse(*argv)


def test_push_commands_parse() -> None:
    args = parse("push", "register", "--provider", "apns", "--token", "ab12", "--locale", "de")
    assert (args.provider, args.token, args.locale) == ("apns", "ab12", "de")
    args = parse("push", "dnd", "--from", "22:00", "--to", "7:30", "--tz", "Europe/Berlin")
    assert (args.start, args.end, args.tz) == (time(22), time(7, 30), "Europe/Berlin")
    assert parse("push", "dnd", "--off").off
    assert parse("push", "remove").profile == "default"
    for argv in (
        ["push", "register", "--token", "t"],
        ["push", "register", "--provider", "sms", "--token", "t"],
        ["push", "dnd", "--from", "25:00", "--to", "07:00"],
    ):
        with pytest.raises(SystemExit):
            parse(*argv)


@pytest.mark.parametrize(
    ("text", "expected"), [("22:00", time(22)), ("7:05", time(7, 5)), ("00:00", time(0))]
)
def test_clock_times(text: str, expected: time) -> None:
    assert clock_time(text) == expected


@pytest.mark.parametrize("text", ["24:00", "7", "7:5", "12:60", "noon", ""])
def test_bad_clock_times(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        clock_time(text)


def test_dnd_options_make_a_window_or_turn_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def dnd(*argv: str) -> DoNotDisturb | None:
        return dnd_from_args(parse("push", "dnd", *argv))

    assert dnd() is None, "no options: show the settings"
    assert dnd("--off") == DoNotDisturb.off()
    assert dnd("--from", "22:00", "--to", "07:00", "--tz", "Asia/Tokyo") == DoNotDisturb(
        start=time(22), end=time(7), time_zone="Asia/Tokyo"
    )
    monkeypatch.setenv("TZ", "America/New_York")
    window = dnd("--from", "22:00", "--to", "07:00")
    assert window is not None and window.time_zone == "America/New_York"
    for argv in (["--from", "22:00"], ["--off", "--from", "22:00"], ["--tz", "UTC"]):
        with pytest.raises(UsageError):
            dnd(*argv)


def test_the_local_time_zone_comes_from_tz_or_etc_localtime(tmp_path: Path) -> None:
    assert local_time_zone({"TZ": "Europe/Berlin"}, tmp_path / "none") == "Europe/Berlin"
    assert local_time_zone({"TZ": ":Europe/Paris"}, tmp_path / "none") == "Europe/Paris"
    zone = tmp_path / "usr" / "share" / "zoneinfo" / "Asia" / "Tokyo"
    zone.parent.mkdir(parents=True)
    zone.write_bytes(b"TZif")
    link = tmp_path / "localtime"
    link.symlink_to(zone)
    # A TZ that is a file path or a POSIX rule is no IANA name: fall back to the link.
    assert local_time_zone({"TZ": "/etc/zone"}, link) == "Asia/Tokyo"
    assert local_time_zone({"TZ": "CET-1CEST,M3.5.0"}, link) == "Asia/Tokyo"
    assert local_time_zone({}, tmp_path / "none") == "", "unknown: the server reads UTC"


def test_presence_lines() -> None:
    seen = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    offline = format_presence(Presence("b", Availability.OFFLINE, seen), "bob")
    local = seen.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert offline == f"@bob offline last-seen={local} account=b"
    assert format_presence(Presence("b", Availability.ONLINE), "bob") == "@bob online account=b"
    assert format_presence(Presence("x", Availability.UNKNOWN), "x") == "@x unknown account=x"
    settings = PresenceSettings(Visibility.EVERYONE, Visibility.CONTACTS, invisible=False)
    assert format_presence_settings(settings) == "online=everyone last-seen=contacts invisible=no"


def test_push_settings_lines() -> None:
    window = DoNotDisturb(start=time(22), end=time(7, 30), time_zone="Europe/Berlin")
    assert format_push_settings(PushSettings(window)) == "dnd 22:00-07:30 Europe/Berlin"
    utc = DoNotDisturb(start=time(1), end=time(2))
    assert format_push_settings(PushSettings(utc)) == "dnd 01:00-02:00 UTC"
    assert format_push_settings(PushSettings(DoNotDisturb.off())) == "dnd off"


def test_profiles_keep_the_presence_target_and_old_ones_get_the_default(tmp_path: Path) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    credentials = Credentials(
        access_token="at",
        access_token_expire_time=now,
        refresh_token="rt",
        refresh_token_expire_time=now,
        account_id="a",
        device_id="d",
    )
    store = ProfileStore(tmp_path)
    profile = Profile(
        name="p",
        handle="ann",
        keys_target="k:1",
        message_target="m:2",
        presence_target="p:3",
        credentials=credentials,
    )
    store.save(profile)
    assert store.load("p") == profile
    old = profile.to_dict()
    del old["presence_target"]
    assert Profile.from_dict("p", old).presence_target == DEFAULT_PRESENCE_TARGET


class FakeStream:
    """A delivery stream that yields its events, then waits to be closed."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.closed = asyncio.Event()

    async def __aenter__(self) -> FakeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed.set()

    async def __aiter__(self) -> Any:
        for event in self.events:
            yield event
        await self.closed.wait()


class ChatClient(FakeClient):
    device_id = "my-device"

    def __init__(self, events: list[Any]) -> None:
        super().__init__()
        self.stream = FakeStream(events)
        self.read: list[int] = []

    def events(self) -> FakeStream:
        return self.stream

    async def mark_read(self, conversation_id: str, seq: int) -> None:
        self.read.append(seq)


async def test_chat_shows_when_the_peer_starts_typing(capsys: pytest.CaptureFixture[str]) -> None:
    def typing(account_id: str, conversation_id: str = "direct-b", on: bool = True) -> Any:
        return TypingIndicatorEvent(conversation_id, account_id, on, timedelta(seconds=6))

    message = MessageEvent(
        pb.Message(
            conversation_id="direct-b",
            sender_account_id="b",
            seq=1,
            type=pb.MESSAGE_TYPE_TEXT,
            body=b"hi",
        )
    )
    events = [
        typing("b"),
        typing("b"),  # a renewal: not shown again
        typing("c", "elsewhere"),  # another conversation
        typing("me"),  # this account on another device
        message,  # ends bob's typing
        typing("b"),  # so this is a new start
        typing("b", on=False),
    ]
    client: Any = ChatClient(events)
    profile = SimpleNamespace(handle="ann")
    code = await run_chat(
        client,
        profile,  # type: ignore[arg-type]
        conversation_id="direct-b",
        peer=("b", "bob"),
        linger=0.3,
        stdin=io.StringIO(""),
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ".. @bob is typing…"
    assert lines[1].endswith("@bob: hi")
    assert lines[2:] == [".. @bob is typing…"]
    assert client.read == [1]
