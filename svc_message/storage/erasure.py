"""What an account erasure removes from svc_message's stores.

Every write here is idempotent: a repeated call finds nothing left to do.
Every message rewritten is flagged ``erased``, so a replica keeps this copy
over any older one (storage/replication.py). The account's id is replaced
by ``ERASED`` wherever other people's history
keeps a place for it (the sender of its tombstones, the actor or target of
system messages, the peer of its direct conversations); everything that
exists only for the account is deleted.

Queries name ``conversation_id`` first wherever an index starts with it
(the messages collection is sharded by it), so an erasure is per
conversation: the domain lists the account's conversations and scrubs them
one by one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from bson import Binary
from pymongo import ASCENDING, UpdateOne
from redis.exceptions import RedisError

from parley_core.storage.mongo import Database, Document
from parley_core.storage.redis import Redis
from svc_message.model import ERASED, HISTORY_KINDS, ChangeKind
from svc_message.storage.delivered import PREFIX as DELIVERED_PREFIX
from svc_message.storage.erased import ERASED_ACCOUNTS, ERASED_FLAG, account_key
from svc_message.storage.recent import PREFIX as RECENT_PREFIX

_HISTORY = list(HISTORY_KINDS)


def _emoji_key(emoji: str) -> str:
    return emoji.encode().hex()


class ErasureStore:
    def __init__(self, db: Database, redis: Redis) -> None:
        self._messages = db["messages"]
        self._conversations = db["conversations"]
        self._pairs = db["direct_pairs"]
        self._members = db["members"]
        self._cursors = db["device_cursors"]
        self._inbox = db["inbox_settings"]
        self._push_tokens = db["push_tokens"]
        self._push_settings = db["push_settings"]
        self._outbox = db["push_outbox"]
        self._erased = db[ERASED_ACCOUNTS]
        self._redis = redis

    async def ensure_indexes(self) -> None:
        await self._erased.create_index([("until", ASCENDING)], expireAfterSeconds=0)

    async def remember_erased(self, account_id: str, *, until: datetime) -> None:
        """This region erased the account: until ``until`` (the tombstone
        window), replicated copies naming it are applied as the erasure
        leaves them (storage/erased.py)."""
        await self._erased.update_one(
            {"_id": account_key(account_id)}, {"$max": {"until": until}}, upsert=True
        )

    # -- where the account is ----------------------------------------------

    async def conversations_of(self, account_id: str, *, limit: int) -> list[str]:
        """Conversations still naming the account: as a member, or through a
        member record (left ones included)."""
        found: list[str] = []
        cursor = self._conversations.find({"member_ids": account_id}, {"_id": 1}).limit(limit)
        found += [doc["_id"] async for doc in cursor]
        records = self._members.find({"account_id": account_id}, {"conversation_id": 1})
        found += [doc["conversation_id"] async for doc in records.limit(limit)]
        return list(dict.fromkeys(found))[:limit]

    # -- messages ------------------------------------------------------------

    async def scrub_messages(
        self,
        conversation_id: str,
        account_id: str,
        *,
        limit: int,
        release: Callable[[list[str]], Awaitable[None]],
    ) -> bool:
        """Tombstone up to ``limit`` entries the account wrote in the
        conversation; whether more remain. ``release`` gets the media ids
        they name before they are removed (so a failed release is retried)."""
        cursor = self._messages.find(
            {"conversation_id": conversation_id, "sender_id": account_id}
        ).limit(limit + 1)
        docs = [doc async for doc in cursor]
        more = len(docs) > limit
        media: list[str] = []
        requests: list[UpdateOne] = []
        for doc in docs[:limit]:
            kind = doc.get("kind", ChangeKind.MESSAGE)
            # The request id keeps (conversation, sender, request id) unique
            # once every erased sender is the same marker.
            fields: Document = {"sender_id": ERASED, "request_id": doc["_id"], ERASED_FLAG: True}
            unset: Document = {"sender_device_id": "", "only_for": ""}
            if kind in HISTORY_KINDS:
                media += list(doc.get("media") or ())
                if kind == ChangeKind.MESSAGE:
                    fields.update(deleted=True, body=Binary(b""), deleted_by=ERASED)
                    unset["media"] = ""
                else:
                    # An identity change names the device whose key changed.
                    unset["system.device"] = ""
            else:
                unset["body"] = ""
            if kind == ChangeKind.REACTION and doc.get("target"):
                requests.append(
                    UpdateOne(
                        {"_id": doc["target"]},
                        {
                            "$pull": {f"reactions.{_emoji_key(doc.get('emoji', ''))}": account_id},
                            "$set": {ERASED_FLAG: True},
                        },
                    )
                )
            requests.append(UpdateOne({"_id": doc["_id"]}, {"$set": fields, "$unset": unset}))
        if media:
            await release(list(dict.fromkeys(media)))
        if requests:
            await self._messages.bulk_write(requests, ordered=True)
        return more

    async def scrub_mentions(self, conversation_id: str, account_id: str) -> None:
        """Others' entries that name the account: system messages about it,
        deletions it made as an admin, messages it deleted for itself. Each
        query is narrowed to the conversation by the (conversation_id, ...)
        indexes and filtered there: an erasure is rare, so no index of its
        own on these fields."""
        in_conversation: Document = {"conversation_id": conversation_id}
        await self._messages.update_many(
            {**in_conversation, "system.actor": account_id},
            {"$set": {"system.actor": ERASED, ERASED_FLAG: True}},
        )
        cursor = self._messages.find(
            {**in_conversation, "system.targets": account_id}, {"system.targets": 1}
        )
        async for doc in cursor:
            targets = [ERASED if t == account_id else t for t in doc["system"]["targets"]]
            await self._messages.update_one(
                {"_id": doc["_id"]}, {"$set": {"system.targets": targets, ERASED_FLAG: True}}
            )
        await self._messages.update_many(
            {**in_conversation, "deleted_by": account_id},
            {"$set": {"deleted_by": ERASED, ERASED_FLAG: True}},
        )
        await self._messages.update_many(
            {**in_conversation, "hidden_for": account_id},
            {"$pull": {"hidden_for": account_id}, "$set": {ERASED_FLAG: True}},
        )
        # Its reactions were pulled with the reaction entries that made them
        # (scrub_messages): every reaction has one.

    # -- the conversation ------------------------------------------------------

    async def scrub_conversation(self, conversation_id: str, account_id: str) -> None:
        """The conversation document: the account's per-member fields go; in
        a direct conversation it stays as the ERASED peer."""
        doc = await self._conversations.find_one({"_id": conversation_id})
        if doc is None:
            return
        update: dict[str, Any] = {
            "$unset": {
                f"sent.{account_id}": "",
                f"roles.{account_id}": "",
                f"joined.{account_id}": "",
            }
        }
        members = list(doc.get("member_ids") or ())
        if account_id in members:
            update["$set"] = {"member_ids": [ERASED if m == account_id else m for m in members]}
            joined = (doc.get("joined") or {}).get(account_id)
            if joined is not None:
                update["$set"][f"joined.{ERASED}"] = joined
        last = doc.get("last_message") or {}
        if last.get("sender") == account_id:
            update.setdefault("$set", {})["last_message.sender"] = ERASED
        await self._conversations.update_one({"_id": conversation_id}, update)
        await self._pairs.delete_many({"conversation_id": conversation_id})

    async def forget_member(self, conversation_id: str, account_id: str) -> None:
        """Its member record (watermarks, joins, departures) and its inbox
        settings there; the last step for a conversation."""
        await self._inbox.delete_many(
            {"conversation_id": conversation_id, "account_id": account_id}
        )
        await self._members.delete_many(
            {"conversation_id": conversation_id, "account_id": account_id}
        )

    async def drop_caches(self, conversation_ids: Iterable[str]) -> None:
        """The recent-message cache and delivery ticks of these conversations:
        they held the account's messages and id. Readers refill from the log."""
        keys: list[str] = []
        for conversation_id in conversation_ids:
            # The recent cache's keys carry the conversation as their hash tag
            # on a Redis Cluster (RecentCache._keys); each key is deleted on
            # its own, as keys of several conversations live in several slots.
            recent = RECENT_PREFIX + self._redis.tag(conversation_id)
            keys += [recent, f"{recent}:m", f"{DELIVERED_PREFIX}{conversation_id}"]
        if not keys:
            return
        try:
            async with self._redis.pipeline() as pipe:
                for key in keys:
                    pipe.delete(key)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CacheDown(str(exc)) from None

    # -- the account ---------------------------------------------------------

    async def forget_account(self, account_id: str, device_ids: Sequence[str]) -> None:
        await self._push_tokens.delete_many({"account_id": account_id})
        if device_ids:
            await self._push_tokens.delete_many({"_id": {"$in": list(device_ids)}})
            await self._outbox.delete_many({"device_id": {"$in": list(device_ids)}})
        await self._outbox.delete_many({"account_id": account_id})
        await self._push_settings.delete_many({"_id": account_id})
        await self._inbox.delete_many({"account_id": account_id})
        for device_id in device_ids:
            prefix = f"{device_id}:"
            await self._cursors.delete_many({"_id": {"$gte": prefix, "$lt": prefix + "\uffff"}})


class CacheDown(Exception):
    """Redis did not take the deletes; the erasure is retried."""
