"""Presence pushed by a peer region (PresenceRegionService.ApplyPresence):
checked against the topology, stored per source region (storage/remote.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from parley_core.errors import FailedPrecondition, Reason
from parley_core.topology import Topology
from svc_presence.domain.presence import presence_unavailable
from svc_presence.model import ExportEntry, PresenceStoreDown, RegionStats
from svc_presence.ports import RemoteStates

# The longest a pushed entry may be kept (a sender asking for more gets this).
MAX_EXPIRES_IN_MS = 86_400_000


class RegionIntake:
    def __init__(
        self,
        store: RemoteStates,
        stats: RegionStats,
        *,
        topology: Callable[[], Topology | None],
    ) -> None:
        self._store = store
        self._stats = stats
        self._topology = topology

    async def apply(
        self, *, source: str, entries: Sequence[ExportEntry], digest: bool, now: float
    ) -> int:
        topology = self._topology()
        if topology is None or source not in {p.name for p in topology.peers}:
            raise FailedPrecondition(
                f"region {source!r} is not a peer of this region in its topology",
                reason=Reason.REGION_UNKNOWN,
            )
        bounded = [
            ExportEntry(e.account_id, e.online, e.seen_ms, min(e.expires_in_ms, MAX_EXPIRES_IN_MS))
            for e in entries
        ]
        try:
            applied = await self._store.apply(source, bounded, now_ms=int(now * 1000))
        except PresenceStoreDown:
            raise presence_unavailable() from None
        self._stats.add(self._stats.received, source, len(bounded))
        if digest:
            self._stats.digest_received_at[source] = now
        return applied
