"""Conversations and per-member watermarks in MongoDB.

- ``conversations``: ``_id`` (random, so a ranged shard key spreads),
  ``type``, ``member_ids`` (multikey-indexed with last activity, which serves
  the inbox), ``last_seq``, ``last_activity_at``, ``last_message`` and
  ``sent`` (per member, the highest seq they sent, which counts as read),
  written once per commit batch, not per member.
- ``direct_pairs``: ``_id`` is the sorted pair of accounts, mapping to the one
  direct conversation of that pair.
- ``members``: one document per (conversation, member) with the delivered and
  read watermarks, only ever raised with ``$max``.
- ``device_cursors``: per (device, conversation), the last seq the device acked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from parley_core.storage.mongo import HINT, Database, Document
from svc_message.model import Conversation, MessageSummary, Watermarks
from svc_message.model.conversations import Commit, MemberRecord


def _summary(doc: Mapping[str, Any] | None) -> MessageSummary | None:
    if not doc:
        return None
    return MessageSummary(
        message_id=doc["id"],
        seq=doc["seq"],
        sender_account_id=doc["sender"],
        type=doc["type"],
        created_at=doc["at"],
    )


def conversation_from_doc(doc: Mapping[str, Any]) -> Conversation:
    return Conversation(
        conversation_id=doc["_id"],
        type=doc["type"],
        member_ids=tuple(doc["member_ids"]),
        created_at=doc["created_at"],
        last_seq=doc.get("last_seq", 0),
        last_activity_at=doc.get("last_activity_at"),
        last_message=_summary(doc.get("last_message")),
        sent=tuple(sorted((doc.get("sent") or {}).items())),
        title=doc.get("title", ""),
        avatar_ref=doc.get("avatar_ref", ""),
        public=bool(doc.get("public")),
        member_count=doc.get("member_count", len(doc["member_ids"])),
        roles=tuple(sorted((doc.get("roles") or {}).items())),
        joined=tuple(sorted((k, (v[0], v[1])) for k, v in (doc.get("joined") or {}).items())),
        last_version=doc.get("last_version", 0),
        server_search=bool(doc.get("server_search")),
    )


def _record(doc: Mapping[str, Any]) -> MemberRecord:
    return MemberRecord(
        conversation_id=doc["conversation_id"],
        account_id=doc["account_id"],
        active=bool(doc.get("active")),
        joined_seq=doc.get("joined_seq", 0),
        joined_version=doc.get("joined_version", 0),
        left_seq=doc.get("left_seq", 0),
        left_version=doc.get("left_version", 0),
        joined_at=doc.get("joined_at"),
    )


def _watermarks(doc: Mapping[str, Any]) -> Watermarks:
    return Watermarks(
        conversation_id=doc["conversation_id"],
        account_id=doc["account_id"],
        delivered_seq=doc.get("delivered_seq", 0),
        read_seq=doc.get("read_seq", 0),
    )


def member_key(conversation_id: str, account_id: str) -> str:
    return f"{conversation_id}:{account_id}"


class ConversationStore:
    def __init__(self, db: Database) -> None:
        self._conversations = db["conversations"]
        self._pairs = db["direct_pairs"]
        self._members = db["members"]
        # Delivered watermarks from acks and device positions are hints the
        # device repeats (see HINT); MarkRead's watermarks stay durable.
        self._member_hints = self._members.with_options(write_concern=HINT)
        self._cursors = db["device_cursors"].with_options(write_concern=HINT)

    async def ensure_indexes(self) -> None:
        await self._conversations.create_index(
            [("member_ids", ASCENDING), ("last_activity_at", DESCENDING), ("_id", DESCENDING)]
        )
        await self._members.create_index(
            [("conversation_id", ASCENDING), ("updated_at", ASCENDING)]
        )
        await self._members.create_index(
            [("conversation_id", ASCENDING), ("active", ASCENDING), ("account_id", ASCENDING)]
        )
        await self._members.create_index(
            [("account_id", ASCENDING), ("channel", ASCENDING), ("active", ASCENDING)]
        )

    async def claim_direct_pair(self, direct_key: str, conversation_id: str) -> str:
        """The conversation id of the pair: ours if we claimed it first, else the
        one already claimed. ``direct_pairs`` is keyed by the pair itself, so
        uniqueness holds on a cluster sharded by _id."""
        try:
            await self._pairs.insert_one({"_id": direct_key, "conversation_id": conversation_id})
        except DuplicateKeyError:
            doc = await self._pairs.find_one({"_id": direct_key})
            assert doc is not None
            return str(doc["conversation_id"])
        return conversation_id

    async def direct_pair(self, direct_key: str) -> str | None:
        doc = await self._pairs.find_one({"_id": direct_key})
        return None if doc is None else str(doc["conversation_id"])

    async def ensure(self, conversation: Conversation) -> bool:
        """Create the conversation document unless it exists; True if created."""
        result = await self._conversations.update_one(
            {"_id": conversation.conversation_id},
            {
                "$setOnInsert": {
                    "type": conversation.type,
                    "member_ids": list(conversation.member_ids),
                    "created_at": conversation.created_at,
                    "last_seq": 0,
                    "last_activity_at": conversation.created_at,
                    "last_message": None,
                }
            },
            upsert=True,
        )
        return result.upserted_id is not None

    async def create(self, conversation: Conversation) -> bool:
        """Insert a group or channel; False if its id exists (a retried create)."""
        try:
            await self._conversations.insert_one(
                {
                    "_id": conversation.conversation_id,
                    "type": conversation.type,
                    "member_ids": list(conversation.member_ids),
                    "roles": dict(conversation.roles),
                    "joined": {},
                    "member_count": conversation.member_count,
                    "title": conversation.title,
                    "avatar_ref": conversation.avatar_ref,
                    "public": conversation.public,
                    "created_at": conversation.created_at,
                    "last_seq": 0,
                    "last_version": 0,
                    "last_activity_at": conversation.created_at,
                    "last_message": None,
                }
            )
        except DuplicateKeyError:
            return False
        return True

    async def add_members(
        self,
        conversation_id: str,
        account_ids: list[str],
        *,
        cap: int | None,
        pending: tuple[int, int] | None = None,
        count: bool = True,
    ) -> bool:
        """Add accounts that are not members yet, all or none, with ``pending``
        as their join position until it is known; False when the cap would be
        exceeded or one of them is already a member (re-read and decide
        again). One conditional update: concurrent adds cannot pass the cap."""
        query: Document = {"_id": conversation_id, "member_ids": {"$nin": account_ids}}
        if cap is not None:
            query["member_count"] = {"$lte": cap - len(account_ids)}
        update: Document = {"$addToSet": {"member_ids": {"$each": account_ids}}}
        if count:
            update["$inc"] = {"member_count": len(account_ids)}
        if pending is not None:
            update["$set"] = {f"joined.{a}": list(pending) for a in account_ids}
        result = await self._conversations.update_one(query, update)
        return result.modified_count == 1

    async def remove_member(
        self, conversation_id: str, account_id: str, *, count: bool = True
    ) -> None:
        """Idempotent: the filter only matches while the account is a member."""
        update: Document = {
            "$pull": {"member_ids": account_id},
            "$unset": {f"roles.{account_id}": "", f"joined.{account_id}": ""},
        }
        if count:
            update["$inc"] = {"member_count": -1}
        await self._conversations.update_one(
            {"_id": conversation_id, "member_ids": account_id}, update
        )

    async def set_joined(
        self, conversation_id: str, account_ids: Iterable[str], *, seq: int, version: int
    ) -> None:
        fields = {f"joined.{a}": [seq, version] for a in account_ids}
        if fields:
            await self._conversations.update_one({"_id": conversation_id}, {"$set": fields})

    async def set_role(self, conversation_id: str, account_id: str, role: int | None) -> None:
        """Owner or admin; None makes a plain member (or subscriber)."""
        if role is None:
            update: Document = {"$unset": {f"roles.{account_id}": ""}}
        else:
            update = {"$set": {f"roles.{account_id}": role}}
        await self._conversations.update_one({"_id": conversation_id}, update)

    async def set_info(self, conversation_id: str, *, title: str, avatar_ref: str) -> None:
        await self._conversations.update_one(
            {"_id": conversation_id}, {"$set": {"title": title, "avatar_ref": avatar_ref}}
        )

    async def set_server_search(self, conversation_id: str, *, enabled: bool, seq: int) -> None:
        """Applied only over an older change: a retried request whose system
        message a later change already followed must not put its value back."""
        await self._conversations.update_one(
            {
                "_id": conversation_id,
                "$or": [
                    {"server_search_seq": {"$exists": False}},
                    {"server_search_seq": {"$lt": seq}},
                ],
            },
            {"$set": {"server_search": enabled, "server_search_seq": seq}},
        )

    async def count_subscriber(self, conversation_id: str, delta: int) -> None:
        await self._conversations.update_one(
            {"_id": conversation_id}, {"$inc": {"member_count": delta}}
        )

    # -- member records --------------------------------------------------------

    async def record_joins(
        self,
        conversation_id: str,
        account_ids: Iterable[str],
        *,
        seq: int,
        version: int,
        channel: bool,
        now: datetime,
    ) -> list[str]:
        """Mark the accounts active members from (seq, version); the accounts
        that were not active before (for channel subscriber counts)."""
        ids = list(account_ids)
        if not ids:
            return []
        before = {
            doc["account_id"]
            async for doc in self._members.find(
                {"_id": {"$in": [member_key(conversation_id, a) for a in ids]}, "active": True},
                {"account_id": 1},
            )
        }
        requests = [
            UpdateOne(
                {"_id": member_key(conversation_id, a)},
                {
                    "$set": {
                        "active": True,
                        "channel": channel,
                        "joined_seq": seq,
                        "joined_version": version,
                        "joined_at": now,
                    },
                    "$unset": {"left_seq": "", "left_version": ""},
                    # Watermark raises filter on the fields' values (see _raise).
                    "$setOnInsert": {
                        "conversation_id": conversation_id,
                        "account_id": a,
                        "delivered_seq": 0,
                        "read_seq": 0,
                    },
                },
                upsert=True,
            )
            for a in ids
            if a not in before
        ]
        if requests:
            await self._members.bulk_write(requests, ordered=False)
        return [a for a in ids if a not in before]

    async def record_departure(
        self, conversation_id: str, account_id: str, *, seq: int, version: int, now: datetime
    ) -> bool:
        """Mark the member gone as of (seq, version); False if already gone."""
        result = await self._members.update_one(
            {"_id": member_key(conversation_id, account_id), "active": True},
            {
                "$set": {
                    "active": False,
                    "left_seq": seq,
                    "left_version": version,
                    "left_at": now,
                }
            },
        )
        return result.modified_count == 1

    async def member(self, conversation_id: str, account_id: str) -> MemberRecord | None:
        doc = await self._members.find_one({"_id": member_key(conversation_id, account_id)})
        if doc is None or "active" not in doc:
            return None
        return _record(doc)

    async def members_of(
        self, account_id: str, conversation_ids: Iterable[str]
    ) -> dict[str, MemberRecord]:
        """The account's member records in those conversations, by conversation."""
        keys = [member_key(c, account_id) for c in conversation_ids]
        if not keys:
            return {}
        cursor = self._members.find({"_id": {"$in": keys}, "active": {"$exists": True}})
        return {doc["conversation_id"]: _record(doc) async for doc in cursor}

    async def active_members(
        self, conversation_id: str, *, after: str, limit: int
    ) -> list[MemberRecord]:
        cursor = (
            self._members.find(
                {"conversation_id": conversation_id, "active": True, "account_id": {"$gt": after}}
            )
            .sort("account_id", ASCENDING)
            .limit(limit)
        )
        return [_record(doc) async for doc in cursor]

    async def channel_subscriptions(self, account_id: str) -> list[str]:
        cursor = self._members.find(
            {"account_id": account_id, "channel": True, "active": True}, {"conversation_id": 1}
        )
        return [doc["conversation_id"] async for doc in cursor]

    async def get_many(self, conversation_ids: Iterable[str]) -> list[Conversation]:
        cursor = self._conversations.find({"_id": {"$in": list(conversation_ids)}})
        return [conversation_from_doc(doc) async for doc in cursor]

    async def get(self, conversation_id: str) -> Conversation | None:
        doc = await self._conversations.find_one({"_id": conversation_id})
        return None if doc is None else conversation_from_doc(doc)

    async def of_member(self, account_id: str) -> list[Conversation]:
        cursor = self._conversations.find({"member_ids": account_id})
        return [conversation_from_doc(doc) async for doc in cursor]

    async def member_conversations(
        self, account_id: str, *, types: Iterable[int], after: str, limit: int
    ) -> list[Conversation]:
        """The account's conversations of those types by id, after ``after``:
        a walk that activity elsewhere cannot reorder."""
        cursor = (
            self._conversations.find(
                {"member_ids": account_id, "type": {"$in": list(types)}, "_id": {"$gt": after}}
            )
            .sort("_id", ASCENDING)
            .limit(limit)
        )
        return [conversation_from_doc(doc) async for doc in cursor]

    async def inbox_page(
        self,
        account_id: str,
        *,
        after: tuple[datetime, str] | None,
        limit: int,
        exclude: Iterable[str] = (),
        channel_ids: Iterable[str] = (),
    ) -> list[Conversation]:
        """The account's conversations by activity, newest first: those it is
        a member of by member_ids, and the given channel subscriptions."""
        channels = list(channel_ids)
        query: Document = (
            {"$or": [{"member_ids": account_id}, {"_id": {"$in": channels}}]}
            if channels
            else {"member_ids": account_id}
        )
        skipped = list(exclude)
        if skipped:
            query["_id"] = {"$nin": skipped}
        if after is not None:
            at, conversation_id = after
            query = {
                "$and": [
                    query,
                    {
                        "$or": [
                            {"last_activity_at": {"$lt": at}},
                            {"last_activity_at": at, "_id": {"$lt": conversation_id}},
                        ]
                    },
                ]
            }
        cursor = (
            self._conversations.find(query)
            .sort([("last_activity_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit)
        )
        return [conversation_from_doc(doc) async for doc in cursor]

    async def record_commits(self, commits: Iterable[Commit]) -> None:
        """Advance each conversation's newest message and its senders' own
        positions: one update per conversation, whatever the batch held.

        Every field is raised with $max (last_message compares by its leading
        seq), so concurrent writers and replays commute and nothing goes
        backwards, without a conditional filter.
        """
        requests = []
        for commit in commits:
            newest = commit.newest
            maxima: Document = {"last_version": commit.last_version}
            if newest is not None:
                maxima.update(
                    {
                        "last_seq": newest.seq,
                        "last_activity_at": newest.created_at,
                        "last_message": {
                            "seq": newest.seq,
                            "id": newest.message_id,
                            "sender": newest.sender_account_id,
                            "type": newest.type,
                            "at": newest.created_at,
                        },
                    }
                )
            for account_id, seq in commit.sent.items():
                maxima[f"sent.{account_id}"] = seq
            requests.append(UpdateOne({"_id": commit.conversation_id}, {"$max": maxima}))
        if requests:
            await self._conversations.bulk_write(requests, ordered=False)

    # -- watermarks ----------------------------------------------------------

    @staticmethod
    def _raise(
        conversation_id: str, account_id: str, delivered: int, read: int
    ) -> tuple[Document, Document]:
        """Filter and update that raise watermarks only when one goes up.

        When the filter matches nothing because the member's watermarks are
        already as high, the upsert collides with the existing _id: that
        duplicate-key error means "nothing to raise", and updated_at (which
        drives receipt replay) is left alone.
        """
        delivered = max(delivered, read)
        # Every upsert sets both fields, and delivered >= read always, so one
        # condition tells whether anything rises (a single range condition is
        # also far cheaper for the database than a disjunction).
        below: Document
        if read:
            below = {"$or": [{"read_seq": {"$lt": read}}, {"read_seq": {"$exists": False}}]}
        else:
            below = {"delivered_seq": {"$lt": delivered}}
        maxima: Document = {"delivered_seq": delivered, "read_seq": read}
        query = {"_id": member_key(conversation_id, account_id), **below}
        update = {
            "$max": maxima,
            "$setOnInsert": {"conversation_id": conversation_id, "account_id": account_id},
        }
        return query, update

    async def raise_watermarks(
        self,
        raises: Iterable[tuple[str, str, int, int]],
        *,
        now: datetime,
    ) -> None:
        """Apply (conversation, account, delivered, read) raises from stream acks (hints,
        written with HINT); lower values change nothing."""
        requests = []
        for conversation_id, account_id, delivered, read in raises:
            query, update = self._raise(conversation_id, account_id, delivered, read)
            update["$set"] = {"updated_at": now}
            requests.append(UpdateOne(query, update, upsert=True))
        if not requests:
            return
        try:
            await self._member_hints.bulk_write(requests, ordered=False)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors") or any(
                error.get("code") != 11000 for error in exc.details.get("writeErrors", [])
            ):
                raise

    async def raise_one(
        self, conversation_id: str, account_id: str, *, delivered: int, read: int, now: datetime
    ) -> tuple[Watermarks, bool]:
        """The member's watermarks after the raise, and whether they moved."""
        query, update = self._raise(conversation_id, account_id, delivered, read)
        update["$set"] = {"updated_at": now}
        try:
            doc = await self._members.find_one_and_update(
                query, update, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:
            doc = await self._members.find_one({"_id": member_key(conversation_id, account_id)})
            assert doc is not None
            return _watermarks(doc), False
        assert doc is not None  # upsert=True always returns the document
        return _watermarks(doc), True

    async def watermarks(self, conversation_ids: Iterable[str]) -> list[Watermarks]:
        cursor = self._members.find({"conversation_id": {"$in": list(conversation_ids)}})
        return [_watermarks(doc) async for doc in cursor]

    async def watermarks_of(self, members: Iterable[tuple[str, str]]) -> list[Watermarks]:
        """Stored watermarks of (conversation, account) pairs."""
        keys = [member_key(c, a) for c, a in members]
        return [_watermarks(doc) async for doc in self._members.find({"_id": {"$in": keys}})]

    async def watermarks_changed_since(
        self, conversation_ids: Iterable[str], since: datetime | None
    ) -> list[Watermarks]:
        query: Document = {"conversation_id": {"$in": list(conversation_ids)}}
        if since is not None:
            query["updated_at"] = {"$gte": since}
        return [_watermarks(doc) async for doc in self._members.find(query)]

    # -- device cursors ------------------------------------------------------

    async def raise_device_cursors(self, raises: Iterable[tuple[str, str, int]]) -> None:
        requests = [
            UpdateOne(
                {"_id": f"{device_id}:{conversation_id}"},
                {"$max": {"seq": seq}},
                upsert=True,
            )
            for device_id, conversation_id, seq in raises
        ]
        if requests:
            await self._cursors.bulk_write(requests, ordered=False)

    async def device_cursors(self, device_id: str) -> dict[str, int]:
        prefix = f"{device_id}:"
        cursor = self._cursors.find({"_id": {"$gte": prefix, "$lt": prefix + "\uffff"}})
        return {doc["_id"][len(prefix) :]: doc["seq"] async for doc in cursor}
