"""Which peer regions a conversation's changes replicate to, and when a
batch of changes is complete. Pure: the owner decision, account homes and
each region's residency are injected callables (parley_core's tagged ids and
the account directory provide them), and time is passed in.

Rules (docs/design/regions.md, "Part 3: replication"):
- only conversations this region owns are replicated from here, except a
  member's inbox settings: a CRDT state written in any region, sent by
  whichever region holds a change to every other region holding the
  conversation (its owner and its members' homes);
- they go to the regions where a member is homed, other than this one;
- never to a region missing from this region's ``residency.replicateTo``
  (the operator writes the list resolved: every peer unless restricted);
- a conversation whose members are all homed in regions whose
  ``homeOnlyData`` holds ``messages`` stays within those regions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from svc_message.model.replication import (
    ApplyOutcome,
    FeedChange,
    HighWater,
    ReplicatedDoc,
    ReplicatedKind,
)

# The residency kind that keeps a conversation's messages in its members' homes.
MESSAGES_DATA = "messages"


@dataclass(frozen=True)
class ReplicationPolicy:
    region: str
    replicate_to: frozenset[str]
    owner_region: Callable[[str], str]
    home_region: Callable[[str], str]
    home_only_data: Callable[[str], Collection[str]]

    def owned(self, conversation_id: str) -> bool:
        return self.owner_region(conversation_id) == self.region

    def peers_for(self, conversation_id: str, member_ids: Iterable[str]) -> frozenset[str]:
        """The peer regions this conversation's changes go to (empty when it is
        not owned here or nobody outside this region may hold it)."""
        if not self.owned(conversation_id):
            return frozenset()
        homes = {self.home_region(m) for m in member_ids}
        peers = (homes - {self.region}) & self.replicate_to
        if homes and all(MESSAGES_DATA in self.home_only_data(h) for h in homes):
            # Pinned: it never leaves its members' home regions (already true of
            # ``peers``; kept explicit so a wider fan-out can never break it).
            peers &= homes
        return frozenset(peers)

    def sends_to(self, peer: str, conversation_id: str, member_ids: Iterable[str]) -> bool:
        return peer in self.peers_for(conversation_id, member_ids)

    def settings_peers_for(self, conversation_id: str, member_ids: Iterable[str]) -> frozenset[str]:
        """The peer regions a member's inbox settings of this conversation go
        to, whichever region wrote them: every region that holds the
        conversation (its owner and its members' homes), within residency.
        Settings are merged, not owned, so a replica sends them too."""
        homes = {self.home_region(m) for m in member_ids}
        holders = homes | {self.owner_region(conversation_id)}
        peers = (holders - {self.region}) & self.replicate_to
        if homes and all(MESSAGES_DATA in self.home_only_data(h) for h in homes):
            peers &= homes
        return frozenset(peers)

    def sends_settings_to(self, peer: str, conversation_id: str, member_ids: Iterable[str]) -> bool:
        return peer in self.settings_peers_for(conversation_id, member_ids)


def member_ids_of(conversation: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The members a ``conversations`` document names (none when unknown)."""
    if conversation is None:
        return ()
    return tuple(conversation.get("member_ids") or ())


def conversations_to_look_up(changes: Iterable[FeedChange]) -> set[str]:
    """Conversations whose member list a batch needs from the database: every
    change but a conversation document's own (which names its members)."""
    return {
        c.conversation_id
        for c in changes
        if c.kind != ReplicatedKind.CONVERSATION or c.document is None
    }


def route(
    changes: Iterable[FeedChange],
    *,
    peer: str,
    policy: ReplicationPolicy,
    members: Mapping[str, tuple[str, ...]],
) -> list[FeedChange]:
    """The changes of a batch that go to ``peer``, in stream order. A deleted
    document goes nowhere: the hot log's deletions are archive moves, and
    erasures replicate as tombstones (regions.md, part 7)."""
    out: list[FeedChange] = []
    for change in changes:
        if change.document is None:
            continue
        if change.kind == ReplicatedKind.CONVERSATION:
            member_ids = member_ids_of(change.document)
        else:
            member_ids = members.get(change.conversation_id, ())
        if change.kind == ReplicatedKind.SETTINGS:
            sends = policy.sends_settings_to(peer, change.conversation_id, member_ids)
        else:
            sends = policy.sends_to(peer, change.conversation_id, member_ids)
        if sends:
            out.append(change)
    return out


def beyond_tombstone_window(
    acknowledged_at: float | None, *, now: float, window_seconds: float
) -> bool:
    """Whether a peer last acknowledged a batch longer than the tombstone
    window ago (or never): it then resyncs from a snapshot instead of
    merging the stream, since nothing promises that what was erased
    meanwhile is still in the stream for it (regions.md, part 7)."""
    if acknowledged_at is None:
        return True
    return now - acknowledged_at > window_seconds


def lag_seconds(oldest_unacknowledged: float | None, *, now: float) -> float:
    """How far the peer is behind: the age of the oldest change it has not
    acknowledged (0 when it has everything read so far)."""
    if oldest_unacknowledged is None:
        return 0.0
    return max(0.0, now - oldest_unacknowledged)


def merge_member_document(
    existing: Mapping[str, Any] | None, incoming: Mapping[str, Any]
) -> dict[str, Any]:
    """The member document a replica keeps. Watermarks only rise; membership
    comes from the side with the later membership change.

    Per-member inbox settings are not in this document: they replicate as
    their own kind (``inbox_settings``) and merge as CRDTs
    (``domain.inbox_settings.InboxSettings.merge``).
    """
    if existing is None:
        return dict(incoming)
    merged = dict(incoming)
    for key in ("delivered_seq", "read_seq"):
        merged[key] = max(int(existing.get(key, 0)), int(incoming.get(key, 0)))

    def membership_version(doc: Mapping[str, Any]) -> int:
        return max(int(doc.get("joined_version", 0)), int(doc.get("left_version", 0)))

    if membership_version(existing) > membership_version(incoming):
        for key in ("active", "joined_seq", "joined_version", "joined_at"):
            if key in existing:
                merged[key] = existing[key]
        for key in ("left_seq", "left_version", "left_at"):
            if key in existing:
                merged[key] = existing[key]
            else:
                merged.pop(key, None)
    return merged


class Replica(Protocol):
    async def apply(self, docs: Sequence[ReplicatedDoc]) -> ApplyOutcome: ...
    async def high_water(self, conversation_ids: Iterable[str]) -> dict[str, HighWater]: ...


class ReplicaApplier:
    """The replica side of RegionReplicationService, counting what it did."""

    def __init__(
        self,
        replica: Replica,
        *,
        on_applied: Callable[[Sequence[ReplicatedDoc], ApplyOutcome], Awaitable[None]]
        | None = None,
    ) -> None:
        self._replica = replica
        # Told about batches that wrote something, so live streams catch up.
        self._on_applied = on_applied
        # Per source region: (applied, already present).
        self.counts: dict[str, ApplyOutcome] = {}

    async def apply(self, source_region: str, docs: Sequence[ReplicatedDoc]) -> ApplyOutcome:
        outcome = await self._replica.apply(docs)
        self.counts[source_region] = self.counts.get(source_region, ApplyOutcome()) + outcome
        if outcome.applied and self._on_applied is not None:
            await self._on_applied(docs, outcome)
        return outcome

    async def high_water(self, conversation_ids: Iterable[str]) -> dict[str, HighWater]:
        return await self._replica.high_water(conversation_ids)
