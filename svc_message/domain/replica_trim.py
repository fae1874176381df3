"""A replica trims its copies of other regions' conversations below the hot window.

Only the owner region archives a conversation (its archive objects stay in
its own store), so without this a region's log would keep every replicated
message for good. The archiver's lease holder hands this the candidates of
its pass that the region does not own; for each, the oldest entries (by
version) created before the hot window plus a margin leave the log, never
the conversation's newest entry (the send pipeline's positions, heads and
streams read it). The floor is raised before the delete, so a reader never
meets a hole without knowing the owner holds it (storage/replica_floor.py).

Deletes are not replicated (the change stream ships only conversations
this region owns, and never a deletion), and the owner keeps everything
trimmed here, in its hot log or its archive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from svc_message.model import HISTORY_KINDS, ChangeKind
from svc_message.model.replica_floor import ReplicaFloor
from svc_message.storage.hot_log import HotLog
from svc_message.storage.replica_floor import ReplicaFloors

log = structlog.get_logger(__name__)

READ_BATCH = 500


def _at(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def trimmable_prefix(
    docs: Sequence[Mapping[str, Any]], *, cutoff: datetime, newest_version: int
) -> list[Mapping[str, Any]]:
    """The leading entries (by version) created before ``cutoff``, without
    the conversation's newest entry."""
    out: list[Mapping[str, Any]] = []
    for doc in docs:
        if int(doc["version"]) >= newest_version or _at(doc["created_at"]) >= cutoff:
            break
        out.append(doc)
    return out


def floor_after(floor: ReplicaFloor, trimmed: Sequence[Mapping[str, Any]]) -> ReplicaFloor:
    seqs = [
        int(d["seq"])
        for d in trimmed
        if d.get("kind", ChangeKind.MESSAGE) in HISTORY_KINDS and d.get("seq")
    ]
    return ReplicaFloor(
        version=max([floor.version, *(int(d["version"]) for d in trimmed)]),
        seq=max([floor.seq, *seqs]),
    )


class ReplicaTrimmer:
    def __init__(
        self,
        hot: HotLog,
        floors: ReplicaFloors,
        *,
        retention_seconds: float,
        entries_per_conversation: int,
        messages_per_second: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._hot = hot
        self._floors = floors
        self._retention = retention_seconds
        self._entries_per_conversation = entries_per_conversation
        self._rate = messages_per_second
        self._sleep = sleep
        self.trimmed_total = 0

    async def trim_all(self, conversation_ids: Sequence[str], *, now: float) -> int:
        """Trim each of these conversations (all owned elsewhere); entries deleted."""
        cutoff = datetime.fromtimestamp(now - self._retention, UTC)
        total = 0
        for conversation_id in sorted(conversation_ids):
            trimmed = await self.trim(conversation_id, cutoff=cutoff)
            total += trimmed
            if trimmed and self._rate > 0:
                await self._sleep(trimmed / self._rate)
        if total:
            log.info("replica_trimmed", entries=total, conversations=len(conversation_ids))
        self.trimmed_total += total
        return total

    async def trim(self, conversation_id: str, *, cutoff: datetime) -> int:
        floor = await self._floors.get(conversation_id)
        newest = await self._hot.newest(conversation_id)
        if newest is None:
            return 0
        trimmed: list[Mapping[str, Any]] = []
        after = floor.version
        while len(trimmed) < self._entries_per_conversation:
            wanted = min(READ_BATCH, self._entries_per_conversation - len(trimmed))
            docs = await self._hot.entries(conversation_id, after_version=after, limit=wanted)
            prefix = trimmable_prefix(docs, cutoff=cutoff, newest_version=int(newest["version"]))
            trimmed += prefix
            if len(prefix) < len(docs) or len(docs) < wanted:
                break
            after = int(docs[-1]["version"])
        # Floor first: a read between the two steps asks the owner for what
        # is still here, never answers short. Strays below an old floor (a
        # late copy re-sent by a snapshot) go with the rest.
        if trimmed:
            floor = await self._floors.raise_to(conversation_id, floor_after(floor, trimmed))
        if floor.version == 0:
            return 0
        return await self._hot.delete_through(conversation_id, floor.version)
