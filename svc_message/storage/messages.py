"""The conversation log in MongoDB: the source of truth for every conversation.

``messages`` holds one document per change-feed entry. Every entry has a
``version``, gapless per conversation; history items (messages and system
messages) also have a ``seq``, gapless over history items. Other entries
(edits, deletes, reactions, delete-for-me) name their ``target`` message and
are also applied to it, so a history item document always holds the
message's current state: body, edit time, tombstone, reactions.

Three unique indexes carry the guarantees; each starts with conversation_id
so it stays valid on a cluster sharded by conversation_id:
- (conversation_id, version): two writers can never commit the same version;
- (conversation_id, seq), over history items only (a partial index);
- (conversation_id, sender_id, request_id): a retried change cannot commit twice.

SecantusDB's planner never uses the partial one, so a plain (conversation_id,
seq) index beside it serves reads by seq (see ensure_indexes).

A message that carries media names their ids in ``media`` (absent when it
names none, removed when it is deleted for everyone). A sparse multikey index
on it answers svc_media's questions about an id (who may read it, how many
messages still name it). The collection is sharded by conversation_id, so
those queries are scatter-gather over the shards: acceptable for them, since
they come from downloads that are not by the uploader and from the garbage
collector's checks, never from the send or read paths of other messages.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from typing import Any

from bson import Binary
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from parley_core.storage.mongo import Database, Document
from svc_message.model import HISTORY_KINDS, Change, ChangeKind, Message, SystemEvent
from svc_message.model.media import MediaReference
from svc_message.model.messages import Conflict, InsertOutcome


def _emoji_key(emoji: str) -> str:
    # Field names must not contain '.' or start with '$'; hex keeps any emoji safe.
    return emoji.encode().hex()


def _system_from_doc(doc: Mapping[str, Any] | None) -> SystemEvent | None:
    if not doc:
        return None
    return SystemEvent(
        action=doc["action"],
        actor_account_id=doc["actor"],
        target_account_ids=tuple(doc.get("targets") or ()),
        role=doc.get("role", 0),
        title=doc.get("title", ""),
        avatar_ref=doc.get("avatar", ""),
        device_id=doc.get("device", ""),
        server_search=bool(doc.get("search")),
    )


def _system_doc(system: SystemEvent) -> Document:
    return {
        "action": system.action,
        "actor": system.actor_account_id,
        "targets": list(system.target_account_ids),
        "role": system.role,
        "title": system.title,
        "avatar": system.avatar_ref,
        **({"device": system.device_id} if system.device_id else {}),
        **({"search": True} if system.server_search else {}),
    }


def message_from_doc(doc: Mapping[str, Any]) -> Message:
    reactions = tuple(
        (bytes.fromhex(key).decode(), tuple(accounts))
        for key, accounts in (doc.get("reactions") or {}).items()
        if accounts
    )
    return Message(
        message_id=doc["_id"],
        conversation_id=doc["conversation_id"],
        seq=doc["seq"],
        sender_account_id=doc["sender_id"],
        sender_device_id=doc.get("sender_device_id", ""),
        type=doc["type"],
        body=bytes(doc.get("body") or b""),
        reply_to_message_id=doc.get("reply_to") or "",
        created_at=doc["created_at"],
        request_id=doc.get("request_id", ""),
        version=doc.get("version", 0),
        forwarded=bool(doc.get("forwarded")),
        edited_at=doc.get("edited_at"),
        deleted=bool(doc.get("deleted")),
        reactions=reactions,
        system=_system_from_doc(doc.get("system")),
        state_version=doc.get("state_version", doc.get("version", 0)),
        hidden_for=tuple(doc.get("hidden_for") or ()),
        media_ids=tuple(doc.get("media") or ()),
    )


_REFERENCE_FIELDS = {"conversation_id": 1, "seq": 1, "media": 1, "hidden_for": 1}


def _reference(doc: Mapping[str, Any], asked: frozenset[str]) -> MediaReference:
    return MediaReference(
        conversation_id=doc["conversation_id"],
        seq=int(doc.get("seq", 0)),
        media_ids=tuple(m for m in doc.get("media") or () if m in asked),
        hidden_for=tuple(doc.get("hidden_for") or ()),
    )


def change_from_doc(doc: Mapping[str, Any]) -> Change:
    kind = doc.get("kind", ChangeKind.MESSAGE)
    message = message_from_doc(doc) if kind in HISTORY_KINDS else None
    return Change(
        kind=kind,
        conversation_id=doc["conversation_id"],
        version=doc.get("version", 0),
        change_id=doc["_id"],
        account_id=doc["sender_id"],
        created_at=doc["created_at"],
        message=message,
        target_id=doc.get("target", ""),
        target_seq=doc.get("target_seq", 0),
        body=bytes(doc.get("body") or b""),
        emoji=doc.get("emoji", ""),
        removed=bool(doc.get("removed")),
        for_everyone=bool(doc.get("for_everyone")),
        only_for=doc.get("only_for", ""),
        request_id=doc.get("request_id", ""),
    )


def _doc(change: Change) -> Document:
    doc: Document = {
        "_id": change.change_id,
        "conversation_id": change.conversation_id,
        "version": change.version,
        "kind": change.kind,
        "sender_id": change.account_id,
        "created_at": change.created_at,
        "request_id": change.request_id,
    }
    message = change.message
    if message is not None:
        doc.update(
            seq=message.seq,
            sender_device_id=message.sender_device_id,
            type=message.type,
            body=Binary(message.body),
            reply_to=message.reply_to_message_id or None,
            forwarded=message.forwarded,
            state_version=change.version,
            # Guards that make re-applying a change (after a crash) harmless.
            edit_version=0,
        )
        if message.system is not None:
            doc["system"] = _system_doc(message.system)
        if message.media_ids:
            # Only when present: the sparse index then holds messages with media alone.
            doc["media"] = list(message.media_ids)
        return doc
    doc.update(target=change.target_id, target_seq=change.target_seq)
    if change.kind == ChangeKind.EDIT:
        doc["body"] = Binary(change.body)
    elif change.kind == ChangeKind.REACTION:
        doc.update(emoji=change.emoji, removed=change.removed)
    elif change.kind == ChangeKind.DELETE:
        doc["for_everyone"] = True
    elif change.kind == ChangeKind.HIDE:
        doc["only_for"] = change.only_for
    return doc


def mutation(change: Change) -> UpdateOne | None:
    """The update that applies a change to its target message. Each is safe to
    apply again: a replay after a crash finds it already done."""
    bump = {"state_version": change.version}
    target = change.target_id
    if change.kind == ChangeKind.EDIT:
        return UpdateOne(
            {"_id": target, "deleted": {"$ne": True}, "edit_version": {"$lt": change.version}},
            {
                "$set": {
                    "body": Binary(change.body),
                    "edited_at": change.created_at,
                    "edit_version": change.version,
                },
                "$max": bump,
            },
        )
    if change.kind == ChangeKind.DELETE:
        # Its media ids go with the body: it no longer references them, and
        # the garbage collector of svc_media counts what still does.
        return UpdateOne(
            {"_id": target},
            {
                "$set": {"deleted": True, "body": Binary(b""), "deleted_by": change.account_id},
                "$unset": {"media": ""},
                "$max": bump,
            },
        )
    if change.kind == ChangeKind.HIDE:
        return UpdateOne({"_id": target}, {"$addToSet": {"hidden_for": change.only_for}})
    if change.kind == ChangeKind.REACTION:
        field = f"reactions.{_emoji_key(change.emoji)}"
        verb = "$pull" if change.removed else "$addToSet"
        return UpdateOne({"_id": target}, {verb: {field: change.account_id}, "$max": bump})
    return None


_SEQ_READS = "conversation_id_1_seq_1_reads"


class MessageStore:
    def __init__(self, db: Database) -> None:
        self._messages = db["messages"]

    async def ensure_indexes(self) -> None:
        await self._messages.create_index(
            [("conversation_id", ASCENDING), ("version", ASCENDING)], unique=True
        )
        await self._messages.create_index(
            [("conversation_id", ASCENDING), ("seq", ASCENDING)],
            unique=True,
            partialFilterExpression={"seq": {"$exists": True}},
        )
        # The partial index above only keeps seq unique: SecantusDB's planner
        # never uses a partial index, so reads by seq scanned the collection.
        # This plain one serves them; queries on it name only conversation_id
        # and seq (any other field makes SecantusDB scan) and bound seq on both
        # sides, since it sorts every key in range rather than walking the index.
        await self._messages.create_index(
            [("conversation_id", ASCENDING), ("seq", ASCENDING)], name=_SEQ_READS
        )
        await self._messages.create_index(
            [("conversation_id", ASCENDING), ("sender_id", ASCENDING), ("request_id", ASCENDING)],
            unique=True,
        )
        # Sparse, on one field: only messages with media are in it (a compound
        # sparse index would hold every message), and SecantusDB's planner
        # uses a sparse index but not a partial one. Queries on it filter by
        # ``media`` alone (SecantusDB scans the collection as soon as a query
        # names a field its index lacks); the rest is filtered here.
        await self._messages.create_index([("media", ASCENDING)], sparse=True)

    async def insert_ordered(self, changes: Sequence[Change]) -> InsertOutcome:
        """One durable write for the whole batch. Ordered, so what commits is a
        prefix: per conversation, versions stay gapless even if the batch stops."""
        if not changes:
            return InsertOutcome(inserted=0)
        try:
            await self._messages.insert_many([_doc(c) for c in changes], ordered=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if exc.details.get("writeConcernErrors") or not errors:
                raise
            first = errors[0]
            if first.get("code") != 11000:
                raise
            pattern = first.get("keyPattern") or {}
            conflict = (
                Conflict.DUPLICATE_REQUEST if "request_id" in pattern else Conflict.POSITION_TAKEN
            )
            return InsertOutcome(inserted=int(first["index"]), conflict=conflict)
        return InsertOutcome(inserted=len(changes))

    async def apply(self, changes: Iterable[Change]) -> None:
        """Apply changes to their target messages: one write for the batch."""
        requests = [m for m in (mutation(c) for c in changes) if m is not None]
        if requests:
            await self._messages.bulk_write(requests, ordered=True)

    async def archived_retries(
        self, requests: Sequence[tuple[str, str, str]]
    ) -> set[tuple[str, str, str]]:
        """Which (conversation_id, sender_id, request_id) name entries that left
        this log for an archive (none: this store has no archive)."""
        return set()

    async def by_request(
        self, conversation_id: str, sender_id: str, request_id: str
    ) -> Change | None:
        doc = await self._messages.find_one(
            {"conversation_id": conversation_id, "sender_id": sender_id, "request_id": request_id}
        )
        return None if doc is None else change_from_doc(doc)

    async def by_id(self, message_id: str) -> Message | None:
        """A history item in its current state (None for other entries)."""
        doc = await self._messages.find_one({"_id": message_id})
        if doc is None or doc.get("kind", ChangeKind.MESSAGE) not in HISTORY_KINDS:
            return None
        return message_from_doc(doc)

    async def many(self, message_ids: Sequence[str]) -> list[Message]:
        """The history items among ``message_ids`` (other entries left out)."""
        cursor = self._messages.find({"_id": {"$in": list(message_ids)}})
        return [
            message_from_doc(doc)
            async for doc in cursor
            if doc.get("kind", ChangeKind.MESSAGE) in HISTORY_KINDS
        ]

    async def media_references(
        self, media_ids: Sequence[str], *, limit: int, batch: int = 500
    ) -> AsyncGenerator[list[MediaReference]]:
        """The messages naming any of ``media_ids``, in batches, at most
        ``limit`` of them; a caller that has seen enough stops iterating.
        Deleted messages name none."""
        cursor = self._messages.find(
            {"media": {"$in": list(media_ids)}}, _REFERENCE_FIELDS, batch_size=batch
        ).limit(limit)
        asked = frozenset(media_ids)
        found: list[MediaReference] = []
        try:
            async for doc in cursor:
                found.append(_reference(doc, asked))
                if len(found) >= batch:
                    yield found
                    found = []
            if found:
                yield found
        finally:
            await cursor.close()

    async def media_reference_counts(self, media_ids: Sequence[str]) -> dict[str, int]:
        """Per media id, how many messages name it (ids no message names are absent)."""
        ids = list(media_ids)
        cursor = await self._messages.aggregate(
            [
                {"$match": {"media": {"$in": ids}}},
                {"$project": {"media": 1}},
                {"$unwind": "$media"},
                {"$match": {"media": {"$in": ids}}},
                {"$group": {"_id": "$media", "n": {"$sum": 1}}},
            ]
        )
        return {str(doc["_id"]): int(doc["n"]) async for doc in cursor}

    async def heads(self, conversation_id: str) -> tuple[int, int]:
        """(newest version, newest seq) in the log; (0, 0) when empty."""
        newest = await self._messages.find_one(
            {"conversation_id": conversation_id},
            {"version": 1, "seq": 1},
            sort=[("version", DESCENDING)],
        )
        if newest is None:
            return 0, 0
        if "seq" in newest:
            return int(newest["version"]), int(newest["seq"])
        item = await self._messages.find_one(
            # Not $exists, which SecantusDB answers with a collection scan.
            {"conversation_id": conversation_id, "seq": {"$gte": 1}},
            {"seq": 1},
            sort=[("seq", DESCENDING)],
        )
        return int(newest["version"]), 0 if item is None else int(item["seq"])

    async def page(
        self,
        conversation_id: str,
        *,
        start_seq: int,
        forward: bool,
        limit: int,
        hidden_for: str = "",
        floor_seq: int = 0,
        ceiling_seq: int = 0,
    ) -> list[Message]:
        """History items from start_seq inclusive, in the given direction,
        within [floor_seq, ceiling_seq] (0 = unbounded), leaving out those
        ``hidden_for`` deleted for themselves."""
        if forward:
            lo, hi = max(start_seq, floor_seq, 1), ceiling_seq
        else:
            lo, hi = max(floor_seq, 1), min(start_seq, ceiling_seq) if ceiling_seq else start_seq
        items: list[Message] = []

        def keep(docs: list[Document]) -> None:
            items.extend(
                message_from_doc(doc)
                for doc in docs
                if not hidden_for or hidden_for not in (doc.get("hidden_for") or ())
            )

        # seq is gapless, so a window of the ``limit`` seqs next to start_seq
        # usually holds the page; rows hidden from the reader leave the next
        # window to fetch what they took.
        while len(items) < limit and ((forward and not hi) or lo <= hi):
            wanted = limit - len(items)
            if forward:
                window = (lo, min(lo + wanted - 1, hi) if hi else lo + wanted - 1)
            else:
                window = (max(lo, hi - wanted + 1), hi)
            docs = await self._seq_range(conversation_id, *window, forward=forward)
            keep(docs)
            if len(docs) < window[1] - window[0] + 1:
                # A short window: the log ends or has a gap there (or start_seq
                # is past the newest). The rest of the range, limited: still on
                # the index, though SecantusDB sorts all its keys.
                rest_lo, rest_hi = (window[1] + 1, hi) if forward else (lo, window[0] - 1)
                if rest_hi < rest_lo and (rest_hi or not forward):  # 0: unbounded
                    break
                docs = await self._seq_range(
                    conversation_id, rest_lo, rest_hi, forward=forward, limit=wanted
                )
                keep(docs)
                if len(docs) < wanted:
                    break
                window = (window[0], int(docs[-1]["seq"])) if forward else (int(docs[-1]["seq"]), 0)
            if forward:
                lo = window[1] + 1
            else:
                hi = window[0] - 1
        return items[:limit]

    async def _seq_range(
        self, conversation_id: str, lo: int, hi: int, *, forward: bool, limit: int = 0
    ) -> list[Document]:
        """History items with lo <= seq <= hi (hi 0: no upper bound), in order."""
        bounds: Document = {"$gte": lo}
        if hi:
            bounds["$lte"] = hi
        cursor = (
            self._messages.find({"conversation_id": conversation_id, "seq": bounds})
            .sort("seq", ASCENDING if forward else DESCENDING)
            .limit(limit)
        )
        return [doc async for doc in cursor]

    async def hidden_seqs(
        self, conversation_id: str, account_id: str, lo: int, hi: int
    ) -> set[int]:
        # hidden_for is filtered here: naming it in the query makes SecantusDB scan.
        cursor = self._messages.find(
            {"conversation_id": conversation_id, "seq": {"$gte": lo, "$lte": hi}},
            {"seq": 1, "hidden_for": 1},
        )
        return {
            int(doc["seq"]) async for doc in cursor if account_id in (doc.get("hidden_for") or ())
        }

    async def deleted_for_everyone(self, conversation_id: str, message_ids: list[str]) -> set[str]:
        """Which of these messages are deleted for everyone now."""
        cursor = self._messages.find(
            {"_id": {"$in": message_ids}, "conversation_id": conversation_id}, {"deleted": 1}
        )
        return {str(doc["_id"]) async for doc in cursor if doc.get("deleted")}

    async def committed_since(self, first_id: str, *, limit: int) -> list[Change]:
        """Entries whose id is at least ``first_id``, i.e. committed since its time."""
        # Bodies stay behind (a page may span thousands of messages), except
        # edits', which replaying them needs.
        cursor = (
            self._messages.find({"_id": {"$gte": first_id}}, {"body": 0})
            .sort("_id", ASCENDING)
            .limit(limit)
        )
        docs = [doc async for doc in cursor]
        edits = [doc["_id"] for doc in docs if doc.get("kind") == ChangeKind.EDIT]
        if edits:
            bodies = {
                doc["_id"]: doc.get("body")
                async for doc in self._messages.find({"_id": {"$in": edits}}, {"body": 1})
            }
            for doc in docs:
                if doc["_id"] in bodies:
                    doc["body"] = bodies[doc["_id"]]
        return [change_from_doc(doc) for doc in docs]

    async def changes(
        self, conversation_id: str, *, after_version: int, until_version: int | None, limit: int
    ) -> list[Change]:
        """Feed entries with after_version < version <= until_version, oldest first."""
        bounds: Document = {"$gt": after_version}
        if until_version is not None:
            bounds["$lte"] = until_version
        cursor = (
            self._messages.find({"conversation_id": conversation_id, "version": bounds})
            .sort("version", ASCENDING)
            .limit(limit)
        )
        return [change_from_doc(doc) async for doc in cursor]
