"""Region replication in MongoDB: the owner's change-stream tail, the
persisted stream positions and leases, and the snapshot read.

Owner side:
- the tail watches ``messages``, ``conversations``, ``members`` and
  ``inbox_settings`` (written by any region, sent by any) with full
  documents (``updateLookup``: the document as it is when the event is read,
  which is at least as new as the change);
- ``replication_cursors``: one document per peer region, ``_id`` the peer,
  ``resume_token`` (the stream position after the last batch the peer
  acknowledged), ``updated_at``, ``lag_seconds``, ``backlog``;
- ``replication_leases``: one per peer, the process replicating to it, until
  when, and an epoch raised by every claim (the shard-lease pattern).

The replica side, the idempotent apply: storage/replica.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import bson
from bson.codec_options import CodecOptions
from pymongo import ASCENDING
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.errors import DuplicateKeyError, OperationFailure

from parley_core.storage.mongo import Database, Document
from svc_message.model.replication import (
    FeedChange,
    HighWater,
    ReplicatedDoc,
    ReplicatedKind,
    ReplicationCursor,
    ResumePointLost,
)
from svc_message.storage.erased import (
    ERASED_FLAG,
)

FEED_COLLECTIONS = (
    ReplicatedKind.MESSAGE.value,
    ReplicatedKind.CONVERSATION.value,
    ReplicatedKind.MEMBER.value,
    ReplicatedKind.SETTINGS.value,
)
# Server answers meaning "this resume token cannot be resumed from": not a
# token (FailedToParse, SecantusDB's answer), invalid, history lost (the
# oplog rolled past it), fatal, capped position lost.
_LOST_RESUME_CODES = frozenset({9, 136, 260, 280, 286})
# How long one getMore waits on the server for new events.
_AWAIT_MS = 200
_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)
# As the services' clients read documents (tz_aware=True, see parley_core.storage.mongo).
_CODEC: CodecOptions[Document] = CodecOptions(tz_aware=True)


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seconds(at: datetime) -> float:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


def encode(document: Mapping[str, Any]) -> bytes:
    return bson.encode(document)


def decode(encoded: bytes) -> Document:
    return bson.decode(encoded, codec_options=_CODEC)


def conversation_of(kind: ReplicatedKind, doc: Mapping[str, Any]) -> str:
    return str(doc["_id"] if kind == ReplicatedKind.CONVERSATION else doc["conversation_id"])


def _feed_change(event: Mapping[str, Any]) -> FeedChange | None:
    kind = ReplicatedKind(event["ns"]["coll"])
    document = event.get("fullDocument")
    if document is not None:
        conversation_id = conversation_of(kind, document)
    elif kind == ReplicatedKind.CONVERSATION:
        conversation_id = str(event["documentKey"]["_id"])
    elif kind == ReplicatedKind.MEMBER:
        # Only an account erasure deletes a member document; its key names
        # the conversation and the account, and replicas must delete theirs.
        conversation_id, _, account_id = str(event["documentKey"]["_id"]).partition(":")
        kind = ReplicatedKind.MEMBER_REMOVAL
        document = {"_id": conversation_id, "accounts": [account_id]}
    else:
        # A deleted message or member: nothing names its conversation any
        # more, and deletions are not replicated (see domain.replication.route).
        conversation_id = ""
    cluster_time = event.get("clusterTime")
    return FeedChange(
        kind=kind,
        conversation_id=conversation_id,
        document=document,
        encoded=b"" if document is None else encode(document),
        token=event["_id"],
        committed_at=float(cluster_time.time) if cluster_time is not None else time.time(),
    )


class FeedStream:
    """An open change stream over the feed collections."""

    def __init__(self, stream: AsyncChangeStream[Document]) -> None:
        self._stream = stream

    async def next(self, timeout: float) -> FeedChange | None:
        """The next change, or None when none came within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                event = await self._stream.try_next()
            except OperationFailure as exc:
                if exc.code in _LOST_RESUME_CODES:
                    raise ResumePointLost(str(exc)) from exc
                raise
            if event is not None:
                return _feed_change(event)
            if loop.time() >= deadline:
                return None

    def position(self) -> Mapping[str, Any] | None:
        """The position after the last change read (or where it opened)."""
        return self._stream.resume_token

    async def close(self) -> None:
        await self._stream.close()


class FeedTail:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def open(self, resume_token: Mapping[str, Any] | None) -> FeedStream:
        pipeline = [{"$match": {"ns.coll": {"$in": list(FEED_COLLECTIONS)}}}]
        try:
            stream = await self._db.watch(
                pipeline,
                full_document="updateLookup",
                resume_after=resume_token,
                max_await_time_ms=_AWAIT_MS,
            )
        except OperationFailure as exc:
            if exc.code in _LOST_RESUME_CODES:
                raise ResumePointLost(str(exc)) from exc
            raise
        return FeedStream(stream)

    async def position_now(self) -> Mapping[str, Any]:
        """A stream position at this moment: every later change comes after it."""
        stream = await self.open(None)
        try:
            token = stream.position()
        finally:
            await stream.close()
        if token is None:
            raise RuntimeError("the change stream opened without a position")
        return token


class ReplicationCursorStore:
    def __init__(self, db: Database) -> None:
        self._cursors = db["replication_cursors"]

    async def load(self, peer: str) -> ReplicationCursor | None:
        doc = await self._cursors.find_one({"_id": peer})
        if doc is None:
            return None
        return ReplicationCursor(
            peer=peer,
            resume_token=doc.get("resume_token"),
            updated_at=_seconds(doc["updated_at"]),
            lag_seconds=float(doc.get("lag_seconds", 0.0)),
        )

    async def save(
        self,
        peer: str,
        resume_token: Mapping[str, Any],
        *,
        now: float,
        lag_seconds: float,
        backlog: int,
    ) -> None:
        """Called only after the peer acknowledged everything before the token."""
        await self._cursors.update_one(
            {"_id": peer},
            {
                "$set": {
                    "resume_token": dict(resume_token),
                    "updated_at": _at(now),
                    "lag_seconds": lag_seconds,
                    "backlog": backlog,
                }
            },
            upsert=True,
        )

    async def forget(self, peer: str) -> None:
        await self._cursors.delete_one({"_id": peer})


class ReplicationLeaseStore:
    """One lease per peer: only its holder replicates to that peer."""

    def __init__(self, db: Database) -> None:
        self._leases = db["replication_leases"]

    async def claim(self, peer: str, *, owner: str, now: float, until: float) -> bool:
        try:
            await self._leases.update_one(
                {"_id": peer, "$or": [{"expires_at": {"$lte": _at(now)}}, {"owner": owner}]},
                {"$set": {"owner": owner, "expires_at": _at(until)}, "$inc": {"epoch": 1}},
                upsert=True,
            )
        except DuplicateKeyError:
            # Held by another process and not expired: the upsert collided.
            return False
        return True

    async def release(self, peer: str, *, owner: str) -> None:
        await self._leases.update_one(
            {"_id": peer, "owner": owner}, {"$set": {"expires_at": _RELEASED}}
        )


class SnapshotReader:
    """The owner's side of a snapshot: its conversations, their members, and
    what a replica lacks above its high-water mark."""

    def __init__(self, db: Database) -> None:
        self._messages = db["messages"]
        self._conversations = db["conversations"]
        self._members = db["members"]
        self._settings = db["inbox_settings"]

    async def conversation_page(
        self, *, after_id: str, limit: int
    ) -> list[tuple[str, tuple[str, ...]]]:
        """(conversation id, member ids) in id order, after ``after_id``."""
        cursor = (
            self._conversations.find({"_id": {"$gt": after_id}}, {"member_ids": 1})
            .sort("_id", ASCENDING)
            .limit(limit)
        )
        return [(str(d["_id"]), tuple(d.get("member_ids") or ())) async for d in cursor]

    async def member_ids(self, conversation_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        ids = sorted(set(conversation_ids))
        if not ids:
            return {}
        cursor = self._conversations.find({"_id": {"$in": ids}}, {"member_ids": 1})
        return {str(d["_id"]): tuple(d.get("member_ids") or ()) async for d in cursor}

    async def above(self, conversation_id: str, high_water: HighWater) -> list[ReplicatedDoc]:
        """Everything of the conversation a replica at ``high_water`` may lack
        or hold stale: entries at or above its version (the boundary again,
        which applies as a no-op), history items whose state changed since,
        the targets of those entries, every entry an account erasure
        rewrote (it does not raise versions), then the head, the member
        documents and a member removal keeping only those (the replica then
        holds no member the owner erased)."""
        floor = high_water.max_version
        docs: dict[Any, Document] = {}
        # On the (conversation_id, version) index; the state version is
        # filtered here, since naming it in the query makes SecantusDB scan.
        cursor = self._messages.find(
            {"conversation_id": conversation_id, "version": {"$gte": 0}},
            {"version": 1, "state_version": 1, "target": 1, ERASED_FLAG: 1},
        ).sort("version", ASCENDING)
        wanted: list[Any] = []
        async for doc in cursor:
            version = int(doc.get("version", 0))
            state = int(doc.get("state_version", version))
            if version >= floor or state >= floor or doc.get(ERASED_FLAG):
                wanted.append(doc["_id"])
                if doc.get("target") and version >= floor:
                    wanted.append(doc["target"])
        for start in range(0, len(wanted), 500):
            async for doc in self._messages.find({"_id": {"$in": wanted[start : start + 500]}}):
                docs[doc["_id"]] = doc
        ordered = sorted(docs.values(), key=lambda d: int(d.get("version", 0)))
        out = [ReplicatedDoc(ReplicatedKind.MESSAGE, conversation_id, encode(d)) for d in ordered]
        head = await self._conversations.find_one({"_id": conversation_id})
        if head is not None:
            out.append(ReplicatedDoc(ReplicatedKind.CONVERSATION, conversation_id, encode(head)))
        kept: list[str] = []
        async for doc in self._members.find({"conversation_id": conversation_id}):
            out.append(ReplicatedDoc(ReplicatedKind.MEMBER, conversation_id, encode(doc)))
            kept.append(str(doc.get("account_id")))
        removal = {"_id": conversation_id, "except": kept}
        out.append(ReplicatedDoc(ReplicatedKind.MEMBER_REMOVAL, conversation_id, encode(removal)))
        return out

    async def settings_of(self, conversation_id: str) -> list[ReplicatedDoc]:
        """Every member's inbox settings of the conversation (a range of
        ``_id``, which starts with the conversation id and a colon)."""
        prefix = f"{conversation_id}:"
        cursor = self._settings.find({"_id": {"$gte": prefix, "$lt": prefix + "\uffff"}})
        return [
            ReplicatedDoc(ReplicatedKind.SETTINGS, conversation_id, encode(doc))
            async for doc in cursor
            if doc.get("conversation_id") == conversation_id and doc.get("crdt") is not None
        ]
