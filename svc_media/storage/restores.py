"""Restores of archived media in MongoDB.

``media_restores``: ``_id`` the media id (one restore per object at a time);
``object_key``, ``state`` (queued, restoring, ready, expired), ``days``,
``requested_at``, ``ready_at`` and ``expires_at`` (the restored copy's
expiry, from the store), ``next_poll_at`` (when a poller looks at it next),
``requesters`` and ``notified`` (``<account id>/<device id>`` of the devices
that asked, and of those svc_message took the ready notice for),
``accounts`` (the accounts among the requesters: each account's active
restores are counted against its cap by an index), and
``forget_at`` (expired records go a week after they expired: a TTL index).

Every change is conditional on the state it starts from; a poller claims a
record by moving ``next_poll_at`` forward only if it still has the value it
read, so any number of processes poll at once and each record is handled by
one of them per pass.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from parley_core.storage.mongo import Database, Document
from svc_media.model import ACTIVE_RESTORES, Requester, RestoreRecord, RestoreState
from svc_media.storage.sessions import at, seconds

# How long an expired restore still answers GetRestore with EXPIRED.
FORGET_EXPIRED_SECONDS = 7 * 86400.0
# open() races another open() at most this many times before giving up.
OPEN_ATTEMPTS = 4

_QUEUED = RestoreState.QUEUED.value
_RESTORING = RestoreState.RESTORING.value
_READY = RestoreState.READY.value
_EXPIRED = RestoreState.EXPIRED.value
_ACTIVE = [s.value for s in ACTIVE_RESTORES]


def _key(requester: Requester) -> str:
    return f"{requester.account_id}/{requester.device_id}"


def _requester(key: str) -> Requester:
    account, _, device = key.partition("/")
    return Requester(account, device)


def _record(doc: Document) -> RestoreRecord:
    return RestoreRecord(
        media_id=doc["_id"],
        object_key=doc["object_key"],
        state=RestoreState(doc["state"]),
        days=int(doc["days"]),
        requested_at=seconds(doc["requested_at"]),
        ready_at=seconds(doc.get("ready_at")),
        expires_at=seconds(doc.get("expires_at")),
        next_poll_at=seconds(doc.get("next_poll_at")),
        requesters=tuple(_requester(k) for k in doc.get("requesters", ())),
        notified=tuple(_requester(k) for k in doc.get("notified", ())),
    )


def _document(record: RestoreRecord) -> Document:
    doc: dict[str, Any] = {
        "_id": record.media_id,
        "object_key": record.object_key,
        "state": record.state.value,
        "days": record.days,
        "requested_at": at(record.requested_at),
        "next_poll_at": at(record.next_poll_at),
        "requesters": [_key(r) for r in record.requesters],
        "accounts": sorted({r.account_id for r in record.requesters}),
        "notified": [_key(r) for r in record.notified],
    }
    if record.ready_at:
        doc["ready_at"] = at(record.ready_at)
    if record.expires_at:
        doc["expires_at"] = at(record.expires_at)
    return doc


class RestoreStore:
    def __init__(self, db: Database) -> None:
        self._restores = db["media_restores"]

    async def ensure_indexes(self) -> None:
        await self._restores.create_index([("state", ASCENDING), ("next_poll_at", ASCENDING)])
        await self._restores.create_index([("forget_at", ASCENDING)], expireAfterSeconds=0)
        await self._restores.create_index([("accounts", ASCENDING), ("state", ASCENDING)])

    async def asked_by(self, media_id: str, account_id: str) -> bool:
        """Whether the account is among the requesters of the media's active restore."""
        found = await self._restores.count_documents(
            {"_id": media_id, "accounts": account_id, "state": {"$in": [_QUEUED, _RESTORING]}},
            limit=1,
        )
        return found > 0

    async def active_of(self, account_id: str, *, limit: int) -> int:
        """The account's queued or running restores, counted up to ``limit``."""
        return await self._restores.count_documents(
            {"accounts": account_id, "state": {"$in": [_QUEUED, _RESTORING]}}, limit=limit
        )

    async def get(self, media_id: str) -> RestoreRecord | None:
        doc = await self._restores.find_one({"_id": media_id})
        return None if doc is None else _record(doc)

    async def open(self, record: RestoreRecord) -> RestoreRecord:
        keys = [_key(r) for r in record.requesters]
        for _ in range(OPEN_ATTEMPTS):
            joined = await self._restores.find_one_and_update(
                {"_id": record.media_id, "state": {"$in": [_QUEUED, _RESTORING]}},
                {
                    "$addToSet": {
                        "requesters": {"$each": keys},
                        "accounts": {"$each": sorted({r.account_id for r in record.requesters})},
                    }
                },
                return_document=ReturnDocument.AFTER,
            )
            if joined is not None:
                return _record(joined)
            current = await self._restores.find_one({"_id": record.media_id})
            if current is not None and current["state"] == _READY:
                return _record(current)
            try:
                if current is None:
                    await self._restores.insert_one(_document(record))
                    return record
                replaced = await self._restores.replace_one(
                    {"_id": record.media_id, "state": _EXPIRED}, _document(record)
                )
                if replaced.modified_count == 1:
                    return record
            except DuplicateKeyError:
                pass
        raise RuntimeError(f"restore of {record.media_id} kept changing under open()")

    async def _move(self, media_id: str, source: str, changes: Document) -> bool:
        result = await self._restores.update_one(
            {"_id": media_id, "state": source}, {"$set": changes}
        )
        return result.modified_count == 1

    async def started(self, media_id: str, *, next_poll_at: float) -> bool:
        return await self._move(
            media_id, _QUEUED, {"state": _RESTORING, "next_poll_at": at(next_poll_at)}
        )

    async def requeue(self, media_id: str, *, next_poll_at: float) -> bool:
        return await self._move(
            media_id, _RESTORING, {"state": _QUEUED, "next_poll_at": at(next_poll_at)}
        )

    async def ready(
        self, media_id: str, *, ready_at: float, expires_at: float, next_poll_at: float
    ) -> RestoreRecord | None:
        doc = await self._restores.find_one_and_update(
            {"_id": media_id, "state": _RESTORING},
            {
                "$set": {
                    "state": _READY,
                    "ready_at": at(ready_at),
                    "expires_at": at(expires_at),
                    "next_poll_at": at(next_poll_at),
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else _record(doc)

    async def expire(self, media_id: str, *, now: float) -> bool:
        return await self._move(
            media_id, _READY, {"state": _EXPIRED, "forget_at": at(now + FORGET_EXPIRED_SECONDS)}
        )

    async def notified(self, media_id: str, requester: Requester) -> None:
        await self._restores.update_one(
            {"_id": media_id}, {"$addToSet": {"notified": _key(requester)}}
        )

    async def settle(self, media_id: str, *, next_poll_at: float) -> None:
        await self._restores.update_one(
            {"_id": media_id, "state": _READY}, {"$set": {"next_poll_at": at(next_poll_at)}}
        )

    async def drop(self, media_id: str) -> None:
        await self._restores.delete_one({"_id": media_id})

    async def claim_due(self, *, now: float, limit: int, until: float) -> list[RestoreRecord]:
        cursor = (
            self._restores.find({"state": {"$in": _ACTIVE}, "next_poll_at": {"$lte": at(now)}})
            .sort("next_poll_at", ASCENDING)
            .limit(limit)
        )
        claimed: list[RestoreRecord] = []
        for doc in [d async for d in cursor]:
            taken = await self._restores.find_one_and_update(
                {"_id": doc["_id"], "state": doc["state"], "next_poll_at": doc["next_poll_at"]},
                {"$set": {"next_poll_at": at(until)}},
                return_document=ReturnDocument.AFTER,
            )
            if taken is not None:
                claimed.append(_record(taken))
        return claimed

    async def queue_length(self) -> int:
        return await self._restores.count_documents({"state": {"$in": [_QUEUED, _RESTORING]}})
