"""Upload sessions in MongoDB.

``media_uploads``: ``_id`` the upload id; ``account``, ``request_id`` (unique
together: CreateUpload is idempotent by request id), ``media_id``, ``sha256``,
``size``, ``content_class``, ``object_key`` (the session's own staging key),
``multipart_id``, ``part_size``, ``part_sha256s`` (multipart only), ``state``
(pending, completed, aborted, expired), ``created_at``, ``expires_at`` and
``lease_until`` (a CompleteUpload in progress holds the session until then,
so a sweeper never removes what a completion is verifying).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from parley_core.storage.mongo import Database, Document
from svc_media.model import ContentClass, UploadSession, UploadState

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def seconds(value: datetime | None) -> float:
    if value is None:
        return 0.0
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _session(doc: Document) -> UploadSession:
    return UploadSession(
        upload_id=doc["_id"],
        account_id=doc["account"],
        request_id=doc["request_id"],
        media_id=doc["media_id"],
        sha256=bytes(doc["sha256"]),
        size=int(doc["size"]),
        content_class=ContentClass(doc["content_class"]),
        object_key=doc["object_key"],
        created_at=seconds(doc["created_at"]),
        expires_at=seconds(doc["expires_at"]),
        state=UploadState(doc["state"]),
        multipart_id=doc.get("multipart_id"),
        part_size=int(doc.get("part_size", 0)),
        part_sha256s=tuple(bytes(p) for p in doc.get("part_sha256s", ())),
        lease_until=seconds(doc.get("lease_until")),
    )


def _document(session: UploadSession) -> Document:
    doc: dict[str, Any] = {
        "_id": session.upload_id,
        "account": session.account_id,
        "request_id": session.request_id,
        "media_id": session.media_id,
        "sha256": session.sha256,
        "size": session.size,
        "content_class": int(session.content_class),
        "object_key": session.object_key,
        "created_at": at(session.created_at),
        "expires_at": at(session.expires_at),
        "state": session.state.value,
        "lease_until": _EPOCH,
    }
    if session.multipart_id is not None:
        doc["multipart_id"] = session.multipart_id
        doc["part_size"] = session.part_size
        doc["part_sha256s"] = list(session.part_sha256s)
    return doc


class UploadStore:
    def __init__(self, db: Database) -> None:
        self._uploads = db["media_uploads"]

    async def ensure_indexes(self) -> None:
        await self._uploads.create_index(
            [("account", ASCENDING), ("request_id", ASCENDING)], unique=True
        )
        await self._uploads.create_index([("state", ASCENDING), ("expires_at", ASCENDING)])
        await self._uploads.create_index(
            [("account", ASCENDING), ("state", ASCENDING), ("expires_at", ASCENDING)]
        )

    async def insert(self, session: UploadSession) -> UploadSession:
        try:
            await self._uploads.insert_one(_document(session))
        except DuplicateKeyError:
            existing = await self.by_request(session.account_id, session.request_id)
            if existing is None:
                raise
            return existing
        return session

    async def get(self, upload_id: str) -> UploadSession | None:
        doc = await self._uploads.find_one({"_id": upload_id})
        return None if doc is None else _session(doc)

    async def by_request(self, account_id: str, request_id: str) -> UploadSession | None:
        doc = await self._uploads.find_one({"account": account_id, "request_id": request_id})
        return None if doc is None else _session(doc)

    async def pending_count(self, account_id: str, *, now: float) -> int:
        return await self._uploads.count_documents(
            {
                "account": account_id,
                "state": UploadState.PENDING.value,
                "expires_at": {"$gt": at(now)},
            }
        )

    async def lease(self, upload_id: str, account_id: str, *, now: float, until: float) -> bool:
        result = await self._uploads.update_one(
            {
                "_id": upload_id,
                "account": account_id,
                "state": UploadState.PENDING.value,
                "expires_at": {"$gt": at(now)},
                "lease_until": {"$lte": at(now)},
            },
            {"$set": {"lease_until": at(until)}},
        )
        return result.modified_count == 1

    async def unlease(self, upload_id: str) -> None:
        await self._uploads.update_one(
            {"_id": upload_id, "state": UploadState.PENDING.value},
            {"$set": {"lease_until": _EPOCH}},
        )

    async def finish(self, upload_id: str, state: str, *, now: float) -> bool:
        result = await self._uploads.update_one(
            {"_id": upload_id, "state": UploadState.PENDING.value},
            {"$set": {"state": state, "finished_at": at(now), "lease_until": _EPOCH}},
        )
        return result.modified_count == 1

    async def expired(self, *, now: float, limit: int) -> list[UploadSession]:
        """Pending sessions past their expiry that no completion holds."""
        cursor = (
            self._uploads.find(
                {
                    "state": UploadState.PENDING.value,
                    "expires_at": {"$lte": at(now)},
                    "lease_until": {"$lte": at(now)},
                }
            )
            .sort("expires_at", ASCENDING)
            .limit(limit)
        )
        return [_session(doc) async for doc in cursor]

    async def of_account(self, account_id: str, *, limit: int) -> list[UploadSession]:
        cursor = self._uploads.find({"account": account_id}).limit(limit)
        return [_session(doc) async for doc in cursor]

    async def delete(self, upload_ids: Sequence[str]) -> None:
        await self._uploads.delete_many({"_id": {"$in": list(upload_ids)}})
