"""Region replication between two real SecantusDB servers over real gRPC on
loopback: changes written in the owner's database reach the peer's; apply is
idempotent; a conversation residency keeps home never reaches the peer; a
refused resume point is recovered by a snapshot with nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley_core.storage.mongo import Document
from svc_message.domain.replication import ReplicaApplier
from svc_message.model.replication import HighWater, ReplicatedKind
from svc_message.storage.replication import SnapshotReader
from tests.replication_world import (
    SOURCE,
    TARGET,
    Owner,
    database,
    ensure_indexes,
    held,
    mentions,
    peer_client,
    policy,
    replica_server,
    replicator,
    secantus,
    wait_for_count,
)

pytestmark = pytest.mark.slow

WAIT_SECONDS = 30.0


class Regions:
    def __init__(
        self,
        source: AsyncMongoClient[Document],
        target: AsyncMongoClient[Document],
        address: str,
        applier: ReplicaApplier,
    ) -> None:
        self.source = source
        self.target = target
        self.address = address
        self.applier = applier


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def regions(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Regions]:
    root: Path = tmp_path_factory.mktemp("regions")
    async with (
        secantus(root / SOURCE) as (_, source),
        secantus(root / TARGET) as (_, target),
    ):
        await ensure_indexes(source)
        await ensure_indexes(target)
        async with replica_server(target) as (address, applier):
            yield Regions(source, target, address, applier)


async def run_until(
    regions: Regions,
    conversation_id: str,
    count: int,
    *,
    timeout: float = WAIT_SECONDS,
    **kwargs: object,
) -> tuple[int, object]:
    """Runs a replicator until the target holds ``count`` messages of the
    conversation (bounded); the count and the replicator."""
    peer = peer_client(regions.address)
    worker = replicator(regions.source, peer, **kwargs)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        n = await wait_for_count(regions.target, conversation_id, count, timeout=timeout)
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_SECONDS)
        await peer.close()
    return n, worker


async def test_changes_reach_the_peer_in_order(regions: Regions) -> None:
    owner = Owner(regions.source)
    cid = "eu-stream"
    await owner.open(cid, ("eu:alice", "us:bob"))
    await owner.send(cid, "eu:alice", 5)
    n, _ = await run_until(regions, cid, 5)
    assert n == 5
    # While a replicator runs: a later send follows.
    peer = peer_client(regions.address)
    worker = replicator(regions.source, peer)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await owner.send(cid, "eu:alice", 7)
        assert await wait_for_count(regions.target, cid, 12, timeout=WAIT_SECONDS) == 12
        # The head and the sender's watermarks follow the messages (bounded wait).
        head: Document | None = None
        for _ in range(100):
            head = await database(regions.target)["conversations"].find_one({"_id": cid})
            if head is not None and head.get("last_seq") == 12:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_SECONDS)
        await peer.close()
    docs = await held(regions.target, cid)
    assert [d["seq"] for d in docs] == list(range(1, 13))
    source_docs = await held(regions.source, cid)
    assert docs == source_docs
    assert (
        head is not None and head["last_seq"] == 12 and head["member_ids"] == ["eu:alice", "us:bob"]
    )
    member = await database(regions.target)["members"].find_one({"_id": f"{cid}:eu:alice"})
    assert member is not None and member["read_seq"] == 12


async def test_apply_twice_holds_one_copy(regions: Regions) -> None:
    owner = Owner(regions.source)
    cid = "eu-twice"
    await owner.open(cid, ("eu:carol", "us:dave"))
    await owner.send(cid, "eu:carol", 10)
    docs = await SnapshotReader(database(regions.source)).above(cid, HighWater())
    peer = peer_client(regions.address)
    try:
        first = await peer.apply("b1", docs)
        again = await peer.apply("b1", docs)
    finally:
        await peer.close()
    assert first.applied == len(docs) and first.already_present == 0
    assert again.applied == 0 and again.already_present == len(docs)
    held_docs = await held(regions.target, cid)
    assert [d["seq"] for d in held_docs] == list(range(1, 11))


async def test_an_older_state_never_replaces_a_newer_one(regions: Regions) -> None:
    owner = Owner(regions.source)
    cid = "eu-states"
    await owner.open(cid, ("eu:erin", "us:frank"))
    (message_id,) = await owner.send(cid, "eu:erin", 1)
    reader = SnapshotReader(database(regions.source))
    before = await reader.above(cid, HighWater())
    coll = database(regions.source)["messages"]
    await coll.update_one({"_id": message_id}, {"$set": {"body": b"edited", "state_version": 5}})
    after = await reader.above(cid, HighWater())
    peer = peer_client(regions.address)
    try:
        await peer.apply("new", after)
        stale = await peer.apply("old", before)
    finally:
        await peer.close()
    assert stale.applied == 0
    doc = await database(regions.target)["messages"].find_one({"_id": message_id})
    assert doc is not None and doc["body"] == b"edited" and doc["state_version"] == 5


async def test_a_pinned_conversation_never_reaches_the_peer(regions: Regions) -> None:
    owner = Owner(regions.source)
    pinned, shared = "eu-pinned", "eu-shared"
    await owner.open(pinned, ("eu:gina", "eu:hal"))
    await owner.open(shared, ("eu:gina", "us:ivan"))
    await owner.send(pinned, "eu:gina", 5)
    await owner.send(shared, "eu:gina", 5)
    rules = policy(pinned={SOURCE: ("messages",)})
    n, _ = await run_until(regions, shared, 5, rules=rules)
    assert n == 5
    assert await mentions(regions.target, pinned) == []
    assert await mentions(regions.target, f"ciphertext {pinned}") == []
    # replicateTo without the peer: not even a conversation with a member there.
    barred = "eu-barred"
    await owner.open(barred, ("eu:gina", "us:ivan"))
    await owner.send(barred, "eu:gina", 3)
    await owner.send(shared, "eu:gina", 1)
    n, _ = await run_until(regions, shared, 6, timeout=3.0, rules=policy(replicate_to=()))
    assert n == 5  # waited out: nothing new arrived
    assert await mentions(regions.target, barred) == []


async def test_a_refused_resume_point_is_recovered_by_a_snapshot(regions: Regions) -> None:
    owner = Owner(regions.source)
    cid = "eu-lost"
    await owner.open(cid, ("eu:jo", "us:kim"))
    await owner.send(cid, "eu:jo", 20)
    n, _ = await run_until(regions, cid, 20)
    assert n == 20
    # While nothing replicates: more sends, and the persisted position is
    # replaced by one the database refuses.
    await owner.send(cid, "eu:jo", 30)
    cursors = database(regions.source)["replication_cursors"]
    changed = await cursors.update_one(
        {"_id": TARGET}, {"$set": {"resume_token": {"_data": "00deadbeef"}}}
    )
    assert changed.modified_count == 1
    before = regions.applier.counts.get(SOURCE)
    n, worker = await run_until(regions, cid, 50)
    assert n == 50
    assert worker.state.snapshots == 1  # type: ignore[attr-defined]
    docs = await held(regions.target, cid)
    assert [d["seq"] for d in docs] == list(range(1, 51))
    assert before is not None
    # The stream resumed after the snapshot: a later send arrives too.
    await owner.send(cid, "eu:jo", 1)
    n, worker = await run_until(regions, cid, 51)
    assert n == 51 and worker.state.snapshots == 0  # type: ignore[attr-defined]


async def test_messages_raise_the_replica_head_before_the_owner_head_arrives(
    regions: Regions,
) -> None:
    """A stream at the replica skips a conversation whose last_version it has
    read up to: the replica's head must cover the messages it applied, without
    waiting for the owner's projector to flush the owner's head."""
    owner = Owner(regions.source)
    cid = "eu-heads"
    await owner.open(cid, ("eu:ivy", "us:jon"))
    await owner.send(cid, "eu:ivy", 2)
    reader = SnapshotReader(database(regions.source))
    first = await reader.above(cid, HighWater())
    peer = peer_client(regions.address)
    try:
        await peer.apply("first", first)
        await owner.send(cid, "eu:ivy", 3)
        later = [
            d
            for d in await reader.above(cid, HighWater(last_seq=2, max_version=2))
            if d.kind == ReplicatedKind.MESSAGE
        ]
        await peer.apply("messages only", later)
    finally:
        await peer.close()
    versions = [int(d["version"]) for d in await held(regions.source, cid)]
    head = await database(regions.target)["conversations"].find_one({"_id": cid})
    assert head is not None
    assert (head["last_seq"], head["last_version"]) == (5, max(versions))
