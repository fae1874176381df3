"""Filling a device's search index from the history it can read, resumably.

The walk goes through every conversation of the inbox (archived ones too) and
every conversation the store holds decrypted history of (former ones the
account left), oldest first from the conversation's checkpoint, through
ListMessages, so cold (archived) history comes as the server serves it. Each
message is read as :meth:`parley_sdk.Client.decrypt` would: from the store's
plaintext when this device read or sent it, channel posts from their public
envelope. What the device never held the keys for (end-to-end encrypted
history from before it existed) stays unreadable and unindexed.

Every ``page_size`` history items, the page's index writes and the
conversation's checkpoint commit in one transaction, so a killed backfill
resumes after its last committed page, and a page it walks twice is written
once (indexing the same text again changes nothing).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from parley.message.v1 import messages_pb2
from parley_sdk._paging import Pager
from parley_sdk._search_index import IndexedMessage, SearchIndex
from parley_sdk._secure import E2EE, indexed_message
from parley_sdk.errors import NotFoundError, PermissionDeniedError
from parley_sdk.models import (
    ArchiveFilter,
    ConversationView,
    Direction,
    Message,
)

__all__ = ["BackfillCalls", "BackfillProgress", "BackfillReport", "backfill"]

BackfillProgress = Callable[[int, int], Awaitable[None] | None]
"""Called with (done, total) history items, sync or async: once before the
first page and after every committed page."""


@dataclass(frozen=True, slots=True)
class BackfillReport:
    """What one backfill did.

    ``done`` and ``total`` count history items (messages and system messages,
    by seq) walked and to walk; ``indexed`` the messages written to the index
    (new or changed); ``unreadable`` the messages this device cannot decrypt.
    """

    conversations: int
    done: int
    total: int
    indexed: int
    unreadable: int


class BackfillCalls(Protocol):
    """The client calls a backfill makes (:class:`parley_sdk.Client` has them)."""

    def list_conversations(
        self, *, archive_filter: ArchiveFilter = ArchiveFilter.ACTIVE, page_size: int | None = None
    ) -> Pager[ConversationView]: ...

    async def get_conversation(self, conversation_id: str) -> ConversationView: ...

    def list_messages(
        self,
        conversation_id: str,
        *,
        direction: Direction = Direction.BACKWARD,
        start_seq: int = 0,
        page_size: int | None = None,
    ) -> Pager[Message]: ...


@dataclass(frozen=True, slots=True)
class _Walk:
    conversation_id: str
    after_seq: int
    last_seq: int


async def _plan(calls: BackfillCalls, index: SearchIndex, e2ee: E2EE) -> list[_Walk]:
    views = [view async for view in calls.list_conversations(archive_filter=ArchiveFilter.ALL)]
    listed = {view.conversation.conversation_id for view in views}
    for conversation_id in sorted(e2ee.store.plaintext_conversations() - listed):
        try:
            views.append(await calls.get_conversation(conversation_id))
        except (NotFoundError, PermissionDeniedError):
            continue  # gone, or never readable by this account: the store keeps it
    walks = []
    for view in views:
        conversation = view.conversation
        last = view.visible_until_seq or conversation.last_seq
        after = index.backfilled_through(conversation.conversation_id)
        if last > after:
            walks.append(_Walk(conversation.conversation_id, after, last))
    return walks


async def _report(progress: BackfillProgress | None, done: int, total: int) -> None:
    if progress is not None:
        result = progress(done, total)
        if inspect.isawaitable(result):
            await result


async def backfill(
    calls: BackfillCalls,
    e2ee: E2EE,
    *,
    progress: BackfillProgress | None,
    page_size: int,
) -> BackfillReport:
    index = e2ee.search
    index._require()
    walks = await _plan(calls, index, e2ee)
    total = sum(walk.last_seq - walk.after_seq for walk in walks)
    done = indexed = unreadable = 0
    await _report(progress, done, total)
    for walk in walks:
        after = walk.after_seq
        batch: list[IndexedMessage] = []
        listed: set[str] = set()
        walked = 0
        messages = calls.list_messages(
            walk.conversation_id,
            direction=Direction.FORWARD,
            start_seq=after + 1,
            page_size=page_size,
        )
        last_seen = after
        async for message in messages:
            if message.seq > walk.last_seq:
                break
            last_seen = message.seq
            walked += 1
            if _readable_kind(message):
                # Listed and not deleted: stays in the index even when it cannot
                # be read right now (its keys could not be fetched).
                listed.add(message.message_id)
                decrypted = await e2ee.decrypt_unindexed(message)
                if decrypted.text is not None:
                    batch.append(indexed_message(message, decrypted.text))
                elif decrypted.error is not None:
                    unreadable += 1
            if walked >= page_size:
                indexed += _commit(index, walk.conversation_id, batch, listed, after, last_seen)
                done += last_seen - after
                after = last_seen
                batch, listed, walked = [], set(), 0
                await _report(progress, done, total)
        # The rest, and seqs at the end the history no longer lists (deleted for
        # this account), up to where the walk was planned to end.
        indexed += _commit(index, walk.conversation_id, batch, listed, after, walk.last_seq)
        done += walk.last_seq - after
        await _report(progress, done, total)
    return BackfillReport(len(walks), done, total, indexed, unreadable)


def _readable_kind(message: messages_pb2.Message) -> bool:
    return message.type != messages_pb2.MESSAGE_TYPE_SYSTEM and not message.deleted


def _commit(
    index: SearchIndex,
    conversation_id: str,
    batch: list[IndexedMessage],
    listed: set[str],
    after: int,
    through: int,
) -> int:
    return index.record_backfill(
        conversation_id, batch, listed=listed, after_seq=after, through_seq=through
    )
