"""Token buckets in Redis, shared by every process of a service.

Each bucket is a hash (``t`` tokens left, ``ts`` last refill in Unix ms) that
expires once it would be full again. One script call takes a token from
every bucket of a group or from none; a group's keys share a hash tag, so the
call works on Redis Cluster. Several groups (a send's account and its
conversation) go out in one pipelined round trip, and when one is refused the
others get their token back (a second call, on refusals only).

When Redis does not answer within ``timeout_seconds`` (or errs), the takes use
this process's own buckets (``parley_core.limits.LocalBuckets``) for
``fallback_seconds``, then Redis is asked again: the limits loosen by the
number of processes but never disappear and never fail a request. The switch
is logged once each way, not per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog
from redis.exceptions import NoScriptError, RedisError

from parley_core.limits.buckets import Bucket, LocalBuckets, Shortfall
from parley_core.storage.redis import Redis

log = structlog.get_logger(__name__)

# KEYS: the buckets of one group; ARGV: now (ms), then burst and tokens per ms
# of each key. Returns {allowed (0/1), ms until every bucket holds a token,
# the 1-based index of the bucket that will be last}. Takes from all or none.
_TAKE = """
local now = tonumber(ARGV[1])
local states = {}
local allowed = 1
local wait = 0
local worst = 0
for i, key in ipairs(KEYS) do
  local burst = tonumber(ARGV[2 * i])
  local per_ms = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(state[1])
  local ts = tonumber(state[2])
  if tokens == nil or ts == nil then
    tokens = burst
    ts = now
  end
  if now > ts then
    tokens = math.min(burst, tokens + (now - ts) * per_ms)
    ts = now
  end
  if tokens < 1 then
    allowed = 0
    local need = math.ceil((1 - tokens) / per_ms)
    if need > wait then
      wait = need
      worst = i
    end
  end
  states[i] = {tokens, ts, burst, per_ms}
end
for i, key in ipairs(KEYS) do
  local s = states[i]
  local tokens = s[1]
  if allowed == 1 then
    tokens = tokens - 1
  end
  redis.call('HSET', key, 't', tostring(tokens), 'ts', tostring(s[2]))
  redis.call('PEXPIRE', key, math.ceil((s[3] - tokens) / s[4]) + 1000)
end
return {allowed, wait, worst}
"""

# KEYS: buckets whose token is given back; ARGV: the burst of each key.
_GIVE_BACK = """
for i, key in ipairs(KEYS) do
  local tokens = tonumber(redis.call('HGET', key, 't'))
  if tokens ~= nil then
    redis.call('HSET', key, 't', tostring(math.min(tonumber(ARGV[i]), tokens + 1)))
  end
end
return 0
"""


def _keys(group: Sequence[Bucket]) -> list[str]:
    return [b.key for b in group]


def _argv(group: Sequence[Bucket], now_ms: int) -> list[Any]:
    args: list[Any] = [now_ms]
    for bucket in group:
        args += [bucket.rate.burst, repr(bucket.rate.per_ms)]
    return args


def _granted(reply: Any) -> bool:
    return not isinstance(reply, Exception) and bool(int(reply[0]))


class RedisBuckets:
    """The ``parley_core.limits.BucketStore`` of every service."""

    def __init__(
        self,
        redis: Redis,
        *,
        timeout_seconds: float,
        fallback_seconds: float,
        local: LocalBuckets | None = None,
    ) -> None:
        self._redis = redis
        self._timeout = timeout_seconds
        self._fallback_ms = fallback_seconds * 1000
        self._take = redis.register_script(_TAKE)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._local = local or LocalBuckets()
        # Until when (Unix ms) takes stay local; None while Redis answers.
        self._local_until: float | None = None

    @property
    def degraded(self) -> bool:
        return self._local_until is not None

    async def take(self, groups: Sequence[Sequence[Bucket]], *, now_ms: int) -> Shortfall | None:
        if self._local_until is not None and now_ms < self._local_until:
            return self._local.take(groups, now_ms=now_ms)
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._call(groups, now_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            if self._local_until is None:
                log.warning("rate_limit_local_fallback", error=repr(exc))
            self._local_until = now_ms + self._fallback_ms
            return self._local.take(groups, now_ms=now_ms)
        if self._local_until is not None:
            self._local_until = None
            log.info("rate_limit_redis_back")
        worst: Shortfall | None = None
        for g, (allowed, wait, bucket) in enumerate(replies):
            if int(allowed):
                continue
            seconds = int(wait) / 1000
            if worst is None or seconds > worst.seconds:
                worst = Shortfall(g, max(int(bucket) - 1, 0), seconds)
        if worst is not None:
            await self._return([g for g, r in zip(groups, replies, strict=True) if _granted(r)])
        return worst

    async def _call(self, groups: Sequence[Sequence[Bucket]], now_ms: int) -> list[Any]:
        if len(groups) == 1:
            # The script object sends EVALSHA, and loads the script on NOSCRIPT.
            group = groups[0]
            return [await self._take(keys=_keys(group), args=_argv(group, now_ms))]
        return await self._pipelined(groups, now_ms)

    async def _pipelined(
        self, groups: Sequence[Sequence[Bucket]], now_ms: int, *, loaded: bool = False
    ) -> list[Any]:
        # Plain EVALSHA in the pipeline: redis-py's script objects would add a
        # SCRIPT EXISTS round trip to every execute.
        async with self._redis.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.evalsha(self._take.sha, len(group), *_keys(group), *_argv(group, now_ms))
            replies = await pipe.execute(raise_on_error=False)
        if not loaded and any(isinstance(r, NoScriptError) for r in replies):
            # A restarted or another server: give back what the calls that did
            # run took, load the script and take again.
            await self._return([g for g, r in zip(groups, replies, strict=True) if _granted(r)])
            self._take.sha = await self._redis.script_load(_TAKE)
            return await self._pipelined(groups, now_ms, loaded=True)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return list(replies)

    async def _return(self, groups: Sequence[Sequence[Bucket]]) -> None:
        """Give a token back to each of ``groups`` (taken for a request that
        another group refused). Refusals only, so not worth a round trip less."""
        if not groups:
            return
        try:
            async with asyncio.timeout(self._timeout):
                for group in groups:
                    await self._give_back(keys=_keys(group), args=[b.rate.burst for b in group])
        except (RedisError, OSError, TimeoutError) as exc:
            # The token stays spent; it comes back with the refill.
            log.warning("rate_limit_give_back_failed", error=repr(exc))
