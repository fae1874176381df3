"""Drops the postings of conversations whose server search was turned off
(or that no longer exist). Queries and IndexMessage drop them on sight as
well; this pass covers conversations nobody searches any more."""

from __future__ import annotations

import asyncio

import structlog

from svc_search.model import SearchStats
from svc_search.ports import Messages
from svc_search.storage.postings import PostingStore

log = structlog.get_logger(__name__)

# Seconds between two counts of the postings (one metadata read).
COUNT_SECONDS = 15.0


class Sweeper:
    def __init__(
        self,
        store: PostingStore,
        messages: Messages,
        stats: SearchStats,
        *,
        interval_seconds: float,
        batch: int,
    ) -> None:
        self._store = store
        self._messages = messages
        self._stats = stats
        self._interval = interval_seconds
        self._batch = batch

    async def sweep(self) -> int:
        """One pass over every indexed conversation; how many were dropped."""
        dropped = 0
        after = ""
        while True:
            conversations = await self._store.conversations_after(after, limit=self._batch)
            if not conversations:
                return dropped
            after = conversations[-1]
            check = await self._messages.check("", conversations, [])
            for conversation_id in conversations:
                state = check.conversations.get(conversation_id)
                if state is None or not state.server_search:
                    await self._store.drop_conversation(conversation_id)
                    self._stats.dropped_conversations += 1
                    dropped += 1

    async def run(self) -> None:
        """Counts the postings every tick (for the gauge) and sweeps every
        interval."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self._interval
        while True:
            await asyncio.sleep(min(COUNT_SECONDS, self._interval))
            try:
                self._stats.postings = await self._store.count()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self._interval
                    await self.sweep()
            except Exception as exc:  # the next tick tries again
                log.warning("search_sweep_failed", error=str(exc))
