"""Quarantined ciphertext hashes and the operators' audit log, in MongoDB.

``media_quarantine``: ``_id`` the SHA-256 (hex) of a banned ciphertext,
``reason``, ``operator`` (the operator credential's name), ``created_at``.
``media_audit``: one document per operator action, ``_id`` a sortable id,
``action``, ``sha256``, ``reason``, ``operator``, ``at``; listed newest first.
"""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

from parley_core.storage.mongo import Database, Document
from svc_media.model import AuditAction, AuditEvent, QuarantineEntry
from svc_media.storage.sessions import at, seconds


def _entry(doc: Document) -> QuarantineEntry:
    return QuarantineEntry(
        sha256=bytes.fromhex(doc["_id"]),
        reason=doc.get("reason", ""),
        operator=doc.get("operator", ""),
        created_at=seconds(doc["created_at"]),
    )


def _event(doc: Document) -> AuditEvent:
    return AuditEvent(
        event_id=doc["_id"],
        action=AuditAction(doc["action"]),
        sha256=bytes(doc["sha256"]),
        reason=doc.get("reason", ""),
        operator=doc.get("operator", ""),
        at=seconds(doc["at"]),
    )


class QuarantineStore:
    def __init__(self, db: Database) -> None:
        self._entries = db["media_quarantine"]

    async def get(self, sha256: bytes) -> QuarantineEntry | None:
        doc = await self._entries.find_one({"_id": sha256.hex()})
        return None if doc is None else _entry(doc)

    async def any_of(self, sha256s: Sequence[bytes]) -> set[bytes]:
        if not sha256s:
            return set()
        cursor = self._entries.find({"_id": {"$in": [s.hex() for s in sha256s]}}, {"_id": 1})
        return {bytes.fromhex(doc["_id"]) async for doc in cursor}

    async def add(self, entry: QuarantineEntry) -> tuple[QuarantineEntry, bool]:
        try:
            await self._entries.insert_one(
                {
                    "_id": entry.sha256.hex(),
                    "reason": entry.reason,
                    "operator": entry.operator,
                    "created_at": at(entry.created_at),
                }
            )
        except DuplicateKeyError:
            existing = await self.get(entry.sha256)
            if existing is not None:
                return existing, False
            raise
        return entry, True

    async def remove(self, sha256: bytes) -> bool:
        result = await self._entries.delete_one({"_id": sha256.hex()})
        return result.deleted_count == 1


class AuditStore:
    def __init__(self, db: Database) -> None:
        self._events = db["media_audit"]

    async def ensure_indexes(self) -> None:
        await self._events.create_index([("at", DESCENDING), ("_id", DESCENDING)])

    async def record(self, event: AuditEvent) -> None:
        await self._events.insert_one(
            {
                "_id": event.event_id,
                "action": int(event.action),
                "sha256": event.sha256,
                "reason": event.reason,
                "operator": event.operator,
                "at": at(event.at),
            }
        )

    async def page(self, *, before: tuple[float, str] | None, limit: int) -> list[AuditEvent]:
        query: Document = {}
        if before is not None:
            when, event_id = at(before[0]), before[1]
            query = {"$or": [{"at": {"$lt": when}}, {"at": when, "_id": {"$lt": event_id}}]}
        cursor = (
            self._events.find(query).sort([("at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        )
        return [_event(doc) async for doc in cursor]
