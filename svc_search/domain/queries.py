"""Search: AND queries over postings, filtered by svc_message in one call
per page.

Every group is scanned, whether or not the caller may search its
conversation, and only then are the groups it may not search dropped: a
query takes the same steps for a conversation it is not in as for one
without matches. A group walks back in time windows from where the page
starts; in each, its rarest token's postings are the candidates and the
message records say which carry every other token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

from parley_core.limits import Limiter, LimitName, Take
from svc_search.domain.pages import below, page_of
from svc_search.model import (
    Candidate,
    Group,
    GroupScan,
    Hit,
    Page,
    Position,
    Posting,
    SearchStats,
)
from svc_search.ports import Messages
from svc_search.storage.postings import PostingStore

log = structlog.get_logger(__name__)

# The first window a group reads back from its start, and how much wider
# each next one is; at most this many windows per group and page.
FIRST_WINDOW_MS = 10_000
WINDOW_GROWTH = 4
# After a window its rarest token has nothing in, the next is this much
# wider: a quiet stretch is crossed in a few rounds of one empty read.
EMPTY_GROWTH = 16
MAX_WINDOWS = 24
# Postings read at most per group and page: a page stops there (shorter,
# with a next page token) rather than reading without bound.
MAX_SCANNED_PER_GROUP = 4096
# Postings one token's window returns at most; a full one is read again
# narrower (a window must be complete to say what is above it).
WINDOW_CAP = 2048
# Postings of each token a window samples first to find its rarest token
# (at least; twice the page's want when larger).
MIN_SAMPLE = 32
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
        ``want`` of them, in time windows walking back from the start, each
        four times the last. A window is driven by its rarest token: every
        token's window is sampled (a few postings), the one with the fewest
        is read whole, and its messages are checked for the other tokens in
        their records. A token every message carries (the SDK's fillers) so
        costs a sample, never its whole list."""
        c, k = group.conversation_id, group.key_id
        at_most = start[0] if start is not None else NEWEST
        # Where the windows are measured from (the first is open at the top).
        top = int(now * 1000) if start is None else at_most
        width = FIRST_WINDOW_MS
        sample = max(MIN_SAMPLE, 2 * want)
        # The rarest token of the last window first: when it has nothing
        # here, the window has no hit and the others are not read.
        order = list(group.tokens)
        found: list[Candidate] = []
        scanned = 0
        # Set by every round that reads a whole window; only rounds that all
        # narrowed a window too full (postings by the thousand a millisecond)
        # could leave it unset, and then the group ends here.
        frontier: Position | None = None
        for _ in range(MAX_WINDOWS):
            above = top - width
            samples = [await self._window(c, k, order[0], above, at_most, sample)]
            if samples[0]:
                samples += await asyncio.gather(
                    *(self._window(c, k, t, above, at_most, sample) for t in order[1:])
                )
            scanned += sum(len(w) for w in samples)
            rarest = min(range(len(samples)), key=lambda i: len(samples[i]))
            order.insert(0, order.pop(rarest))
            driver = samples[rarest]
            if driver and len(driver) >= sample:
                driver = await self._window(c, k, order[0], above, at_most, WINDOW_CAP)
                scanned += len(driver)
                if width > 1 and len(driver) >= WINDOW_CAP:
                    # More than a window may hold: the same place, narrower.
                    width = max(1, width // WINDOW_GROWTH)
                    continue
            fresh = sorted(
                (
                    candidate
                    for p in driver
                    if below((candidate := Candidate(index, c, p)).position, start)
                ),
                key=lambda candidate: candidate.position,
                reverse=True,
            )
            others = frozenset(order[1:])
            # Checked newest first, a sample's worth a read, so a page reads
            # the records of about the candidates it needs.
            for first in range(0, len(fresh), sample):
                batch = fresh[first : first + sample]
                carried = (
                    await self._store.carried([b.posting.message_id for b in batch])
                    if others
                    else {}
                )
                scanned += len(batch) if others else 0
                for candidate in batch:
                    record = carried.get(candidate.posting.message_id)
                    if others and (
                        record is None
                        or record.conversation_id != c
                        or record.key_id != k
                        or not others <= record.tokens
                    ):
                        continue
                    found.append(candidate)
                    if len(found) >= want:
                        return GroupScan(candidates=tuple(found), frontier=candidate.position)
            if above < 0:
                # Every send time is after 1970: the walk has covered it all.
                return GroupScan(candidates=tuple(found), frontier=None)
            # Everything sent after ``above`` is known.
            frontier = (above + 1, "", -MAX_GROUPS)
            if scanned >= MAX_SCANNED_PER_GROUP:
                return GroupScan(candidates=tuple(found), frontier=frontier)
            at_most = top = above
            width *= WINDOW_GROWTH if driver else EMPTY_GROWTH
        return GroupScan(candidates=tuple(found), frontier=frontier)

    async def _window(
        self, c: str, k: bytes, token: bytes, above: int, at_most: int, limit: int
    ) -> list[Posting]:
        return await self._store.window(c, k, token, above=above, at_most=at_most, limit=limit)
