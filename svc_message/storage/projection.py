"""Durable progress of each process's conversation projector.

``projectors`` holds one document per svc_message process: a heartbeat and
``flushed_through``, a time before which every message that process committed
is reflected in its conversation's metadata. When a process dies, another one
finds its stale heartbeat and replays the conversation heads of the messages
committed since then (message ids are UUIDv7, so that is an _id range scan).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from pymongo import ASCENDING

from parley_core.storage.mongo import Database


@dataclass(frozen=True, slots=True)
class ProjectorRecord:
    instance_id: str
    flushed_through: datetime


def first_id_at(at: datetime) -> str:
    """The smallest UUIDv7 of the millisecond ``at``: a lower bound for _id scans."""
    return str(uuid.UUID(int=(int(at.timestamp() * 1000) & 0xFFFF_FFFF_FFFF) << 80))


class ProjectorStore:
    def __init__(self, db: Database) -> None:
        self._coll = db["projectors"]

    async def ensure_indexes(self) -> None:
        await self._coll.create_index([("heartbeat_at", ASCENDING)])

    async def beat(self, instance_id: str, *, flushed_through: datetime, now: datetime) -> None:
        await self._coll.update_one(
            {"_id": instance_id},
            {"$set": {"heartbeat_at": now, "flushed_through": flushed_through}},
            upsert=True,
        )

    async def stale(self, *, heartbeat_before: datetime) -> list[ProjectorRecord]:
        cursor = self._coll.find({"heartbeat_at": {"$lt": heartbeat_before}})
        return [
            ProjectorRecord(instance_id=doc["_id"], flushed_through=doc["flushed_through"])
            async for doc in cursor
        ]

    async def forget(self, instance_id: str) -> None:
        await self._coll.delete_one({"_id": instance_id})
