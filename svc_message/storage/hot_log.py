"""The ``messages`` collection as the history archive sees it: the archiver's
candidates and moves, and the overlays the read path applies to cold rows."""

from __future__ import annotations

from pymongo import ASCENDING, DESCENDING

from parley_core.storage.mongo import Database, Document


class HotLog:
    """What the archiver and the read path ask the ``messages`` collection."""

    def __init__(self, db: Database) -> None:
        self._messages = db["messages"]

    async def ensure_indexes(self) -> None:
        # Changes naming an archived message are its overlay: found by the seq
        # they target.
        await self._messages.create_index(
            [("conversation_id", ASCENDING), ("target_seq", ASCENDING)]
        )

    async def conversations_before(
        self, first_id: str, *, after: str = "", limit: int
    ) -> list[tuple[str, str]]:
        """(conversation, its oldest entry id) for conversations with entries
        older than the id ``first_id`` (ids are UUIDv7: they sort by creation
        time), whose oldest entry id is above ``after``, in that order."""
        cursor = await self._messages.aggregate(
            [
                {"$match": {"_id": {"$lt": first_id}}},
                {"$group": {"_id": "$conversation_id", "oldest": {"$min": "$_id"}}},
                {"$match": {"oldest": {"$gt": after}}},
                {"$sort": {"oldest": 1}},
                {"$limit": limit},
            ]
        )
        return [(str(doc["_id"]), str(doc["oldest"])) async for doc in cursor]

    async def newest(self, conversation_id: str) -> Document | None:
        return await self._messages.find_one(
            {"conversation_id": conversation_id},
            {"version": 1, "created_at": 1},
            sort=[("version", DESCENDING)],
        )

    async def entries(
        self, conversation_id: str, *, after_version: int, limit: int
    ) -> list[Document]:
        cursor = (
            self._messages.find(
                {"conversation_id": conversation_id, "version": {"$gt": after_version}}
            )
            .sort("version", ASCENDING)
            .limit(limit)
        )
        return [doc async for doc in cursor]

    async def delete_through(self, conversation_id: str, version: int) -> int:
        reply = await self._messages.delete_many(
            {"conversation_id": conversation_id, "version": {"$lte": version}}
        )
        return int(reply.deleted_count)

    async def overlays(self, conversation_id: str, seq_lo: int, seq_hi: int) -> list[Document]:
        """Changes (edits, deletes, hides, reactions) of messages seq_lo..seq_hi
        still in the log, oldest first."""
        cursor = self._messages.find(
            {"conversation_id": conversation_id, "target_seq": {"$gte": seq_lo, "$lte": seq_hi}}
        ).sort("version", ASCENDING)
        return [doc async for doc in cursor]

    async def count(self) -> int:
        return int(await self._messages.estimated_document_count())

    async def size_bytes(self) -> int:
        """The log's documents' size (collStats ``size``, uncompressed)."""
        stats = await self._messages.database.command("collStats", self._messages.name)
        return int(stats.get("size") or 0)
