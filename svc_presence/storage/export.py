"""What the exporter to peer regions reads from this region's Redis.

- The exporter's lease ``parley:p:exporter``: one svc_presence process of
  the region exports at a time (any of them may take over when it lapses),
  so peers get each change once, not once per process.
- Local transitions: the shards' ``parley:p:x`` channels, published by the
  liveness scripts (``<account>|1:<ms>``, ``<account>|0:<ms>``) beside the
  account's own channel. Only the lease holder subscribes.
- The digest: the accounts online here are those whose entry in a due set
  is in the future (their latest lease runs out then); paged per shard,
  with their last seen.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from parley_core.storage.liveness import PresenceKeys
from parley_core.storage.redis import REDIS_ERRORS, Redis, Script
from svc_presence.model import PresenceStoreDown

LEASE_KEY = "parley:p:exporter"

# KEYS: lease. ARGV: holder, ttl_ms. Returns 1 when the caller holds it.
_HOLD = """
local held = redis.call('GET', KEYS[1])
if held == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: holder.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class LocalChange:
    account_id: str
    online: bool
    seen_ms: int


def parse_change(payload: bytes | str) -> LocalChange | None:
    """``<account>|<0|1>:<ms>`` as a change; None for anything else."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    account, sep, state = text.partition("|")
    kind, colon, ms = state.partition(":")
    if not sep or not colon or kind not in ("0", "1") or not account:
        return None
    try:
        return LocalChange(account, kind == "1", int(float(ms)))
    except ValueError:
        return None


class ExportSource:
    def __init__(self, redis: Redis, listener: Redis, keys: PresenceKeys) -> None:
        self._redis = redis
        self._listener = listener
        self._keys = keys
        self._hold = Script.of(_HOLD)
        self._release = Script.of(_RELEASE)

    async def hold_lease(self, holder: str, *, ttl_ms: int) -> bool:
        try:
            return bool(await self._redis.call(self._hold, [LEASE_KEY], [holder, ttl_ms]))
        except REDIS_ERRORS as exc:
            raise PresenceStoreDown(str(exc)) from exc

    async def release_lease(self, holder: str) -> None:
        try:
            await self._redis.call(self._release, [LEASE_KEY], [holder])
        except REDIS_ERRORS as exc:
            raise PresenceStoreDown(str(exc)) from exc

    async def changes(self) -> AsyncIterator[LocalChange]:
        """Local transitions, from the moment the subscription is confirmed
        (ends with PresenceStoreDown when the connection is lost: the next
        digest makes good whatever was missed meanwhile)."""
        subscription = self._listener.subscription()
        try:
            try:
                await subscription.subscribe(*self._keys.export_channels())
                async for heard in subscription.listen():
                    if heard.kind == "message":
                        change = parse_change(heard.data)
                        if change is not None:
                            yield change
            except REDIS_ERRORS as exc:
                raise PresenceStoreDown(str(exc)) from exc
            raise PresenceStoreDown("the export subscription stopped listening")
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await subscription.aclose()

    async def online_page(
        self, shard: int, *, now_ms: int, offset: int, limit: int
    ) -> list[tuple[str, int]]:
        """Up to ``limit`` accounts online here on ``shard`` (from ``offset``),
        each with its last seen."""
        try:
            async with self._redis.pipeline() as pipe:
                pipe.zrangebyscore(
                    self._keys.due(shard), f"({now_ms}", "+inf", start=offset, num=limit
                )
                (members,) = await pipe.execute()
            if not members:
                return []
            accounts = [m.decode() if isinstance(m, bytes) else m for m in members]
            async with self._redis.pipeline() as pipe:
                for account in accounts:
                    pipe.hget(self._keys.account(account), "seen")
                seen = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise PresenceStoreDown(str(exc)) from exc
        return [(a, int(s)) for a, s in zip(accounts, seen, strict=True) if s is not None]

    @property
    def shards(self) -> int:
        return self._keys.shards
