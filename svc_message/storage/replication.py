"""Region replication in MongoDB: the owner's change-stream tail, the
persisted stream positions and leases, the snapshot read, and the replica's
idempotent apply.

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

Replica side (the same collections as the owner's, same schema):
- a message is inserted by ``_id``, or replaced only by a higher
  ``state_version`` (feed entries that are not history items have only
  ``version``, which never changes); at an equal one, ``hidden_for`` (which
  delete-for-me adds without raising the state version) is unioned;
- an erasure's copy wins: a document the erasure touched (``erased``) is
  never replaced by one it did not touch, whatever their state versions (the
  erasure rewrites without raising them), and replaces one it did not touch
  (the owner's stale copy, arriving after a partition, must not bring an
  erased body back);
- a conversation head is raised with ``$max`` (last seq, version, activity,
  last message); its other fields, the per-sender positions included, are
  set only from a document whose ``last_version`` is at least the replica's
  (so an erasure, which rewrites the head without raising it, replicates);
- a member document is merged by an injected function (the CRDT merge);
- a member removal deletes the member documents it names (or all but those
  it keeps): the owner's erasure deleted them;
- whatever names an account this region erased (``erased_accounts``, kept
  for the tombstone window) is applied as the erasure leaves it: its member
  documents are dropped, heads and messages scrubbed (storage/erased.py), so
  an owner that replicates before its own erasure step ran brings nothing
  of the account back.
- an inbox settings document's CRDT state is merged by an injected function
  (``domain.inbox_settings``: observe, merge, compare-and-set, write only
  what changed); the settings of an account this region erased are dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import bson
from bson.codec_options import CodecOptions
from pymongo import ASCENDING, DESCENDING, InsertOne, ReplaceOne, UpdateOne
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from parley_core.storage.mongo import Database, Document
from svc_message.model import DIRECT, ERASED
from svc_message.model.member_replica import MemberReplica, from_dict
from svc_message.model.replication import (
    ApplyOutcome,
    FeedChange,
    HighWater,
    ReplicatedDoc,
    ReplicatedKind,
    ReplicationCursor,
    ResumePointLost,
)
from svc_message.storage.erased import (
    ERASED_ACCOUNTS,
    ERASED_FLAG,
    account_key,
    accounts_named,
    scrub_head,
    scrub_message,
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
# Fields of a conversation head that only rise; the others follow last_version.
_HEAD_MAXIMA = ("last_seq", "last_version", "last_activity_at", "last_message")
_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)
# The order a replica applies a batch's kinds in (ReplicaStore.apply): the
# enum's, messages, conversation heads, members; a kind added later is applied too.
_APPLY_ORDER = tuple(ReplicatedKind)
# As the services' clients read documents (tz_aware=True, see parley_core.storage.mongo).
_CODEC: CodecOptions[Document] = CodecOptions(tz_aware=True)

MemberMerge = Callable[[Mapping[str, Any] | None, Mapping[str, Any]], Document]
# Merges one replicated settings state into this region's; True if it changed it.
SettingsMerge = Callable[[MemberReplica], Awaitable[bool]]


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


class ReplicaStore:
    """The replica's side: idempotent apply and high-water marks."""

    def __init__(
        self,
        db: Database,
        *,
        merge_member: MemberMerge,
        merge_settings: SettingsMerge | None = None,
    ) -> None:
        self._messages = db["messages"]
        self._conversations = db["conversations"]
        self._members = db["members"]
        self._erased = db[ERASED_ACCOUNTS]
        self._merge_member = merge_member
        self._merge_settings = merge_settings

    async def apply(self, docs: Sequence[ReplicatedDoc]) -> ApplyOutcome:
        """Applies kind by kind: the batch's messages, then the conversation
        heads, then the member documents, each kind in one read and one bulk
        write. Within a kind the batch's order is kept and every document
        merges by its own versions (the newest copy of a message wins, heads
        rise with $max, members merge), so grouping never lets an earlier
        document overtake a later one; and the heads of a batch are raised
        only once its messages are in. One bulk per kind instead of one per
        run of alternating kinds: a replica applies a batch in a handful of
        database round trips, not two per message (bench/README.md, the
        regions scenario)."""
        outcome = ApplyOutcome()
        decoded = [(doc.kind, decode(doc.document)) for doc in docs]
        erased = await self._erased_among(decoded)
        # Heads the batch itself brings, applied right after its messages.
        heads: dict[str, int] = {}
        for kind, doc in decoded:
            if kind == ReplicatedKind.CONVERSATION:
                cid = str(doc["_id"])
                heads[cid] = max(heads.get(cid, 0), int(doc.get("last_version") or 0))
        for kind in _APPLY_ORDER:
            run = [doc for k, doc in decoded if k == kind]
            if run:
                outcome += await self._apply_run(kind, run, erased, heads)
        return outcome

    async def _erased_among(
        self, decoded: Sequence[tuple[ReplicatedKind, Mapping[str, Any]]]
    ) -> frozenset[str]:
        """The accounts named in the batch that this region erased."""
        named: set[str] = set()
        for kind, doc in decoded:
            if kind != ReplicatedKind.MEMBER_REMOVAL:
                named |= accounts_named(kind.value, doc)
        named.discard(ERASED)
        if not named:
            return frozenset()
        keys = {account_key(a): a for a in named}
        cursor = self._erased.find({"_id": {"$in": sorted(keys)}}, {"_id": 1})
        return frozenset([keys[d["_id"]] async for d in cursor])

    async def _apply_run(
        self,
        kind: ReplicatedKind,
        documents: Sequence[Mapping[str, Any]],
        erased: frozenset[str],
        heads: Mapping[str, int],
    ) -> ApplyOutcome:
        if kind == ReplicatedKind.MESSAGE:
            return await self._apply_messages([scrub_message(d, erased) for d in documents], heads)
        if kind == ReplicatedKind.CONVERSATION:
            return await self._apply_heads([scrub_head(d, erased) for d in documents])
        if kind == ReplicatedKind.MEMBER_REMOVAL:
            return await self._apply_removals(documents)
        if kind == ReplicatedKind.SETTINGS:
            settings = [d for d in documents if not accounts_named(kind.value, d) & erased]
            outcome = await self._apply_settings(settings) if settings else ApplyOutcome()
            return outcome + ApplyOutcome(already_present=len(documents) - len(settings))
        kept = [d for d in documents if str(d.get("account_id")) not in erased]
        outcome = await self._apply_members(kept) if kept else ApplyOutcome()
        return outcome + ApplyOutcome(already_present=len(documents) - len(kept))

    async def _apply_messages(
        self, documents: Sequence[Mapping[str, Any]], heads: Mapping[str, int]
    ) -> ApplyOutcome:
        # The newest copy of each document in the run wins; earlier ones are
        # already contained in it.
        newest: dict[Any, Mapping[str, Any]] = {}
        for doc in documents:
            held = newest.get(doc["_id"])
            if held is None or _rank(doc) >= _rank(held):
                newest[doc["_id"]] = doc
        present = {
            d["_id"]: d
            async for d in self._messages.find(
                {"_id": {"$in": list(newest)}},
                {"version": 1, "state_version": 1, "hidden_for": 1, ERASED_FLAG: 1},
            )
        }
        requests: list[InsertOne[Document] | ReplaceOne[Document] | UpdateOne] = []
        for _id, doc in newest.items():
            held = present.get(_id)
            if held is None:
                requests.append(InsertOne(dict(doc)))
            elif _rank(doc) > _rank(held):
                requests.append(
                    ReplaceOne({"_id": _id, "state_version": held.get("state_version")}, dict(doc))
                )
            elif _rank(doc) == _rank(held) and not set(doc.get("hidden_for") or ()) <= set(
                held.get("hidden_for") or ()
            ):
                requests.append(
                    UpdateOne(
                        {"_id": _id},
                        {"$addToSet": {"hidden_for": {"$each": list(doc["hidden_for"])}}},
                    )
                )
        applied = await self._write(self._messages, requests)
        if applied:
            await self._raise_heads_from(newest.values(), heads)
        return ApplyOutcome(applied=applied, already_present=len(documents) - applied)

    async def _raise_heads_from(
        self, documents: Iterable[Mapping[str, Any]], heads: Mapping[str, int]
    ) -> None:
        """Raises the log positions (``last_version``, ``last_seq``) of the
        conversations the replica already holds to the messages just applied.
        The owner's head document follows only after its projector's next
        flush; until then a stream here, which skips a conversation whose
        ``last_version`` it has read up to, would not see them. The rest of
        the head (inbox order, last message, senders' positions) waits for
        the owner's. A conversation whose head came in the same batch, as new
        as its messages, needs no raise (a busy feed's batches carry them)."""
        tops: dict[str, Document] = {}
        for doc in documents:
            top = tops.setdefault(str(doc["conversation_id"]), {"last_version": 0})
            top["last_version"] = max(top["last_version"], int(doc.get("version", 0)))
            if doc.get("seq"):
                top["last_seq"] = max(top.get("last_seq", 0), int(doc["seq"]))
        requests = [
            UpdateOne({"_id": cid}, {"$max": top})
            for cid, top in tops.items()
            if heads.get(cid, 0) < top["last_version"]
        ]
        if requests:
            await self._conversations.bulk_write(requests, ordered=False)

    async def _apply_heads(self, documents: Sequence[Mapping[str, Any]]) -> ApplyOutcome:
        requests: list[UpdateOne] = []
        for doc in documents:
            maxima: Document = {k: doc[k] for k in _HEAD_MAXIMA if doc.get(k) is not None}
            # The per-sender positions (``sent``) go with the rest: a head at
            # least as new holds every send the replica's does, and an
            # erasure removes its account's entry without a new version.
            rest = {k: v for k, v in doc.items() if k != "_id" and k not in _HEAD_MAXIMA}
            update: Document = {}
            if rest:
                update["$setOnInsert"] = rest
            if maxima:
                update["$max"] = maxima
            if not update:
                continue
            requests.append(UpdateOne({"_id": doc["_id"]}, update, upsert=True))
            if rest:
                # Metadata (members, title, roles...) from a head at least as new.
                newer = [
                    {"last_version": {"$lte": int(doc.get("last_version", 0))}},
                    {"last_version": {"$exists": False}},
                ]
                requests.append(UpdateOne({"_id": doc["_id"], "$or": newer}, {"$set": rest}))
        if not requests:
            return ApplyOutcome()
        result = await self._conversations.bulk_write(requests, ordered=True)
        changed = result.upserted_count + result.modified_count
        applied = min(len(documents), changed)
        # A direct conversation has no membership documents: its two members
        # learn of it when the replica first holds it.
        created = {str(_id) for _id in (result.upserted_ids or {}).values()}
        wake = frozenset(
            str(account)
            for doc in documents
            if str(doc["_id"]) in created and doc.get("type") == DIRECT
            for account in doc.get("member_ids") or ()
        )
        return ApplyOutcome(
            applied=applied, already_present=len(documents) - applied, wake_accounts=wake
        )

    async def _apply_members(self, documents: Sequence[Mapping[str, Any]]) -> ApplyOutcome:
        merged: dict[Any, Document] = {}
        present = {
            d["_id"]: d
            async for d in self._members.find({"_id": {"$in": [d["_id"] for d in documents]}})
        }
        for doc in documents:
            base = merged.get(doc["_id"]) or present.get(doc["_id"])
            merged[doc["_id"]] = self._merge_member(base, doc)
        requests = [
            ReplaceOne({"_id": _id}, doc, upsert=True)
            for _id, doc in merged.items()
            if present.get(_id) != doc
        ]
        applied = await self._write(self._members, requests)
        wake = frozenset(
            str(doc.get("account_id"))
            for _id, doc in merged.items()
            if present.get(_id) != doc and doc.get("account_id")
        )
        return ApplyOutcome(
            applied=applied, already_present=len(documents) - applied, wake_accounts=wake
        )

    async def _apply_removals(self, documents: Sequence[Mapping[str, Any]]) -> ApplyOutcome:
        applied = 0
        for doc in documents:
            query: Document = {"conversation_id": doc["_id"]}
            if "except" in doc:
                query["account_id"] = {"$nin": list(doc["except"])}
            else:
                query["account_id"] = {"$in": list(doc.get("accounts") or ())}
            result = await self._members.delete_many(query)
            applied += 1 if result.deleted_count else 0
        return ApplyOutcome(applied=applied, already_present=len(documents) - applied)

    async def _apply_settings(self, documents: Sequence[Mapping[str, Any]]) -> ApplyOutcome:
        """Each document's CRDT state merged in, one by one (a merge is
        idempotent, so a batch sent again changes nothing)."""
        if self._merge_settings is None:
            return ApplyOutcome(already_present=len(documents))
        applied = 0
        wake: set[str] = set()
        for doc in documents:
            state = from_dict(doc["crdt"])
            if await self._merge_settings(state):
                applied += 1
                wake.add(state.account_id)
        return ApplyOutcome(
            applied=applied,
            already_present=len(documents) - applied,
            wake_accounts=frozenset(wake),
        )

    @staticmethod
    async def _write(collection: Any, requests: Sequence[Any]) -> int:
        """Runs the writes unordered; an insert that lost a race to the same
        ``_id`` counts as already present. How many wrote something."""
        if not requests:
            return 0
        try:
            result = await collection.bulk_write(list(requests), ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if exc.details.get("writeConcernErrors") or any(
                e.get("code") != 11000 or set(e.get("keyPattern") or {"_id": 1}) != {"_id"}
                for e in errors
            ):
                raise
            details = exc.details
            return int(
                details.get("nInserted", 0)
                + details.get("nModified", 0)
                + details.get("nUpserted", 0)
            )
        return int(result.inserted_count + result.modified_count + result.upserted_count)

    async def high_water(self, conversation_ids: Iterable[str]) -> dict[str, HighWater]:
        marks: dict[str, HighWater] = {}
        for conversation_id in sorted(set(conversation_ids)):
            newest = await self._messages.find_one(
                {"conversation_id": conversation_id},
                {"version": 1},
                sort=[("version", DESCENDING)],
            )
            if newest is None:
                continue
            item = await self._messages.find_one(
                {"conversation_id": conversation_id, "seq": {"$gte": 1}},
                {"seq": 1},
                sort=[("seq", DESCENDING)],
            )
            marks[conversation_id] = HighWater(
                last_seq=0 if item is None else int(item["seq"]),
                max_version=int(newest["version"]),
            )
        return marks


def _state_version(doc: Mapping[str, Any]) -> int:
    return int(doc.get("state_version", doc.get("version", 0)))


def _rank(doc: Mapping[str, Any]) -> tuple[bool, int]:
    """Which copy of a message a replica keeps: the erasure's over any other
    (tombstones win), then the higher state version."""
    return bool(doc.get(ERASED_FLAG)), _state_version(doc)
