"""Region replication in MongoDB, the replica's side: the idempotent apply of
what a peer's replicator sends (storage/replication.py is the owner's side).

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

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from pymongo import DESCENDING, InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError

from parley_core.storage.mongo import Database, Document
from svc_message.model import DIRECT, ERASED
from svc_message.model.member_replica import MemberReplica, from_dict
from svc_message.model.replication import ApplyOutcome, HighWater, ReplicatedDoc, ReplicatedKind
from svc_message.storage.erased import (
    ERASED_ACCOUNTS,
    ERASED_FLAG,
    account_key,
    accounts_named,
    scrub_head,
    scrub_message,
)
from svc_message.storage.replication import decode

# Fields of a conversation head that only rise; the others follow last_version.
_HEAD_MAXIMA = ("last_seq", "last_version", "last_activity_at", "last_message")
# The order a replica applies a batch's kinds in (ReplicaStore.apply): the
# enum's, messages, conversation heads, members; a kind added later is applied too.
_APPLY_ORDER = tuple(ReplicatedKind)

MemberMerge = Callable[[Mapping[str, Any] | None, Mapping[str, Any]], Document]
# Merges one replicated settings state into this region's; True if it changed it.
SettingsMerge = Callable[[MemberReplica], Awaitable[bool]]


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
