"""Presence across regions, as pure functions of the entries and ``now``.

Every region pushes the online state of the devices connected to it to its
peers (domain/export.py); the receiver keeps one entry per account and
source region, each until an expiry of its own clock. An account is online
when it is online here or in any region whose entry has not expired; its
last seen is the latest of them all. The storage script that applies pushed
entries (storage/remote.py) follows ``takes`` exactly; the reads and the
hub combine with ``remote_view`` and ``combined``.
"""

from __future__ import annotations

from collections.abc import Mapping

from parley_core.regions import RegionMap
from parley_core.topology import Topology
from svc_presence.model import LiveState, RegionEntry, RemoteView

# The data kind a region's residency.homeOnlyData names to keep presence home.
PRESENCE_DATA = "presence"
NO_REMOTE = RemoteView(online=False, seen_ms=None, until_ms=0)


def rank(online: bool, seen_ms: int) -> tuple[int, int]:
    """Where a state sits in an account's history: an offline state at the
    same instant as an online one came after it (as LiveState.order)."""
    return (seen_ms, 0 if online else 1)


def takes(incoming: RegionEntry, held: RegionEntry | None, *, now_ms: int) -> bool:
    """Whether a pushed entry replaces the one held for the same account and
    region: always over none or an expired one, else when it is not older.
    Equal ones are taken too: a digest repeating an online state renews it."""
    if held is None or held.expires_ms <= now_ms:
        return True
    return rank(incoming.online, incoming.seen_ms) >= rank(held.online, held.seen_ms)


def remote_view(entries: Mapping[str, RegionEntry], *, now_ms: int) -> RemoteView:
    """What the unexpired entries of every peer region say together."""
    live = [e for e in entries.values() if e.expires_ms > now_ms]
    if not live:
        return NO_REMOTE
    online_until = max((e.expires_ms for e in live if e.online), default=0)
    return RemoteView(
        online=online_until > 0,
        seen_ms=max(e.seen_ms for e in live),
        until_ms=online_until,
    )


def combined(local: LiveState, remote: RemoteView | None, *, now_ms: int) -> LiveState:
    """Online here or in any region (whose entry is still good); the latest last seen."""
    if remote is None:
        return local
    remote_online = remote.online and remote.until_ms > now_ms
    seen = max((s for s in (local.seen_ms, remote.seen_ms) if s is not None), default=None)
    return LiveState(online=local.online or remote_online, seen_ms=seen)


def exportable(account_id: str, *, topology: Topology, regions: RegionMap) -> bool:
    """Whether this region may push the account's presence to its peers.

    A region whose residency keeps presence home (``homeOnlyData`` holds
    ``presence``) never exports the presence of the accounts homed in it;
    accounts homed elsewhere that connect here are exported (their home
    needs it, and this region's residency is not theirs to decide).
    """
    if PRESENCE_DATA not in topology.residency.home_only_data:
        return True
    return regions.region_of(account_id) != topology.region


def parse_remote(payload: bytes) -> RemoteView | None:
    """A remote-state payload on an account's channel, ``r<0|1>:<seen>:<until>``
    (published when the regions' combined view flips); None for anything else."""
    if not payload.startswith(b"r"):
        return None
    parts = payload[1:].split(b":")
    if len(parts) != 3 or parts[0] not in (b"0", b"1"):
        return None
    try:
        seen, until = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    return RemoteView(online=parts[0] == b"1", seen_ms=seen or None, until_ms=until)
