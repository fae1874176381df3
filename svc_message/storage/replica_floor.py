"""A replica's floors (``replica_floors``) and the log as a replica reads it.

A region holding copies of conversations owned elsewhere trims them below
the hot window (domain/replica_trim.py) and records, per conversation, what
it trimmed. It may also never have held a conversation's old part (its
first snapshot read only the owner's hot log). Either way its copy is a
suffix of the conversation's seqs; a page or a feed replay reaching below
that suffix is not answered short: pages raise ``HistoryAtOwner``
(NOT_FOUND, which the region routing asks the owner, so the client sees one
history), feed replays raise what a replay into the glacier tier raises.

Conversations this region owns read exactly as before.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from pymongo import ReturnDocument

from parley_core.storage.mongo import Database
from svc_message.model import Change, Message
from svc_message.model.replica_floor import ReplicaFloor, history_at_owner, stream_below_floor
from svc_message.storage.archive import ArchiveLedger, ArchiveObjects
from svc_message.storage.hot_log import HotLog
from svc_message.storage.tiered import TieredMessageStore


class ReplicaFloors:
    """``replica_floors``: ``{_id: conversation, version, seq}``, only rising."""

    def __init__(self, db: Database) -> None:
        self._floors = db["replica_floors"]

    async def get(self, conversation_id: str) -> ReplicaFloor:
        doc = await self._floors.find_one({"_id": conversation_id})
        if doc is None:
            return ReplicaFloor()
        return ReplicaFloor(version=int(doc.get("version", 0)), seq=int(doc.get("seq", 0)))

    async def raise_to(self, conversation_id: str, floor: ReplicaFloor) -> ReplicaFloor:
        doc = await self._floors.find_one_and_update(
            {"_id": conversation_id},
            {"$max": {"version": floor.version, "seq": floor.seq}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None  # upserted
        return ReplicaFloor(version=int(doc["version"]), seq=int(doc["seq"]))


class ReplicaHistoryStore(TieredMessageStore):
    """The tiered log, refusing reads of what a replica does not hold."""

    def __init__(
        self,
        db: Database,
        ledger: ArchiveLedger,
        hot: HotLog,
        objects: ArchiveObjects,
        *,
        floors: ReplicaFloors,
        owns: Callable[[str], bool],
    ) -> None:
        super().__init__(db, ledger, hot, objects)
        self._floors = floors
        self._owns = owns

    async def held_from(self, conversation_id: str) -> int:
        """The lowest seq this replica holds contiguously up to its head: above
        the recorded floor, and no lower than the lowest it ever received."""
        floor = await self._floors.get(conversation_id)
        lowest = await self._seq_range(conversation_id, floor.seq + 1, 0, forward=True, limit=1)
        if not lowest:
            # Nothing held above the floor: all of it is the owner's.
            return 1 << 62
        return int(lowest[0]["seq"])

    async def page(
        self,
        conversation_id: str,
        *,
        start_seq: int,
        forward: bool,
        limit: int,
        hidden_for: str = "",
        floor_seq: int = 0,
        ceiling_seq: int = 0,
    ) -> list[Message]:
        items = await super().page(
            conversation_id,
            start_seq=start_seq,
            forward=forward,
            limit=limit,
            hidden_for=hidden_for,
            floor_seq=floor_seq,
            ceiling_seq=ceiling_seq,
        )
        if self._owns(conversation_id):
            return items
        step = 1 if forward else -1
        gapless = all(b.seq - a.seq == step for a, b in itertools.pairwise(items))
        # The lowest seq the page needs: a forward page's first; a backward
        # page's last, or its lower bound when it ended for want of more.
        if forward:
            reach = max(start_seq, floor_seq, 1)
            if gapless and items and items[0].seq == reach:
                return items
        elif len(items) >= limit:
            if gapless:
                return items
            # A gap is a message hidden from the reader, or a copy re-sent
            # below the floor (the next trim takes it) past trimmed ones.
            reach = items[-1].seq
        else:
            reach = max(floor_seq, 1)
        held_from = await self.held_from(conversation_id)
        if reach < held_from:
            raise history_at_owner(conversation_id, held_from)
        return items

    async def changes(
        self, conversation_id: str, *, after_version: int, until_version: int | None, limit: int
    ) -> list[Change]:
        if not self._owns(conversation_id):
            floor = await self._floors.get(conversation_id)
            if after_version < floor.version:
                raise stream_below_floor(conversation_id, after_version, floor)
        return await super().changes(
            conversation_id, after_version=after_version, until_version=until_version, limit=limit
        )
