"""Shard leases and the live svc_message processes, in MongoDB (not Redis:
sending must keep working while Redis is down).

``message_shard_leases`` holds one document per shard of the conversation
space: its owner, the owner's internal address, when the lease expires and
an epoch raised by every claim. ``message_owners`` holds one document per
process: its address, when its record expires, and whether it is draining.
A claim is one conditional upsert (the shard is unleased, its lease expired,
or it is already ours), so two processes cannot both win it; renewals and
releases only touch leases the caller still holds.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from parley_core.storage.mongo import Database
from svc_message.model.ownership import OwnerRecord, ShardLease

# What a released lease expires at: long past, so any process may claim it.
_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seconds(at: datetime) -> float:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


class ShardLeaseStore:
    def __init__(self, db: Database) -> None:
        self._leases = db["message_shard_leases"]
        self._owners = db["message_owners"]

    async def ensure_indexes(self) -> None:
        await self._owners.create_index([("expires_at", ASCENDING)])

    async def beat(self, record: OwnerRecord) -> None:
        await self._owners.update_one(
            {"_id": record.instance_id},
            {
                "$set": {
                    "address": record.address,
                    "expires_at": _at(record.expires_at),
                    "draining": record.draining,
                }
            },
            upsert=True,
        )

    async def live(self, *, now: float) -> list[OwnerRecord]:
        """Processes whose record has not expired, draining or not."""
        cursor = self._owners.find({"expires_at": {"$gt": _at(now)}})
        return [
            OwnerRecord(
                instance_id=doc["_id"],
                address=doc.get("address", ""),
                expires_at=_seconds(doc["expires_at"]),
                draining=bool(doc.get("draining", False)),
            )
            async for doc in cursor
        ]

    async def leave(self, instance_id: str) -> None:
        await self._owners.delete_one({"_id": instance_id})

    async def leases(self) -> dict[int, ShardLease]:
        return {
            doc["_id"]: ShardLease(
                shard=doc["_id"],
                owner=doc.get("owner", ""),
                address=doc.get("address", ""),
                expires_at=_seconds(doc["expires_at"]),
                epoch=int(doc.get("epoch", 0)),
            )
            async for doc in self._leases.find({})
        }

    async def claim(
        self, shard: int, *, owner: str, address: str, now: float, until: float
    ) -> bool:
        """Take ``shard`` if it is free (or ours); False when another process holds it."""
        query: dict[str, Any] = {
            "_id": shard,
            "$or": [{"expires_at": {"$lte": _at(now)}}, {"owner": owner}],
        }
        try:
            await self._leases.update_one(
                query,
                {
                    "$set": {"owner": owner, "address": address, "expires_at": _at(until)},
                    "$inc": {"epoch": 1},
                },
                upsert=True,
            )
        except DuplicateKeyError:
            # The shard has a lease that is neither expired nor ours: the
            # upsert tried to create a second document for it.
            return False
        return True

    async def renew(self, shards: Collection[int], *, owner: str, until: float) -> int:
        """Extends the leases of ``shards`` still held by ``owner``; how many."""
        if not shards:
            return 0
        result = await self._leases.update_many(
            {"_id": {"$in": sorted(shards)}, "owner": owner},
            {"$set": {"expires_at": _at(until)}},
        )
        return result.matched_count

    async def release(self, shards: Collection[int], *, owner: str) -> None:
        if shards:
            await self._leases.update_many(
                {"_id": {"$in": sorted(shards)}, "owner": owner},
                {"$set": {"expires_at": _RELEASED}},
            )

    async def release_all(self, owner: str) -> None:
        await self._leases.update_many({"owner": owner}, {"$set": {"expires_at": _RELEASED}})
