"""Search: AND queries over postings, filtered by svc_message in one call
per page.

Every group is scanned, whether or not the caller may search its
conversation, and only then are the groups it may not search dropped: a
query takes the same steps for a conversation it is not in as for one
without matches. A group reads its tokens' postings in time windows walking
back from where the page starts and keeps the messages every token names.
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

# The first window a group reads back from its start, and how much wider
# each next one is; at most this many windows per group and page.
FIRST_WINDOW_MS = 10_000
WINDOW_GROWTH = 4
MAX_WINDOWS = 24
# Postings read at most per group and page: a page stops there (shorter,
# with a next page token) rather than reading without bound.
MAX_SCANNED_PER_GROUP = 4096
# Postings one token's window returns at most; a full one is read again
# narrower (a window must be complete to say what is above it).
WINDOW_CAP = 2048
# Later than any send time (the first page's window is open at the top).
NEWEST = 2**62
# Above any group index: a frontier position sorts before every hit of its
# millisecond that it does not cover.
MAX_GROUPS = 2**31


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
            *(self._scan(i, g, start=start, want=want, now=now) for i, g in enumerate(groups))
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
        self, index: int, group: Group, *, start: Position | None, want: int, now: float
    ) -> GroupScan:
        """The group's candidates below ``start``, newest first, until
        ``want`` of them: its tokens' postings in time windows walking back
        from the start, each window four times the last, intersected here."""
        c, k, tokens = group.conversation_id, group.key_id, group.tokens
        at_most = start[0] if start is not None else NEWEST
        # Where the windows are measured from (the first is open at the top).
        top = int(now * 1000) if start is None else at_most
        width = FIRST_WINDOW_MS
        found: list[Candidate] = []
        scanned = 0
        # Set by every round that reads a whole window; only rounds that all
        # narrowed a window too full (postings by the thousand a millisecond)
        # could leave it unset, and then the group ends here.
        frontier: Position | None = None
        for _ in range(MAX_WINDOWS):
            above = top - width
            windows = await asyncio.gather(
                *(
                    self._store.window(c, k, t, above=above, at_most=at_most, limit=WINDOW_CAP)
                    for t in tokens
                )
            )
            scanned += sum(len(w) for w in windows)
            if width > 1 and any(len(w) >= WINDOW_CAP for w in windows):
                # More than a window may hold: the same place, narrower.
                width = max(1, width // WINDOW_GROWTH)
                continue
            carrying = set.intersection(*({p.message_id for p in w} for w in windows))
            fresh = sorted(
                (
                    candidate
                    for p in windows[0]
                    if p.message_id in carrying
                    and below((candidate := Candidate(index, c, p)).position, start)
                ),
                key=lambda candidate: candidate.position,
                reverse=True,
            )
            for candidate in fresh:
                found.append(candidate)
                if len(found) >= want:
                    return GroupScan(candidates=tuple(found), frontier=candidate.position)
            # A token with nothing in this window and nothing before it ends
            # the AND; one with postings here is asked in the next round.
            empty = [t for t, w in zip(tokens, windows, strict=True) if not w]
            older = await asyncio.gather(
                *(self._store.any_at_or_before(c, k, t, above) for t in empty)
            )
            if not all(older):
                return GroupScan(candidates=tuple(found), frontier=None)
            # Everything sent after ``above`` is known.
            frontier = (above + 1, "", -MAX_GROUPS)
            if scanned >= MAX_SCANNED_PER_GROUP:
                return GroupScan(candidates=tuple(found), frontier=frontier)
            at_most = top = above
            width *= WINDOW_GROWTH
        return GroupScan(candidates=tuple(found), frontier=frontier)
