"""Which shards of the conversation space one process should hold: pure policy.

Every svc_message process runs the same rule on what it reads of the shard
leases and the live processes: hold at most ceil(shards / live processes),
give up the rest, claim free ones (no lease or an expired one) up to that.
Processes that hold too many release the extras, so a process that joins
gets its share within a renew interval or two; one that drains holds none.

Each process ranks shards by a hash of (shard, its own id): it keeps the ones
it ranks highest and claims free ones in that order, so processes claiming at
the same moment mostly reach for different shards and the split is stable.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping

from svc_message.model.ownership import LeasePlan, ShardLease


def preference(shard: int, instance_id: str) -> int:
    digest = hashlib.blake2b(f"{shard}:{instance_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def quota(shards: int, live: int) -> int:
    return math.ceil(shards / max(1, live))


def plan(
    *,
    me: str,
    now: float,
    shards: int,
    live: Collection[str],
    leases: Mapping[int, ShardLease],
    draining: bool = False,
) -> LeasePlan:
    """``live``: the processes that are not draining and whose record has not
    expired (this one counts even when it is missing, unless draining)."""
    held = sorted(
        (s for s, lease in leases.items() if lease.owner == me and lease.expires_at > now),
        key=lambda s: preference(s, me),
        reverse=True,
    )
    if draining:
        return LeasePlan(renew=frozenset(), release=frozenset(held), claim=())
    share = quota(shards, len(set(live) | {me}))
    keep = held[:share]
    # A lease of this process that expired counts as free: it must be claimed
    # again (a new epoch), since another process may have taken it meanwhile.
    free = [s for s in range(shards) if s not in leases or leases[s].expires_at <= now]
    free.sort(key=lambda s: preference(s, me), reverse=True)
    return LeasePlan(
        renew=frozenset(keep),
        release=frozenset(held[share:]),
        claim=tuple(free[: max(0, share - len(keep))]),
    )
