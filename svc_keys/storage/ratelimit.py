"""Token buckets for prekey bundle fetches, two per fetch.

Draining one user's one-time prekeys is the attack, so the tight bucket is
per (requester, target account): ``parley:k:rl:<requester>:<target>``. A
looser bucket per requester, ``parley:k:rl:<requester>``, bounds one account
touring many targets, while still letting a client start sessions with every
member of a new 1,024-member group. A fetch takes a token from both or from
neither. Each bucket is a Redis hash (``t`` tokens left, ``ts`` last refill in
Unix ms), updated by one script so every svc_keys process shares them. When
Redis does not answer, each process falls back to its own buckets: the limit
loosens by the number of processes, but never disappears and never fails the
fetch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError

from parley_core.storage.redis import Redis

log = structlog.get_logger(__name__)

# KEYS: the buckets; ARGV: now, then capacity and tokens per ms for each key.
# Returns {allowed (0/1), milliseconds until every bucket has a token when
# refused}. Takes from all buckets or none.
_TAKE = """
local now = tonumber(ARGV[1])
local states = {}
local allowed = 1
local wait = 0
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[2 * i])
  local per_ms = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', key, 't', 'ts')
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
  if tokens < 1 then
    allowed = 0
    wait = math.max(wait, math.ceil((1 - tokens) / per_ms))
  end
  states[i] = {tokens, ts, capacity, per_ms}
end
for i, key in ipairs(KEYS) do
  local s = states[i]
  local tokens = s[1]
  if allowed == 1 then
    tokens = tokens - 1
  end
  redis.call('HSET', key, 't', tostring(tokens), 'ts', tostring(s[2]))
  redis.call('PEXPIRE', key, math.ceil(s[3] / s[4]) + 1000)
end
return {allowed, wait}
"""


@dataclass(frozen=True, slots=True)
class Rate:
    burst: int
    per_minute: float

    @property
    def per_ms(self) -> float:
        return self.per_minute / 60_000


def _key(*accounts: str) -> str:
    return "parley:k:rl:" + ":".join(accounts)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at_ms: float


class LocalBuckets:
    """Buckets of one rate in this process's memory (the fallback)."""

    def __init__(self, *, burst: int, per_minute: float, max_buckets: int = 100_000) -> None:
        self._burst = burst
        self._per_ms = per_minute / 60_000
        self._max = max_buckets
        self._buckets: dict[str, _Bucket] = {}

    def wait(self, key: str, *, now_ms: float) -> float | None:
        """Refills the bucket; None when it holds a token, else seconds until it will."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                # Full buckets carry no state worth keeping; drop them first.
                self._forget_full(now_ms)
            bucket = self._buckets[key] = _Bucket(float(self._burst), now_ms)
        if now_ms > bucket.at_ms:
            bucket.tokens = min(self._burst, bucket.tokens + (now_ms - bucket.at_ms) * self._per_ms)
            bucket.at_ms = now_ms
        if bucket.tokens >= 1:
            return None
        return math.ceil((1 - bucket.tokens) / self._per_ms) / 1000

    def consume(self, key: str) -> None:
        """Takes the token ``wait`` just found."""
        self._buckets[key].tokens -= 1

    def take(self, key: str, *, now_ms: float) -> float | None:
        """None when allowed (a token is taken), else seconds until a token is available."""
        wait = self.wait(key, now_ms=now_ms)
        if wait is None:
            self.consume(key)
        return wait

    def _forget_full(self, now_ms: float) -> None:
        refill_ms = self._burst / self._per_ms
        stale = [k for k, b in self._buckets.items() if now_ms - b.at_ms >= refill_ms]
        for k in stale:
            del self._buckets[k]
        if len(self._buckets) >= self._max:
            self._buckets.clear()


class BundleRateLimiter:
    def __init__(self, redis: Redis, *, per_target: Rate, per_requester: Rate) -> None:
        self._redis = redis
        self._rates = (per_target, per_requester)
        self._take = redis.register_script(_TAKE)
        self._local = tuple(
            LocalBuckets(burst=r.burst, per_minute=r.per_minute) for r in self._rates
        )
        self._degraded = False

    async def take(self, requester_id: str, target_id: str, *, now_ms: int) -> float | None:
        """None when ``requester_id`` may fetch ``target_id``'s bundles now
        (a token is taken from both buckets), else seconds to wait."""
        keys = (_key(requester_id, target_id), _key(requester_id))
        args: list[int | str] = [now_ms]
        for rate in self._rates:
            args += [rate.burst, repr(rate.per_ms)]
        try:
            allowed, wait_ms = await self._take(keys=list(keys), args=args)
        except (RedisError, OSError) as exc:
            if not self._degraded:
                self._degraded = True
                log.warning("bundle_rate_limit_local_fallback", error=repr(exc))
            return self._take_locally(keys, now_ms=now_ms)
        if self._degraded:
            self._degraded = False
            log.info("bundle_rate_limit_redis_back")
        return None if int(allowed) else int(wait_ms) / 1000

    def _take_locally(self, keys: tuple[str, str], *, now_ms: int) -> float | None:
        waits = [b.wait(k, now_ms=now_ms) for b, k in zip(self._local, keys, strict=True)]
        if any(w is not None for w in waits):
            return max(w for w in waits if w is not None)
        for buckets, key in zip(self._local, keys, strict=True):
            buckets.consume(key)
        return None
