"""Search: AND queries over postings, filtered by svc_message in one call
per page.

Every group is scanned, whether or not the caller may search its
conversation, and only then are the groups it may not search dropped: a
query takes the same steps for a conversation it is not in as for one
without matches. A group reads its tokens' counts, then walks its rarest
token's hour buckets back from where the page starts; the other tokens'
buckets at those hours say which candidates carry them all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

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
    SearchStats,
    TokenStats,
)
from svc_search.ports import Messages
from svc_search.storage.postings import BUCKET_MS, PostingStore, hour_of

log = structlog.get_logger(__name__)

# Each stretch of hours a group reads is this much longer than the last
# (the first is sized to hold about ``want`` of its rarest token's postings).
STRETCH_GROWTH = 4
MAX_STRETCHES = 16
# Postings read at most per group and page (rarest token and the others'
# buckets together): a page stops there (shorter, with a next page token)
# rather than reading without bound.
MAX_SCANNED_PER_GROUP = 20_000
# Candidates whose other tokens one read checks (at least; twice the
# page's want when larger).
MIN_BATCH = 32
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
        # One read of token counts per (conversation, key), whatever the
        # number of groups under it.
        keys = {(g.conversation_id, g.key_id): set[bytes]() for g in groups}
        for g in groups:
            keys[(g.conversation_id, g.key_id)].update(g.tokens)
        counted = await asyncio.gather(
            *(self._store.token_stats(c, k, sorted(tokens)) for (c, k), tokens in keys.items())
        )
        stats = dict(zip(keys, counted, strict=True))
        scans = await asyncio.gather(
            *(
                self._scan(i, g, stats[(g.conversation_id, g.key_id)], start=start, want=want)
                for i, g in enumerate(groups)
            )
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
        self,
        index: int,
        group: Group,
        stats: Mapping[bytes, TokenStats],
        *,
        start: Position | None,
        want: int,
    ) -> GroupScan:
        """The group's candidates below ``start``, newest first, until
        ``want`` of them. ``stats`` are the token counts of its
        (conversation, key): a token that never had a posting means no hit
        at all (a decoy's random token, a word absent from the epoch).
        Otherwise the rarest token's buckets are read in stretches of hours
        walking back from the start, each four times the last, and the
        candidates are checked for the other tokens in one read a batch:
        of the messages' records, or of the others' buckets at their hours
        when those are fewer documents. A token every message carries (the
        SDK's fillers) so costs a batch's records, never its whole list."""
        c, k = group.conversation_id, group.key_id
        if any(t not in stats for t in group.tokens):
            return GroupScan(candidates=(), frontier=None)
        order = sorted(group.tokens, key=lambda t: stats[t].postings)
        rarest, others = stats[order[0]], order[1:]
        hi = rarest.last_hour if start is None else min(rarest.last_hour, hour_of(start[0]))
        # Hours that hold about ``want`` of the rarest token's postings, at its mean density.
        span_hours = rarest.last_hour - rarest.first_hour + 1
        length = max(1, (want * span_hours) // max(1, rarest.postings))
        batch = max(MIN_BATCH, want)
        found: list[Candidate] = []
        scanned = 0
        frontier: Position | None = None
        for _ in range(MAX_STRETCHES):
            if hi < rarest.first_hour:
                return GroupScan(candidates=tuple(found), frontier=None)
            lo = max(rarest.first_hour, hi - length + 1)
            postings = await self._store.hours(c, k, order[0], lo=lo, hi=hi)
            scanned += len(postings)
            fresh = sorted(
                (
                    candidate
                    for p in postings
                    if below((candidate := Candidate(index, c, p)).position, start)
                ),
                key=lambda candidate: candidate.position,
                reverse=True,
            )
            # Checked newest first, a batch a read, so a page reads the
            # buckets of about the hours it needs.
            for first in range(0, len(fresh), batch):
                chunk = fresh[first : first + batch]
                carries = await self._carries(c, k, others, chunk)
                scanned += len(chunk)
                for candidate in chunk:
                    if carries(candidate.posting.message_id):
                        found.append(candidate)
                        if len(found) >= want:
                            return GroupScan(candidates=tuple(found), frontier=candidate.position)
            if lo <= rarest.first_hour:
                return GroupScan(candidates=tuple(found), frontier=None)
            # Everything sent in hour ``lo`` or later is known.
            frontier = (lo * BUCKET_MS, "", -MAX_GROUPS)
            if scanned >= MAX_SCANNED_PER_GROUP:
                return GroupScan(candidates=tuple(found), frontier=frontier)
            hi = lo - 1
            length *= STRETCH_GROWTH
        return GroupScan(candidates=tuple(found), frontier=frontier)

    async def _carries(
        self, c: str, k: bytes, others: Sequence[bytes], chunk: Sequence[Candidate]
    ) -> Callable[[str], bool]:
        """Which of ``chunk``'s messages carry every one of ``others``:
        whichever read fetches fewer documents, their records or the other
        tokens' buckets at their hours."""
        if not others:
            return lambda message_id: True
        hours = {hour_of(x.posting.at_ms) for x in chunk}
        if len(others) * len(hours) <= len(chunk):
            carriers = await self._store.carriers(c, k, others, sorted(hours))
            return lambda message_id: all(message_id in carriers[t] for t in others)
        records = await self._store.carried([x.posting.message_id for x in chunk])
        wanted = frozenset(others)

        def carries(message_id: str) -> bool:
            record = records.get(message_id)
            return (
                record is not None
                and record.conversation_id == c
                and record.key_id == k
                and wanted <= record.tokens
            )

        return carries
