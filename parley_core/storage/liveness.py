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
``parley:p:c:<account>`` (and on the shard's ``parley:p:x``, which
svc_presence's exporter to peer regions listens to; nobody else does, and a
publish nobody hears costs next to nothing). Redis never
expires leases by itself: the sweeper pops accounts whose due time passed,
drops their expired leases and, when none is left, marks the account offline
and publishes that. Each transition happens inside one script, so however many
processes touch and sweep, each is published exactly once. All of this is O(1)
per call in the number of users (a user's own devices are capped).

Published payloads are ``1:<seen ms>`` (online), ``0:<seen ms>`` (offline)
and ``s`` (the user's privacy settings or contacts changed; svc_presence).

Redis Cluster: accounts are spread over ``redis.cluster_presence_shards``
hash tags ``{p<n>}`` (``PresenceKeys``). Each shard has its own due and save
sets (``parley:p:{p<n>}:due``), and its accounts' hashes and channels carry
the same tag (``parley:p:{p<n>}:<account>``, ``parley:p:c:{p<n>}:<account>``,
published with SPUBLISH), so every script runs in one slot and the sweeper
visits each shard. On a single server there is one shard and the names are
those above. Every key a script touches is in its KEYS: a sweep first reads
which accounts are due, then hands their hashes to the script, which checks
again that each one still is.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from parley_core.storage.redis import Redis, Script, ScriptCall

ACCOUNT_PREFIX = "parley:p:"
CHANNEL_PREFIX = "parley:p:c:"
EXPORT_CHANNEL = "parley:p:x"
STREAM = "s:"
HEARTBEAT = "h:"
SETTINGS_CHANGED = b"s"
# The hash (and so last seen) of a user inactive this long leaves Redis; the
# durable copy in MongoDB remains.
KEEP_MS = 30 * 86400 * 1000
# Reads of due accounts per sweep, at most: see Liveness._due.
DUE_READ_ROUNDS = 3

# KEYS: hash, due, save. ARGV: field, now, ttl_ms, persist_ms, channel,
# account, keep_ms, publish command, export channel. Returns {came_online,
# persist_seen}.
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
  redis.call(ARGV[8], ARGV[5], '1:' .. now)
  redis.call(ARGV[8], ARGV[9], ARGV[6] .. '|1:' .. now)
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

# KEYS: hash, due. ARGV: field, now, account, expiry to match ('' = any).
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

# KEYS: due, save, then the hash of each account. ARGV: now, channel prefix,
# publish command, export channel, then the accounts (read as due just
# before). Returns the accounts that went offline with their last seen, flat.
_SWEEP = """
local now = tonumber(ARGV[1])
local out = {}
for i = 5, #ARGV do
  local account = ARGV[i]
  local key = KEYS[i - 2]
  local due = redis.call('ZSCORE', KEYS[1], account)
  -- Another sweeper may have taken it meanwhile, or a touch moved it on.
  if due and tonumber(due) <= now then
    local fields = redis.call('HGETALL', key)
    local latest = 0
    for j = 1, #fields, 2 do
      local kind = string.sub(fields[j], 1, 2)
      if kind == 's:' or kind == 'h:' then
        local expiry = tonumber(fields[j + 1])
        if expiry <= now then
          redis.call('HDEL', key, fields[j])
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
        redis.call(ARGV[3], ARGV[2] .. account, '0:' .. seen)
        redis.call(ARGV[3], ARGV[4], account .. '|0:' .. seen)
        -- Stored with the transition; no separate save needed.
        redis.call('ZREM', KEYS[2], account)
        out[#out + 1] = account
        out[#out + 1] = seen
      end
    end
  end
end
return out
"""

# KEYS: save, then the hash of each account. ARGV: now, then the accounts
# (read as due just before). Returns the accounts whose last seen is due to
# be stored, with it, flat; each is handed out once (ZREM says who got it).
_DRAIN_SEEN = """
local out = {}
for i = 2, #ARGV do
  local account = ARGV[i]
  local at = redis.call('ZSCORE', KEYS[1], account)
  if at and tonumber(at) <= tonumber(ARGV[1]) and redis.call('ZREM', KEYS[1], account) == 1 then
    local seen = redis.call('HGET', KEYS[i], 'seen')
    if seen then
      out[#out + 1] = account
      out[#out + 1] = seen
    end
  end
end
return out
"""


class PresenceKeys:
    """Where each account's presence lives (see the module docstring)."""

    def __init__(self, shards: int) -> None:
        self.shards = shards

    @classmethod
    def of(cls, redis: Redis, *, cluster_shards: int) -> PresenceKeys:
        return cls(cluster_shards if redis.cluster else 1)

    def shard(self, account_id: str) -> int:
        # crc32: the same in every process (Python's str hash is salted).
        return zlib.crc32(account_id.encode()) % self.shards if self.shards > 1 else 0

    def _space(self, shard: int) -> str:
        return f"{{p{shard}}}:" if self.shards > 1 else ""

    def account(self, account_id: str) -> str:
        return ACCOUNT_PREFIX + self._space(self.shard(account_id)) + account_id

    def due(self, shard: int) -> str:
        return ACCOUNT_PREFIX + self._space(shard) + "due"

    def save(self, shard: int) -> str:
        return ACCOUNT_PREFIX + self._space(shard) + "save"

    def export_channel(self, shard: int) -> str:
        """The shard's channel of local transitions, ``<account>|1:<ms>`` and
        ``<account>|0:<ms>``, for svc_presence's exporter to peer regions."""
        return EXPORT_CHANNEL + (f":{{p{shard}}}" if self.shards > 1 else "")

    def export_channels(self) -> list[str]:
        return [self.export_channel(shard) for shard in range(self.shards)]

    def remote(self, account_id: str) -> str:
        """The hash of the account's entries pushed by peer regions (svc_presence)."""
        return ACCOUNT_PREFIX + self._space(self.shard(account_id)) + "r:" + account_id

    def channel_prefix(self, shard: int) -> str:
        return CHANNEL_PREFIX + self._space(shard)

    def channel(self, account_id: str) -> str:
        """The channel of the account's online, offline and settings changes."""
        return self.channel_prefix(self.shard(account_id)) + account_id

    def account_of(self, channel: str) -> str | None:
        """The account whose channel this is; None for any other channel."""
        if not channel.startswith(CHANNEL_PREFIX):
            return None
        rest = channel[len(CHANNEL_PREFIX) :]
        if self.shards > 1:
            _, close, rest = rest.partition("}:")
            if not close:
                return None
        return rest


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

    def __init__(
        self,
        redis: Redis,
        *,
        ttl_seconds: float,
        persist_seconds: float,
        cluster_shards: int = 1,
    ) -> None:
        self._redis = redis
        self.keys = PresenceKeys.of(redis, cluster_shards=cluster_shards)
        self.ttl_ms = int(ttl_seconds * 1000)
        self._persist_ms = int(persist_seconds * 1000)
        self._touch = Script.of(_TOUCH)
        self._drop = Script.of(_DROP)
        self._sweep = Script.of(_SWEEP)
        self._drain_seen = Script.of(_DRAIN_SEEN)
        # Which shard the next read of due accounts starts at.
        self._turn = 0

    def _touch_call(self, account_id: str, device_id: str, stream: bool, now_ms: int) -> ScriptCall:
        shard = self.keys.shard(account_id)
        return ScriptCall(
            self._touch,
            [self.keys.account(account_id), self.keys.due(shard), self.keys.save(shard)],
            [
                _field(device_id, stream=stream),
                now_ms,
                self.ttl_ms,
                self._persist_ms,
                self.keys.channel(account_id),
                account_id,
                KEEP_MS,
                self._redis.publish_command,
                self.keys.export_channel(shard),
            ],
        )

    async def touch(self, account_id: str, device_id: str, *, stream: bool, now_ms: int) -> Touched:
        """Renew one device's lease (a heartbeat, or a stream opening)."""
        return (await self.touch_many([(account_id, device_id)], stream=stream, now_ms=now_ms))[0]

    async def touch_many(
        self, devices: Sequence[tuple[str, str]], *, stream: bool, now_ms: int
    ) -> list[Touched]:
        """Renew many (account, device) leases in one round trip."""
        replies = await self._redis.call_many(
            [self._touch_call(a, d, stream, now_ms) for a, d in devices]
        )
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
        await self._redis.call(
            self._drop,
            [self.keys.account(account_id), self.keys.due(self.keys.shard(account_id))],
            [
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
        due, more = await self._due(self.keys.due, now_ms=now_ms, limit=limit)
        replies = await self._redis.call_many(
            [
                ScriptCall(
                    self._sweep,
                    [
                        self.keys.due(shard),
                        self.keys.save(shard),
                        *(self.keys.account(a) for a in accounts),
                    ],
                    [
                        now_ms,
                        self.keys.channel_prefix(shard),
                        self._redis.publish_command,
                        self.keys.export_channel(shard),
                        *accounts,
                    ],
                )
                for shard, accounts in due.items()
            ]
        )
        scanned = sum(len(accounts) for accounts in due.values())
        return SweepBatch(
            went_offline=[record for flat in replies for record in _records(flat)],
            scanned=max(scanned, limit) if more else scanned,
        )

    async def drain_seen(self, *, now_ms: int, limit: int = 1000) -> list[WentOffline]:
        """Online accounts whose last seen is due to be stored durably (each
        handed to exactly one caller), with their current last seen."""
        due, _ = await self._due(self.keys.save, now_ms=now_ms, limit=limit)
        replies = await self._redis.call_many(
            [
                ScriptCall(
                    self._drain_seen,
                    [self.keys.save(shard), *(self.keys.account(a) for a in accounts)],
                    [now_ms, *accounts],
                )
                for shard, accounts in due.items()
            ]
        )
        return [record for flat in replies for record in _records(flat)]

    async def _due(
        self, set_of: Callable[[int], str], *, now_ms: int, limit: int
    ) -> tuple[dict[int, list[str]], bool]:
        """Per shard, accounts whose score in the shard's set (``set_of``) is
        due by ``now_ms``, at most ``limit`` in all, and whether more may be
        due. Each shard gets an even share of the limit; those that filled
        theirs are read further while the total is short. The shards take
        turns at being first, so a full batch leaves no shard behind for good."""
        found: dict[int, list[str]] = {}
        first = self._turn % self.keys.shards
        self._turn += 1
        reading = [(first + i) % self.keys.shards for i in range(self.keys.shards)]
        room = limit
        for _ in range(DUE_READ_ROUNDS):
            if room <= 0 or not reading:
                break
            page = -(-room // len(reading))
            async with self._redis.pipeline() as pipe:
                for shard in reading:
                    pipe.zrangebyscore(
                        set_of(shard), "-inf", now_ms, start=len(found.get(shard, ())), num=page
                    )
                replies = await pipe.execute()
            full = []
            for shard, members in zip(reading, replies, strict=True):
                if members:
                    found.setdefault(shard, []).extend(_text(m) for m in members)
                    room -= len(members)
                if len(members) == page:
                    full.append(shard)
            reading = full
        more = bool(reading)
        if room < 0:
            # Pages round up: what is over the limit waits for the next batch.
            more = True
            kept: dict[int, list[str]] = {}
            left = limit
            for shard, accounts in found.items():
                if left <= 0:
                    break
                kept[shard] = accounts[:left]
                left -= len(kept[shard])
            found = kept
        return found, more

    async def states(self, account_ids: Sequence[str]) -> dict[str, AccountLiveness]:
        """Online flag and last seen of each account, in one round trip."""
        if not account_ids:
            return {}
        async with self._redis.pipeline() as pipe:
            for account_id in account_ids:
                pipe.hmget(self.keys.account(account_id), ["on", "seen"])
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
        async with self._redis.pipeline() as pipe:
            for account_id in accounts:
                pipe.hgetall(self.keys.account(account_id))
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
        await self._redis.publish(self.keys.channel(account_id), SETTINGS_CHANGED)


def _records(flat: Sequence[Any]) -> list[WentOffline]:
    return [
        WentOffline(account_id=_text(flat[i]), seen_ms=int(flat[i + 1]))
        for i in range(0, len(flat), 2)
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
