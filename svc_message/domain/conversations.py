"""Direct conversations, membership, the inbox and watermarks."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from datetime import UTC, datetime

from parley_core.errors import InvalidArgument, NotFound, PermissionDenied, Reason
from parley_core.ids import random_id
from svc_message.domain.ports import Accounts, EventCodec, Publisher
from svc_message.model import DIRECT, Conversation, InboxEntry, Watermarks
from svc_message.storage.conversations import ConversationStore
from svc_message.storage.recent import RecentCache


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def direct_key(a: str, b: str) -> str:
    first, second = sorted((a, b))
    return f"{first}|{second}"


def freshen(
    conversations: list[Conversation], heads: dict[str, tuple[int, dict[str, int]]]
) -> list[Conversation]:
    """Conversations with last_seq and senders' positions raised to what Redis
    knows: the stored values trail while the projector writes them behind."""
    result = []
    for conversation in conversations:
        head = heads.get(conversation.conversation_id)
        if head is None:
            result.append(conversation)
            continue
        last, sent = head
        merged = dict(conversation.sent)
        for account_id, seq in sent.items():
            merged[account_id] = max(merged.get(account_id, 0), seq)
        result.append(
            replace(
                conversation,
                last_seq=max(conversation.last_seq, last),
                sent=tuple(sorted(merged.items())),
            )
        )
    return result


def effective_watermarks(
    conversation: Conversation, stored: list[Watermarks]
) -> tuple[Watermarks, ...]:
    """Every member's watermarks, counting what a member sent as read by them."""
    by_member = {w.account_id: w for w in stored}
    sent = dict(conversation.sent)
    result = []
    for member in conversation.member_ids:
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
    conversation: Conversation, watermarks: list[Watermarks], account_id: str
) -> InboxEntry:
    """Unread = last_seq - read_seq: computed from watermarks, never counted."""
    complete = effective_watermarks(conversation, watermarks)
    mine = next((w for w in complete if w.account_id == account_id), None)
    unread = max(0, conversation.last_seq - (mine.read_seq if mine else 0))
    return InboxEntry(conversation=conversation, watermarks=complete, unread_count=unread)


class ConversationsHandler:
    def __init__(
        self,
        store: ConversationStore,
        recent: RecentCache,
        accounts: Accounts,
        publisher: Publisher,
        codec: EventCodec,
        *,
        membership_cache_size: int = 100_000,
    ) -> None:
        self._store = store
        self._recent = recent
        self._accounts = accounts
        self._publisher = publisher
        self._codec = codec
        # Direct conversations never change members, so their membership can
        # be remembered for good; this keeps a send to one read-free.
        self._membership: OrderedDict[str, Conversation] = OrderedDict()
        self._cache_size = membership_cache_size

    def _remember(self, conversation: Conversation) -> None:
        if conversation.type == DIRECT:
            self._membership[conversation.conversation_id] = conversation
            if len(self._membership) > self._cache_size:
                self._membership.popitem(last=False)

    async def require_member(self, conversation_id: str, account_id: str) -> Conversation:
        """The conversation if the account is a member; NOT_FOUND / PERMISSION_DENIED otherwise.

        The result may be cached: its last_seq is not current."""
        conversation = self._membership.get(conversation_id)
        if conversation is None:
            conversation = await self._store.get(conversation_id)
            if conversation is None:
                raise NotFound("conversation not found", reason=Reason.CONVERSATION_NOT_FOUND)
            self._remember(conversation)
        if account_id not in conversation.member_ids:
            raise PermissionDenied("you are not a member of this conversation")
        return conversation

    async def create_direct(
        self, *, account_id: str, peer_account_id: str, bearer_token: str, now: float
    ) -> InboxEntry:
        if peer_account_id == account_id:
            raise InvalidArgument.field("peer_account_id", "must be another account than yours")
        key = direct_key(account_id, peer_account_id)
        conversation_id = await self._store.direct_pair(key)
        if conversation_id is None:
            if not await self._accounts.exists(peer_account_id, bearer_token=bearer_token):
                raise NotFound("no account with that id", reason=Reason.ACCOUNT_NOT_FOUND)
            conversation_id = await self._store.claim_direct_pair(key, random_id())
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
            await self._publisher.publish([(candidate.member_ids, self._codec.encode(envelope))])
        conversation = await self._store.get(conversation_id)
        if conversation is None:
            raise NotFound("conversation not found", reason=Reason.CONVERSATION_NOT_FOUND)
        self._remember(conversation)
        return await self._entry(conversation, account_id)

    async def fresh(self, conversations: list[Conversation]) -> list[Conversation]:
        heads = await self._recent.heads([c.conversation_id for c in conversations])
        return freshen(conversations, heads)

    async def of_member(self, account_id: str) -> list[Conversation]:
        """Every conversation of the account, with current last_seq."""
        return await self.fresh(await self._store.of_member(account_id))

    async def _entry(self, conversation: Conversation, account_id: str) -> InboxEntry:
        watermarks = await self._store.watermarks([conversation.conversation_id])
        (current,) = await self.fresh([conversation])
        return inbox_entry(current, watermarks, account_id)

    async def get(self, *, conversation_id: str, account_id: str) -> InboxEntry:
        await self.require_member(conversation_id, account_id)
        conversation = await self._store.get(conversation_id)
        if conversation is None:
            raise NotFound("conversation not found", reason=Reason.CONVERSATION_NOT_FOUND)
        return await self._entry(conversation, account_id)

    async def inbox(
        self, *, account_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[InboxEntry]:
        conversations = await self.fresh(
            await self._store.inbox_page(account_id, after=after, limit=limit)
        )
        if not conversations:
            return []
        watermarks = await self._store.watermarks(c.conversation_id for c in conversations)
        by_conversation: dict[str, list[Watermarks]] = {}
        for w in watermarks:
            by_conversation.setdefault(w.conversation_id, []).append(w)
        return [
            inbox_entry(c, by_conversation.get(c.conversation_id, []), account_id)
            for c in conversations
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
        conversation = await self.require_member(conversation_id, account_id)
        stored = await self._store.get(conversation_id)
        last_seq = (await self.fresh([stored]))[0].last_seq if stored else 0
        # A watermark past the newest message would make unread counts negative.
        delivered, read = min(delivered, last_seq), min(read, last_seq)
        watermarks, moved = await self._store.raise_one(
            conversation_id, account_id, delivered=delivered, read=read, now=_at(now)
        )
        if moved:
            envelope = self._codec.receipt(watermarks)
            await self._publisher.publish([(conversation.member_ids, self._codec.encode(envelope))])
        return watermarks
