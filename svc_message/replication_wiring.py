"""How svc_message builds region replication (the composition root's helper,
svc_message/app.py; docs/ARCHITECTURE.md "Regions: replication").

Every process serves RegionReplicationService (what peers send here is
applied to this region's replica). Replicators, one per peer of the topology
in force, follow its reloads (domain/replication_peers.py): a peer added is
started, one removed is stopped, without a restart. Without a topology file
nothing is started.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from parley_core.auth.credentials import ServiceCredential
from parley_core.config import ReplicationSettings
from parley_core.hlc import HybridClock
from parley_core.regions import RegionMap
from parley_core.storage.mongo import Database
from parley_core.topology import Topology
from svc_message.domain.inbox_settings import InboxSettings
from svc_message.domain.replication import (
    ReplicaApplier,
    ReplicationPolicy,
    merge_member_document,
)
from svc_message.domain.replication_peers import PeerTarget, ReplicatorFleet
from svc_message.domain.replicator import Replicator, ReplicatorSettings
from svc_message.model.member_replica import MemberReplica
from svc_message.model.replication import ApplyOutcome, ReplicatedDoc
from svc_message.peers.replication import ReplicationPeer
from svc_message.replication_metrics import ReplicationMetrics
from svc_message.servicer.replication import RegionReplicationServicer
from svc_message.storage.doorbell import Doorbell
from svc_message.storage.inbox import InboxSettingsStore
from svc_message.storage.replica import ReplicaStore
from svc_message.storage.replication import (
    FeedTail,
    ReplicationCursorStore,
    ReplicationLeaseStore,
    SnapshotReader,
)


@dataclass
class Replication:
    servicer: RegionReplicationServicer
    metrics: ReplicationMetrics
    fleet: ReplicatorFleet
    # The peers of the topology in force, each with its svc_message address.
    desired_peers: Callable[[], dict[str, PeerTarget]]

    async def run(self, *, poll_seconds: float) -> None:
        """Keep one replicator per peer of the topology in force, until cancelled."""
        await self.fleet.follow(self.desired_peers, poll_seconds=poll_seconds)

    async def close(self) -> None:
        await self.fleet.close()


def replication_policy(topology: Topology, regions: Callable[[], RegionMap]) -> ReplicationPolicy:
    home_only = tuple(topology.residency.home_only_data)

    def home_only_data(region: str) -> Collection[str]:
        # Only this region's residency is in its topology; a peer applies its own.
        return home_only if region == topology.region else ()

    def region_of(tagged_id: str) -> str:
        return regions().region_or_self(tagged_id)

    return ReplicationPolicy(
        region=topology.region,
        replicate_to=frozenset(topology.residency.replicate_to),
        owner_region=region_of,
        home_region=region_of,
        home_only_data=home_only_data,
    )


def build_inbox_settings(store: InboxSettingsStore, *, region: str, skew_ms: int) -> InboxSettings:
    """The inbox settings with this process's hybrid logical clock: one
    writer per process (node id ``region.instance``, fresh at every start:
    ``write_stamp`` keeps a restarted process's writes above its earlier
    ones), reading the physical clock plus the configured skew (0 but in
    tests that run a region's clock off)."""

    def physical_ms() -> int:
        return int(time.time() * 1000) + skew_ms

    clock = HybridClock(f"{region}.{uuid.uuid4().hex[:12]}")
    return InboxSettings(store, clock=clock, physical_ms=physical_ms)


def replicator_settings(config: ReplicationSettings) -> ReplicatorSettings:
    """The replicators' settings from message.replication."""
    return ReplicatorSettings(
        batch_changes=config.batch_changes,
        batch_seconds=config.batch_seconds,
        lease_seconds=config.lease_seconds,
        retry_seconds=config.retry_seconds,
        snapshot_page=config.snapshot_page,
        tombstone_window_seconds=config.tombstone_window_days * 86400.0,
    )


def replicator_clock(offset_file: str | None) -> Callable[[], float]:
    """The replicators' clock: the wall clock, moved by the seconds the
    ``clock_offset_file`` test hook holds (message.replication), so a test
    can let a month pass for the tombstone window without waiting."""
    if offset_file is None:
        return time.time
    path = Path(offset_file)
    seen: list[float] = [-1.0, 0.0]  # the file's mtime, its offset

    def clock() -> float:
        try:
            mtime = path.stat().st_mtime
            if mtime != seen[0]:
                text = path.read_text().strip()
                seen[:] = [mtime, float(text) if text else 0.0]
        except (OSError, ValueError):
            seen[:] = [-1.0, 0.0]
        return time.time() + seen[1]

    return clock


def desired_peers(topology: Topology | None) -> dict[str, PeerTarget]:
    """The peer regions to replicate to, with their svc_message address."""
    if topology is None:
        return {}
    peers = {peer.name: peer.peer_address("message") for peer in topology.peers}
    return {
        name: PeerTarget(address, topology.residency)
        for name, address in peers.items()
        if address is not None
    }


def build_replication(
    db: Database,
    *,
    doorbell: Doorbell,
    topology: Callable[[], Topology | None],
    regions: Callable[[], RegionMap],
    credential: ServiceCredential | None,
    instance_id: str,
    settings: ReplicatorSettings,
    clock: Callable[[], float] = time.time,
    inbox_settings: InboxSettings,
    settings_merged: Callable[[str, str], Awaitable[None]] | None = None,
) -> Replication:
    """``topology``: the topology in force (it follows reloads)."""

    async def merge_settings(state: MemberReplica) -> bool:
        changed = await inbox_settings.merge(state)
        if changed and settings_merged is not None:
            await settings_merged(state.conversation_id, state.account_id)
        return changed

    replica = ReplicaStore(db, merge_member=merge_member_document, merge_settings=merge_settings)

    async def wake_streams(docs: Sequence[ReplicatedDoc], outcome: ApplyOutcome) -> None:
        conversations = {d.conversation_id for d in docs}
        await doorbell.replicated(conversations, outcome.wake_accounts)

    applier = ReplicaApplier(replica, on_applied=wake_streams)

    def build_replicator(peer: str, target: PeerTarget) -> tuple[Replicator, ReplicationPeer]:
        in_force = topology()
        if in_force is None or credential is None:  # desired() was empty then
            raise RuntimeError("no topology or service credential to replicate with")
        client = ReplicationPeer(
            source_region=in_force.region,
            address=target.address,
            bearer_token=credential.bearer_token,
        )
        replicator = Replicator(
            peer=peer,
            instance_id=instance_id,
            # Should a reload land between desired() and here, the target
            # differs from the next desired() and the replicator is restarted.
            policy=replication_policy(in_force, regions),
            feed=FeedTail(db),
            cursors=ReplicationCursorStore(db),
            leases=ReplicationLeaseStore(db),
            snapshots=SnapshotReader(db),
            client=client,
            clock=clock,
            settings=settings,
        )
        return replicator, client

    def desired() -> dict[str, PeerTarget]:
        return {} if credential is None else desired_peers(topology())

    fleet = ReplicatorFleet(build_replicator)
    return Replication(
        servicer=RegionReplicationServicer(applier),
        metrics=ReplicationMetrics(fleet.replicators, applier),
        fleet=fleet,
        desired_peers=desired,
    )
