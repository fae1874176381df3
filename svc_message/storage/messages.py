"""The message log in MongoDB: the source of truth for every conversation.

``messages`` holds one document per message. Two unique indexes carry the
guarantees, and both start with conversation_id so they stay valid on a
cluster sharded by conversation_id:
- (conversation_id, seq): two writers can never commit the same seq;
- (conversation_id, sender_id, request_id): a retried send cannot commit twice.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bson import Binary
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError

from parley_core.storage.mongo import Database, Document
from svc_message.model import Message


class Conflict(enum.Enum):
    SEQ_TAKEN = "seq_taken"
    DUPLICATE_REQUEST = "duplicate_request"


@dataclass(frozen=True, slots=True)
class InsertOutcome:
    """How far an ordered batch insert got: ``inserted`` documents from the
    start are committed; when ``conflict`` is set, the document at index
    ``inserted`` hit it and nothing after it was attempted."""

    inserted: int
    conflict: Conflict | None = None


def message_from_doc(doc: Mapping[str, Any]) -> Message:
    return Message(
        message_id=doc["_id"],
        conversation_id=doc["conversation_id"],
        seq=doc["seq"],
        sender_account_id=doc["sender_id"],
        sender_device_id=doc["sender_device_id"],
        type=doc["type"],
        body=bytes(doc["body"]),
        reply_to_message_id=doc.get("reply_to") or "",
        created_at=doc["created_at"],
        request_id=doc.get("request_id", ""),
    )


def _doc(message: Message) -> Document:
    return {
        "_id": message.message_id,
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "sender_id": message.sender_account_id,
        "sender_device_id": message.sender_device_id,
        "type": message.type,
        "body": Binary(message.body),
        "reply_to": message.reply_to_message_id or None,
        "created_at": message.created_at,
        "request_id": message.request_id,
    }


class MessageStore:
    def __init__(self, db: Database) -> None:
        self._messages = db["messages"]

    async def ensure_indexes(self) -> None:
        await self._messages.create_index(
            [("conversation_id", ASCENDING), ("seq", ASCENDING)], unique=True
        )
        await self._messages.create_index(
            [("conversation_id", ASCENDING), ("sender_id", ASCENDING), ("request_id", ASCENDING)],
            unique=True,
        )

    async def insert_ordered(self, messages: Sequence[Message]) -> InsertOutcome:
        """One durable write for the whole batch. Ordered, so what commits is a
        prefix: per conversation, seqs stay gapless even if the batch stops."""
        if not messages:
            return InsertOutcome(inserted=0)
        try:
            await self._messages.insert_many([_doc(m) for m in messages], ordered=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if exc.details.get("writeConcernErrors") or not errors:
                raise
            first = errors[0]
            if first.get("code") != 11000:
                raise
            pattern = first.get("keyPattern") or {}
            conflict = Conflict.DUPLICATE_REQUEST if "request_id" in pattern else Conflict.SEQ_TAKEN
            return InsertOutcome(inserted=int(first["index"]), conflict=conflict)
        return InsertOutcome(inserted=len(messages))

    async def by_request(
        self, conversation_id: str, sender_id: str, request_id: str
    ) -> Message | None:
        doc = await self._messages.find_one(
            {"conversation_id": conversation_id, "sender_id": sender_id, "request_id": request_id}
        )
        return None if doc is None else message_from_doc(doc)

    async def by_id(self, message_id: str) -> Message | None:
        doc = await self._messages.find_one({"_id": message_id})
        return None if doc is None else message_from_doc(doc)

    async def max_seq(self, conversation_id: str) -> int:
        doc = await self._messages.find_one(
            {"conversation_id": conversation_id},
            {"seq": 1},
            sort=[("seq", DESCENDING)],
        )
        return 0 if doc is None else int(doc["seq"])

    async def page(
        self, conversation_id: str, *, start_seq: int, forward: bool, limit: int
    ) -> list[Message]:
        """Messages from start_seq inclusive, in the given direction."""
        if forward:
            query: Document = {"conversation_id": conversation_id, "seq": {"$gte": start_seq}}
            order = ASCENDING
        else:
            query = {"conversation_id": conversation_id, "seq": {"$lte": start_seq}}
            order = DESCENDING
        cursor = self._messages.find(query).sort("seq", order).limit(limit)
        return [message_from_doc(doc) async for doc in cursor]

    async def committed_since(self, first_id: str, *, limit: int) -> list[Message]:
        """Messages whose id is at least ``first_id``, i.e. committed since its time."""
        cursor = (
            self._messages.find({"_id": {"$gte": first_id}}, {"body": 0})
            .sort("_id", ASCENDING)
            .limit(limit)
        )
        return [message_from_doc({**doc, "body": b""}) async for doc in cursor]

    async def range(
        self, conversation_id: str, *, after_seq: int, until_seq: int | None, limit: int
    ) -> list[Message]:
        """Messages with after_seq < seq <= until_seq, oldest first."""
        bounds: Document = {"$gt": after_seq}
        if until_seq is not None:
            bounds["$lte"] = until_seq
        cursor = (
            self._messages.find({"conversation_id": conversation_id, "seq": bounds})
            .sort("seq", ASCENDING)
            .limit(limit)
        )
        return [message_from_doc(doc) async for doc in cursor]
