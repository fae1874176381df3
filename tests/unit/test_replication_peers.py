"""The replicators follow the topology: the plan of which peers to start and
stop (pure), and the fleet that runs it against fake replicators."""

from __future__ import annotations

import asyncio

from parley_core.topology import Residency
from svc_message.domain.replication_peers import PeerPlan, PeerTarget, ReplicatorFleet, plan_peers


def targets(**addresses: str) -> dict[str, PeerTarget]:
    return {peer: PeerTarget(address) for peer, address in addresses.items()}


def test_a_peer_added_is_started_and_one_removed_is_stopped() -> None:
    running = targets(us="10.0.0.1:7102", ap="10.0.0.2:7102")
    desired = targets(us="10.0.0.1:7102", sa="10.0.0.3:7102")
    assert plan_peers(desired, running) == PeerPlan(start=("sa",), stop=("ap",))


def test_a_peer_whose_address_moved_is_restarted() -> None:
    plan = plan_peers(targets(us="10.0.0.9:7102"), targets(us="10.0.0.1:7102"))
    assert plan == PeerPlan(start=("us",), stop=("us",))


def test_a_peer_is_restarted_when_the_residency_changed() -> None:
    before = Residency(home_only_data=(), replicate_to=("us",))
    after = Residency(home_only_data=("messages",), replicate_to=("us",))
    plan = plan_peers(
        {"us": PeerTarget("10.0.0.1:7102", after)}, {"us": PeerTarget("10.0.0.1:7102", before)}
    )
    assert plan == PeerPlan(start=("us",), stop=("us",))


def test_nothing_changes_when_the_peers_are_the_same() -> None:
    same = targets(us="10.0.0.1:7102")
    assert plan_peers(same, dict(same)) == PeerPlan(start=(), stop=())
    assert plan_peers({}, {}) == PeerPlan(start=(), stop=())


class FakeReplicator:
    def __init__(self, peer: str, *, stubborn: bool = False) -> None:
        self.peer = peer
        self.stubborn = stubborn  # ignores the stop (a batch stuck at the peer)
        self.stopped = False

    async def run(self, stop: asyncio.Event) -> None:
        if self.stubborn:
            await asyncio.sleep(3600)
        await stop.wait()
        self.stopped = True


class FakeClient:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class Built:
    def __init__(self, stubborn: frozenset[str] = frozenset()) -> None:
        self.stubborn = stubborn
        self.made: list[tuple[str, str, FakeReplicator, FakeClient]] = []

    def __call__(self, peer: str, target: PeerTarget) -> tuple[FakeReplicator, FakeClient]:
        replicator, client = FakeReplicator(peer, stubborn=peer in self.stubborn), FakeClient()
        self.made.append((peer, target.address, replicator, client))
        return replicator, client


async def test_the_fleet_starts_and_stops_replicators_as_the_peers_change() -> None:
    built = Built(stubborn=frozenset({"ap"}))
    fleet = ReplicatorFleet(built, stop_grace_seconds=0.1)  # type: ignore[arg-type]
    await fleet.reconcile(targets(us="a:1", ap="b:1"))
    assert sorted(r.peer for r in fleet.replicators) == ["ap", "us"]
    assert fleet.running() == targets(us="a:1", ap="b:1")
    await asyncio.sleep(0)

    plan = await asyncio.wait_for(fleet.reconcile(targets(us="a:1", sa="c:1")), timeout=5)
    assert plan == PeerPlan(start=("sa",), stop=("ap",))
    assert [r.peer for r in fleet.replicators] == ["us", "sa"]
    ap = next(m for m in built.made if m[0] == "ap")
    assert ap[3].closed  # cancelled after the grace, its client closed

    await asyncio.wait_for(fleet.close(), timeout=5)
    assert fleet.replicators == [] and fleet.running() == {}
    assert all(client.closed for *_, client in built.made)
    assert all(r.stopped for peer, _, r, _ in built.made if peer != "ap")
    # Closed: a late reconcile starts nothing.
    await fleet.reconcile(targets(us="a:1"))
    assert fleet.running() == {}


async def test_a_replicator_whose_loop_ended_is_started_again() -> None:
    built = Built()
    fleet = ReplicatorFleet(built, stop_grace_seconds=0.1)  # type: ignore[arg-type]
    await fleet.reconcile(targets(us="a:1"))
    first = built.made[0][2]
    first_task = fleet._running["us"].task
    first_task.cancel()
    await asyncio.gather(first_task, return_exceptions=True)
    await fleet.reconcile(targets(us="a:1"))
    assert len(built.made) == 2 and fleet.replicators == [built.made[1][2]]
    assert first not in fleet.replicators
    await fleet.close()


async def test_follow_reconciles_with_the_topology_in_force() -> None:
    built = Built()
    fleet = ReplicatorFleet(built, stop_grace_seconds=0.1)  # type: ignore[arg-type]
    topology = {"us": "a:1"}
    following = asyncio.create_task(fleet.follow(lambda: targets(**topology), poll_seconds=0.01))
    try:
        for _ in range(200):
            if fleet.running() == targets(us="a:1"):
                break
            await asyncio.sleep(0.01)
        topology.update(sa="c:1")
        del topology["us"]
        for _ in range(200):
            if fleet.running() == targets(sa="c:1"):
                break
            await asyncio.sleep(0.01)
        assert fleet.running() == targets(sa="c:1")
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await fleet.close()
