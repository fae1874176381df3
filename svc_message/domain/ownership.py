"""One owner per conversation: this process's shard leases, kept current.

Conversations are split into shards (``conversation_shard``, the topology's
routing); each shard is sequenced by the one process holding its lease in
MongoDB. Every ``renew_seconds`` this process records itself as live, reads
the leases and the live processes, and follows ``shard_policy.plan``: renew
what it keeps, release extras, claim free shards. It counts a shard as its
own only until a margin before its lease expires, so once it stops renewing
(cut off from the database, hung) it stops sequencing before another process
may claim the shard. The unique indexes of the log remain the arbiter if two
processes still briefly act as owner.

Deciding whether a conversation is ours is synchronous (a hash and a dict
lookup), so the single-process send path gains no await.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace

import structlog

from parley_core.topology import conversation_shard
from svc_message.domain.shard_policy import plan
from svc_message.model.ownership import OwnerRecord, ShardLease
from svc_message.storage.shard_leases import ShardLeaseStore

log = structlog.get_logger(__name__)


class ShardOwnership:
    def __init__(
        self,
        store: ShardLeaseStore,
        *,
        instance_id: str,
        address: Callable[[], str],
        shards: int,
        lease_seconds: float,
        renew_seconds: float,
        clock: Callable[[], float],
        on_acquired: Callable[[frozenset[int]], None] = lambda shards: None,
    ) -> None:
        self._store = store
        self.instance_id = instance_id
        # Known once the server is bound (a configured port, or the one it picked).
        self._address = address
        self.shards = shards
        self._lease_seconds = lease_seconds
        self._renew_seconds = renew_seconds
        # Stop counting a shard as ours this long before its lease expires, so
        # clocks a little apart do not make two owners.
        self._margin = min(1.0, lease_seconds / 4)
        self._clock = clock
        self._on_acquired = on_acquired
        self._owned_until: dict[int, float] = {}
        self._leases: dict[int, ShardLease] = {}
        self._draining = False
        self._wake = asyncio.Event()
        self.claims = 0
        self.releases = 0

    def shard_of(self, conversation_id: str) -> int:
        return conversation_shard(conversation_id, self.shards)

    def owns(self, shard: int) -> bool:
        until = self._owned_until.get(shard)
        return until is not None and self._clock() < until

    def owned(self) -> int:
        now = self._clock()
        return sum(1 for until in self._owned_until.values() if now < until)

    def owner_address(self, shard: int) -> str | None:
        """Where another live process holds ``shard``, as last read; None when
        nobody does (or it is ours)."""
        lease = self._leases.get(shard)
        if lease is None or lease.owner == self.instance_id or not lease.address:
            return None
        return lease.address if lease.expires_at > self._clock() else None

    def nudge(self) -> None:
        """Look at the leases now rather than at the next interval (a shard
        that seems ownerless may be claimable)."""
        self._wake.set()

    def drain(self) -> None:
        """Shutting down: own nothing from now on and hand every shard back."""
        self._draining = True
        self._owned_until.clear()
        self._wake.set()

    async def tick(self) -> None:
        address = self._address()
        if not address:
            return
        now = self._clock()
        until = now + self._lease_seconds
        await self._store.beat(
            OwnerRecord(self.instance_id, address, expires_at=until, draining=self._draining)
        )
        live = [r.instance_id for r in await self._store.live(now=now) if not r.draining]
        leases = await self._store.leases()
        step = plan(
            me=self.instance_id,
            now=now,
            shards=self.shards,
            live=live,
            leases=leases,
            draining=self._draining,
        )
        if step.release:
            for shard in step.release:
                self._owned_until.pop(shard, None)
            await self._store.release(step.release, owner=self.instance_id)
            self.releases += len(step.release)
            log.info("shards_released", count=len(step.release), instance=self.instance_id)
        renewed = await self._store.renew(step.renew, owner=self.instance_id, until=until)
        claimed = await asyncio.gather(
            *(
                self._store.claim(
                    shard, owner=self.instance_id, address=address, now=now, until=until
                )
                for shard in step.claim
            )
        )
        won = frozenset(s for s, ok in zip(step.claim, claimed, strict=True) if ok)
        if step.release or step.claim or renewed < len(step.renew):
            leases = await self._store.leases()
        else:
            leases = {
                s: replace(lease, expires_at=until) if s in step.renew else lease
                for s, lease in leases.items()
            }
        self._leases = leases
        mine = {
            s: lease.expires_at - self._margin
            for s, lease in leases.items()
            if lease.owner == self.instance_id and lease.expires_at > now and not self._draining
        }
        acquired = frozenset(s for s in mine if not self.owns(s))
        if acquired:
            # Positions cached for these conversations may be behind what the
            # previous owner wrote: they are read from the log again.
            self._on_acquired(acquired)
        self._owned_until = mine
        if won:
            self.claims += len(won)
            log.info("shards_claimed", count=len(won), owned=len(mine), instance=self.instance_id)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:
                log.warning("shard_leases_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._renew_seconds)
            self._wake.clear()

    async def leave(self) -> None:
        """Give every shard back and leave the live processes (a clean stop)."""
        self.drain()
        await self._store.release_all(self.instance_id)
        await self._store.leave(self.instance_id)


def dialable(address: str) -> str:
    """``address`` (host:port) as a gRPC target: an IPv6 host in brackets, as
    a pod IP substituted into "$(POD_IP):port" would not be."""
    host, sep, port = address.rpartition(":")
    if sep and ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return address
