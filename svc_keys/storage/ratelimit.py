"""Per-requester token buckets for prekey bundle fetches.

Each bucket is a Redis hash ``parley:k:rl:<account>`` (``t`` tokens left,
``ts`` last refill in Unix ms), updated by one script so every svc_keys process
shares it. When Redis does not answer, each process falls back to its own
buckets: the limit loosens by the number of processes, but never disappears
and never fails the fetch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError

from parley_core.storage.redis import Redis

log = structlog.get_logger(__name__)

# Returns {allowed (0/1), milliseconds until the next token when refused}.
_TAKE = """
local capacity = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * per_ms)
  ts = now
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / per_ms)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / per_ms) + 1000)
return {allowed, wait}
"""


def _key(account_id: str) -> str:
    return f"parley:k:rl:{account_id}"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at_ms: float


class LocalBuckets:
    """The same buckets in this process's memory (the fallback)."""

    def __init__(self, *, burst: int, per_minute: float, max_buckets: int = 100_000) -> None:
        self._burst = burst
        self._per_ms = per_minute / 60_000
        self._max = max_buckets
        self._buckets: dict[str, _Bucket] = {}

    def take(self, account_id: str, *, now_ms: float) -> float | None:
        """None when allowed, else seconds until a token is available."""
        bucket = self._buckets.get(account_id)
        if bucket is None:
            if len(self._buckets) >= self._max:
                # Full buckets carry no state worth keeping; drop them first.
                self._forget_full(now_ms)
            bucket = self._buckets[account_id] = _Bucket(float(self._burst), now_ms)
        if now_ms > bucket.at_ms:
            bucket.tokens = min(self._burst, bucket.tokens + (now_ms - bucket.at_ms) * self._per_ms)
            bucket.at_ms = now_ms
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return math.ceil((1 - bucket.tokens) / self._per_ms) / 1000

    def _forget_full(self, now_ms: float) -> None:
        refill_ms = self._burst / self._per_ms
        stale = [k for k, b in self._buckets.items() if now_ms - b.at_ms >= refill_ms]
        for k in stale:
            del self._buckets[k]
        if len(self._buckets) >= self._max:
            self._buckets.clear()


class BundleRateLimiter:
    def __init__(self, redis: Redis, *, burst: int, per_minute: float) -> None:
        self._redis = redis
        self._burst = burst
        self._per_ms = per_minute / 60_000
        self._take = redis.register_script(_TAKE)
        self._local = LocalBuckets(burst=burst, per_minute=per_minute)
        self._degraded = False

    async def take(self, account_id: str, *, now_ms: int) -> float | None:
        """None when ``account_id`` may fetch now, else seconds to wait."""
        try:
            allowed, wait_ms = await self._take(
                keys=[_key(account_id)], args=[self._burst, repr(self._per_ms), now_ms]
            )
        except (RedisError, OSError) as exc:
            if not self._degraded:
                self._degraded = True
                log.warning("bundle_rate_limit_local_fallback", error=repr(exc))
            return self._local.take(account_id, now_ms=now_ms)
        if self._degraded:
            self._degraded = False
            log.info("bundle_rate_limit_redis_back")
        return None if int(allowed) else int(wait_ms) / 1000
