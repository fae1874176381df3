"""Garbage collection of media nothing references, and the sweeps that run it.

Candidates are ready media whose next check is due. svc_message counts the
messages naming each (not deleted for everyone); at zero the media is marked
collecting only if its touch counter is what the candidate read showed (no
reference came in between), then its object, its uploaders' quota charge and
its document go. Referenced media is checked again later, the wait doubling
up to a cap, so nothing unreferenced is kept for ever. Every write is
conditional, so several processes may sweep at once: each media is collected
by one of them, and removing an object twice is harmless.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from parley_core.errors import Unavailable
from svc_media.domain.policy import MediaPolicy
from svc_media.domain.uploads import UploadHandler
from svc_media.model import MediaRecord, MediaStats
from svc_media.ports import MediaDocs, MessagePeer, ObjectStore, Usage

log = structlog.get_logger(__name__)


class Collector:
    def __init__(
        self,
        *,
        media: MediaDocs,
        usage: Usage,
        objects: ObjectStore,
        messages: MessagePeer,
        policy: MediaPolicy,
        stats: MediaStats,
    ) -> None:
        self._media = media
        self._usage = usage
        self._objects = objects
        self._messages = messages
        self._policy = policy
        self._stats = stats

    async def collect(self, *, now: float, limit: int) -> int:
        """One pass over the due media; how many were removed."""
        removed = await self.finish_collecting(limit=limit)
        due = await self._media.due(now=now, limit=limit)
        if not due:
            return removed
        counts = await self._messages.references([m.media_id for m in due])
        for media in due:
            if counts[media.media_id] > 0:
                backoff = self._policy.next_backoff(media.check_backoff_seconds)
                # Conditional on the touch counter: a reference made meanwhile
                # has set its own (later) check.
                await self._media.postpone(
                    media.media_id, touch=media.touch, check_at=now + backoff, backoff=backoff
                )
            elif await self._media.mark_collecting(
                media.media_id, touch=media.touch
            ) and await self._remove(media):
                removed += 1
        return removed

    async def finish_collecting(self, *, limit: int) -> int:
        """Media marked collecting whose removal did not finish (the store was
        down, or a process died half-way)."""
        removed = 0
        for media in await self._media.collecting(limit=limit):
            if await self._remove(media):
                removed += 1
        return removed

    async def _remove(self, media: MediaRecord) -> bool:
        try:
            await self._objects.delete(media.object_key)
        except Unavailable:
            return False  # still collecting: the next sweep finishes it
        if await self._media.mark_released(media.media_id):
            for account_id in media.uploaders:
                await self._usage.add_stored(account_id, -media.size)
        await self._media.delete(media.media_id)
        self._stats.orphans_collected += 1
        self._stats.bytes_collected += media.size
        log.info("media_collected", media_id=media.media_id, size=media.size)
        return True


class Sweeper:
    """Each process's periodic pass: expired upload sessions, then due media."""

    def __init__(
        self,
        uploads: UploadHandler,
        collector: Collector,
        stats: MediaStats,
        *,
        interval_seconds: float,
        batch: int,
        clock: Callable[[], float] = time.time,
        after_pass: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._uploads = uploads
        self._collector = collector
        self._stats = stats
        self._interval = interval_seconds
        self._batch = batch
        self._clock = clock
        self._after_pass = after_pass

    async def sweep(self, *, now: float) -> tuple[int, int]:
        """(sessions expired, media collected) in one bounded pass."""
        expired = await self._uploads.expire(now=now, limit=self._batch)
        collected = await self._collector.collect(now=now, limit=self._batch)
        return expired, collected

    async def run(self) -> None:
        while True:
            now = self._clock()
            try:
                await self.sweep(now=now)
                if self._after_pass is not None:
                    await self._after_pass(now)
                self._stats.sweeps += 1
            except Unavailable as exc:
                self._stats.sweep_failures += 1
                log.info("media_sweep_deferred", reason=exc.message)
            except Exception:
                self._stats.sweep_failures += 1
                log.exception("media_sweep_failed")
            await asyncio.sleep(self._interval)
