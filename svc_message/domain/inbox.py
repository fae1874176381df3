"""Inbox controls per member: mute, pin, archive, mark-unread, and the inbox list.

What is stored (``storage.inbox``) is what the member asked for; what the
inbox shows also depends on the time and on the conversation's news, and is
computed on every read by the pure functions below:

- muted: ``muted_until`` is in the future (forever is year 9999);
- archived: archived, unless a history item arrived after archiving
  (``last_seq > archived_seq``) while the conversation was not muted; a
  muted conversation stays archived whatever arrives;
- marked unread: until the member's read watermark rises past where it was
  when they marked it (``read_seq > unread_mark_seq``).

Pinned and archived exclude each other: archiving unpins, pinning unarchives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from parley_core.errors import FailedPrecondition, Reason
from svc_message.domain.inbox_settings import InboxSettings
from svc_message.model import MAX_PINNED, InboxEntry, MemberSettings
from svc_message.model.inbox import FOREVER, Pin, StoredSettings
from svc_message.ports import SettingsListener

# parley.message.v1.ArchiveFilter (UNSPECIFIED means ACTIVE).
ACTIVE, ARCHIVED, ALL = 1, 2, 3


# -- policy (pure) --------------------------------------------------------------


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def mute_until(requested: datetime | None, *, forever: bool, now: datetime) -> datetime | None:
    """What to store for a mute request: None unmutes, and so does a time
    already past (that mute would be over)."""
    if forever:
        return FOREVER
    if requested is None or requested <= now:
        return None
    return min(requested, FOREVER)


def muted_until_at(muted_until: datetime | None, now: datetime) -> datetime | None:
    """The mute in force at ``now``, if any."""
    if muted_until is None or muted_until <= now:
        return None
    return muted_until


def effectively_archived(
    stored: StoredSettings | None,
    *,
    last_seq: int,
    now: datetime,
    last_activity_at: datetime | None = None,
) -> bool:
    """Archived as the inbox shows it: news bring an archived conversation
    back unless it is muted."""
    if stored is None or not stored.archived:
        return False
    if last_seq <= stored.archived_seq:
        return True
    if muted_until_at(stored.muted_until, now) is not None:
        return True
    # A mute that ran out: what arrived while it lasted does not count, only
    # news after its end (the last activity is that of the newest item).
    return (
        stored.muted_until is not None
        and last_activity_at is not None
        and last_activity_at <= stored.muted_until
    )


def effective_settings(
    stored: StoredSettings | None,
    *,
    conversation_id: str,
    last_seq: int,
    read_seq: int,
    now: datetime,
    last_activity_at: datetime | None = None,
) -> MemberSettings:
    if stored is None:
        return MemberSettings(conversation_id=conversation_id)
    return MemberSettings(
        conversation_id=conversation_id,
        muted_until=muted_until_at(stored.muted_until, now),
        pinned=stored.pinned,
        pin_rank=stored.pin_rank if stored.pinned else 0,
        archived=effectively_archived(
            stored, last_seq=last_seq, now=now, last_activity_at=last_activity_at
        ),
        marked_unread=stored.unread_mark_seq is not None and read_seq <= stored.unread_mark_seq,
    )


def read_seq_of(entry: InboxEntry, account_id: str) -> int:
    return next((w.read_seq for w in entry.watermarks if w.account_id == account_id), 0)


def activity_of(entry: InboxEntry) -> datetime:
    conversation = entry.conversation
    return conversation.last_activity_at or conversation.created_at


def entry_settings(
    entry: InboxEntry, account_id: str, stored: StoredSettings | None, now: datetime
) -> MemberSettings:
    conversation = entry.conversation
    return effective_settings(
        stored,
        conversation_id=conversation.conversation_id,
        last_seq=conversation.last_seq,
        read_seq=read_seq_of(entry, account_id),
        now=now,
        last_activity_at=conversation.last_activity_at,
    )


# -- the inbox list ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PinCursor:
    """Inside the pinned part: continue after this pin (newest pin first)."""

    pin_rank: int
    conversation_id: str


@dataclass(frozen=True, slots=True)
class ActivityCursor:
    """Past the pinned part: continue after this (last activity, id), newest first."""

    at: datetime
    conversation_id: str


InboxCursor = PinCursor | ActivityCursor


@dataclass(frozen=True, slots=True)
class InboxPage:
    entries: list[InboxEntry]
    # Where the next page continues; None at the end.
    next: InboxCursor | None


class Conversations(Protocol):
    """What the inbox needs of ConversationsHandler."""

    async def require_member(self, conversation_id: str, account_id: str) -> object: ...

    async def get(self, *, conversation_id: str, account_id: str) -> InboxEntry: ...

    async def entries(
        self, account_id: str, conversation_ids: Sequence[str]
    ) -> list[InboxEntry]: ...

    async def inbox(
        self,
        *,
        account_id: str,
        after: tuple[datetime, str] | None,
        limit: int,
        exclude: frozenset[str] = frozenset(),
    ) -> list[InboxEntry]: ...


class InboxHandler:
    def __init__(
        self,
        store: InboxSettings,
        conversations: Conversations,
        *,
        listener: SettingsListener | None = None,
        max_pinned: int = MAX_PINNED,
    ) -> None:
        self._store = store
        self._conversations = conversations
        self._listener = listener
        self._max_pinned = max_pinned

    # -- views -------------------------------------------------------------------

    async def decorate(
        self, account_id: str, entries: list[InboxEntry], *, now: float
    ) -> list[InboxEntry]:
        """Copies of the account's entries with their settings, in one query."""
        if not entries:
            return []
        stored = await self._store.of_account(
            account_id, [e.conversation.conversation_id for e in entries]
        )
        return self._with_settings(account_id, entries, stored, _at(now))

    async def decorate_one(self, account_id: str, entry: InboxEntry, *, now: float) -> InboxEntry:
        (decorated,) = await self.decorate(account_id, [entry], now=now)
        return decorated

    @staticmethod
    def _with_settings(
        account_id: str,
        entries: list[InboxEntry],
        stored: dict[str, StoredSettings],
        at: datetime,
    ) -> list[InboxEntry]:
        return [
            replace(
                e,
                settings=entry_settings(
                    e, account_id, stored.get(e.conversation.conversation_id), at
                ),
            )
            for e in entries
        ]

    async def inbox(
        self,
        account_id: str,
        *,
        after: InboxCursor | None,
        limit: int,
        archive_filter: int,
        now: float,
    ) -> InboxPage:
        """ListConversations: the pinned part (newest pin first; ACTIVE and ALL
        only), then the rest by last activity, newest first."""
        at = _at(now)
        want = limit + 1
        rows: list[InboxEntry] = []
        stored: dict[str, StoredSettings] = {}
        pinned_rows = 0
        pinned_ids: frozenset[str] = frozenset()
        if archive_filter != ARCHIVED:
            pins = await self._store.pinned(account_id)
            pinned_ids = frozenset(p.conversation_id for p in pins)
            stored.update((p.conversation_id, p) for p in pins)
            if not isinstance(after, ActivityCursor):
                if isinstance(after, PinCursor):
                    position = (after.pin_rank, after.conversation_id)
                    pins = [p for p in pins if (p.pin_rank, p.conversation_id) < position]
                # Only those the account still is an active member of.
                rows = await self._in_order(account_id, [p.conversation_id for p in pins])
                rows = rows[:want]
                pinned_rows = len(rows)
        if len(rows) < want:
            rest_after = None
            if isinstance(after, ActivityCursor):
                rest_after = (after.at, after.conversation_id)
            rows += await self._rest(
                account_id,
                after=rest_after,
                limit=want - len(rows),
                archive_filter=archive_filter,
                pinned_ids=pinned_ids,
                stored=stored,
                at=at,
            )
        missing = [
            e.conversation.conversation_id
            for e in rows
            if e.conversation.conversation_id not in stored
        ]
        stored.update(await self._store.of_account(account_id, missing))
        next_cursor: InboxCursor | None = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            last_id = last.conversation.conversation_id
            if len(rows) <= pinned_rows:
                next_cursor = PinCursor(stored[last_id].pin_rank, last_id)
            else:
                next_cursor = ActivityCursor(activity_of(last), last_id)
        return InboxPage(self._with_settings(account_id, rows, stored, at), next_cursor)

    async def _in_order(self, account_id: str, conversation_ids: list[str]) -> list[InboxEntry]:
        """The account's entries of these conversations in the given order,
        leaving out those it is no longer an active member of."""
        if not conversation_ids:
            return []
        found = await self._conversations.entries(account_id, conversation_ids)
        by_id = {e.conversation.conversation_id: e for e in found}
        return [by_id[c] for c in conversation_ids if c in by_id]

    async def _rest(
        self,
        account_id: str,
        *,
        after: tuple[datetime, str] | None,
        limit: int,
        archive_filter: int,
        pinned_ids: frozenset[str],
        stored: dict[str, StoredSettings],
        at: datetime,
    ) -> list[InboxEntry]:
        if archive_filter == ALL:
            return await self._conversations.inbox(
                account_id=account_id, after=after, limit=limit, exclude=pinned_ids
            )
        # Whether an archived conversation still shows as archived depends on
        # its news: read the (few) archived ones' current entries.
        archived_stored = {s.conversation_id: s for s in await self._store.archived(account_id)}
        stored.update(archived_stored)
        candidates = await self._conversations.entries(account_id, list(archived_stored))
        archived = [
            e
            for e in candidates
            if effectively_archived(
                archived_stored[e.conversation.conversation_id],
                last_seq=e.conversation.last_seq,
                now=at,
                last_activity_at=e.conversation.last_activity_at,
            )
        ]
        if archive_filter == ARCHIVED:
            archived.sort(key=lambda e: (activity_of(e), e.conversation.conversation_id))
            archived.reverse()
            if after is not None:
                archived = [
                    e for e in archived if (activity_of(e), e.conversation.conversation_id) < after
                ]
            return archived[:limit]
        exclude = pinned_ids | {e.conversation.conversation_id for e in archived}
        return await self._conversations.inbox(
            account_id=account_id, after=after, limit=limit, exclude=exclude
        )

    # -- settings ------------------------------------------------------------------

    async def _member_entry(self, conversation_id: str, account_id: str) -> InboxEntry:
        """The account's entry; PERMISSION_DENIED unless it is an active member
        (a former member still gets its entry from ``get``)."""
        await self._conversations.require_member(conversation_id, account_id)
        return await self._conversations.get(conversation_id=conversation_id, account_id=account_id)

    async def _changed(
        self, account_id: str, entry: InboxEntry, changed: bool, *, now: float
    ) -> InboxEntry:
        decorated = await self.decorate_one(account_id, entry, now=now)
        if changed and self._listener is not None and decorated.settings is not None:
            await self._listener.settings_changed(account_id, decorated.settings)
        return decorated

    async def settings_replicated(
        self, conversation_id: str, account_id: str, *, now: float
    ) -> None:
        """A state merged from another region changed the account's settings
        here: its devices connected to this region hear of it as of a change
        made here (none for a conversation it is no longer an active member of)."""
        if self._listener is None:
            return
        found = await self._conversations.entries(account_id, [conversation_id])
        if not found:
            return
        decorated = await self.decorate_one(account_id, found[0], now=now)
        if decorated.settings is not None:
            await self._listener.settings_changed(account_id, decorated.settings)

    async def set_muted(
        self,
        *,
        conversation_id: str,
        account_id: str,
        until: datetime | None,
        forever: bool,
        request_id: str,
        now: float,
    ) -> InboxEntry:
        """Mute until ``until`` or forever; ``until`` None (or past) unmutes."""
        at = _at(now)
        entry = await self._member_entry(conversation_id, account_id)
        stored = await self._store.one(conversation_id, account_id)
        archive = None
        if stored is not None and stored.archived:
            # Keep what the inbox shows now: news that already brought it back
            # keep it back once muted, and news that came while it was muted
            # do not bring it back once unmuted.
            conversation = entry.conversation
            still = effectively_archived(
                stored,
                last_seq=conversation.last_seq,
                now=at,
                last_activity_at=conversation.last_activity_at,
            )
            archive = (still, conversation.last_seq if still else 0)
        changed = await self._store.set_muted(
            conversation_id,
            account_id,
            until=mute_until(until, forever=forever, now=at),
            request_id=request_id,
            archive=archive,
        )
        return await self._changed(account_id, entry, changed, now=now)

    async def set_pinned(
        self,
        *,
        conversation_id: str,
        account_id: str,
        pinned: bool,
        request_id: str,
        now: float,
    ) -> InboxEntry:
        await self._conversations.require_member(conversation_id, account_id)
        if pinned:
            outcome = await self._pin(conversation_id, account_id, request_id, now)
            if outcome is Pin.FULL and await self._release_hidden_pins(account_id):
                outcome = await self._pin(conversation_id, account_id, request_id, now)
            if outcome is Pin.FULL:
                raise FailedPrecondition(
                    f"at most {self._max_pinned} conversations can be pinned; unpin one first",
                    reason=Reason.TOO_MANY_PINS,
                )
            changed = outcome is Pin.PINNED
        else:
            changed = await self._store.unpin(conversation_id, account_id, request_id=request_id)
        entry = await self._conversations.get(
            conversation_id=conversation_id, account_id=account_id
        )
        return await self._changed(account_id, entry, changed, now=now)

    async def _pin(self, conversation_id: str, account_id: str, request_id: str, now: float) -> Pin:
        return await self._store.pin(
            conversation_id,
            account_id,
            now_ms=int(now * 1000),
            request_id=request_id,
            cap=self._max_pinned,
        )

    async def _release_hidden_pins(self, account_id: str) -> bool:
        """Unpin conversations the account left or was removed from: they are
        not in its inbox, so it could not unpin them. True if any was."""
        pins = [p.conversation_id for p in await self._store.pinned(account_id)]
        visible = {e.conversation.conversation_id for e in await self._in_order(account_id, pins)}
        hidden = [c for c in pins if c not in visible]
        await self._store.unpin_many(account_id, hidden)
        return bool(hidden)

    async def set_archived(
        self,
        *,
        conversation_id: str,
        account_id: str,
        archived: bool,
        request_id: str,
        now: float,
    ) -> InboxEntry:
        entry = await self._member_entry(conversation_id, account_id)
        changed = await self._store.set_archived(
            conversation_id,
            account_id,
            archived=archived,
            archived_seq=entry.conversation.last_seq if archived else 0,
            request_id=request_id,
        )
        return await self._changed(account_id, entry, changed, now=now)

    async def mark_unread(
        self, *, conversation_id: str, account_id: str, request_id: str, now: float
    ) -> InboxEntry:
        entry = await self._member_entry(conversation_id, account_id)
        changed = await self._store.mark_unread(
            conversation_id,
            account_id,
            read_seq=read_seq_of(entry, account_id),
            request_id=request_id,
        )
        return await self._changed(account_id, entry, changed, now=now)

    async def clear_unread_mark(self, conversation_id: str, account_id: str) -> None:
        """For MarkRead: reading the conversation clears the mark even when the
        read watermark could not rise (everything was read already)."""
        await self._store.clear_unread_mark(conversation_id, account_id)
