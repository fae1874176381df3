"""IndexMessage, RemoveMessage and account erasure: the postings' writes.

Only a message's sender indexes it, only while its conversation's server
search is on; svc_message says both (and the message's time and seq, which
the postings carry for newest-first scans) in one call.
"""

from __future__ import annotations

from collections.abc import Sequence

from parley_core.errors import FailedPrecondition, NotFound, PermissionDenied, Reason
from parley_core.limits import Limiter, LimitName, Take
from svc_search.model import SearchStats
from svc_search.ports import Messages
from svc_search.storage.postings import PostingStore

# Messages whose postings one EraseAccount call drops.
ERASE_BATCH = 500


def message_not_found() -> NotFound:
    return NotFound("message not found", reason=Reason.MESSAGE_NOT_FOUND)


def search_disabled() -> FailedPrecondition:
    return FailedPrecondition(
        "this conversation's server search is off (MessageService.SetServerSearch)",
        reason=Reason.SEARCH_DISABLED,
    )


class IndexHandler:
    def __init__(
        self, store: PostingStore, messages: Messages, limits: Limiter, stats: SearchStats
    ) -> None:
        self._store = store
        self._messages = messages
        self._limits = limits
        self._stats = stats

    async def index(
        self,
        *,
        account_id: str,
        request_id: str,
        conversation_id: str,
        message_id: str,
        key_id: bytes,
        tokens: Sequence[bytes],
        now: float,
    ) -> int:
        answered = await self._store.answered(message_id, request_id)
        if answered is not None:
            return answered
        await self._limits.take(Take(LimitName.SEARCH_INDEX_PER_ACCOUNT, account_id), now=now)
        self._stats.index_requests += 1
        check = await self._messages.check(account_id, [conversation_id], [message_id])
        conversation = check.conversations.get(conversation_id)
        message = check.messages.get(message_id)
        if (
            conversation is None
            or not conversation.searchable
            or message is None
            or message.conversation_id != conversation_id
            or (not message.readable and not message.deleted)
        ):
            raise message_not_found()
        if message.sender_account_id != account_id:
            self._stats.refused_not_sender += 1
            raise PermissionDenied(
                "only a message's sender indexes it", reason=Reason.NOT_THE_SENDER
            )
        if message.deleted:
            await self._store.remove_messages([message_id])
            raise FailedPrecondition(
                "the message was deleted for everyone", reason=Reason.MESSAGE_DELETED
            )
        if not conversation.server_search:
            self._stats.refused_disabled += 1
            await self._store.drop_conversation(conversation_id)
            raise search_disabled()
        await self._store.replace(
            conversation_id=conversation_id,
            message_id=message_id,
            sender_account_id=account_id,
            key_id=key_id,
            tokens=tokens,
            at_ms=message.at_ms,
            seq=message.seq,
            request_id=request_id,
        )
        self._stats.postings_written += len(tokens)
        return len(tokens)

    async def remove(
        self, *, account_id: str, conversation_id: str, message_id: str, now: float
    ) -> None:
        """Idempotent: a message without postings, or one svc_message no
        longer has, is already removed as far as its sender can tell."""
        await self._limits.take(Take(LimitName.SEARCH_INDEX_PER_ACCOUNT, account_id), now=now)
        check = await self._messages.check(account_id, [conversation_id], [message_id])
        message = check.messages.get(message_id)
        if message is None or message.conversation_id != conversation_id:
            return
        if message.sender_account_id != account_id:
            # One it may not read looks like one that does not exist.
            if not message.readable:
                raise message_not_found()
            raise PermissionDenied(
                "only a message's sender removes its postings", reason=Reason.NOT_THE_SENDER
            )
        await self._store.remove_messages([message_id])
        self._stats.removals += 1

    async def erase(self, account_id: str) -> bool:
        """Drops a batch of the account's postings; True when none remain."""
        ids = await self._store.sent_by(account_id, limit=ERASE_BATCH)
        await self._store.remove_messages(ids)
        done = len(ids) < ERASE_BATCH
        if done:
            self._stats.erased_accounts += 1
        return done
