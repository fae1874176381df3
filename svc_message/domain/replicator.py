"""The replicator of one peer region: tails the owner's feed, sends the
changes the policy routes to the peer in bounded batches, and persists the
stream position only after the peer acknowledged them.

Order of work per batch: read changes -> route -> ``Apply`` at the peer ->
persist the position after the batch. A process killed between the apply
and the persist resumes from the previous position and sends the batch
again, which the replica applies as a no-op; nothing is skipped, since the
position never passes an unacknowledged change.

A position the database refuses (or none at all, for a new peer), or one the
peer acknowledged longer than the tombstone window ago (a long partition),
starts a snapshot instead of resuming: a position is taken first, then for
every conversation routed to the peer, the peer's high-water mark is asked
and everything above it sent, with every entry an account erasure rewrote
and the member documents to delete (the snapshot leaves the peer's copy
equal to the owner's, erased data included); the stream then resumes from
the position taken before the snapshot, so a change made during it is sent
again rather than missed. An idle stream persists its position every
``IDLE_SAVE_SECONDS``, so a quiet peer is not taken for a cut-off one.

A lease per peer (``replication_leases``) keeps one process per region
replicating to a peer; a process that loses it stops before its next batch.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from svc_message.domain.replication import (
    ReplicationPolicy,
    beyond_tombstone_window,
    conversations_to_look_up,
    lag_seconds,
    route,
)
from svc_message.model.replication import (
    ApplyOutcome,
    FeedChange,
    HighWater,
    PeerUnavailable,
    ReplicatedDoc,
    ReplicationCursor,
    ResumePointLost,
)

log = structlog.get_logger(__name__)

# How long one read of the stream waits; the reader task loops, so this only
# bounds how late it notices its cancellation.
_READ_SECONDS = 1.0

Token = Mapping[str, Any]
# Nothing pending for this long: the stream position is persisted anyway.
IDLE_SAVE_SECONDS = 60.0


class Stream(Protocol):
    async def next(self, timeout: float) -> FeedChange | None: ...
    def position(self) -> Token | None: ...
    async def close(self) -> None: ...


class Feed(Protocol):
    async def open(self, resume_token: Token | None) -> Stream: ...
    async def position_now(self) -> Token: ...


class Cursors(Protocol):
    async def load(self, peer: str) -> ReplicationCursor | None: ...
    async def save(
        self, peer: str, resume_token: Token, *, now: float, lag_seconds: float, backlog: int
    ) -> None: ...


class Leases(Protocol):
    async def claim(self, peer: str, *, owner: str, now: float, until: float) -> bool: ...
    async def release(self, peer: str, *, owner: str) -> None: ...


class Snapshots(Protocol):
    async def conversation_page(
        self, *, after_id: str, limit: int
    ) -> list[tuple[str, tuple[str, ...]]]: ...
    async def member_ids(self, conversation_ids: Iterable[str]) -> dict[str, tuple[str, ...]]: ...
    async def above(self, conversation_id: str, high_water: HighWater) -> list[ReplicatedDoc]: ...
    async def settings_of(self, conversation_id: str) -> list[ReplicatedDoc]: ...


class Peer(Protocol):
    async def apply(self, batch_id: str, docs: Sequence[ReplicatedDoc]) -> ApplyOutcome: ...
    async def high_water(self, conversation_ids: Sequence[str]) -> dict[str, HighWater]: ...


@dataclass(frozen=True)
class ReplicatorSettings:
    batch_changes: int = 200
    batch_seconds: float = 0.0
    lease_seconds: float = 10.0
    retry_seconds: float = 0.5
    snapshot_page: int = 200
    tombstone_window_seconds: float = 30 * 86400.0


@dataclass
class ReplicatorState:
    """What the metrics read: the peer's lag and unacknowledged changes, and
    counts of what the peer did with what it was sent."""

    lag_seconds: float = 0.0
    backlog: int = 0
    applied: int = 0
    already_present: int = 0
    snapshots: int = 0
    # Of the snapshots: those made because the peer was cut off longer than
    # the tombstone window.
    resyncs: int = 0
    batches: int = 0


class Replicator:
    def __init__(
        self,
        *,
        peer: str,
        instance_id: str,
        policy: ReplicationPolicy,
        feed: Feed,
        cursors: Cursors,
        leases: Leases,
        snapshots: Snapshots,
        client: Peer,
        clock: Callable[[], float],
        settings: ReplicatorSettings = ReplicatorSettings(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.peer = peer
        self._instance_id = instance_id
        self._policy = policy
        self._feed = feed
        self._cursors = cursors
        self._leases = leases
        self._snapshots = snapshots
        self._client = client
        self._clock = clock
        self._settings = settings
        self._sleep = sleep
        self._lease_until = 0.0
        # Set when the database refused the persisted position: the next
        # round snapshots first, whatever the cursor says.
        self._resume_lost = False
        self.state = ReplicatorState()

    # -- lease -------------------------------------------------------------

    async def _hold_lease(self) -> bool:
        """True while this process holds the peer's lease (renewed at a third
        of its length)."""
        now = self._clock()
        if self._lease_until - now > self._settings.lease_seconds * 2 / 3:
            return True
        until = now + self._settings.lease_seconds
        if await self._leases.claim(self.peer, owner=self._instance_id, now=now, until=until):
            self._lease_until = until
            return True
        self._lease_until = 0.0
        return False

    # -- the loop ----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                if not await self._hold_lease():
                    # Another process replicates to the peer now: this one's
                    # last readings would otherwise stay on its gauges, and the
                    # region's lag (the highest over processes) with them.
                    self.state.lag_seconds = 0.0
                    self.state.backlog = 0
                    await self._pause(stop, self._settings.lease_seconds / 3)
                    continue
                try:
                    cursor = await self._cursors.load(self.peer)
                    token = None if cursor is None else cursor.resume_token
                    stale = cursor is not None and beyond_tombstone_window(
                        cursor.updated_at,
                        now=self._clock(),
                        window_seconds=self._settings.tombstone_window_seconds,
                    )
                    if token is None or self._resume_lost or stale:
                        if stale:
                            log.warning(
                                "replication peer beyond the tombstone window: resync",
                                peer=self.peer,
                            )
                            self.state.resyncs += 1
                        token = await self.snapshot()
                        self._resume_lost = False
                    await self._tail(token, stop)
                except ResumePointLost as exc:
                    log.warning("replication resume point lost", peer=self.peer, error=str(exc))
                    self._resume_lost = True
                except PeerUnavailable as exc:
                    log.info("replication peer unavailable", peer=self.peer, error=str(exc))
                    await self._pause(stop, self._settings.retry_seconds)
        finally:
            await self._leases.release(self.peer, owner=self._instance_id)

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        if not stop.is_set():
            await self._sleep(seconds)

    async def _tail(self, token: Token, stop: asyncio.Event) -> None:
        """Group commit: a reader task keeps taking changes off the stream
        while a batch is at the peer, and the next batch is whatever arrived
        meanwhile. A quiet feed therefore sends a change as soon as it is
        read, and a busy one sends fuller batches, with no fixed window."""
        stream = await self._feed.open(token)
        arrived: asyncio.Queue[FeedChange] = asyncio.Queue(maxsize=self._settings.batch_changes * 4)
        reader = asyncio.create_task(self._read(stream, arrived))
        saved_at = self._clock()
        try:
            while not stop.is_set():
                if not await self._hold_lease():
                    return
                changes = await self._next_batch(arrived, reader)
                if not changes:
                    self.state.lag_seconds = 0.0
                    now = self._clock()
                    # With nothing queued the reader holds no change either
                    # (it puts each one as it reads it), so nothing before
                    # the stream's position is unacknowledged.
                    position = stream.position()
                    idle = now - saved_at >= IDLE_SAVE_SECONDS and arrived.empty()
                    if idle and position is not None:
                        await self._cursors.save(
                            self.peer, position, now=now, lag_seconds=0.0, backlog=0
                        )
                        saved_at = now
                    continue
                self.state.backlog = len(changes) + arrived.qsize()
                await self._deliver(changes)
                saved_at = self._clock()
                await self._cursors.save(
                    self.peer,
                    changes[-1].token,
                    now=self._clock(),
                    lag_seconds=self.state.lag_seconds,
                    backlog=arrived.qsize(),
                )
                self.state.backlog = arrived.qsize()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await stream.close()

    @staticmethod
    async def _read(stream: Stream, arrived: asyncio.Queue[FeedChange]) -> None:
        while True:
            change = await stream.next(_READ_SECONDS)
            if change is not None:
                await arrived.put(change)

    async def _next_batch(
        self, arrived: asyncio.Queue[FeedChange], reader: asyncio.Task[None]
    ) -> list[FeedChange]:
        """Up to ``batch_changes`` changes: the first one to arrive (waiting at
        most a third of the lease, so the lease is renewed), everything that
        arrived with it, and what arrives within ``batch_seconds`` after it.
        Raises what ended the reader (a lost resume point, a database error)."""
        first = await self._arrival(arrived, reader, self._settings.lease_seconds / 3)
        if first is None:
            return []
        changes = [first]
        linger_until = self._clock() + self._settings.batch_seconds
        while len(changes) < self._settings.batch_changes:
            try:
                changes.append(arrived.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            wait = linger_until - self._clock()
            if wait <= 0:
                break
            change = await self._arrival(arrived, reader, wait)
            if change is None:
                break
            changes.append(change)
        return changes

    @staticmethod
    async def _arrival(
        arrived: asyncio.Queue[FeedChange], reader: asyncio.Task[None], timeout: float
    ) -> FeedChange | None:
        getting = asyncio.ensure_future(arrived.get())
        done, _ = await asyncio.wait(
            {getting, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if getting in done:
            return getting.result()
        # Queue.get leaves the item in the queue when cancelled before it ran.
        getting.cancel()
        await asyncio.gather(getting, return_exceptions=True)
        if reader in done:
            reader.result()
            raise RuntimeError("the replication feed reader stopped")
        return None

    async def _deliver(self, changes: Sequence[FeedChange]) -> None:
        """Sends the batch's routed changes until the peer acknowledges them."""
        now = self._clock()
        self.state.lag_seconds = lag_seconds(changes[0].committed_at, now=now)
        members = await self._snapshots.member_ids(conversations_to_look_up(changes))
        routed = route(changes, peer=self.peer, policy=self._policy, members=members)
        if routed:
            docs = [
                ReplicatedDoc(c.kind, c.conversation_id, c.encoded)
                for c in routed
                if c.document is not None
            ]
            await self._send(docs)
        # Acknowledged: the peer is now as far behind as the newest of them.
        self.state.lag_seconds = lag_seconds(changes[-1].committed_at, now=self._clock())

    async def _send(self, docs: Sequence[ReplicatedDoc]) -> None:
        # PeerUnavailable propagates: the caller keeps the stream position,
        # so the batch is read and sent again.
        outcome = await self._client.apply(uuid.uuid4().hex, docs)
        self.state.applied += outcome.applied
        self.state.already_present += outcome.already_present
        self.state.batches += 1

    # -- snapshot ----------------------------------------------------------

    async def snapshot(self) -> Token:
        """Catches the peer up from its high-water marks; returns (and persists)
        the position taken before it began."""
        start = await self._feed.position_now()
        self.state.snapshots += 1
        after = ""
        while True:
            page = await self._snapshots.conversation_page(
                after_id=after, limit=self._settings.snapshot_page
            )
            if not page:
                break
            after = page[-1][0]
            routed = [c for c, m in page if self._policy.sends_to(self.peer, c, m)]
            pending: list[ReplicatedDoc] = []
            # Settings are sent by every region holding them, owner or not.
            for conversation_id, member_ids in page:
                if self._policy.sends_settings_to(self.peer, conversation_id, member_ids):
                    pending.extend(await self._snapshots.settings_of(conversation_id))
            marks = await self._client.high_water(routed) if routed else {}
            for conversation_id in routed:
                pending.extend(
                    await self._snapshots.above(
                        conversation_id, marks.get(conversation_id, HighWater())
                    )
                )
                while len(pending) >= self._settings.batch_changes:
                    await self._send(pending[: self._settings.batch_changes])
                    del pending[: self._settings.batch_changes]
            if pending:
                await self._send(pending)
        await self._cursors.save(self.peer, start, now=self._clock(), lag_seconds=0.0, backlog=0)
        log.info("replication snapshot done", peer=self.peer)
        return start
