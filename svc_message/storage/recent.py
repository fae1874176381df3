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

Keys: ``parley:recent:<conversation>`` (the sorted set) and
``parley:recent:<conversation>:m`` (``last`` and the rest); on a Redis
Cluster the conversation id is their hash tag (``parley:recent:{<id>}``), so
each script call stays in one slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from parley_core.storage.redis import REDIS_ERRORS, Redis, Script, ScriptCall
from svc_message.model.messages import Heads, HeadState

log = structlog.get_logger(__name__)

PREFIX = "parley:recent:"
T = TypeVar("T")

# KEYS: zset, meta hash.
# ARGV: capacity, ttl, create (0/1), newest committed seq (0 = unknown),
#       newest version (0 = unknown), n senders, n pairs (account, highest seq
#       it sent), h hiders, h accounts that hid a message here, m items, then
#       m triples (seq, state version, blob) to add, then triples to replace
#       where present.
# Per seq, meta field v:<seq> is the newest state version written, so an
# older state (a reader's fill racing a change) is never put back; h:<account>
# marks accounts whose reads must filter what they deleted for themselves.
_ADD = """
local function raise(field, value)
  local current = tonumber(redis.call('HGET', KEYS[2], field) or '0')
  if value > current then redis.call('HSET', KEYS[2], field, value) end
end
local meta = redis.call('EXISTS', KEYS[2]) == 1
local known, known_v = tonumber(ARGV[4]), tonumber(ARGV[5])
local i = 6
local senders = tonumber(ARGV[i]); local s0 = i + 1; i = s0 + 2 * senders
local hiders = tonumber(ARGV[i]); local h0 = i + 1; i = h0 + hiders
local items = tonumber(ARGV[i]); local i0 = i + 1; local u0 = i0 + 3 * items
if known > 0 or known_v > 0 then
  if not meta then
    -- A new meta hash would not know who hid what among cached messages.
    redis.call('DEL', KEYS[1])
    meta = true
  end
  if known > 0 then raise('last', known) end
  if known_v > 0 then raise('lv', known_v) end
  for j = s0, s0 + 2 * senders - 1, 2 do raise('s:' .. ARGV[j], tonumber(ARGV[j + 1])) end
end
if meta then
  for j = h0, h0 + hiders - 1 do redis.call('HSET', KEYS[2], 'h:' .. ARGV[j], 1) end
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
local function newer(seq, version)
  local current = redis.call('HGET', KEYS[2], 'v:' .. seq)
  return (not current) or tonumber(version) > tonumber(current)
end
local zset = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[3] == '1' or zset then
  for j = i0, u0 - 1, 3 do
    local present = redis.call('ZCOUNT', KEYS[1], ARGV[j], ARGV[j]) == 1
    local current = redis.call('HGET', KEYS[2], 'v:' .. ARGV[j])
    local version = tonumber(ARGV[j + 1])
    if (not current) or version > tonumber(current)
        or (version == tonumber(current) and not present) then
      redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[j], ARGV[j])
      redis.call('ZADD', KEYS[1], ARGV[j], ARGV[j + 2])
    end
  end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[1]) + 1))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
for j = u0, #ARGV, 3 do
  if newer(ARGV[j], ARGV[j + 1]) then
    if meta then redis.call('HSET', KEYS[2], 'v:' .. ARGV[j], ARGV[j + 1]) end
    if redis.call('ZCOUNT', KEYS[1], ARGV[j], ARGV[j]) == 1 then
      redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[j], ARGV[j])
      redis.call('ZADD', KEYS[1], ARGV[j], ARGV[j + 2])
    end
  end
end
return 1
"""

# KEYS: zset, meta hash. ARGV: start (0 = newest), forward (0/1), limit, account.
# Returns {last, lo, hi, hid, blob...} or {last} when the range is not all
# there; hid is 1 when the account deleted messages here for itself.
_READ = """
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '-1')
if last < 0 then return {last} end
local start, forward, limit = tonumber(ARGV[1]), ARGV[2] == '1', tonumber(ARGV[3])
local hid = redis.call('HEXISTS', KEYS[2], 'h:' .. ARGV[4])
local lo, hi
if forward then
  lo = math.max(start, 1)
  hi = math.min(lo + limit - 1, last)
else
  hi = (start == 0) and last or math.min(start, last)
  lo = math.max(hi - limit + 1, 1)
end
if hi < lo then return {last, lo, hi, hid} end
if redis.call('ZCOUNT', KEYS[1], lo, hi) ~= hi - lo + 1 then return {last} end
local blobs
if forward then
  blobs = redis.call('ZRANGEBYSCORE', KEYS[1], lo, hi)
else
  blobs = redis.call('ZREVRANGEBYSCORE', KEYS[1], hi, lo)
end
local out = {last, lo, hi, hid}
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
    # The reader deleted messages here for itself: filter the range.
    filtered: bool = False


class Unreachable(Exception):
    """Redis did not answer in time, or recently failed to."""


class RecentCache:
    """See the module docstring. Two rules keep it safe when Redis misbehaves:

    - A conversation whose add failed is *suspect* in this process: reads and
      fills skip the cache for it (its cached range may look complete while
      missing the message), until ``run`` has deleted its keys.
    - After any failure the cache is skipped for ``cooldown_seconds``, and every
      call has a deadline, so a hung Redis delays sends once, not each one.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        capacity: int,
        ttl_seconds: int,
        deadline_seconds: float = 1.0,
        cooldown_seconds: float = 2.0,
    ) -> None:
        self._redis = redis
        self._capacity = capacity
        self._ttl = ttl_seconds
        self._deadline = deadline_seconds
        self._cooldown = cooldown_seconds
        self._add = Script.of(_ADD)
        self._read = Script.of(_READ)
        self._skip_until = 0.0
        self._suspect: set[str] = set()
        self.hits = 0
        self.misses = 0

    async def _call(self, what: str, coro: Awaitable[T], *, probe: bool = False) -> T:
        if not probe and time.monotonic() < self._skip_until:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise Unreachable(what)
        try:
            async with asyncio.timeout(self._deadline):
                result = await coro
        except REDIS_ERRORS as exc:
            self._skip_until = time.monotonic() + self._cooldown
            log.warning("recent_cache_unreachable", operation=what, error=repr(exc))
            raise Unreachable(what) from None
        if probe:
            self._skip_until = 0.0
        return result

    async def run(self) -> None:
        """Delete the cached state of suspect conversations once Redis answers."""
        while True:
            await asyncio.sleep(0.5)
            if not self._suspect:
                continue
            batch = set(self._suspect)
            try:
                # Also the probe that ends the cool-down once Redis answers.
                await self._call("forget", self._forget(batch), probe=True)
            except Unreachable:
                continue
            self._suspect -= batch
            log.info("recent_cache_forgot_suspects", conversations=len(batch))

    async def _forget(self, conversation_ids: Iterable[str]) -> None:
        # One DEL per conversation: its two keys share a slot.
        async with self._redis.pipeline() as pipe:
            for conversation_id in conversation_ids:
                pipe.delete(*self._keys(conversation_id))
            await pipe.execute()

    @property
    def capacity(self) -> int:
        return self._capacity

    def _keys(self, conversation_id: str) -> list[str]:
        # One hash tag on a cluster, so the scripts stay in one slot.
        key = PREFIX + self._redis.tag(conversation_id)
        return [key, f"{key}:m"]

    def _args(
        self,
        *,
        create: bool,
        newest: int,
        heads: Heads,
    ) -> list[int | bytes | str]:
        args: list[int | bytes | str] = [
            self._capacity,
            self._ttl,
            "1" if create else "0",
            newest,
            heads.last_version,
            len(heads.sent),
        ]
        for account_id, seq in heads.sent.items():
            args += [account_id, seq]
        args.append(len(heads.hiders))
        args += sorted(heads.hiders)
        args.append(len(heads.items))
        for seq, version, blob in heads.items:
            args += [seq, version, blob]
        for seq, version, blob in heads.updated:
            args += [seq, version, blob]
        return args

    async def add(self, committed: Mapping[str, Heads]) -> bool:
        """Record freshly committed messages, per conversation, in one round
        trip. False when Redis did not take them: the conversations are then
        suspect here until their cached state is deleted."""
        if not committed:
            return True

        calls = [
            ScriptCall(
                self._add,
                self._keys(conversation_id),
                self._args(
                    create=False,
                    newest=max((seq for seq, _, _ in heads.items), default=0),
                    heads=heads,
                ),
            )
            for conversation_id, heads in committed.items()
        ]
        try:
            await self._call("add", self._redis.call_many(calls))
        except Unreachable:
            # Even a timed-out add may have reached Redis partly.
            self._suspect.update(committed)
            return False
        return True

    async def fill(
        self,
        conversation_id: str,
        items: Sequence[tuple[int, int, bytes]],
        *,
        includes_newest: bool,
        hiders: Iterable[str] = (),
    ) -> None:
        """Load a range read from the log, with the accounts that hid any of
        it. Only a read of the newest messages may tell the cache which seq
        is the newest: an older page would make a later newest-first read
        serve stale messages."""
        # A cache of no messages (configured off) has nothing to keep: no round trip.
        if not items or self._capacity <= 0 or conversation_id in self._suspect:
            return
        kept = sorted(items)[-self._capacity :]
        newest = kept[-1][0] if includes_newest else 0
        heads = Heads(items=kept, sent={}, hiders=frozenset(hiders))
        with contextlib.suppress(Unreachable):
            await self._call(
                "fill",
                self._redis.call(
                    self._add,
                    self._keys(conversation_id),
                    self._args(create=True, newest=newest, heads=heads),
                ),
            )

    async def heads(self, conversation_ids: Sequence[str]) -> dict[str, HeadState]:
        """Per conversation, the newest committed seq and version and the
        highest seq each sender sent, as Redis knows them; {} when it cannot
        answer. Set before
        every ack, so they run ahead of the conversation metadata while the
        projector writes it behind."""
        if not conversation_ids:
            return {}

        async def pipelined() -> list[Any]:
            async with self._redis.pipeline() as pipe:
                for conversation_id in conversation_ids:
                    pipe.hgetall(self._keys(conversation_id)[1])
                return list(await pipe.execute())

        try:
            replies = await self._call("heads", pipelined())
        except Unreachable:
            return {}
        result: dict[str, HeadState] = {}
        for conversation_id, fields in zip(conversation_ids, replies, strict=True):
            if not fields:
                continue
            decoded = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
            sent = {k[2:]: int(v) for k, v in decoded.items() if k.startswith("s:")}
            result[conversation_id] = HeadState(
                last_seq=int(decoded.get("last", 0)),
                last_version=int(decoded.get("lv", 0)),
                sent=sent,
            )
        return result

    async def read(
        self, conversation_id: str, *, start_seq: int, forward: bool, limit: int, account_id: str
    ) -> CachedRange | None:
        """The range if the cache holds all of it, else None."""
        if limit > self._capacity or conversation_id in self._suspect:
            self.misses += 1
            return None
        try:
            reply = await self._call(
                "read",
                self._redis.call(
                    self._read,
                    self._keys(conversation_id),
                    [start_seq, 1 if forward else 0, limit, account_id],
                ),
            )
        except Unreachable:
            self.misses += 1
            return None
        if len(reply) < 4:
            self.misses += 1
            return None
        self.hits += 1
        last, lo, hi = int(reply[0]), int(reply[1]), int(reply[2])
        return CachedRange(
            last=last,
            lo=lo,
            hi=hi,
            blobs=[bytes(b) for b in reply[4:]],
            filtered=int(reply[3]) == 1,
        )
