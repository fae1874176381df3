"""svc_message's part of an account erasure (MessageInternalService.EraseAccount).

Per conversation that still names the account, in this order, each step
idempotent so a call cut short (a SIGKILL) is simply made again by svc_keys'
erasure job:
1. in a conversation this region owns, a group or channel member leaves with
   a MEMBER_LEFT system message whose actor is the ERASED marker (idempotent
   by a request id from the erasure id); a channel subscriber leaves
   silently, as unsubscribing does. A replica commits nothing to another
   region's feed: the owner region's own erasure step writes the departure,
   which replicates here;
2. its media references are released (svc_media collects what nothing else
   references after the grace period), then every entry it wrote becomes a
   tombstone: body and media ids removed, sender replaced by ERASED; its
   reactions are pulled from the messages they were on;
3. others' entries that name it (system messages, deletions, deletions for
   itself) name ERASED instead or drop it;
4. the conversation document forgets its per-member fields; a direct
   conversation keeps ERASED as the peer; its member record and inbox
   settings go;
5. its archived history (cold Parquet objects) is rewritten the same way
   (the archiver's ``rewrite_weeks_with`` with ``tombstone_sender``): at once,
   well within the erasure's cold deadline, and idempotent like the rest;
6. the recent-message cache and delivery ticks of the conversation are
   dropped (readers refill them from the log).
Then its push tokens, push settings, outbox jobs, inbox settings and device
cursors go. Work per call is bounded; the caller calls again until done.

Before all of it, the region records the account as erased (by the SHA-256
of its id, for the tombstone window): a peer that owns one of its
conversations and has not run its own erasure step yet (a partition) may
still replicate copies naming it, which this region's replica applies as the
erasure leaves them.

Tombstoning writes the log directly instead of committing a DELETE change
per message: no change-feed entry names the account, and an erasure of a
prolific account is a few bulk writes. Devices learn of the tombstones when
they next read history (the recent cache was dropped, so every read serves
the log's state).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from svc_message.domain.archive_transforms import tombstone_sender
from svc_message.domain.archiver import Archiver
from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.sending import Draft, SendPipeline
from svc_message.model import (
    CHANNEL,
    DIRECT,
    ERASED,
    SYSTEM,
    Change,
    ChangeKind,
    Conversation,
    Message,
    SystemAction,
    SystemEvent,
)
from svc_message.ports import MediaReferences, MembershipChanges
from svc_message.storage.erasure import ErasureStore

CONVERSATIONS_PER_CALL = 20
ENTRIES_PER_CALL = 2000
BATCH = 500
REQUEST_PREFIX = "erased:"
# Rewrites of one conversation's archived chunks per call; each round rewrites
# up to the archiver's own limit, so a round that rewrote nothing ends it.
COLD_REWRITE_ROUNDS = 10


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def departure(conversation: Conversation, erasure_id: str) -> Change:
    request_id = REQUEST_PREFIX + erasure_id
    placeholder = _at(0)
    return Change(
        kind=ChangeKind.SYSTEM,
        conversation_id=conversation.conversation_id,
        version=0,
        change_id="",
        account_id=ERASED,
        created_at=placeholder,
        request_id=request_id,
        message=Message(
            message_id="",
            conversation_id=conversation.conversation_id,
            seq=0,
            sender_account_id=ERASED,
            sender_device_id="",
            type=SYSTEM,
            body=b"",
            reply_to_message_id="",
            created_at=placeholder,
            request_id=request_id,
            system=SystemEvent(SystemAction.MEMBER_LEFT, ERASED, (ERASED,)),
        ),
    )


class AccountErasure:
    def __init__(
        self,
        store: ErasureStore,
        conversations: ConversationsHandler,
        pipeline: SendPipeline,
        media: MediaReferences,
        bus: MembershipChanges,
        archive: Archiver | None = None,
        owned: Callable[[str], bool] = lambda _: True,
        tombstone_window_seconds: float = 30 * 86400.0,
    ) -> None:
        self._store = store
        self._owned = owned
        self._window = tombstone_window_seconds
        self._conversations = conversations
        self._pipeline = pipeline
        self._media = media
        self._bus = bus
        self._archive = archive

    async def erase(
        self, *, account_id: str, device_ids: list[str], erasure_id: str, now: float
    ) -> bool:
        """Some of the erasure; True once nothing of the account remains."""
        budget = ENTRIES_PER_CALL
        # First: from now on, replicated copies naming the account arrive erased.
        await self._store.remember_erased(account_id, until=_at(now + self._window))
        pending = await self._store.conversations_of(account_id, limit=CONVERSATIONS_PER_CALL)
        for conversation_id in pending:
            finished, budget = await self._conversation(
                conversation_id, account_id, erasure_id, budget=budget, now=now
            )
            if not finished:
                return False
        if len(pending) == CONVERSATIONS_PER_CALL:
            return False
        await self._store.forget_account(account_id, device_ids)
        return True

    async def _conversation(
        self, conversation_id: str, account_id: str, erasure_id: str, *, budget: int, now: float
    ) -> tuple[bool, int]:
        """(whether the conversation no longer names the account, budget left)."""
        conversation = await self._conversations.store.get(conversation_id)
        if conversation is not None and self._owned(conversation_id):
            await self._depart(conversation, account_id, erasure_id, now=now)
        while True:
            if budget <= 0:
                return False, 0
            batch = min(BATCH, budget)
            more = await self._store.scrub_messages(
                conversation_id, account_id, limit=batch, release=self._media.release
            )
            budget -= batch
            if not more:
                break
        if not await self._erase_cold(conversation_id, account_id):
            return False, 0
        await self._store.scrub_mentions(conversation_id, account_id)
        await self._store.scrub_conversation(conversation_id, account_id)
        await self._store.forget_member(conversation_id, account_id)
        await self._store.drop_caches([conversation_id])
        self._conversations.forget(conversation_id)
        await self._bus.membership_changed(conversation_id)
        return True, budget

    async def _erase_cold(self, conversation_id: str, account_id: str) -> bool:
        """Rewrite the conversation's archived chunks without the account;
        False when rounds remain for the next call."""
        if self._archive is None:
            return True
        transform = tombstone_sender(account_id, pseudonym=ERASED)
        for _ in range(COLD_REWRITE_ROUNDS):
            rewritten = await self._archive.rewrite_weeks_with(
                transform, conversation_ids=[conversation_id]
            )
            if not rewritten:
                return True
        return False

    async def _depart(
        self, conversation: Conversation, account_id: str, erasure_id: str, *, now: float
    ) -> None:
        conversation_id = conversation.conversation_id
        store = self._conversations.store
        if conversation.type == DIRECT:
            return
        channel = conversation.type == CHANNEL
        if account_id not in conversation.member_ids:
            record = await store.member(conversation_id, account_id)
            if channel and record is not None and record.active:
                # A subscriber leaves silently, as unsubscribing does.
                (current,) = await self._conversations.fresh([conversation])
                if await store.record_departure(
                    conversation_id,
                    account_id,
                    seq=current.last_seq,
                    version=current.last_version,
                    now=_at(now),
                ):
                    await store.count_subscriber(conversation_id, -1)
            return
        committed = await self._pipeline.submit(
            Draft(conversation=conversation, template=departure(conversation, erasure_id))
        )
        message = committed.message
        assert message is not None
        await store.remove_member(conversation_id, account_id, count=not channel)
        if (
            await store.record_departure(
                conversation_id, account_id, seq=message.seq, version=message.version, now=_at(now)
            )
            and channel
        ):
            await store.count_subscriber(conversation_id, -1)
