"""Device revocations reach every region (docs/design/regions.md, "Revocations").

Every region verifies every region's access tokens, so a revocation made in
a device's home region must be refused everywhere. It is recorded here with
the peer regions it is still owed to (the ``unsent`` outbox of the region's
``revocations``, in the same write, so no revocation exists here that the
peers were not promised), then one loop per peer pushes the outbox to that
peer's ``AccountRegionService.ApplyRevocations`` and strikes what the peer
acknowledged. A peer that cannot be reached is retried with a growing delay
(``PushBackoff``) until it answers; nothing is lost meanwhile, and an entry
leaves the outbox by itself when it expires with the revocation (once every
token it refused has expired), so a peer gone for good costs nothing after
that. The peer records what it receives as its own revocations and announces
them to its processes like a local revocation. Every svc_keys process pushes:
the one that revoked at once, the others on their sweep; a revocation sent
twice is applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from parley_core.auth.revocations import Revocation
from parley_core.errors import ParleyError
from svc_keys.ports import RevocationOutbox, RevocationReceivers

log = structlog.get_logger(__name__)

# One ApplyRevocations carries at most this many (the receiver's limit).
BATCH_LIMIT = 500


@dataclass(frozen=True, slots=True)
class PushBackoff:
    """Delay before the next attempt at a peer after ``failures`` failed in a
    row: doubling from ``initial`` up to ``maximum`` (bounded, so a healed
    peer is caught up within ``maximum`` plus the sweep), with jitter so the
    processes of a region do not retry in step."""

    initial_seconds: float = 0.5
    maximum_seconds: float = 10.0
    jitter: float = 0.2

    def delay(self, failures: int, *, rand: Callable[[], float] = random.random) -> float:
        if failures <= 0:
            return 0.0
        base = min(self.maximum_seconds, self.initial_seconds * 2.0 ** min(failures - 1, 30))
        return base * (1.0 - self.jitter * rand())


@dataclass(slots=True)
class PeerPushState:
    """What the push to one peer region did (metrics)."""

    sent: int = 0
    failed: int = 0
    failures_in_a_row: int = 0
    # Revocations owed to the peer (all processes), sampled each sweep;
    # None until the first sample.
    backlog: int | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class RevocationPush:
    """Records revocations made here and pushes them to every peer region;
    records the ones peers push here. ``run()`` until cancelled."""

    def __init__(
        self,
        outbox: RevocationOutbox,
        receivers: RevocationReceivers,
        *,
        peers: Callable[[], Sequence[str]],
        backoff: PushBackoff = PushBackoff(),
        sweep_seconds: float = 2.0,
        batch: int = BATCH_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._receivers = receivers
        self._peers = peers
        self._backoff = backoff
        self._sweep = sweep_seconds
        self._batch = min(batch, BATCH_LIMIT)
        self._clock = clock
        self.states: dict[str, PeerPushState] = {}

    async def revoke_device(self, device_id: str, *, now: float) -> None:
        """Refuse the device's tokens issued up to ``now`` in every region."""
        peers = list(self._peers())
        await self._outbox.revoke_device(device_id, now=now, peers=peers)
        for peer in peers:
            self._state(peer).wake.set()

    async def unacknowledged(self, peer: str, device_ids: Sequence[str]) -> int:
        """Of these devices' revocations, how many ``peer`` has not
        acknowledged; a push to it is started at once when some are left."""
        left = await self._outbox.unacknowledged(peer, device_ids)
        if left:
            self._state(peer).wake.set()
        return left

    async def apply_from_peer(self, revocations: Sequence[Revocation], *, source: str) -> None:
        await self._outbox.apply_from_peer(revocations, source=source, now=self._clock())

    def _state(self, peer: str) -> PeerPushState:
        state = self.states.get(peer)
        if state is None:
            state = self.states[peer] = PeerPushState()
        return state

    async def push_once(self, peer: str) -> bool:
        """Send one batch of ``peer``'s outbox; True when something is left
        to send now, False when it is empty or the peer did not take it."""
        state = self._state(peer)
        batch = await self._outbox.unsent(peer, limit=self._batch)
        if not batch:
            state.failures_in_a_row = 0
            return False
        try:
            await self._receivers.apply_revocations(peer, batch)
        except ParleyError as exc:
            state.failed += len(batch)
            state.failures_in_a_row += 1
            log.warning("revocation_push_failed", peer=peer, pending=len(batch), error=exc.message)
            return False
        state.sent += len(batch)
        state.failures_in_a_row = 0
        await self._outbox.mark_sent(peer, batch)
        return len(batch) >= self._batch

    async def _push_forever(self, peer: str) -> None:
        state = self._state(peer)
        await self._outbox.add_peer(peer, now=self._clock())
        while True:
            state.wake.clear()
            try:
                more = await self.push_once(peer)
            except Exception as exc:  # the local database; the next sweep retries
                log.warning("revocation_outbox_failed", peer=peer, error=str(exc))
                state.failures_in_a_row += 1
                more = False
            if more:
                continue
            pause = self._backoff.delay(state.failures_in_a_row)
            if pause > 0:
                # A new revocation does not cut a backoff short: the peer is down.
                await asyncio.sleep(pause)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), timeout=self._sweep)

    async def run(self) -> None:
        """One push loop per peer of the topology in force, started and
        stopped as the topology changes."""
        loops: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                wanted = set(self._peers())
                for peer in wanted - set(loops):
                    loops[peer] = asyncio.create_task(self._supervised(peer))
                for peer in set(loops) - wanted:
                    loops.pop(peer).cancel()
                    self.states.pop(peer, None)
                await self._sample_backlogs(wanted)
                await asyncio.sleep(self._sweep)
        finally:
            for task in loops.values():
                task.cancel()
            await asyncio.gather(*loops.values(), return_exceptions=True)

    async def _sample_backlogs(self, peers: set[str]) -> None:
        for peer in sorted(peers):
            try:
                self._state(peer).backlog = await self._outbox.backlog(peer)
            except Exception as exc:  # the last value stays, like SampledCount
                log.warning("revocation_backlog_sample_failed", peer=peer, error=str(exc))

    async def _supervised(self, peer: str) -> None:
        # add_peer or the loop failing (the database away at start) must not
        # stop the push to this peer for the life of the process.
        while True:
            try:
                await self._push_forever(peer)
            except Exception as exc:
                log.warning("revocation_push_loop_failed", peer=peer, error=str(exc))
                await asyncio.sleep(self._backoff.maximum_seconds)
