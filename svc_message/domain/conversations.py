"""Conversations as members see them: membership, views, the inbox, watermarks."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from parley_core.errors import InvalidArgument, NotFound, PermissionDenied, Reason
from parley_core.ids import random_id
from parley_core.limits import LimitName
from svc_message.domain.limits import FeedLimits
from svc_message.model import (
    ADMIN,
    CHANNEL,
    DIRECT,
    OWNER,
    SUBSCRIBER,
    Conversation,
    InboxEntry,
    Watermarks,
)
from svc_message.model.broadcast import Broadcast
from svc_message.model.conversations import MemberRecord
from svc_message.model.messages import HeadState
from svc_message.ports import Accounts, EventCodec, Publisher
from svc_message.storage.conversations import ConversationStore
from svc_message.storage.messages import MessageStore
from svc_message.storage.recent import RecentCache

# How long a group's or channel's cached membership may be used without
# re-reading; changes also invalidate it at once through the doorbell.
MEMBERSHIP_TTL_SECONDS = 2.0


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def direct_key(a: str, b: str) -> str:
    first, second = sorted((a, b))
    return f"{first}|{second}"


@dataclass(frozen=True, slots=True)
class Membership:
    """An account's place in a conversation."""

    conversation: Conversation
    account_id: str
    role: int
    active: bool
    joined_seq: int = 0
    joined_version: int = 0
    # Set once the account left or was removed: what it may still see.
    left_seq: int = 0
    left_version: int = 0

    @property
    def is_admin(self) -> bool:
        return self.active and self.role in (OWNER, ADMIN)


def visible_window(membership: Membership) -> tuple[int, int]:
    """The seqs a member may read: [joined, left] (0 = unbounded)."""
    return membership.joined_seq, membership.left_seq


def freshen(conversations: list[Conversation], heads: dict[str, HeadState]) -> list[Conversation]:
    """Conversations with last_seq, last_version and senders' positions raised
    to what Redis knows: the stored values trail while the projector writes
    them behind."""
    result = []
    for conversation in conversations:
        head = heads.get(conversation.conversation_id)
        if head is None:
            result.append(conversation)
            continue
        merged = dict(conversation.sent)
        for account_id, seq in head.sent.items():
            merged[account_id] = max(merged.get(account_id, 0), seq)
        result.append(
            replace(
                conversation,
                last_seq=max(conversation.last_seq, head.last_seq),
                last_version=max(conversation.last_version, head.last_version),
                sent=tuple(sorted(merged.items())),
            )
        )
    return result


def effective_watermarks(
    conversation: Conversation, stored: Iterable[Watermarks], members: Iterable[str]
) -> tuple[Watermarks, ...]:
    """The members' watermarks, counting what a member sent as read by them."""
    by_member = {w.account_id: w for w in stored}
    sent = dict(conversation.sent)
    result = []
    for member in members:
        w = by_member.get(member, Watermarks(conversation.conversation_id, member))
        own = sent.get(member, 0)
        result.append(
            Watermarks(
                conversation.conversation_id,
                member,
                delivered_seq=max(w.delivered_seq, own),
                read_seq=max(w.read_seq, own),
            )
        )
    return tuple(result)


def inbox_entry(
    membership: Membership, conversation: Conversation, watermarks: Iterable[Watermarks]
) -> InboxEntry:
    """Unread = items after the member's read watermark (or join), computed
    from watermarks, never counted. Channels show only the caller's own
    watermarks: there may be any number of subscribers."""
    account_id = membership.account_id
    if conversation.type == CHANNEL:
        shown: Iterable[str] = (account_id,)
    else:
        shown = conversation.member_ids
        if account_id not in shown:
            shown = (*shown, account_id)
    complete = effective_watermarks(conversation, watermarks, shown)
    mine = next((w for w in complete if w.account_id == account_id), None)
    seen = max(mine.read_seq if mine else 0, membership.joined_seq)
    last = conversation.last_seq if membership.active else membership.left_seq
    return InboxEntry(
        conversation=conversation,
        watermarks=complete,
        unread_count=max(0, last - seen),
        role=membership.role,
        active=membership.active,
        joined_seq=membership.joined_seq,
        visible_until_seq=0 if membership.active else membership.left_seq,
    )


def membership_of(
    conversation: Conversation, account_id: str, record: MemberRecord | None
) -> Membership | None:
    """The account's membership from the conversation document and, for
    channel subscribers and former members, its member record."""
    if account_id in conversation.member_ids:
        seq, version = conversation.joined_at(account_id)
        return Membership(
            conversation,
            account_id,
            conversation.role_of(account_id),
            True,
            joined_seq=seq,
            joined_version=version,
        )
    if record is None:
        return None
    if record.active and conversation.type == CHANNEL:
        # Channel subscribers read the whole history.
        return Membership(
            conversation, account_id, SUBSCRIBER, True, joined_version=record.joined_version
        )
    if record.active:
        return None  # a join still being recorded
    return Membership(
        conversation,
        account_id,
        conversation.role_of(account_id),
        False,
        joined_seq=0 if conversation.type == CHANNEL else record.joined_seq,
        joined_version=record.joined_version,
        left_seq=record.left_seq,
        left_version=record.left_version,
    )


class ConversationsHandler:
    def __init__(
        self,
        store: ConversationStore,
        recent: RecentCache,
        accounts: Accounts,
        publisher: Publisher,
        codec: EventCodec,
        *,
        log: MessageStore,
        limits: FeedLimits,
        membership_cache_size: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
        region_number: Callable[[], int | None] = lambda: None,
    ) -> None:
        # The number new conversation ids carry (None: no regions, untagged).
        self.region_number = region_number
        self._store = store
        self._log = log
        self._limits = limits
        self._recent = recent
        self._accounts = accounts
        self._publisher = publisher
        self._codec = codec
        self._monotonic = monotonic
        # Direct conversations never change members, so their documents are
        # remembered for good; groups and channels for a moment (and until
        # a membership change is announced). This keeps a send read-free.
        self._cached: OrderedDict[str, tuple[Conversation, float]] = OrderedDict()
        # Per conversation, per account: channel subscribers' and former
        # members' records, so a membership change drops a conversation's at once.
        self._records: dict[str, dict[str, tuple[MemberRecord | None, float]]] = {}
        self._record_count = 0
        self._cache_size = membership_cache_size

    @property
    def store(self) -> ConversationStore:
        return self._store

    def forget(self, conversation_id: str) -> None:
        """Its membership changed: read it again next time."""
        self._cached.pop(conversation_id, None)
        dropped = self._records.pop(conversation_id, None)
        if dropped:
            self._record_count -= len(dropped)

    def _expired(self, stored_at: float) -> bool:
        return self._monotonic() - stored_at > MEMBERSHIP_TTL_SECONDS

    async def conversation(self, conversation_id: str) -> Conversation:
        cached = self._cached.get(conversation_id)
        # A cached document caught mid-AddMembers (another instance is adding
        # someone) is read again: the join it lacks is recorded a moment later,
        # and its announcement to this instance may come later still.
        if (
            cached is not None
            and not cached[0].has_pending_joins
            and (cached[0].type == DIRECT or not self._expired(cached[1]))
        ):
            return cached[0]
        conversation = await self._store.get(conversation_id)
        if conversation is None:
            raise NotFound("conversation not found", reason=Reason.CONVERSATION_NOT_FOUND)
        self._cached[conversation_id] = (conversation, self._monotonic())
        self._cached.move_to_end(conversation_id)
        while len(self._cached) > self._cache_size:
            self._cached.popitem(last=False)
        return conversation

    async def _record(self, conversation: Conversation, account_id: str) -> MemberRecord | None:
        if conversation.type == DIRECT or account_id in conversation.member_ids:
            return None
        conversation_id = conversation.conversation_id
        cached = self._records.get(conversation_id, {}).get(account_id)
        if cached is not None and not self._expired(cached[1]):
            return cached[0]
        record = await self._store.member(conversation_id, account_id)
        if self._record_count > self._cache_size:
            self._records.clear()
            self._record_count = 0
        records = self._records.setdefault(conversation_id, {})
        self._record_count += account_id not in records
        records[account_id] = (record, self._monotonic())
        return record

    async def membership(self, conversation_id: str, account_id: str) -> Membership | None:
        """The account's membership, current or former; None if never a member.

        May come from a cache: its last_seq is not current."""
        conversation = await self.conversation(conversation_id)
        return membership_of(conversation, account_id, await self._record(conversation, account_id))

    async def require_reader(self, conversation_id: str, account_id: str) -> Membership:
        """A member or former member (who reads up to their departure)."""
        membership = await self.membership(conversation_id, account_id)
        if membership is None:
            raise PermissionDenied("you are not a member of this conversation")
        return membership

    async def require_member(self, conversation_id: str, account_id: str) -> Membership:
        """An active member; NOT_FOUND / PERMISSION_DENIED otherwise."""
        membership = await self.require_reader(conversation_id, account_id)
        if not membership.active:
            raise PermissionDenied("you are no longer a member of this conversation")
        return membership

    async def create_direct(
        self, *, account_id: str, peer_account_id: str, bearer_token: str, now: float
    ) -> InboxEntry:
        if peer_account_id == account_id:
            raise InvalidArgument.field("peer_account_id", "must be another account than yours")
        key = direct_key(account_id, peer_account_id)
        conversation_id = await self._store.direct_pair(key)
        if conversation_id is None:
            # Only a new pair spends a token: opening an existing chat is a read.
            await self._limits.per_account(LimitName.DIRECT_CREATE_PER_ACCOUNT, account_id, now=now)
            if not await self._accounts.exists(peer_account_id, bearer_token=bearer_token):
                raise NotFound("no account with that id", reason=Reason.ACCOUNT_NOT_FOUND)
            conversation_id = await self._store.claim_direct_pair(
                key, random_id(region_number=self.region_number())
            )
        candidate = Conversation(
            conversation_id=conversation_id,
            type=DIRECT,
            member_ids=tuple(sorted((account_id, peer_account_id))),
            created_at=_at(now),
            last_activity_at=_at(now),
        )
        # Also heals a pair claimed by a request that crashed before this step.
        if await self._store.ensure(candidate):
            envelope = self._codec.conversation(candidate)
            await self._publisher.publish(
                [Broadcast(self._codec.encode(envelope), accounts=candidate.member_ids)]
            )
        return await self.get(conversation_id=conversation_id, account_id=account_id)

    async def fresh(self, conversations: list[Conversation]) -> list[Conversation]:
        heads = await self._recent.heads([c.conversation_id for c in conversations])
        return freshen(conversations, heads)

    async def last_seq_at_least(self, conversation: Conversation, seq: int) -> int:
        """The conversation's newest seq, asked of the log when ``seq`` is past
        what the stored document and Redis say: the stored head trails while a
        projector flush is pending, and Redis, which is ahead, may be lost."""
        (current,) = await self.fresh([conversation])
        if seq <= current.last_seq:
            return current.last_seq
        _, logged = await self._log.heads(conversation.conversation_id)
        return max(current.last_seq, logged)

    async def of_member(self, account_id: str) -> list[Conversation]:
        """Every conversation the account is an active member of (channel
        subscriptions included), with current last_seq and last_version."""
        conversations = await self._store.of_member(account_id)
        channels = await self._store.channel_subscriptions(account_id)
        known = {c.conversation_id for c in conversations}
        missing = [c for c in channels if c not in known]
        if missing:
            conversations += await self._store.get_many(missing)
        return await self.fresh(conversations)

    async def _entries(self, memberships: Sequence[Membership]) -> list[InboxEntry]:
        if not memberships:
            return []
        stored = await self._store.get_many(m.conversation.conversation_id for m in memberships)
        by_id = {c.conversation_id: c for c in await self.fresh(stored)}
        watermarks = await self._store.watermarks(by_id)
        grouped: dict[str, list[Watermarks]] = {}
        for w in watermarks:
            grouped.setdefault(w.conversation_id, []).append(w)
        result = []
        for membership in memberships:
            conversation = by_id.get(membership.conversation.conversation_id)
            if conversation is not None:
                result.append(
                    inbox_entry(
                        membership, conversation, grouped.get(conversation.conversation_id, [])
                    )
                )
        return result

    async def memberships(
        self, account_id: str, conversation_ids: Iterable[str]
    ) -> dict[str, Membership]:
        """The account's memberships, current or former, in those of the
        conversations it ever joined: two queries whatever their number, and
        no cache (the answer is not for a request of the account's own)."""
        conversations = await self._store.get_many(conversation_ids)
        unlisted = [
            c.conversation_id
            for c in conversations
            if c.type != DIRECT and account_id not in c.member_ids
        ]
        records = await self._store.members_of(account_id, unlisted)
        found = {
            c.conversation_id: membership_of(c, account_id, records.get(c.conversation_id))
            for c in conversations
        }
        return {c: m for c, m in found.items() if m is not None}

    async def get(self, *, conversation_id: str, account_id: str) -> InboxEntry:
        membership = await self.require_reader(conversation_id, account_id)
        (entry,) = await self._entries([membership])
        return entry

    async def entries(self, account_id: str, conversation_ids: Sequence[str]) -> list[InboxEntry]:
        """The account's entries for those conversations it is an active member
        of: two queries whatever their number (conversations, then the member
        records of those the account is not listed in)."""
        conversations = await self._store.get_many(conversation_ids)
        unlisted = [
            c.conversation_id
            for c in conversations
            if c.type != DIRECT and account_id not in c.member_ids
        ]
        records = await self._store.members_of(account_id, unlisted)
        memberships = [
            m
            for m in (
                membership_of(c, account_id, records.get(c.conversation_id)) for c in conversations
            )
            if m is not None and m.active
        ]
        return await self._entries(memberships)

    async def inbox(
        self,
        *,
        account_id: str,
        after: tuple[datetime, str] | None,
        limit: int,
        exclude: frozenset[str] = frozenset(),
    ) -> list[InboxEntry]:
        channels = await self._store.channel_subscriptions(account_id)
        page = await self.fresh(
            await self._store.inbox_page(
                account_id, after=after, limit=limit, exclude=exclude, channel_ids=channels
            )
        )
        if not page:
            return []
        memberships = [
            m
            for m in (
                membership_of(
                    c,
                    account_id,
                    None
                    if account_id in c.member_ids
                    else MemberRecord(c.conversation_id, account_id, active=True),
                )
                for c in page
            )
            if m is not None
        ]
        watermarks = await self._store.watermarks(c.conversation_id for c in page)
        grouped: dict[str, list[Watermarks]] = {}
        for w in watermarks:
            grouped.setdefault(w.conversation_id, []).append(w)
        return [
            inbox_entry(m, m.conversation, grouped.get(m.conversation.conversation_id, []))
            for m in memberships
        ]

    async def mark(
        self,
        *,
        conversation_id: str,
        account_id: str,
        delivered: int,
        read: int,
        now: float,
    ) -> Watermarks:
        """Raise the member's watermarks; lower values change nothing."""
        membership = await self.require_member(conversation_id, account_id)
        stored = await self._store.get(conversation_id)
        last_seq = await self.last_seq_at_least(stored, max(delivered, read)) if stored else 0
        # A watermark past the newest message would make unread counts negative.
        delivered, read = min(delivered, last_seq), min(read, last_seq)
        watermarks, moved = await self._store.raise_one(
            conversation_id, account_id, delivered=delivered, read=read, now=_at(now)
        )
        if moved and membership.conversation.type != CHANNEL:
            envelope = (
                self._codec.receipt(watermarks)
                if membership.conversation.type == DIRECT
                else self._codec.receipts(conversation_id, (watermarks,))
            )
            await self._publisher.publish(
                [Broadcast(self._codec.encode(envelope), conversations=(conversation_id,))]
            )
        return watermarks
