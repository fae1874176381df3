"""Search: AND queries over postings, filtered by svc_message in one call
per page.

Every group is scanned, whether or not the caller may search its
conversation, and only then are the groups it may not search dropped: a
query takes the same steps for a conversation it is not in as for one
without matches. A group walks the postings of its rarest token newest
first and keeps the messages that carry the other tokens too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

from parley_core.limits import Limiter, LimitName, Take
from svc_search.domain.pages import below, page_of
from svc_search.model import Candidate, Group, GroupScan, Hit, Page, Position, SearchStats
from svc_search.ports import Messages
from svc_search.storage.postings import PostingStore

log = structlog.get_logger(__name__)

# Postings counted at most when picking a group's rarest token.
COUNT_CAP = 10_000
# Postings of the rarest token looked at per batch, and at most per group
# and page: a page stops there (shorter, with a next page token) rather
# than scanning without bound.
BATCH = 256
MAX_SCANNED_PER_GROUP = 4096


class SearchHandler:
    def __init__(
        self,
        store: PostingStore,
        messages: Messages,
        limits: Limiter,
        stats: SearchStats,
    ) -> None:
        self._store = store
        self._messages = messages
        self._limits = limits
        self._stats = stats

    async def search(
        self,
        *,
        account_id: str,
        groups: Sequence[Group],
        start: Position | None,
        page_size: int,
        now: float,
    ) -> Page:
        await self._limits.take(Take(LimitName.SEARCH_QUERY_PER_ACCOUNT, account_id), now=now)
        began = time.perf_counter()
        want = page_size + 1
        scans = await asyncio.gather(
            *(self._scan(i, g, start=start, want=want) for i, g in enumerate(groups))
        )
        candidates = [c for scan in scans for c in scan.candidates]
        check = await self._messages.check(
            account_id,
            list(dict.fromkeys(g.conversation_id for g in groups)),
            list(dict.fromkeys(c.posting.message_id for c in candidates)),
        )
        searchable = {
            c
            for c, state in check.conversations.items()
            if state.searchable and state.server_search
        }
        turned_off = [c for c, state in check.conversations.items() if not state.server_search]
        deleted = [m for m, state in check.messages.items() if state.deleted]
        keep = []
        for candidate in candidates:
            state = check.messages.get(candidate.posting.message_id)
            if (
                candidate.conversation_id in searchable
                and state is not None
                and state.readable
                and state.conversation_id == candidate.conversation_id
            ):
                keep.append(candidate)
        hits, next_position = page_of(
            [s for g, s in zip(groups, scans, strict=True) if g.conversation_id in searchable],
            keep,
            page_size,
        )
        await self._forget(turned_off, deleted)
        self._stats.queries += 1
        self._stats.hits += len(hits)
        self._stats.query_seconds.observe(time.perf_counter() - began)
        return Page(
            hits=tuple(
                Hit(
                    group_index=c.group_index,
                    conversation_id=c.conversation_id,
                    message_id=c.posting.message_id,
                    seq=check.messages[c.posting.message_id].seq,
                    at_ms=check.messages[c.posting.message_id].at_ms,
                )
                for c in hits
            ),
            next_position=next_position,
        )

    async def _forget(self, conversations: Sequence[str], messages: Sequence[str]) -> None:
        """Postings nobody may find again: of conversations whose search is
        off, and of messages deleted for everyone."""
        for conversation_id in conversations:
            await self._store.drop_conversation(conversation_id)
            self._stats.dropped_conversations += 1
        if messages:
            await self._store.remove_messages(messages)
            self._stats.dropped_deleted += len(messages)

    async def _scan(
        self, index: int, group: Group, *, start: Position | None, want: int
    ) -> GroupScan:
        c, k = group.conversation_id, group.key_id
        counts = await asyncio.gather(
            *(self._store.count_token(c, k, t, cap=COUNT_CAP) for t in group.tokens)
        )
        if min(counts) == 0:
            return GroupScan(candidates=(), frontier=None)
        order = sorted(range(len(group.tokens)), key=lambda i: counts[i])
        driver = group.tokens[order[0]]
        others = [group.tokens[i] for i in order[1:]]
        found: list[Candidate] = []
        position = start
        scanned = 0
        while True:
            # One token: every posting is a hit, so a page needs no more than it wants.
            batch_size = min(want, BATCH) if not others else BATCH
            at_most = None if position is None else (position[0], position[1])
            postings = await self._store.scan(c, k, driver, at_most=at_most, limit=batch_size + 1)
            fresh = [
                Candidate(index, c, p)
                for p in postings
                if below(Candidate(index, c, p).position, position)
            ][:batch_size]
            if not fresh:
                return GroupScan(candidates=tuple(found), frontier=None)
            scanned += len(fresh)
            carrying = await self._store.carrying_all(
                c, k, others, [f.posting.message_id for f in fresh]
            )
            for candidate in fresh:
                if candidate.posting.message_id in carrying:
                    found.append(candidate)
                    if len(found) >= want:
                        return GroupScan(candidates=tuple(found), frontier=candidate.position)
            if len(postings) <= batch_size:
                return GroupScan(candidates=tuple(found), frontier=None)
            position = fresh[-1].position
            if scanned >= MAX_SCANNED_PER_GROUP:
                return GroupScan(candidates=tuple(found), frontier=position)
