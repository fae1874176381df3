"""Media documents in MongoDB: one per ciphertext.

``media_objects``: ``_id`` the media id (hex SHA-256 of the ciphertext);
``sha256``, ``size``, ``content_class``, ``object_key`` (the object holding
it), ``state`` (ready, collecting), ``uploaders`` (accounts that uploaded
this ciphertext: they may download it and are charged its bytes),
``created_at``, ``touch`` (bumped by every reference), ``next_check_at`` and
``backoff`` (garbage collection), ``reserves`` (references made, for the
dedup ratio), ``tier`` and ``released`` (collecting media whose uploaders'
quotas were given back). No key, key hash or plaintext hash: the server
never has them.

Garbage collection is safe against a concurrent reference without a lock:
it reads ``touch`` with the candidate, asks svc_message for the reference
count, and marks the media collecting only if ``touch`` is unchanged; a
reference (``reserve``) bumps ``touch`` and succeeds only while the media is
ready. Whichever write comes second loses.
"""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from parley_core.storage.mongo import Database, Document
from svc_media.model import ContentClass, MediaRecord, MediaState, Tier
from svc_media.storage.sessions import at, seconds


def _record(doc: Document) -> MediaRecord:
    return MediaRecord(
        media_id=doc["_id"],
        sha256=bytes(doc["sha256"]),
        size=int(doc["size"]),
        content_class=ContentClass(doc["content_class"]),
        object_key=doc["object_key"],
        created_at=seconds(doc["created_at"]),
        state=MediaState(doc["state"]),
        uploaders=tuple(doc.get("uploaders", ())),
        touch=int(doc.get("touch", 0)),
        next_check_at=seconds(doc.get("next_check_at")),
        check_backoff_seconds=float(doc.get("backoff", 0.0)),
        tier=Tier(doc.get("tier", Tier.STANDARD)),
        reserves=int(doc.get("reserves", 0)),
    )


def stored_fields(record: MediaRecord) -> Document:
    return {
        "_id": record.media_id,
        "sha256": record.sha256,
        "size": record.size,
        "content_class": int(record.content_class),
        "object_key": record.object_key,
        "created_at": at(record.created_at),
        "state": record.state.value,
        "uploaders": list(record.uploaders),
        "touch": record.touch,
        "next_check_at": at(record.next_check_at),
        "backoff": record.check_backoff_seconds,
        "tier": int(record.tier),
        "reserves": record.reserves,
    }


READY = MediaState.READY.value


class MediaStore:
    def __init__(self, db: Database) -> None:
        self._media = db["media_objects"]

    async def ensure_indexes(self) -> None:
        await self._media.create_index([("state", ASCENDING), ("next_check_at", ASCENDING)])
        await self._media.create_index([("uploaders", ASCENDING)])

    async def get(self, media_id: str) -> MediaRecord | None:
        doc = await self._media.find_one({"_id": media_id})
        return None if doc is None else _record(doc)

    async def get_many(self, media_ids: Sequence[str]) -> dict[str, MediaRecord]:
        if not media_ids:
            return {}
        return {
            doc["_id"]: _record(doc)
            async for doc in self._media.find({"_id": {"$in": list(media_ids)}})
        }

    async def create(self, record: MediaRecord) -> MediaRecord | None:
        try:
            await self._media.insert_one(stored_fields(record))
        except DuplicateKeyError:
            return None
        return record

    async def add_uploader(self, media_id: str, account_id: str, *, check_at: float) -> bool:
        # Two writes, both conditional on the media being ready: the check is
        # only ever moved later (a new uploader gets its session's time to
        # reference the media), and the uploader added once.
        moved = await self._media.update_one(
            {"_id": media_id, "state": READY, "next_check_at": {"$lt": at(check_at)}},
            {"$set": {"next_check_at": at(check_at)}, "$inc": {"touch": 1}},
        )
        added = await self._media.update_one(
            {"_id": media_id, "state": READY, "uploaders": {"$ne": account_id}},
            {"$push": {"uploaders": account_id}, "$inc": {"touch": 1}},
        )
        if added.modified_count == 1:
            return True
        if moved.modified_count == 1:
            return False
        if await self._media.count_documents({"_id": media_id, "state": READY}, limit=1):
            return False
        raise LookupError(media_id)

    async def reserve(self, media_id: str, *, check_at: float, backoff: float) -> bool:
        result = await self._media.update_one(
            {"_id": media_id, "state": READY},
            {
                "$inc": {"touch": 1, "reserves": 1},
                "$set": {"next_check_at": at(check_at), "backoff": backoff},
            },
        )
        return result.modified_count == 1

    async def release(self, media_ids: Sequence[str], *, check_at: float, backoff: float) -> int:
        if not media_ids:
            return 0
        result = await self._media.update_many(
            {"_id": {"$in": list(media_ids)}, "state": READY},
            {"$set": {"next_check_at": at(check_at), "backoff": backoff}},
        )
        return result.modified_count

    async def forget_uploader(self, account_id: str, *, check_at: float, backoff: float) -> int:
        """The account no longer uploaded anything; its media are checked
        again at ``check_at`` (what nothing references is then collected)."""
        await self._media.update_many(
            {"uploaders": account_id, "state": READY},
            {"$set": {"next_check_at": at(check_at), "backoff": backoff}},
        )
        result = await self._media.update_many(
            {"uploaders": account_id}, {"$pull": {"uploaders": account_id}}
        )
        return result.modified_count

    async def due(self, *, now: float, limit: int) -> list[MediaRecord]:
        cursor = (
            self._media.find({"state": READY, "next_check_at": {"$lte": at(now)}})
            .sort("next_check_at", ASCENDING)
            .limit(limit)
        )
        return [_record(doc) async for doc in cursor]

    async def collecting(self, *, limit: int) -> list[MediaRecord]:
        cursor = self._media.find({"state": MediaState.COLLECTING.value}).limit(limit)
        return [_record(doc) async for doc in cursor]

    async def postpone(self, media_id: str, *, touch: int, check_at: float, backoff: float) -> bool:
        result = await self._media.update_one(
            {"_id": media_id, "state": READY, "touch": touch},
            {"$set": {"next_check_at": at(check_at), "backoff": backoff}},
        )
        return result.modified_count == 1

    async def mark_collecting(self, media_id: str, *, touch: int) -> bool:
        result = await self._media.update_one(
            {"_id": media_id, "state": READY, "touch": touch},
            {"$set": {"state": MediaState.COLLECTING.value}},
        )
        return result.modified_count == 1

    async def mark_released(self, media_id: str) -> bool:
        result = await self._media.update_one(
            {"_id": media_id, "state": MediaState.COLLECTING.value, "released": {"$ne": True}},
            {"$set": {"released": True}},
        )
        return result.modified_count == 1

    async def delete(self, media_id: str) -> None:
        await self._media.delete_one({"_id": media_id, "state": MediaState.COLLECTING.value})

    async def by_object(self, media_id: str, object_key: str) -> MediaRecord | None:
        doc = await self._media.find_one({"_id": media_id, "object_key": object_key})
        return None if doc is None else _record(doc)

    async def totals(self) -> tuple[int, int, int]:
        objects = stored = reserves = 0
        cursor = self._media.find({"state": READY}, {"size": 1, "reserves": 1})
        async for doc in cursor:
            objects += 1
            stored += int(doc.get("size", 0))
            reserves += int(doc.get("reserves", 0))
        return objects, stored, reserves

    async def oldest_overdue(self, *, now: float) -> float | None:
        doc = await self._media.find_one(
            {"state": READY, "next_check_at": {"$lte": at(now)}},
            sort=[("next_check_at", ASCENDING)],
        )
        return None if doc is None else seconds(doc["next_check_at"])

    async def set_tier(self, media_id: str, tier: Tier) -> None:
        await self._media.update_one(
            {"_id": media_id, "tier": {"$ne": int(tier)}}, {"$set": {"tier": int(tier)}}
        )

    async def raw(self, media_id: str) -> Document | None:
        """The stored document as is (tests check what is and is not stored)."""
        return await self._media.find_one({"_id": media_id})
