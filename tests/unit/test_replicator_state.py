"""What a replicator's gauges say once another process holds the peer's lease:
nothing of its own (docs/ARCHITECTURE.md, "Regions: replication"; the region's
lag is the highest over its processes)."""

from __future__ import annotations

import asyncio
from typing import Any

from svc_message.domain.replication import ReplicationPolicy
from svc_message.domain.replicator import Replicator


class Refused:
    """Leases held by another process."""

    def __init__(self) -> None:
        self.claims = 0
        self.released: list[str] = []

    async def claim(self, peer: str, *, owner: str, now: float, until: float) -> bool:
        self.claims += 1
        return False

    async def release(self, peer: str, *, owner: str) -> None:
        self.released.append(peer)


class Unused:
    """Feed, cursors, snapshots and peer: never reached without the lease."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} used without the lease")


def _policy() -> ReplicationPolicy:
    return ReplicationPolicy(
        region="eu",
        replicate_to=frozenset({"us"}),
        owner_region=lambda _: "eu",
        home_region=lambda _: "us",
        home_only_data=lambda _: (),
    )


async def test_losing_the_lease_clears_the_lag_and_backlog_it_reported() -> None:
    stop = asyncio.Event()
    leases = Refused()

    async def sleep(_: float) -> None:
        stop.set()

    unused: Any = Unused()
    replicator = Replicator(
        peer="us",
        instance_id="p1",
        policy=_policy(),
        feed=unused,
        cursors=unused,
        leases=leases,
        snapshots=unused,
        client=unused,
        clock=lambda: 1000.0,
        sleep=sleep,
    )
    # What it read while it still held the lease, before a stall lost it.
    replicator.state.lag_seconds = 42.0
    replicator.state.backlog = 17
    replicator.state.applied = 5
    await asyncio.wait_for(replicator.run(stop), timeout=5)
    assert leases.claims == 1
    assert (replicator.state.lag_seconds, replicator.state.backlog) == (0.0, 0)
    # Counters are totals of what it did; they stay.
    assert replicator.state.applied == 5
    assert leases.released == ["us"]
