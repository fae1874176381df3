"""The replicators follow the topology: one runs per peer region of the
topology in force, started when a reload adds the peer and stopped when one
removes it, with no restart; one whose endpoint or this region's residency
changed is restarted (it resumes from its cursor).

``plan_peers`` decides, purely, what to start and stop; ``ReplicatorFleet``
does it. A peer added later has no replication cursor, so its replicator
starts with a snapshot, as at a first start; a peer removed keeps its cursor,
and if it comes back the tombstone window decides between resuming and a
snapshot, as after a partition.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from parley_core.topology import Residency
from svc_message.domain.replicator import Replicator

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PeerTarget:
    """What a peer's replicator is built with: where it sends, and this
    region's residency, which its routing applies."""

    address: str
    residency: Residency | None = None


@dataclass(frozen=True, slots=True)
class PeerPlan:
    start: tuple[str, ...]
    stop: tuple[str, ...]


def plan_peers(desired: Mapping[str, PeerTarget], running: Mapping[str, PeerTarget]) -> PeerPlan:
    """A peer whose target changed is stopped and started again (its client
    dials the old address, its policy routes by the old residency)."""
    return PeerPlan(
        start=tuple(sorted(p for p, target in desired.items() if running.get(p) != target)),
        stop=tuple(sorted(p for p, target in running.items() if desired.get(p) != target)),
    )


class Closable(Protocol):
    async def close(self) -> None: ...


# Builds the replicator of a peer and the client it sends with.
ReplicatorFactory = Callable[[str, PeerTarget], tuple[Replicator, Closable]]


@dataclass(slots=True)
class _Running:
    target: PeerTarget
    replicator: Replicator
    client: Closable
    task: asyncio.Task[None]
    stop: asyncio.Event


class ReplicatorFleet:
    """The running replicators, one per peer. ``replicators`` is a live list
    (the metrics read it)."""

    def __init__(self, build: ReplicatorFactory, *, stop_grace_seconds: float = 5.0) -> None:
        self._build = build
        self._grace = stop_grace_seconds
        self._running: dict[str, _Running] = {}
        self._closed = False
        self.replicators: list[Replicator] = []

    def running(self) -> dict[str, PeerTarget]:
        return {peer: r.target for peer, r in self._running.items()}

    async def reconcile(self, desired: Mapping[str, PeerTarget]) -> PeerPlan:
        """Start and stop replicators so one runs per peer of ``desired``
        (one whose loop ended by a bug is started again)."""
        for peer in [p for p, r in self._running.items() if r.task.done()]:
            await self._stop(peer)
        plan = plan_peers({} if self._closed else desired, self.running())
        for peer in plan.stop:
            await self._stop(peer)
        for peer in plan.start:
            replicator, client = self._build(peer, desired[peer])
            stop = asyncio.Event()
            task = asyncio.create_task(replicator.run(stop))
            self._running[peer] = _Running(desired[peer], replicator, client, task, stop)
            self.replicators.append(replicator)
        if plan.start or plan.stop:
            log.info("replication_peers_changed", started=plan.start, stopped=plan.stop)
        return plan

    async def follow(
        self, desired: Callable[[], Mapping[str, PeerTarget]], *, poll_seconds: float
    ) -> None:
        """Reconcile with ``desired()`` every ``poll_seconds``, until cancelled."""
        while not self._closed:
            try:
                await self.reconcile(desired())
            except Exception:
                # The next poll tries again; the replicators running keep running.
                log.exception("replication_peers_reconcile_failed")
            await asyncio.sleep(poll_seconds)

    async def close(self) -> None:
        self._closed = True
        for peer in list(self._running):
            await self._stop(peer)

    async def _stop(self, peer: str) -> None:
        running = self._running.pop(peer)
        self.replicators.remove(running.replicator)
        # Asked first, so it releases its lease; cancelled if it does not
        # stop in time (a batch stuck at an unreachable peer).
        running.stop.set()
        done, _ = await asyncio.wait({running.task}, timeout=self._grace)
        if not done:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running.task
        elif not running.task.cancelled() and running.task.exception() is not None:
            log.warning("replicator_failed", peer=peer, error=str(running.task.exception()))
        await running.client.close()
