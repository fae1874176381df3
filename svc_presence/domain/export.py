"""Pushes this region's presence to its peer regions (docs/ARCHITECTURE.md,
"Presence across regions").

Runs only while the topology names peers (otherwise it looks again every few
seconds and does nothing else), and in one svc_presence process of the
region at a time: the holder of a lease in Redis. The holder

- listens to the local transitions (a device of an account came online here,
  or the last one went away) and queues each for every peer; a peer's queue
  keeps the latest state per account, and its sender pushes what is queued
  ``batch_seconds`` after the first change, one call in flight per peer, so
  all peers get a change at once and a slow or dead peer delays no other;
- every ``digest_seconds`` pushes a digest of every account online here, so
  a peer that missed changes (a cut, a restart, a lost subscription) has
  them again within a digest period, and renews the entries it holds.

An online entry is kept by the receiver for ``entry_ttl_seconds`` (a few
digest periods): a region that stops pushing is offline everywhere else
after that, and online again with its next digest once it is back. An
offline entry carries the account's last seen there and is kept longer.
What residency keeps home is never queued (region_merge.exportable).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import structlog

from parley_core.regions import RegionMap
from parley_core.tasks import stop_tasks
from parley_core.topology import Topology
from svc_presence.domain.region_merge import exportable
from svc_presence.model import ExportEntry, PeerUnreachable, PresenceStoreDown, RegionStats
from svc_presence.ports import ExportFeed, LocalChangeLike, PeerRegions

log = structlog.get_logger(__name__)

BATCH_SECONDS = 0.05
DIGEST_SECONDS = 2.0
# Online entries outlive three digests: one lost digest does not flap them.
ENTRY_TTL_SECONDS = 3 * DIGEST_SECONDS
OFFLINE_KEEP_SECONDS = 3600.0
LEASE_SECONDS = 6.0
RENEW_SECONDS = 2.0
IDLE_SECONDS = 5.0
MAX_BATCH = 500
DIGEST_PAGE = 1000
# Changes queued for one peer; beyond that the oldest are dropped (counted),
# and the next digest repairs what an online account lost.
MAX_PENDING = 100_000
# Accounts read per digest, at most (a bounded loop; the rest waits).
MAX_DIGEST = 1_000_000
RETRY_MIN_SECONDS = 0.2
RETRY_MAX_SECONDS = 2.0
RESUBSCRIBE_SECONDS = 0.5


class PeerQueue:
    """Changes waiting for one peer: the latest per account, in arrival order."""

    def __init__(self, region: str, stats: RegionStats) -> None:
        self.region = region
        self.pending: dict[str, ExportEntry] = {}
        self.wake = asyncio.Event()
        self._stats = stats

    def put(self, entry: ExportEntry) -> None:
        self.pending.pop(entry.account_id, None)
        self.pending[entry.account_id] = entry
        while len(self.pending) > MAX_PENDING:
            del self.pending[next(iter(self.pending))]
            self._stats.add(self._stats.dropped, self.region)
        self.wake.set()

    def take(self, limit: int) -> list[ExportEntry]:
        batch = []
        for account in list(self.pending)[:limit]:
            batch.append(self.pending.pop(account))
        return batch

    def put_back(self, batch: Sequence[ExportEntry]) -> None:
        """A batch the peer did not take, unless a newer change replaced it."""
        for entry in batch:
            if entry.account_id not in self.pending:
                self.pending[entry.account_id] = entry


class Exporter:
    def __init__(
        self,
        feed: ExportFeed,
        peers: PeerRegions,
        stats: RegionStats,
        *,
        topology: Callable[[], Topology | None],
        regions: Callable[[], RegionMap],
        holder: str,
        clock: Callable[[], float] = time.time,
        batch_seconds: float = BATCH_SECONDS,
        digest_seconds: float = DIGEST_SECONDS,
        entry_ttl_seconds: float = ENTRY_TTL_SECONDS,
        offline_keep_seconds: float = OFFLINE_KEEP_SECONDS,
    ) -> None:
        self._feed = feed
        self._peers = peers
        self._stats = stats
        self._topology = topology
        self._regions = regions
        self._holder = holder
        self._clock = clock
        self._batch = batch_seconds
        self._digest = digest_seconds
        self._ttl_ms = int(entry_ttl_seconds * 1000)
        self._keep_ms = int(offline_keep_seconds * 1000)
        self._queues: dict[str, PeerQueue] = {}
        self.leading = False

    def peer_names(self) -> tuple[str, ...]:
        topology = self._topology()
        return () if topology is None else tuple(sorted(p.name for p in topology.peers))

    # -- what is pushed ------------------------------------------------------------

    def entry(self, account_id: str, *, online: bool, seen_ms: int) -> ExportEntry | None:
        """The entry peers get for a local state; None when residency keeps it home."""
        topology = self._topology()
        if topology is None or not exportable(
            account_id, topology=topology, regions=self._regions()
        ):
            return None
        return ExportEntry(account_id, online, seen_ms, self._ttl_ms if online else self._keep_ms)

    def on_change(self, change: LocalChangeLike) -> None:
        entry = self.entry(change.account_id, online=change.online, seen_ms=change.seen_ms)
        if entry is None:
            return
        for queue in self._queues.values():
            queue.put(entry)

    async def digest_entries(self, *, now_ms: int) -> list[ExportEntry]:
        """Every account online here that may leave the region, as entries."""
        entries: list[ExportEntry] = []
        read = 0
        for shard in range(self._feed.shards):
            offset = 0
            while read < MAX_DIGEST:
                page = await self._feed.online_page(
                    shard, now_ms=now_ms, offset=offset, limit=DIGEST_PAGE
                )
                read += len(page)
                for account_id, seen_ms in page:
                    entry = self.entry(account_id, online=True, seen_ms=seen_ms)
                    if entry is not None:
                        entries.append(entry)
                if len(page) < DIGEST_PAGE:
                    break
                offset += len(page)
        return entries

    # -- the loops -------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: lead while this process holds the lease and there are peers."""
        while True:
            peers = self.peer_names()
            if not peers:
                await asyncio.sleep(IDLE_SECONDS)
                continue
            if not await self._hold():
                await asyncio.sleep(RENEW_SECONDS)
                continue
            try:
                await self._lead(peers)
            except Exception:
                log.exception("presence_export_crashed")
                await asyncio.sleep(RENEW_SECONDS)

    async def release(self) -> None:
        """At shutdown: let another process take over at once (the lease is
        released only by its holder, so any process may call this)."""
        if self.peer_names():
            with contextlib.suppress(PresenceStoreDown):
                await self._feed.release_lease(self._holder)

    async def _hold(self) -> bool:
        try:
            return await self._feed.hold_lease(self._holder, ttl_ms=int(LEASE_SECONDS * 1000))
        except PresenceStoreDown as exc:
            log.warning("presence_export_lease_failed", error=str(exc))
            return False

    async def _lead(self, peers: tuple[str, ...]) -> None:
        self._queues = {peer: PeerQueue(peer, self._stats) for peer in peers}
        self.leading = True
        log.info("presence_export_leading", peers=list(peers))
        tasks = [
            asyncio.create_task(self._listen()),
            asyncio.create_task(self._digests()),
            *(asyncio.create_task(self._send(q)) for q in self._queues.values()),
        ]
        try:
            while True:
                await asyncio.sleep(RENEW_SECONDS)
                if self.peer_names() != peers or not await self._hold():
                    return
                for task in tasks:
                    if task.done():
                        task.result()
                        return
        finally:
            self.leading = False
            self._queues = {}
            await stop_tasks(tasks)
            log.info("presence_export_stopped")

    async def _listen(self) -> None:
        while True:
            try:
                async for change in self._feed.changes():
                    self.on_change(change)
            except PresenceStoreDown as exc:
                log.warning("presence_export_changes_lost", error=str(exc))
            await asyncio.sleep(RESUBSCRIBE_SECONDS)

    async def _digests(self) -> None:
        while True:
            started = self._clock()
            try:
                entries = await self.digest_entries(now_ms=int(started * 1000))
            except PresenceStoreDown as exc:
                log.warning("presence_digest_read_failed", error=str(exc))
            else:
                await asyncio.gather(*(self._send_digest(peer, entries) for peer in self._queues))
            await asyncio.sleep(max(0.0, self._digest - (self._clock() - started)))

    async def _send_digest(self, peer: str, entries: list[ExportEntry]) -> None:
        # An empty digest is sent too: it says "nobody" and dates the peer's view of us.
        pages = [entries[i : i + DIGEST_PAGE] for i in range(0, len(entries), DIGEST_PAGE)]
        try:
            for page in pages or [[]]:
                await self._peers.apply(peer, page, digest=True)
        except PeerUnreachable as exc:
            self._stats.add(self._stats.failures, peer)
            log.info("presence_digest_failed", peer=peer, error=str(exc))
            return
        self._stats.add(self._stats.sent, peer, len(entries))
        self._stats.digest_sent_at[peer] = self._clock()

    async def _send(self, queue: PeerQueue) -> None:
        backoff = RETRY_MIN_SECONDS
        while True:
            await queue.wake.wait()
            queue.wake.clear()
            # The batch window: changes of the next few ms travel together.
            await asyncio.sleep(self._batch)
            while queue.pending:
                batch = queue.take(MAX_BATCH)
                try:
                    await self._peers.apply(queue.region, batch, digest=False)
                except PeerUnreachable as exc:
                    queue.put_back(batch)
                    self._stats.add(self._stats.failures, queue.region)
                    log.info("presence_export_failed", peer=queue.region, error=str(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, RETRY_MAX_SECONDS)
                    continue
                backoff = RETRY_MIN_SECONDS
                self._stats.add(self._stats.sent, queue.region, len(batch))
