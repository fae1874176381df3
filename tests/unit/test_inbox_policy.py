"""Inbox controls: the pure policy (injected `now`) and the inbox list over
in-memory stand-ins for the conversations handler and the settings store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from parley_core.errors import FailedPrecondition, PermissionDenied, Reason
from svc_message.domain.inbox import (
    ACTIVE,
    ALL,
    ARCHIVED,
    FOREVER,
    InboxCursor,
    InboxHandler,
    effective_settings,
    effectively_archived,
    mute_until,
    muted_until_at,
)
from svc_message.model import DIRECT, Conversation, InboxEntry, MemberSettings, Watermarks
from svc_message.model.inbox import Pin, StoredSettings

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
T = NOW.timestamp()


def stored(**fields: Any) -> StoredSettings:
    return StoredSettings(conversation_id="c", account_id="a", **fields)


# -- policy -------------------------------------------------------------------------


def test_mute_requests() -> None:
    hour = NOW + timedelta(hours=1)
    assert mute_until(hour, forever=False, now=NOW) == hour
    assert mute_until(None, forever=True, now=NOW) == FOREVER
    assert mute_until(None, forever=False, now=NOW) is None
    # A time already past would be a mute that is over: unmute.
    assert mute_until(NOW - timedelta(seconds=1), forever=False, now=NOW) is None
    assert mute_until(NOW, forever=False, now=NOW) is None
    assert mute_until(datetime(9999, 12, 31, 23, tzinfo=UTC), forever=False, now=NOW) == FOREVER


def test_a_mute_ends_at_its_time() -> None:
    until = NOW + timedelta(minutes=5)
    assert muted_until_at(until, NOW) == until
    assert muted_until_at(until, until) is None
    assert muted_until_at(until, until + timedelta(seconds=1)) is None
    assert muted_until_at(None, NOW) is None
    assert muted_until_at(FOREVER, NOW) == FOREVER


def test_archived_until_news_arrive_unless_muted() -> None:
    archived = stored(archived=True, archived_seq=10)
    assert not effectively_archived(None, last_seq=99, now=NOW)
    assert not effectively_archived(stored(archived_seq=3), last_seq=3, now=NOW)
    assert effectively_archived(archived, last_seq=10, now=NOW)
    assert not effectively_archived(archived, last_seq=11, now=NOW)
    muted = replace(archived, muted_until=NOW + timedelta(hours=1))
    assert effectively_archived(muted, last_seq=50, now=NOW)
    assert effectively_archived(replace(archived, muted_until=FOREVER), last_seq=50, now=NOW)


def test_news_during_a_mute_that_ran_out_keep_it_archived() -> None:
    ended = NOW - timedelta(hours=1)
    archived = stored(archived=True, archived_seq=10, muted_until=ended)
    during = ended - timedelta(minutes=1)
    after = ended + timedelta(minutes=1)
    assert effectively_archived(archived, last_seq=12, now=NOW, last_activity_at=during)
    assert not effectively_archived(archived, last_seq=12, now=NOW, last_activity_at=after)


def test_marked_unread_until_the_read_watermark_rises_past_the_mark() -> None:
    marked = stored(unread_mark_seq=7)

    def shown(read_seq: int) -> bool:
        return effective_settings(
            marked, conversation_id="c", last_seq=9, read_seq=read_seq, now=NOW
        ).marked_unread

    assert shown(5)
    assert shown(7)
    assert not shown(8)
    plain = effective_settings(stored(), conversation_id="c", last_seq=9, read_seq=0, now=NOW)
    assert not plain.marked_unread


def test_settings_as_shown() -> None:
    assert effective_settings(
        None, conversation_id="c", last_seq=3, read_seq=0, now=NOW
    ) == MemberSettings("c")
    shown = effective_settings(
        stored(
            muted_until=NOW - timedelta(seconds=1),
            pin_slot=2,
            pin_rank=1234,
            archived=False,
        ),
        conversation_id="c",
        last_seq=3,
        read_seq=3,
        now=NOW,
    )
    assert shown == MemberSettings("c", muted_until=None, pinned=True, pin_rank=1234)


# -- stand-ins ------------------------------------------------------------------------


@dataclass
class FakeConversation:
    conversation: Conversation
    members: set[str]
    read: dict[str, int] = field(default_factory=dict)


class FakeConversations:
    """The four ConversationsHandler methods the inbox uses, in memory."""

    def __init__(self) -> None:
        self.items: dict[str, FakeConversation] = {}

    def add(self, conversation_id: str, members: Iterable[str], *, at: float) -> None:
        when = datetime.fromtimestamp(at, UTC)
        self.items[conversation_id] = FakeConversation(
            Conversation(
                conversation_id=conversation_id,
                type=DIRECT,
                member_ids=tuple(sorted(members)),
                created_at=when,
                last_activity_at=when,
            ),
            set(members),
        )

    def news(self, conversation_id: str, *, at: float, count: int = 1) -> None:
        item = self.items[conversation_id]
        item.conversation = replace(
            item.conversation,
            last_seq=item.conversation.last_seq + count,
            last_activity_at=datetime.fromtimestamp(at, UTC),
        )

    def entry(self, conversation_id: str, account_id: str) -> InboxEntry:
        item = self.items[conversation_id]
        read = item.read.get(account_id, 0)
        return InboxEntry(
            conversation=item.conversation,
            watermarks=(Watermarks(conversation_id, account_id, read, read),),
            unread_count=max(0, item.conversation.last_seq - read),
        )

    async def require_member(self, conversation_id: str, account_id: str) -> object:
        item = self.items.get(conversation_id)
        if item is None or account_id not in item.members:
            raise PermissionDenied("not a member")
        return item

    async def get(self, *, conversation_id: str, account_id: str) -> InboxEntry:
        return self.entry(conversation_id, account_id)

    async def entries(self, account_id: str, conversation_ids: Sequence[str]) -> list[InboxEntry]:
        return [
            self.entry(c, account_id)
            for c in conversation_ids
            if c in self.items and account_id in self.items[c].members
        ]

    async def inbox(
        self,
        *,
        account_id: str,
        after: tuple[datetime, str] | None,
        limit: int,
        exclude: frozenset[str] = frozenset(),
    ) -> list[InboxEntry]:
        keys = sorted(
            (
                (i.conversation.last_activity_at or i.conversation.created_at, c)
                for c, i in self.items.items()
                if account_id in i.members and c not in exclude
            ),
            reverse=True,
        )
        if after is not None:
            keys = [k for k in keys if k < after]
        return [self.entry(c, account_id) for _, c in keys[:limit]]


class FakeStore:
    """InboxSettingsStore in memory, with the same request-id and pin rules."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], StoredSettings] = {}
        self.requests: dict[tuple[str, str], list[str]] = {}

    def _get(self, c: str, a: str) -> StoredSettings:
        return self.docs.get((c, a)) or StoredSettings(conversation_id=c, account_id=a)

    def _apply(self, c: str, a: str, request_id: str, **fields: Any) -> bool:
        seen = self.requests.setdefault((c, a), [])
        if request_id in seen:
            return False
        seen.append(request_id)
        self.docs[(c, a)] = replace(self._get(c, a), **fields)
        return True

    async def of_account(self, a: str, ids: Iterable[str]) -> dict[str, StoredSettings]:
        return {c: self.docs[(c, a)] for c in ids if (c, a) in self.docs}

    async def one(self, c: str, a: str) -> StoredSettings | None:
        return self.docs.get((c, a))

    async def pinned(self, a: str) -> list[StoredSettings]:
        pins = [s for (_, acct), s in self.docs.items() if acct == a and s.pinned]
        return sorted(pins, key=lambda s: (s.pin_rank, s.conversation_id), reverse=True)

    async def archived(self, a: str) -> list[StoredSettings]:
        return [s for (_, acct), s in self.docs.items() if acct == a and s.archived]

    async def set_muted(
        self,
        c: str,
        a: str,
        *,
        until: datetime | None,
        request_id: str,
        archive: tuple[bool, int] | None = None,
    ) -> bool:
        fields: dict[str, Any] = {"muted_until": until}
        if archive is not None:
            fields["archived"], fields["archived_seq"] = archive
        return self._apply(c, a, request_id, **fields)

    async def set_archived(
        self, c: str, a: str, *, archived: bool, archived_seq: int, request_id: str
    ) -> bool:
        fields: dict[str, Any] = {"archived": archived, "archived_seq": archived_seq}
        if archived:
            fields.update(pin_slot=None, pin_rank=0)
        return self._apply(c, a, request_id, **fields)

    async def mark_unread(self, c: str, a: str, *, read_seq: int, request_id: str) -> bool:
        return self._apply(c, a, request_id, unread_mark_seq=read_seq)

    async def clear_unread_mark(self, c: str, a: str) -> None:
        if (c, a) in self.docs:
            self.docs[(c, a)] = replace(self.docs[(c, a)], unread_mark_seq=None)

    async def unpin(self, c: str, a: str, *, request_id: str) -> bool:
        return self._apply(c, a, request_id, pin_slot=None, pin_rank=0)

    async def unpin_many(self, a: str, ids: Iterable[str]) -> None:
        for c in ids:
            self.docs[(c, a)] = replace(self._get(c, a), pin_slot=None, pin_rank=0)

    async def pin(self, c: str, a: str, *, now_ms: int, request_id: str, cap: int) -> Pin:
        pins = await self.pinned(a)
        if any(p.conversation_id == c for p in pins):
            return Pin.UNCHANGED
        free = sorted(set(range(cap)) - {p.pin_slot for p in pins})
        if not free:
            return Pin.FULL
        rank = max([now_ms, *(p.pin_rank + 1 for p in pins)])
        changed = self._apply(
            c, a, request_id, pin_slot=free[0], pin_rank=rank, archived=False, archived_seq=0
        )
        return Pin.PINNED if changed else Pin.UNCHANGED


class Listener:
    def __init__(self) -> None:
        self.changes: list[tuple[str, MemberSettings]] = []

    async def settings_changed(self, account_id: str, settings: MemberSettings) -> None:
        self.changes.append((account_id, settings))


def build(n: int = 8, account: str = "me") -> tuple[InboxHandler, FakeConversations, Listener]:
    """n conversations c0..c{n-1}; the higher the number, the newer its activity."""
    conversations = FakeConversations()
    for i in range(n):
        conversations.add(f"c{i}", [account, f"peer{i}"], at=T - 1000 + i)
    listener = Listener()
    handler = InboxHandler(cast(Any, FakeStore()), conversations, listener=listener)
    return handler, conversations, listener


class Clock:
    """Strictly increasing times, so that pins rank in the order they were made."""

    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


async def ids(
    handler: InboxHandler,
    *,
    archive_filter: int = ACTIVE,
    page_size: int = 100,
    account: str = "me",
    now: float = T,
) -> list[str]:
    """Every page, following the cursors, as conversation ids."""
    result: list[str] = []
    after: InboxCursor | None = None
    for _ in range(100):
        page = await handler.inbox(
            account, after=after, limit=page_size, archive_filter=archive_filter, now=now
        )
        assert len(page.entries) <= page_size
        result += [e.conversation.conversation_id for e in page.entries]
        after = page.next
        if after is None:
            return result
    raise AssertionError("pages did not end")


# -- the handler ------------------------------------------------------------------------


async def test_pinned_first_newest_pin_first_then_by_activity() -> None:
    handler, _, _ = build()
    clock = Clock()
    for c in ("c2", "c5", "c0"):
        await handler.set_pinned(
            conversation_id=c, account_id="me", pinned=True, request_id=f"r-{c}", now=clock()
        )
    expected = ["c0", "c5", "c2", "c7", "c6", "c4", "c3", "c1"]
    for page_size in range(1, 10):
        assert await ids(handler, page_size=page_size) == expected, page_size
        assert await ids(handler, page_size=page_size, archive_filter=ALL) == expected


async def test_the_pin_cap_and_idempotent_pins() -> None:
    handler, _, _ = build()
    clock = Clock()
    for i in range(5):
        view = await handler.set_pinned(
            conversation_id=f"c{i}", account_id="me", pinned=True, request_id=f"r{i}", now=clock()
        )
        assert view.settings is not None and view.settings.pinned
    again = await handler.set_pinned(
        conversation_id="c4", account_id="me", pinned=True, request_id="other", now=clock()
    )
    assert again.settings == view.settings
    with pytest.raises(FailedPrecondition) as caught:
        await handler.set_pinned(
            conversation_id="c5", account_id="me", pinned=True, request_id="r5", now=clock()
        )
    assert caught.value.reason == Reason.TOO_MANY_PINS
    await handler.set_pinned(
        conversation_id="c1", account_id="me", pinned=False, request_id="u1", now=clock()
    )
    await handler.set_pinned(
        conversation_id="c5", account_id="me", pinned=True, request_id="r5", now=clock()
    )
    assert (await ids(handler))[:5] == ["c5", "c4", "c3", "c2", "c0"]


async def test_pins_of_conversations_left_are_not_listed_and_free_their_slot() -> None:
    handler, conversations, _ = build()
    clock = Clock()
    for i in range(5):
        await handler.set_pinned(
            conversation_id=f"c{i}", account_id="me", pinned=True, request_id=f"r{i}", now=clock()
        )
    conversations.items["c3"].members.discard("me")
    assert await ids(handler) == ["c4", "c2", "c1", "c0", "c7", "c6", "c5"]
    await handler.set_pinned(
        conversation_id="c7", account_id="me", pinned=True, request_id="r7", now=clock()
    )
    assert (await ids(handler))[:5] == ["c7", "c4", "c2", "c1", "c0"]


async def test_archive_hides_and_news_bring_it_back_unless_muted() -> None:
    handler, conversations, _ = build(4)
    for c in ("c1", "c2"):
        await handler.set_archived(
            conversation_id=c, account_id="me", archived=True, request_id=f"a-{c}", now=T
        )
    await handler.set_muted(
        conversation_id="c2",
        account_id="me",
        until=None,
        forever=True,
        request_id="m",
        now=T,
    )
    assert await ids(handler) == ["c3", "c0"]
    assert await ids(handler, archive_filter=ARCHIVED) == ["c2", "c1"]
    assert await ids(handler, archive_filter=ALL) == ["c3", "c2", "c1", "c0"]
    conversations.news("c1", at=T + 1)
    conversations.news("c2", at=T + 2)
    assert await ids(handler) == ["c1", "c3", "c0"]
    assert await ids(handler, archive_filter=ARCHIVED) == ["c2"]
    # Unmuting does not bring back what arrived while muted; what comes next does.
    view = await handler.set_muted(
        conversation_id="c2", account_id="me", until=None, forever=False, request_id="u", now=T + 3
    )
    assert view.settings is not None
    assert view.settings.archived and view.settings.muted_until is None
    assert await ids(handler, archive_filter=ARCHIVED, now=T + 3) == ["c2"]
    conversations.news("c2", at=T + 4)
    assert await ids(handler, now=T + 4) == ["c2", "c1", "c3", "c0"]


async def test_archived_pages_follow_activity() -> None:
    handler, _, _ = build(7)
    for i in (0, 2, 3, 5, 6):
        await handler.set_archived(
            conversation_id=f"c{i}", account_id="me", archived=True, request_id=f"a{i}", now=T
        )
    for page_size in (1, 2, 3, 5, 6):
        assert await ids(handler, archive_filter=ARCHIVED, page_size=page_size) == [
            "c6",
            "c5",
            "c3",
            "c2",
            "c0",
        ]
        assert await ids(handler, page_size=page_size) == ["c4", "c1"]


async def test_archiving_unpins_and_pinning_unarchives() -> None:
    handler, _, _ = build(3)
    await handler.set_pinned(
        conversation_id="c0", account_id="me", pinned=True, request_id="p", now=T
    )
    view = await handler.set_archived(
        conversation_id="c0", account_id="me", archived=True, request_id="a", now=T
    )
    assert view.settings is not None and view.settings.archived and not view.settings.pinned
    view = await handler.set_pinned(
        conversation_id="c0", account_id="me", pinned=True, request_id="p2", now=T
    )
    assert view.settings is not None and view.settings.pinned and not view.settings.archived
    assert await ids(handler) == ["c0", "c2", "c1"]


async def test_mark_unread_until_read_and_retries_change_nothing() -> None:
    handler, conversations, listener = build(2)
    conversations.news("c0", at=T, count=5)
    conversations.items["c0"].read["me"] = 5
    view = await handler.mark_unread(conversation_id="c0", account_id="me", request_id="m", now=T)
    assert view.settings is not None and view.settings.marked_unread
    assert len(listener.changes) == 1
    conversations.news("c0", at=T + 1)
    conversations.items["c0"].read["me"] = 6
    (entry,) = await handler.decorate("me", [conversations.entry("c0", "me")], now=T + 1)
    assert entry.settings is not None and not entry.settings.marked_unread
    # The retry of the first request does not mark it again, nor tell anyone.
    view = await handler.mark_unread(conversation_id="c0", account_id="me", request_id="m", now=T)
    assert view.settings is not None and not view.settings.marked_unread
    assert len(listener.changes) == 1


async def test_marking_read_clears_the_mark_when_nothing_was_unread() -> None:
    handler, conversations, _ = build(1)
    await handler.mark_unread(conversation_id="c0", account_id="me", request_id="m", now=T)
    await handler.clear_unread_mark("c0", "me")
    view = await handler.decorate_one("me", conversations.entry("c0", "me"), now=T)
    assert view.settings is not None and not view.settings.marked_unread


async def test_only_active_members_change_settings() -> None:
    handler, conversations, _ = build(1)
    conversations.items["c0"].members.discard("me")
    with pytest.raises(PermissionDenied):
        await handler.set_muted(
            conversation_id="c0", account_id="me", until=None, forever=True, request_id="m", now=T
        )
    with pytest.raises(PermissionDenied):
        await handler.set_pinned(
            conversation_id="c0", account_id="me", pinned=True, request_id="p", now=T
        )
    assert await ids(handler) == []


async def test_a_mute_shows_until_it_ends() -> None:
    handler, conversations, _ = build(1)
    until = datetime.fromtimestamp(T + 60, UTC)
    view = await handler.set_muted(
        conversation_id="c0", account_id="me", until=until, forever=False, request_id="m", now=T
    )
    assert view.settings is not None and view.settings.muted_until == until
    later = await handler.decorate_one("me", conversations.entry("c0", "me"), now=T + 61)
    assert later.settings is not None and later.settings.muted_until is None
