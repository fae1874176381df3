"""Which devices are online, in Redis: shared by svc_message (delivery
streams keep their devices online) and svc_presence (heartbeats, the sweeper
that notices users going offline, and presence reads).

Per account, one hash ``parley:p:<account>``:

- ``s:<device>``: when the device's delivery-stream lease runs out (Unix ms);
- ``h:<device>``: the same for its heartbeat lease;
- ``seen``: the last moment any device was active (Unix ms);
- ``on``: ``1`` while the account is published as online, else ``0``;
- ``saved``: when ``seen`` was last handed out to be stored durably.

one sorted set ``parley:p:due`` of accounts by when to look at them again
(the latest lease expiry, or now after a lease was dropped), and one sorted
set ``parley:p:save`` of online accounts whose last seen is due to be stored
durably (at most once per persist interval each), drained by svc_presence's
sweeper: so whoever touches (svc_message's streams included) needs no
database of its own for last seen.

A touch renews a lease and stamps ``seen`` (never backwards); when the
account was not online it becomes online and that is published on
``parley:p:c:<account>``. Redis never
expires leases by itself: the sweeper pops accounts whose due time passed,
drops their expired leases and, when none is left, marks the account offline
and publishes that. Each transition happens inside one script, so however many
processes touch and sweep, each is published exactly once. All of this is O(1)
per call in the number of users (a user's own devices are capped).

Published payloads are ``1:<seen ms>`` (online), ``0:<seen ms>`` (offline)
and ``s`` (the user's privacy settings or contacts changed; svc_presence).

Scripts touch keys they are not given (the hash of each due account), which
a single Redis (or a primary with replicas) allows; Redis Cluster would need
the due set split per hash slot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from parley_core.storage.redis import Redis

ACCOUNT_PREFIX = "parley:p:"
DUE_KEY = "parley:p:due"
SAVE_KEY = "parley:p:save"
CHANNEL_PREFIX = "parley:p:c:"
STREAM = "s:"
HEARTBEAT = "h:"
SETTINGS_CHANGED = b"s"
# The hash (and so last seen) of a user inactive this long leaves Redis; the
# durable copy in MongoDB remains.
KEEP_MS = 30 * 86400 * 1000

# KEYS: hash, due, save. ARGV: field, now, ttl_ms, persist_ms, channel, account, keep_ms.
# Returns {came_online, persist_seen}.
_TOUCH = """
local now = tonumber(ARGV[2])
local expiry = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], expiry)
if now > tonumber(redis.call('HGET', KEYS[1], 'seen') or '0') then
  redis.call('HSET', KEYS[1], 'seen', now)
end
local came = 0
if redis.call('HGET', KEYS[1], 'on') ~= '1' then
  redis.call('HSET', KEYS[1], 'on', '1')
  redis.call('PUBLISH', ARGV[5], '1:' .. now)
  came = 1
end
local persist = 0
local saved = tonumber(redis.call('HGET', KEYS[1], 'saved') or '0')
if now - saved >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'saved', now)
  redis.call('ZADD', KEYS[3], 'NX', now, ARGV[6])
  persist = 1
end
redis.call('ZADD', KEYS[2], 'GT', expiry, ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return {came, persist}
"""

# KEYS: hash, due. ARGV: field, now, account.
_DROP = """
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[4] then
  return 0
end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[1], 'seen') or '0') then
    redis.call('HSET', KEYS[1], 'seen', ARGV[2])
  end
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
end
return 0
"""

# KEYS: due, save. ARGV: now, limit, account prefix, channel prefix.
# Returns how many due accounts it looked at, then the accounts that went
# offline with their last seen, flat.
_SWEEP = """
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])
local out = {#due}
for _, account in ipairs(due) do
  local key = ARGV[3] .. account
  local fields = redis.call('HGETALL', key)
  local latest = 0
  for i = 1, #fields, 2 do
    local kind = string.sub(fields[i], 1, 2)
    if kind == 's:' or kind == 'h:' then
      local expiry = tonumber(fields[i + 1])
      if expiry <= now then
        redis.call('HDEL', key, fields[i])
      elseif expiry > latest then
        latest = expiry
      end
    end
  end
  if latest > 0 then
    redis.call('ZADD', KEYS[1], latest, account)
  else
    redis.call('ZREM', KEYS[1], account)
    if redis.call('HGET', key, 'on') == '1' then
      redis.call('HSET', key, 'on', '0')
      local seen = redis.call('HGET', key, 'seen') or ARGV[1]
      redis.call('PUBLISH', ARGV[4] .. account, '0:' .. seen)
      -- Stored with the transition; no separate save needed.
      redis.call('ZREM', KEYS[2], account)
      out[#out + 1] = account
      out[#out + 1] = seen
    end
  end
end
return out
"""


# KEYS: save. ARGV: now, limit, account prefix.
# Returns the accounts whose last seen is due to be stored, with it, flat.
_DRAIN_SEEN = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, account in ipairs(due) do
  redis.call('ZREM', KEYS[1], account)
  local seen = redis.call('HGET', ARGV[3] .. account, 'seen')
  if seen then
    out[#out + 1] = account
    out[#out + 1] = seen
  end
end
return out
"""


def channel(account_id: str) -> str:
    return CHANNEL_PREFIX + account_id


def _key(account_id: str) -> str:
    return ACCOUNT_PREFIX + account_id


def _field(device_id: str, *, stream: bool) -> str:
    return (STREAM if stream else HEARTBEAT) + device_id


@dataclass(frozen=True, slots=True)
class Touched:
    came_online: bool
    # True at most once per persist interval: ``seen`` is due to be stored
    # durably. The account is queued for svc_presence's sweeper
    # (``drain_seen``) at the same time, so callers may ignore this.
    persist_seen: bool
    # The lease's new expiry, as stored (for a guarded ``drop``).
    expiry_ms: int = 0


@dataclass(frozen=True, slots=True)
class WentOffline:
    account_id: str
    seen_ms: int


@dataclass(frozen=True, slots=True)
class SweepBatch:
    went_offline: list[WentOffline]
    # Due accounts looked at: equal to the limit when more may be due.
    scanned: int


@dataclass(frozen=True, slots=True)
class AccountLiveness:
    online: bool
    # None when Redis has no record of the account (never seen, or forgotten).
    seen_ms: int | None


class Liveness:
    """Device leases and online transitions. Every method raises redis'
    errors (or OSError) when Redis does not answer; callers decide whether
    that matters (svc_message ignores it, svc_presence fails fast)."""

    def __init__(self, redis: Redis, *, ttl_seconds: float, persist_seconds: float) -> None:
        self._redis = redis
        self.ttl_ms = int(ttl_seconds * 1000)
        self._persist_ms = int(persist_seconds * 1000)
        self._touch = redis.register_script(_TOUCH)
        self._drop = redis.register_script(_DROP)
        self._sweep = redis.register_script(_SWEEP)
        self._drain_seen = redis.register_script(_DRAIN_SEEN)

    def _touch_args(self, account_id: str, device_id: str, stream: bool, now_ms: int) -> list[Any]:
        return [
            _field(device_id, stream=stream),
            now_ms,
            self.ttl_ms,
            self._persist_ms,
            channel(account_id),
            account_id,
            KEEP_MS,
        ]

    async def touch(self, account_id: str, device_id: str, *, stream: bool, now_ms: int) -> Touched:
        """Renew one device's lease (a heartbeat, or a stream opening)."""
        came, persist = await self._touch(
            keys=[_key(account_id), DUE_KEY, SAVE_KEY],
            args=self._touch_args(account_id, device_id, stream, now_ms),
        )
        return Touched(
            came_online=bool(came), persist_seen=bool(persist), expiry_ms=now_ms + self.ttl_ms
        )

    async def touch_many(
        self, devices: Sequence[tuple[str, str]], *, stream: bool, now_ms: int
    ) -> list[Touched]:
        """Renew many (account, device) leases in one round trip."""
        if not devices:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for account_id, device_id in devices:
                await self._touch(
                    keys=[_key(account_id), DUE_KEY, SAVE_KEY],
                    args=self._touch_args(account_id, device_id, stream, now_ms),
                    client=pipe,
                )
            replies = await pipe.execute()
        return [
            Touched(came_online=bool(c), persist_seen=bool(p), expiry_ms=now_ms + self.ttl_ms)
            for c, p in replies
        ]

    async def drop(
        self,
        account_id: str,
        device_id: str,
        *,
        stream: bool,
        now_ms: int,
        if_expiry_ms: int | None = None,
    ) -> None:
        """End one device's lease now (a stream closed, GoOffline); the next
        sweep marks the account offline if no other lease is left.

        ``if_expiry_ms``: drop only the lease this caller wrote last (the
        ``expiry_ms`` of its touch). A device whose stream moved to another
        process has a newer lease there, which a late drop from the old
        process must not remove."""
        await self._drop(
            keys=[_key(account_id), DUE_KEY],
            args=[
                _field(device_id, stream=stream),
                now_ms,
                account_id,
                "" if if_expiry_ms is None else str(if_expiry_ms),
            ],
        )

    async def sweep(self, *, now_ms: int, limit: int = 500) -> list[WentOffline]:
        """Expire the leases of up to ``limit`` due accounts; those that went
        offline (each reported by exactly one sweeper)."""
        return (await self.sweep_batch(now_ms=now_ms, limit=limit)).went_offline

    async def sweep_batch(self, *, now_ms: int, limit: int = 500) -> SweepBatch:
        """``sweep``, also saying how many due accounts it looked at."""
        reply = await self._sweep(
            keys=[DUE_KEY, SAVE_KEY], args=[now_ms, limit, ACCOUNT_PREFIX, CHANNEL_PREFIX]
        )
        flat = reply[1:]
        return SweepBatch(
            went_offline=[
                WentOffline(account_id=_text(flat[i]), seen_ms=int(flat[i + 1]))
                for i in range(0, len(flat), 2)
            ],
            scanned=int(reply[0]),
        )

    async def drain_seen(self, *, now_ms: int, limit: int = 1000) -> list[WentOffline]:
        """Online accounts whose last seen is due to be stored durably (each
        handed to exactly one caller), with their current last seen."""
        flat = await self._drain_seen(keys=[SAVE_KEY], args=[now_ms, limit, ACCOUNT_PREFIX])
        return [
            WentOffline(account_id=_text(flat[i]), seen_ms=int(flat[i + 1]))
            for i in range(0, len(flat), 2)
        ]

    async def states(self, account_ids: Sequence[str]) -> dict[str, AccountLiveness]:
        """Online flag and last seen of each account, in one round trip."""
        if not account_ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for account_id in account_ids:
                pipe.hmget(_key(account_id), ["on", "seen"])
            replies = await pipe.execute()
        return {
            account_id: AccountLiveness(
                online=on in (b"1", "1"), seen_ms=int(seen) if seen is not None else None
            )
            for account_id, (on, seen) in zip(account_ids, replies, strict=True)
        }

    async def streaming_devices(
        self, account_ids: Iterable[str], *, now_ms: int
    ) -> dict[str, set[str]]:
        """Per account, the devices holding an unexpired delivery-stream lease."""
        accounts = list(account_ids)
        if not accounts:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for account_id in accounts:
                pipe.hgetall(_key(account_id))
            replies = await pipe.execute()
        result: dict[str, set[str]] = {}
        for account_id, fields in zip(accounts, replies, strict=True):
            devices = {
                name[len(STREAM) :]
                for name, expiry in ((_text(k), v) for k, v in fields.items())
                if name.startswith(STREAM) and int(expiry) > now_ms
            }
            if devices:
                result[account_id] = devices
        return result

    async def settings_changed(self, account_id: str) -> None:
        """Tell subscribers to this user's presence to look again."""
        await self._redis.publish(channel(account_id), SETTINGS_CHANGED)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
