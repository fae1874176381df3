"""The replicator's group commit (docs/ARCHITECTURE.md, "Regions:
replication"): a change is sent as soon as it is read, changes read while a
batch is at the peer form the next batch, the position persisted after a batch
is its last change's, and a reader failure ends the tail so the run recovers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from svc_message.domain.replication import ReplicationPolicy
from svc_message.domain.replicator import Replicator, ReplicatorSettings
from svc_message.model.replication import (
    ApplyOutcome,
    FeedChange,
    HighWater,
    ReplicatedDoc,
    ReplicatedKind,
    ReplicationCursor,
    ResumePointLost,
)

TIMEOUT = 5.0


def _change(n: int) -> FeedChange:
    doc = {"_id": f"m{n}", "conversation_id": "eu-c"}
    return FeedChange(
        kind=ReplicatedKind.MESSAGE,
        conversation_id="eu-c",
        document=doc,
        encoded=b"",
        token={"n": n},
        committed_at=0.0,
    )


class QueueStream:
    def __init__(self, changes: asyncio.Queue[FeedChange | Exception]) -> None:
        self._changes = changes

    async def next(self, timeout: float) -> FeedChange | None:
        try:
            item = await asyncio.wait_for(self._changes.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def position(self) -> Any:
        return None

    async def close(self) -> None:
        pass


class QueueFeed:
    def __init__(self) -> None:
        self.changes: asyncio.Queue[FeedChange | Exception] = asyncio.Queue()
        self.opened_from: list[Any] = []

    async def open(self, resume_token: Any) -> QueueStream:
        self.opened_from.append(resume_token)
        return QueueStream(self.changes)

    async def position_now(self) -> Any:
        return {"snapshot": True}


class Cursors:
    def __init__(self) -> None:
        self.saved: list[Any] = []

    async def load(self, peer: str) -> ReplicationCursor | None:
        token = self.saved[-1] if self.saved else {"n": 0}
        # Saved just now: a cursor older than the tombstone window would snapshot.
        updated_at = asyncio.get_running_loop().time()
        return ReplicationCursor(peer=peer, resume_token=token, updated_at=updated_at)

    async def save(
        self, peer: str, resume_token: Any, *, now: float, lag_seconds: float, backlog: int
    ) -> None:
        self.saved.append(resume_token)


class Leases:
    async def claim(self, peer: str, *, owner: str, now: float, until: float) -> bool:
        return True

    async def release(self, peer: str, *, owner: str) -> None:
        pass


class Snapshots:
    async def conversation_page(self, *, after_id: str, limit: int) -> list[Any]:
        return []

    async def member_ids(self, conversation_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        return dict.fromkeys(conversation_ids, ("us:b",))

    async def above(self, conversation_id: str, high_water: HighWater) -> list[ReplicatedDoc]:
        return []

    async def settings_of(self, conversation_id: str) -> list[ReplicatedDoc]:
        return []


class GatedPeer:
    """Holds each Apply until the test lets it through."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.arrived = asyncio.Event()
        self.gate = asyncio.Event()

    async def apply(self, batch_id: str, docs: Sequence[ReplicatedDoc]) -> ApplyOutcome:
        self.batches.append([d.conversation_id for d in docs])
        self.arrived.set()
        await self.gate.wait()
        return ApplyOutcome(applied=len(docs))

    async def high_water(self, conversation_ids: Sequence[str]) -> dict[str, HighWater]:
        return {}


def _replicator(feed: QueueFeed, cursors: Cursors, peer: GatedPeer) -> Replicator:
    policy = ReplicationPolicy(
        region="eu",
        replicate_to=frozenset({"us"}),
        owner_region=lambda _: "eu",
        home_region=lambda account: account.split(":", 1)[0],
        home_only_data=lambda _: (),
    )
    loop = asyncio.get_running_loop()
    return Replicator(
        peer="us",
        instance_id="p1",
        policy=policy,
        feed=feed,
        cursors=cursors,
        leases=Leases(),
        snapshots=Snapshots(),
        client=peer,
        clock=loop.time,
        settings=ReplicatorSettings(retry_seconds=0.01),
    )


async def _wait(condition: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.005)


async def test_changes_read_while_a_batch_is_at_the_peer_form_the_next_batch() -> None:
    feed, cursors, peer = QueueFeed(), Cursors(), GatedPeer()
    stop = asyncio.Event()
    running = asyncio.create_task(_replicator(feed, cursors, peer).run(stop))
    try:
        # A lone change goes at once: no window holds it back.
        feed.changes.put_nowait(_change(1))
        async with asyncio.timeout(1.0):
            await peer.arrived.wait()
        assert peer.batches == [["eu-c"]]
        # While it is at the peer, three more arrive; the position stays put.
        for n in (2, 3, 4):
            feed.changes.put_nowait(_change(n))
        await _wait(lambda: feed.changes.empty())
        assert cursors.saved == []
        peer.gate.set()
        await _wait(lambda: len(cursors.saved) == 2)
        assert peer.batches == [["eu-c"], ["eu-c"] * 3]
        # Each persisted position is the last change of its acknowledged batch.
        assert cursors.saved == [{"n": 1}, {"n": 4}]
    finally:
        stop.set()
        feed.changes.put_nowait(_change(99))
        await asyncio.wait_for(running, TIMEOUT)


async def test_a_reader_failure_ends_the_tail_and_the_run_snapshots() -> None:
    feed, cursors, peer = QueueFeed(), Cursors(), GatedPeer()
    peer.gate.set()
    stop = asyncio.Event()
    running = asyncio.create_task(_replicator(feed, cursors, peer).run(stop))
    try:
        feed.changes.put_nowait(ResumePointLost("token refused"))
        # The lost resume point makes the next round snapshot, which persists
        # the position it took first and tails from there.
        await _wait(lambda: {"snapshot": True} in cursors.saved)
        await _wait(lambda: len(feed.opened_from) == 2)
        assert feed.opened_from == [{"n": 0}, {"snapshot": True}]
    finally:
        stop.set()
        feed.changes.put_nowait(_change(99))
        await asyncio.wait_for(running, TIMEOUT)
