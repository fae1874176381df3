"""Group members' delivered watermarks, current in Redis, durable behind.

In a group every message moves every member's delivered watermark: written
to the database at each ack flush, a 1,024-member group made the database
spend more time on those updates than on the messages. Delivery ticks are
therefore raised first in one Redis hash per group (``parley:dw:<id>``,
field = account, value = seq, only ever raised), and the ack batcher writes
the highest values to the members' documents every so often. Readers take
the max of the two. If Redis loses the hash, ticks since the last durable
write fall back to that write until the members' next acks raise them again;
read watermarks, unread counts and messages are not affected. Each script
call touches one hash, so it works on a Redis Cluster as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from parley_core.storage.redis import REDIS_ERRORS, Redis, Script, ScriptCall

PREFIX = "parley:dw:"
# Idle groups' hashes go away; the durable copy remains.
TTL_SECONDS = 7 * 24 * 3600

# KEYS: hash. ARGV: ttl, then pairs (account, seq).
# Returns the pairs whose value rose, as a flat list.
_RAISE = """
local risen = {}
for i = 2, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > current then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    risen[#risen + 1] = ARGV[i]
    risen[#risen + 1] = ARGV[i + 1]
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return risen
"""


class DeliveredMarks:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._raise = Script.of(_RAISE)

    async def raise_many(
        self, raises: Mapping[str, Mapping[str, int]]
    ) -> dict[str, dict[str, int]] | None:
        """Raise (conversation -> account -> seq); what rose, or None when
        Redis did not answer (the caller then writes the database directly)."""
        if not raises:
            return {}
        calls = []
        for conversation_id, marks in raises.items():
            args: list[str | int] = [TTL_SECONDS]
            for account_id, seq in marks.items():
                args += [account_id, seq]
            calls.append(ScriptCall(self._raise, [PREFIX + conversation_id], args))
        try:
            replies = await self._redis.call_many(calls)
        except REDIS_ERRORS:
            return None
        risen: dict[str, dict[str, int]] = {}
        for conversation_id, reply in zip(raises, replies, strict=True):
            values = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
            if values:
                risen[conversation_id] = {
                    values[i]: int(values[i + 1]) for i in range(0, len(values), 2)
                }
        return risen

    async def of(self, conversation_id: str, account_ids: Sequence[str]) -> dict[str, int]:
        """Current delivered seqs of those members ({} when Redis cannot answer)."""
        if not account_ids:
            return {}
        try:
            values = await self._redis.client.hmget(PREFIX + conversation_id, list(account_ids))
        except REDIS_ERRORS:
            return {}
        return {a: int(v) for a, v in zip(account_ids, values, strict=True) if v is not None}
