"""Notices users going offline and keeps last seen durable.

Every svc_presence process runs one: every ``sweep_interval_seconds`` it
asks Redis for the accounts whose last lease ran out (each is reported to
exactly one sweeper, which publishes the transition) and for the online
accounts whose last seen is due to be stored. Both go into a buffer that is
written to MongoDB in one unordered batch of ``$max`` upserts per flush, so
the database sees at most one write per account per flush whatever the
heartbeat rate. A failed write keeps its records for the next flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from svc_presence.model import PresenceStats, PresenceStoreDown, SeenRecord
from svc_presence.ports import LastSeenLog, OfflineRecord, Sweepable

log = structlog.get_logger(__name__)

SWEEP_LIMIT = 500
# Sweeps per tick when more accounts are due than one sweep takes.
MAX_SWEEPS_PER_TICK = 20
DRAIN_LIMIT = 1000
FLUSH_SECONDS = 1.0
# Records held for a database that does not take them; beyond that the
# oldest accounts' records are dropped (a later flush or transition rewrites them).
MAX_BUFFERED = 100_000


class SeenBuffer:
    """Last seen records waiting to be written: the latest per account."""

    def __init__(self, store: LastSeenLog, stats: PresenceStats) -> None:
        self._store = store
        self._stats = stats
        self._pending: dict[str, int] = {}
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, account_id: str, seen_ms: int) -> None:
        if seen_ms > self._pending.get(account_id, 0):
            self._pending[account_id] = seen_ms
        while len(self._pending) > MAX_BUFFERED:
            del self._pending[next(iter(self._pending))]

    async def flush(self) -> int:
        async with self._lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, {}
            try:
                written = await self._store.write(SeenRecord(a, ms) for a, ms in batch.items())
            except Exception:
                for account_id, seen_ms in batch.items():
                    self.add(account_id, seen_ms)
                self._stats.last_seen_write_failures += 1
                raise
            self._stats.last_seen_written += written
            return written


class Sweeper:
    def __init__(
        self,
        live: Sweepable,
        buffer: SeenBuffer,
        stats: PresenceStats,
        *,
        interval_seconds: float,
        clock: Callable[[], float] = time.time,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self._live = live
        self._buffer = buffer
        self._stats = stats
        self._interval = interval_seconds
        self._clock = clock
        self._flush_seconds = flush_seconds
        self._failing = False
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """Sweep now rather than at the next interval (a device went offline:
        its subscribers should hear it at once). Pokes in between coalesce."""
        self._poked.set()

    async def tick(self) -> int:
        """One sweep at the clock's now; how many accounts went offline."""
        now_ms = int(self._clock() * 1000)
        started = time.perf_counter()
        went = 0
        try:
            for _ in range(MAX_SWEEPS_PER_TICK):
                batch = await self._live.sweep(now_ms=now_ms, limit=SWEEP_LIMIT)
                offline: list[OfflineRecord] = batch.went_offline
                for record in offline:
                    self._buffer.add(record.account_id, record.seen_ms)
                went += len(offline)
                if batch.scanned < SWEEP_LIMIT:
                    break
            for _ in range(MAX_SWEEPS_PER_TICK):
                due = await self._live.drain_seen(now_ms=now_ms, limit=DRAIN_LIMIT)
                for seen in due:
                    self._buffer.add(seen.account_id, seen.seen_ms)
                if len(due) < DRAIN_LIMIT:
                    break
        except PresenceStoreDown as exc:
            if not self._failing:
                log.warning("presence_sweep_failing", error=str(exc))
            self._failing = True
            return went
        finally:
            self._stats.went_offline += went
            self._stats.sweeps += 1
            self._stats.sweep_seconds += time.perf_counter() - started
        if self._failing:
            log.info("presence_sweep_recovered")
            self._failing = False
        return went

    async def run(self) -> None:
        """Sweep every interval until cancelled."""
        while True:
            self._poked.clear()
            try:
                await self.tick()
            except Exception:
                # A bug must not stop presence from ever going offline again.
                log.exception("presence_sweep_crashed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._poked.wait()

    async def run_flusher(self) -> None:
        """Write buffered last seen every flush interval until cancelled."""
        while True:
            await asyncio.sleep(self._flush_seconds)
            try:
                await self._buffer.flush()
            except Exception as exc:
                log.warning("last_seen_flush_failed", error=repr(exc), pending=len(self._buffer))
