"""The tombstone window (docs/design/regions.md, part 7): a peer whose last
acknowledged batch is older than the window is resynced from a snapshot
instead of being sent the stream from its old position; a quiet stream keeps
its position fresh so a peer that merely had nothing to receive is not."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pytest

from svc_message.domain.replication import ReplicationPolicy, beyond_tombstone_window
from svc_message.domain.replicator import IDLE_SAVE_SECONDS, Replicator, ReplicatorSettings
from svc_message.model.replication import (
    ApplyOutcome,
    FeedChange,
    HighWater,
    ReplicatedDoc,
    ReplicationCursor,
)

DAY = 86400.0
WINDOW = 30 * DAY
NOW = 1_000 * DAY
OLD = {"token": "old"}
NOW_TOKEN = {"token": "now"}
QUIET_TOKEN = {"token": "quiet"}
# The replicator's clock runs this much faster than the loop's, so an idle
# minute passes in a tenth of a second.
SPEED = 600.0


@pytest.mark.parametrize(
    ("acknowledged_at", "beyond"),
    [
        (None, True),
        (NOW - 31 * DAY, True),
        (NOW - WINDOW - 1, True),
        (NOW - WINDOW, False),
        (NOW - 29 * DAY, False),
        (NOW, False),
        # A clock that went back is not a partition.
        (NOW + DAY, False),
    ],
)
def test_the_window_decision(acknowledged_at: float | None, beyond: bool) -> None:
    assert beyond_tombstone_window(acknowledged_at, now=NOW, window_seconds=WINDOW) is beyond


class Granted:
    async def claim(self, peer: str, *, owner: str, now: float, until: float) -> bool:
        return True

    async def release(self, peer: str, *, owner: str) -> None:
        return None


class Cursors:
    def __init__(self, cursor: ReplicationCursor | None) -> None:
        self.cursor = cursor
        self.saved: list[tuple[Mapping[str, Any], float]] = []

    async def load(self, peer: str) -> ReplicationCursor | None:
        return self.cursor

    async def save(
        self,
        peer: str,
        resume_token: Mapping[str, Any],
        *,
        now: float,
        lag_seconds: float,
        backlog: int,
    ) -> None:
        self.saved.append((resume_token, now))
        self.cursor = ReplicationCursor(peer, resume_token, now)


class QuietStream:
    """No change ever."""

    async def next(self, timeout: float) -> FeedChange | None:
        await asyncio.sleep(min(timeout, 0.02))
        return None

    def position(self) -> Mapping[str, Any] | None:
        return QUIET_TOKEN

    async def close(self) -> None:
        return None


class Feed:
    def __init__(self) -> None:
        self.opened: list[Mapping[str, Any] | None] = []

    async def open(self, resume_token: Mapping[str, Any] | None) -> QuietStream:
        self.opened.append(resume_token)
        return QuietStream()

    async def position_now(self) -> Mapping[str, Any]:
        return NOW_TOKEN


class Snapshots:
    """One conversation routed to the peer, whose copy the peer holds."""

    def __init__(self) -> None:
        self.asked: list[HighWater] = []

    async def conversation_page(
        self, *, after_id: str, limit: int
    ) -> list[tuple[str, tuple[str, ...]]]:
        return [] if after_id else [("c1", ("alice", "bob"))]

    async def member_ids(self, conversation_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        return {}

    async def above(self, conversation_id: str, high_water: HighWater) -> list[ReplicatedDoc]:
        self.asked.append(high_water)
        return []

    async def settings_of(self, conversation_id: str) -> list[ReplicatedDoc]:
        return []


class Peer:
    async def apply(self, batch_id: str, docs: Sequence[ReplicatedDoc]) -> ApplyOutcome:
        return ApplyOutcome(applied=len(docs))

    async def high_water(self, conversation_ids: Sequence[str]) -> dict[str, HighWater]:
        return {c: HighWater(last_seq=9, max_version=12) for c in conversation_ids}


def _replicator(
    cursors: Cursors, feed: Feed, snapshots: Snapshots, clock: Callable[[], float]
) -> Replicator:
    return Replicator(
        peer="us",
        instance_id="p1",
        policy=ReplicationPolicy(
            region="eu",
            replicate_to=frozenset({"us"}),
            owner_region=lambda _: "eu",
            home_region=lambda account: "us" if account == "bob" else "eu",
            home_only_data=lambda _: (),
        ),
        feed=feed,
        cursors=cursors,
        leases=Granted(),
        snapshots=snapshots,
        client=Peer(),
        clock=clock,
        # An empty batch waits a third of the lease: 0.1 s.
        settings=ReplicatorSettings(tombstone_window_seconds=WINDOW, lease_seconds=0.3),
    )


async def _run(
    acknowledged_days_ago: float, run_seconds: float = 0.3
) -> tuple[Replicator, Cursors, Feed, Snapshots]:
    loop = asyncio.get_running_loop()
    started = loop.time()

    def clock() -> float:
        return NOW + (loop.time() - started) * SPEED

    stop = asyncio.Event()
    cursors = Cursors(ReplicationCursor("us", OLD, NOW - acknowledged_days_ago * DAY))
    feed = Feed()
    snapshots = Snapshots()
    replicator = _replicator(cursors, feed, snapshots, clock)
    loop.call_later(run_seconds, stop.set)
    await asyncio.wait_for(replicator.run(stop), timeout=5)
    return replicator, cursors, feed, snapshots


async def test_a_peer_cut_off_longer_than_the_window_is_resynced_not_resumed() -> None:
    replicator, cursors, feed, snapshots = await _run(31)
    # The old position is never resumed: the stream opens where the snapshot began.
    assert feed.opened == [NOW_TOKEN]
    assert (replicator.state.snapshots, replicator.state.resyncs) == (1, 1)
    # The snapshot asked the peer and read the conversation from its marks
    # (storage adds every erased entry and the member removal).
    assert snapshots.asked == [HighWater(last_seq=9, max_version=12)]
    assert cursors.saved[0][0] == NOW_TOKEN


async def test_a_peer_within_the_window_resumes_the_stream() -> None:
    replicator, _, feed, snapshots = await _run(29)
    assert feed.opened == [OLD]
    assert (replicator.state.snapshots, replicator.state.resyncs) == (0, 0)
    assert snapshots.asked == []


async def test_an_idle_stream_keeps_its_acknowledged_time_fresh() -> None:
    _, cursors, feed, _ = await _run(29, run_seconds=0.6)
    assert feed.opened == [OLD]
    # About six idle minutes passed: the position was saved, a minute apart.
    times = [at for token, at in cursors.saved if token == QUIET_TOKEN]
    assert len(times) >= 2, cursors.saved
    assert times[0] >= NOW + IDLE_SAVE_SECONDS
    assert all(b - a >= IDLE_SAVE_SECONDS for a, b in itertools.pairwise(times))
