"""The recent-messages cache: the newest messages of each conversation that
is being read, in Redis, shared by every svc_message process.

Per conversation, a sorted set (score = seq, member = the message as the
transport sends it) and ``last``, the highest committed seq known. Commits add
their messages after the durable write (only to conversations already cached,
so idle ones cost nothing) and raise ``last``. A read is served only when every
seq of the requested range is present, so an add that was lost (a crash or a
Redis hiccup between the database write and the cache) shows up as a gap, and
the read goes to the log, which then refills the cache. Redis being down only
costs the cache: every failure falls back to the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError

from parley_core.storage.redis import Redis

log = structlog.get_logger(__name__)

PREFIX = "parley:recent:"

# KEYS: zset, meta hash.
# ARGV: capacity, ttl, create (0/1), newest committed seq (0 = unknown), seq1, blob1, ...
_ADD = """
local known = tonumber(ARGV[4])
if known > 0 then
  local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
  if known > last then redis.call('HSET', KEYS[2], 'last', known) end
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
if ARGV[3] == '1' or redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 5, #ARGV, 2 do
    redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i])
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[1]) + 1))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

# KEYS: zset, meta hash. ARGV: start (0 = newest), forward (0/1), limit.
# Returns {last, lo, hi, blob...} or {last} when the range is not all there.
_READ = """
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '-1')
if last < 0 then return {last} end
local start, forward, limit = tonumber(ARGV[1]), ARGV[2] == '1', tonumber(ARGV[3])
local lo, hi
if forward then
  lo = math.max(start, 1)
  hi = math.min(lo + limit - 1, last)
else
  hi = (start == 0) and last or math.min(start, last)
  lo = math.max(hi - limit + 1, 1)
end
if hi < lo then return {last, lo, hi} end
if redis.call('ZCOUNT', KEYS[1], lo, hi) ~= hi - lo + 1 then return {last} end
local blobs
if forward then
  blobs = redis.call('ZRANGEBYSCORE', KEYS[1], lo, hi)
else
  blobs = redis.call('ZREVRANGEBYSCORE', KEYS[1], hi, lo)
end
local out = {last, lo, hi}
for i = 1, #blobs do out[#out + 1] = blobs[i] end
return out
"""


@dataclass(frozen=True, slots=True)
class CachedRange:
    """Messages ``lo``..``hi`` in the order asked for; ``last`` is the newest
    seq the cache knows, which tells whether a next page exists."""

    last: int
    lo: int
    hi: int
    blobs: list[bytes]


class RecentCache:
    def __init__(self, redis: Redis, *, capacity: int, ttl_seconds: int) -> None:
        self._redis = redis
        self._capacity = capacity
        self._ttl = ttl_seconds
        self._add = redis.register_script(_ADD)
        self._read = redis.register_script(_READ)
        self.hits = 0
        self.misses = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @staticmethod
    def _keys(conversation_id: str) -> list[str]:
        return [f"{PREFIX}{conversation_id}", f"{PREFIX}{conversation_id}:m"]

    def _args(
        self, *, create: bool, newest: int, items: Iterable[tuple[int, bytes]]
    ) -> list[int | bytes | str]:
        args: list[int | bytes | str] = [self._capacity, self._ttl, "1" if create else "0", newest]
        for seq, blob in items:
            args += [seq, blob]
        return args

    async def add(self, committed: Mapping[str, Sequence[tuple[int, bytes]]]) -> bool:
        """Record freshly committed messages, per conversation, in one round trip."""
        if not committed:
            return True
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for conversation_id, items in committed.items():
                    await self._add(
                        keys=self._keys(conversation_id),
                        args=self._args(
                            create=False, newest=max(seq for seq, _ in items), items=items
                        ),
                        client=pipe,
                    )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("recent_cache_add_failed", error=str(exc))
            return False
        return True

    async def fill(
        self, conversation_id: str, items: Sequence[tuple[int, bytes]], *, includes_newest: bool
    ) -> None:
        """Load a range read from the log. Only a read of the newest messages
        may tell the cache which seq is the newest: an older page would make a
        later newest-first read serve stale messages."""
        if not items:
            return
        kept = sorted(items)[-self._capacity :]
        newest = kept[-1][0] if includes_newest else 0
        try:
            await self._add(
                keys=self._keys(conversation_id),
                args=self._args(create=True, newest=newest, items=kept),
            )
        except (RedisError, OSError) as exc:
            log.warning("recent_cache_fill_failed", error=str(exc))

    async def read(
        self, conversation_id: str, *, start_seq: int, forward: bool, limit: int
    ) -> CachedRange | None:
        """The range if the cache holds all of it, else None."""
        if limit > self._capacity:
            return None
        try:
            reply = await self._read(
                keys=self._keys(conversation_id), args=[start_seq, 1 if forward else 0, limit]
            )
        except (RedisError, OSError) as exc:
            log.warning("recent_cache_read_failed", error=str(exc))
            self.misses += 1
            return None
        if len(reply) < 3:
            self.misses += 1
            return None
        self.hits += 1
        last, lo, hi = int(reply[0]), int(reply[1]), int(reply[2])
        return CachedRange(last=last, lo=lo, hi=hi, blobs=[bytes(b) for b in reply[3:]])
