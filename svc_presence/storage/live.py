"""Presence in Redis, for the RPCs: device leases, online state, last seen.

A thin wrapper over ``parley_core.storage.liveness`` that gives up fast: its
client times out after ``presence.redis_timeout_seconds`` and does not retry
a timeout, so when Redis is down or hung a presence RPC fails within about
that long instead of holding the caller. Every Redis failure becomes
``PresenceStoreDown`` for the domain to answer with UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Sequence

from parley_core.config import RedisSettings
from parley_core.storage import redis as redis_storage
from parley_core.storage.liveness import Liveness, SweepBatch, Touched, WentOffline
from parley_core.storage.redis import REDIS_ERRORS, Redis
from svc_presence.model import LiveState, PresenceStats, PresenceStoreDown, SeenRecord


def connect_fast(settings: RedisSettings, *, timeout_seconds: float) -> Redis:
    """A client that fails within ``timeout_seconds`` when Redis is down.

    A refused or reset connection is retried once at once: a pooled
    connection that died with a restarted Redis must not fail the first call
    after it is back (on a cluster: the first call after a failover, on the
    refreshed slot map). A timeout is never retried (that is a hung Redis).
    """
    return redis_storage.connect(settings, timeout_seconds=timeout_seconds, connection_retries=1)


class LiveStore:
    def __init__(self, liveness: Liveness, stats: PresenceStats) -> None:
        self._liveness = liveness
        self._stats = stats

    @property
    def ttl_ms(self) -> int:
        return self._liveness.ttl_ms

    def _down(self, exc: BaseException) -> PresenceStoreDown:
        self._stats.redis_errors += 1
        return PresenceStoreDown(f"{type(exc).__name__}: {exc}")

    async def touch_heartbeat(self, account_id: str, device_id: str, *, now_ms: int) -> Touched:
        try:
            return await self._liveness.touch(account_id, device_id, stream=False, now_ms=now_ms)
        except REDIS_ERRORS as exc:
            raise self._down(exc) from exc

    async def drop_heartbeat(self, account_id: str, device_id: str, *, now_ms: int) -> None:
        try:
            await self._liveness.drop(account_id, device_id, stream=False, now_ms=now_ms)
        except REDIS_ERRORS as exc:
            raise self._down(exc) from exc

    async def states(self, account_ids: Sequence[str]) -> dict[str, LiveState]:
        """Every requested account's state; never seen ones as offline with no last seen."""
        try:
            found = await self._liveness.states(account_ids)
        except REDIS_ERRORS as exc:
            raise self._down(exc) from exc
        return {
            account_id: LiveState(online=state.online, seen_ms=state.seen_ms)
            for account_id, state in found.items()
        }

    async def sweep(self, *, now_ms: int, limit: int) -> SweepBatch:
        try:
            return await self._liveness.sweep_batch(now_ms=now_ms, limit=limit)
        except REDIS_ERRORS as exc:
            raise self._down(exc) from exc

    async def drain_seen(self, *, now_ms: int, limit: int) -> list[SeenRecord]:
        try:
            due: list[WentOffline] = await self._liveness.drain_seen(now_ms=now_ms, limit=limit)
        except REDIS_ERRORS as exc:
            raise self._down(exc) from exc
        return [SeenRecord(d.account_id, d.seen_ms) for d in due]

    async def settings_changed(self, account_id: str) -> bool:
        """Tell this user's subscribers to look again; False when Redis did not take it."""
        try:
            await self._liveness.settings_changed(account_id)
        except REDIS_ERRORS:
            self._stats.redis_errors += 1
            self._stats.publish_failures += 1
            return False
        return True


def connect_listener(settings: RedisSettings, *, timeout_seconds: float) -> Redis:
    """The client of the pub/sub listener: fast to fail, and never retrying
    by itself (a silent reconnect would hide a gap in the events)."""
    return redis_storage.connect(settings, timeout_seconds=timeout_seconds, connection_retries=0)
