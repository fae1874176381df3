"""Presence pushed by peer regions, in this region's Redis.

Per account one hash ``parley:p:r:<account>`` (on a cluster
``parley:p:{p<n>}:r:<account>``, the tag of the account's own presence
hash, so its channel is in the same slot): a field per source region,
``<online 0|1>:<seen ms>:<expiry ms>`` (merged by domain/region_merge.py,
whose ``takes`` the apply script below follows). The
expiry is this region's clock, so a region that stops pushing leaves
entries that stop counting by themselves; the hash's own TTL is its latest
entry's, so nothing is left behind either.

Applying a batch is one script per shard: it keeps each entry unless an
older one came in (region_merge.takes), drops expired fields on the way and,
when the regions' combined view flips (online or not) or an offline last
seen moves, publishes ``r<0|1>:<seen>:<until>`` on the account's channel,
where svc_presence's subscriptions hear it beside the local ``1:``/``0:``.
A digest that only renews online entries publishes nothing: a hub re-reads
an entry when the expiry it heard of passes.
"""

from __future__ import annotations

from collections.abc import Sequence

from parley_core.storage.liveness import PresenceKeys
from parley_core.storage.redis import REDIS_ERRORS, Redis, Script, ScriptCall
from svc_presence.model import ExportEntry, PresenceStats, PresenceStoreDown, RegionEntry

# KEYS: the remote hash of each account. ARGV: now, region, publish command,
# channel prefix, then per account: account, online, seen, expires_in.
# Returns how many entries were stored.
_APPLY = """
local now = tonumber(ARGV[1])
local region = ARGV[2]
local function view(key)
  local fields = redis.call('HGETALL', key)
  local on_until, seen = 0, 0
  for j = 1, #fields, 2 do
    local on, s, e = string.match(fields[j + 1], '^([01]):(%d+):(%d+)$')
    if on == nil or tonumber(e) <= now then
      redis.call('HDEL', key, fields[j])
    else
      if on == '1' and tonumber(e) > on_until then on_until = tonumber(e) end
      if tonumber(s) > seen then seen = tonumber(s) end
    end
  end
  return on_until, seen
end
local applied = 0
for i = 1, #KEYS do
  local base = 4 + (i - 1) * 4
  local account, online = ARGV[base + 1], ARGV[base + 2]
  local seen, expires_in = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local key = KEYS[i]
  local before_until, before_seen = view(key)
  local take = true
  -- view() dropped it if it had expired: then anything is taken.
  local held = redis.call('HGET', key, region)
  if held then
    local on, s = string.match(held, '^([01]):(%d+):')
    s = tonumber(s)
    local held_rank = on == '1' and 0 or 1
    local rank = online == '1' and 0 or 1
    if seen < s or (seen == s and rank < held_rank) then
      take = false
    end
  end
  if take then
    redis.call('HSET', key, region, online .. ':' .. seen .. ':' .. (now + expires_in))
    local ttl = redis.call('PTTL', key)
    if ttl < expires_in then
      redis.call('PEXPIRE', key, expires_in)
    end
    applied = applied + 1
    local after_until, after_seen = view(key)
    local was_on, is_on = before_until > 0, after_until > 0
    if was_on ~= is_on or (not is_on and after_seen ~= before_seen) then
      redis.call(ARGV[3], ARGV[4] .. account,
        'r' .. (is_on and '1' or '0') .. ':' .. after_seen .. ':' .. after_until)
    end
  end
end
return applied
"""


class RemotePresenceStore:
    def __init__(self, redis: Redis, keys: PresenceKeys, stats: PresenceStats) -> None:
        self._redis = redis
        self._keys = keys
        self._stats = stats
        self._apply = Script.of(_APPLY)

    def _down(self, exc: BaseException) -> PresenceStoreDown:
        self._stats.redis_errors += 1
        return PresenceStoreDown(f"{type(exc).__name__}: {exc}")

    async def apply(self, region: str, entries: Sequence[ExportEntry], *, now_ms: int) -> int:
        """Store a peer's entries (one script per shard); how many were taken."""
        by_shard: dict[int, list[ExportEntry]] = {}
        # The latest per account: a batch may repeat one.
        latest: dict[str, ExportEntry] = {}
        for entry in entries:
            latest[entry.account_id] = entry
        for entry in latest.values():
            by_shard.setdefault(self._keys.shard(entry.account_id), []).append(entry)
        calls = []
        for shard, batch in by_shard.items():
            args: list[str | int] = [
                now_ms,
                region,
                self._redis.publish_command,
                self._keys.channel_prefix(shard),
            ]
            for entry in batch:
                args += [
                    entry.account_id,
                    "1" if entry.online else "0",
                    entry.seen_ms,
                    entry.expires_in_ms,
                ]
            calls.append(
                ScriptCall(self._apply, [self._keys.remote(e.account_id) for e in batch], args)
            )
        try:
            replies = await self._redis.call_many(calls)
        except REDIS_ERRORS as exc:
            raise self._down(exc) from exc
        return sum(int(r) for r in replies)

    async def entries(self, account_ids: Sequence[str]) -> dict[str, dict[str, RegionEntry]]:
        """Each account's entries by region (only accounts some peer said
        anything of; expired entries included, the reader's clock judges)."""
        if not account_ids:
            return {}
        try:
            async with self._redis.pipeline() as pipe:
                for account_id in account_ids:
                    pipe.hgetall(self._keys.remote(account_id))
                replies = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise self._down(exc) from exc
        found = {}
        for account_id, fields in zip(account_ids, replies, strict=True):
            entries = {}
            for name, value in fields.items():
                entry = decode_entry(value)
                if entry is not None:
                    entries[name.decode() if isinstance(name, bytes) else name] = entry
            if entries:
                found[account_id] = entries
        return found

    async def forget(self, account_id: str) -> None:
        """An erasure: the entries peers pushed of the account."""
        try:
            await self._redis.client.delete(self._keys.remote(account_id))
        except REDIS_ERRORS as exc:
            raise self._down(exc) from exc


def encode_entry(entry: RegionEntry) -> str:
    """An entry as stored (the apply script writes the same)."""
    return f"{1 if entry.online else 0}:{entry.seen_ms}:{entry.expires_ms}"


def decode_entry(value: bytes | str) -> RegionEntry | None:
    """An entry as stored, or None for anything unreadable (ignored)."""
    text = value.decode() if isinstance(value, bytes) else value
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ("0", "1"):
        return None
    try:
        return RegionEntry(online=parts[0] == "1", seen_ms=int(parts[1]), expires_ms=int(parts[2]))
    except ValueError:
        return None
