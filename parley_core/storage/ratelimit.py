"""Token buckets in Redis, shared by every process of a service.

Each bucket is a hash (``t`` tokens left, ``ts`` last refill in Unix ms) that
expires once it would be full again. One script call takes a token from
every bucket of a group or from none; a group's keys share a hash tag, so the
call works on Redis Cluster. A request's groups on different tags (a send's
account and its conversation) go out in the same round trip, and when one is
refused the others get their token back (a second call, on refusals only).

Takes are batched like sends are: the takes of concurrent requests that
arrive while a batch is in flight go out together in the next one, one
pipelined round trip with one EVALSHA per group. A lone request costs one
round trip as before; under load, the client's cost per take falls about
fourfold (measured: ~80 us of CPU alone, ~20 us in batches of 16+).

When Redis does not answer within ``timeout_seconds`` (or errs), the takes use
this process's own buckets (``parley_core.limits.LocalBuckets``) for
``fallback_seconds``, then Redis is asked again: the limits loosen by the
number of processes but never disappear and never fail a request. The switch
is logged once each way, not per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError

from parley_core.limits.buckets import Bucket, LocalBuckets, Rate, Shortfall
from parley_core.limits.limiter import KEY_PREFIX
from parley_core.storage.redis import REDIS_ERRORS, Redis, Script, ScriptCall

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


def _granted(reply: Any) -> bool:
    return not isinstance(reply, Exception) and bool(int(reply[0]))


@dataclass(eq=False, slots=True)
class _Pending:
    """One request's takes waiting for a batch: its replies, one per group."""

    groups: Sequence[Sequence[Bucket]]
    now_ms: int
    replies: asyncio.Future[list[Any]]


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
        self._take = Script.of(_TAKE)
        self._give_back = Script.of(_GIVE_BACK)
        self._local = local or LocalBuckets()
        # Until when (Unix ms) takes stay local; None while Redis answers.
        self._local_until: float | None = None
        # Each rate's script arguments, spelt once (the send path is hot).
        self._rate_args: dict[Rate, tuple[int, str]] = {}
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        return self._local_until is not None

    async def take(self, groups: Sequence[Sequence[Bucket]], *, now_ms: int) -> Shortfall | None:
        if self._local_until is not None and now_ms < self._local_until:
            return self._local.take(groups, now_ms=now_ms)
        pending = _Pending(groups, now_ms, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        try:
            replies = await pending.replies
        except REDIS_ERRORS as exc:
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

    async def _flush(self) -> None:
        """Runs batches while takes are queued; one batch in flight at a time."""
        batch: list[_Pending] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    async with asyncio.timeout(self._timeout):
                        results = await self._run(batch)
                except REDIS_ERRORS as exc:
                    for pending in batch:
                        if not pending.replies.done():
                            pending.replies.set_exception(exc)
                    continue
                for pending, replies in zip(batch, results, strict=True):
                    if not pending.replies.done():
                        pending.replies.set_result(replies)
                batch = []
        except asyncio.CancelledError:
            # Shutting down: whoever still waits limits on its own buckets.
            stopped = RedisConnectionError("the rate limiter stopped")
            for pending in [*batch, *self._queue]:
                if not pending.replies.done():
                    pending.replies.set_exception(stopped)
            self._queue = []
            raise
        finally:
            self._flusher = None

    def _argv(self, group: Sequence[Bucket], now_ms: int) -> list[Any]:
        args: list[Any] = [now_ms]
        for bucket in group:
            spelt = self._rate_args.get(bucket.rate)
            if spelt is None:
                spelt = self._rate_args[bucket.rate] = (bucket.rate.burst, repr(bucket.rate.per_ms))
            args += spelt
        return args

    async def _run(self, batch: list[_Pending]) -> list[list[Any]]:
        """Every group of every request of ``batch`` in one pipeline; the
        replies per request. A server that lost the script refuses the calls
        before they take anything; they are sent again once it is loaded."""
        flat = await self._redis.call_many(
            [
                ScriptCall(self._take, _keys(group), self._argv(group, pending.now_ms))
                for pending in batch
                for group in pending.groups
            ]
        )
        results: list[list[Any]] = []
        at = 0
        for pending in batch:
            results.append(flat[at : at + len(pending.groups)])
            at += len(pending.groups)
        return results

    async def _return(self, groups: Sequence[Sequence[Bucket]]) -> None:
        """Give a token back to each of ``groups`` (taken for a request that
        another group refused). Refusals only, so not worth a round trip less."""
        if not groups:
            return
        try:
            async with asyncio.timeout(self._timeout):
                for group in groups:
                    await self._redis.call(
                        self._give_back, _keys(group), [b.rate.burst for b in group]
                    )
        except REDIS_ERRORS as exc:
            # The token stays spent; it comes back with the refill.
            log.warning("rate_limit_give_back_failed", error=repr(exc))


class BucketEraser:
    """Deletes the rate-limit buckets that name an id (an erased account's or
    device's): as a bucket's tag, or as the key refining another tag. They
    would expire once full anyway; an erasure removes them at once.

    A SCAN of the keyspace per id: erasures are rare, and the scan is
    bounded (``max_rounds`` cursors of ``count`` keys)."""

    def __init__(self, redis: Redis, *, count: int = 1000, max_rounds: int = 100_000) -> None:
        self._redis = redis
        self._count = count
        self._max_rounds = max_rounds

    async def forget(self, ids: Sequence[str]) -> int:
        # scan_iter walks every primary of a Redis Cluster; keys are deleted
        # one by one, as the matches of a pattern live in several slots.
        client = self._redis.client
        deleted = 0
        for id_ in ids:
            for pattern in (f"{KEY_PREFIX}{{{id_}}}:*", f"{KEY_PREFIX}*:{id_}"):
                seen = 0
                async for key in client.scan_iter(match=pattern, count=self._count):
                    deleted += int(await client.delete(key))
                    seen += 1
                    if seen >= self._count * self._max_rounds:
                        break
        return deleted
