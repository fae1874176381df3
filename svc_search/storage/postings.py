"""Postings in hour buckets, per-token counts, and per-message records in MongoDB.

``search_buckets``: one document per (conversation ``c``, epoch key id
``k``, token, hour = send time ms // BUCKET_MS) holding that token's
postings of that hour as entries ``e: [{m, a, s}]`` (message id, send time
ms, seq). Token and hour are one field ``b`` = token length, token, hour
(4 bytes big-endian), so the index (c, k, b) answers both a token's hours
in a range and a set of (token, hour) pairs (SecantusDB plans an ``$in``
on an index only on its last field). A token's postings over a stretch of time are a few
documents of one index range, and an AND reads the buckets of its other
tokens only at the hours its rarest token has postings: a query makes a
few round trips, whatever the number of postings (SecantusDB's cost is per
round trip and per document, not per byte).

``search_tokens``: one document per (c, k, t): ``n`` postings ever added
(an upper bound: removals do not lower it) and the first and last hour
``lo``/``hi`` holding any. A query reads its groups' counts first: a token
with no document has no posting (the group has no hit, one read), the
rarest drives the walk, and its density sizes the first stretch read.

``search_messages``: ``_id`` the message id; its conversation, sender,
key id, posting count, tokens ``t``, time, seq and the request ids that set
them. An edit or a removal finds the buckets to take the message from in
it; a query checks a page's candidates for a group's other tokens in it
when that reads fewer documents than their buckets; erasure finds an
account's messages by ``sender``; the sweeper lists indexed conversations
by ``c``.

Tokens and key ids are opaque bytes from the SDK: no word is ever stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, UpdateOne

from parley_core.storage.mongo import Database
from svc_search.model import Carried, Posting, TokenStats

# Request ids remembered per message, for AIP-155 retries of IndexMessage.
REMEMBERED_REQUESTS = 8
# The width of a bucket: an hour of send time.
BUCKET_MS = 3_600_000


# The largest hour a bucket id can name (4 bytes).
LAST_HOUR = 2**32 - 1


def hour_of(at_ms: int) -> int:
    return at_ms // BUCKET_MS


def bucket_id(token: bytes, hour: int) -> bytes:
    """A bucket's ``b``: prefix-free per token, ordered by hour within one."""
    return bytes([len(token)]) + token + hour.to_bytes(4, "big")


def token_of(bucket: bytes) -> bytes:
    return bucket[1 : 1 + bucket[0]]


class PostingStore:
    def __init__(self, db: Database) -> None:
        self._buckets = db["search_buckets"]
        self._tokens = db["search_tokens"]
        self._messages = db["search_messages"]

    async def ensure_indexes(self) -> None:
        await self._buckets.create_index(
            [("c", ASCENDING), ("k", ASCENDING), ("b", ASCENDING)],
            name="token_hour",
            unique=True,
        )
        await self._tokens.create_index(
            [("c", ASCENDING), ("k", ASCENDING), ("t", ASCENDING)],
            name="token",
            unique=True,
        )
        await self._messages.create_index([("sender", ASCENDING)], name="sender")
        await self._messages.create_index([("c", ASCENDING)], name="conversation")

    # -- per message ----------------------------------------------------------------

    async def answered(self, message_id: str, request_id: str) -> int | None:
        """The posting count a request already set, if it did."""
        doc = await self._messages.find_one({"_id": message_id, "requests": request_id}, {"n": 1})
        return None if doc is None else int(doc.get("n", 0))

    async def replace(
        self,
        *,
        conversation_id: str,
        message_id: str,
        sender_account_id: str,
        key_id: bytes,
        tokens: Sequence[bytes],
        at_ms: int,
        seq: int,
        request_id: str,
    ) -> None:
        """The message's postings become ``tokens`` (none: the record goes).
        Its entries leave every bucket its record names and every bucket it
        is about to enter (a retry after a crash may have pushed some); the
        record (with its sender, for erasure) is written before the
        entries and the request id last, so a retry redoes the whole step."""
        old = await self._messages.find_one({"_id": message_id}, {"k": 1, "t": 1, "at": 1})
        if not tokens:
            if old is not None:
                await self._take_out(conversation_id, [old])
            await self._messages.delete_one({"_id": message_id})
            return
        await self._messages.update_one(
            {"_id": message_id},
            {
                "$set": {
                    "c": conversation_id,
                    "sender": sender_account_id,
                    "k": key_id,
                    "n": len(tokens),
                    "t": list(tokens),
                    "at": at_ms,
                    "s": seq,
                }
            },
            upsert=True,
        )
        if old is not None:
            # An edit, or a retry that may have pushed some entries already.
            # Without a record no bucket holds the message (the record is
            # written before any entry and deleted after them all).
            new = {"_id": message_id, "k": key_id, "t": list(tokens), "at": at_ms}
            await self._take_out(conversation_id, [old, new])
        w = hour_of(at_ms)
        entry = {"m": message_id, "a": at_ms, "s": seq}
        await self._buckets.bulk_write(
            [
                UpdateOne(
                    {"c": conversation_id, "k": key_id, "b": bucket_id(t, w)},
                    {"$push": {"e": entry}},
                    upsert=True,
                )
                for t in tokens
            ],
            ordered=False,
        )
        await self._tokens.bulk_write(
            [
                UpdateOne(
                    {"c": conversation_id, "k": key_id, "t": t},
                    {"$inc": {"n": 1}, "$min": {"lo": w}, "$max": {"hi": w}},
                    upsert=True,
                )
                for t in tokens
            ],
            ordered=False,
        )
        await self._messages.update_one(
            {"_id": message_id},
            {"$push": {"requests": {"$each": [request_id], "$slice": -REMEMBERED_REQUESTS}}},
        )

    async def _take_out(self, conversation_id: str, records: Sequence[dict[str, Any]]) -> None:
        """Pulls the records' messages from the buckets their tokens and
        hours name: one write per key id, whatever the number of messages."""
        by_key: dict[bytes, set[bytes]] = {}
        ids = []
        for record in records:
            if record.get("t"):
                w = hour_of(int(record["at"]))
                by_key.setdefault(bytes(record["k"]), set()).update(
                    bucket_id(bytes(t), w) for t in record["t"]
                )
                ids.append(record["_id"])
        for key_id, buckets in by_key.items():
            named = sorted(buckets)
            await self._buckets.update_many(
                {"c": conversation_id, "k": key_id, "b": {"$in": named}},
                {"$pull": {"e": {"m": {"$in": ids}}}},
            )
            # A bucket or a token count left with no posting would still hold
            # the token: an erased account's messages must leave none behind.
            await self._buckets.delete_many(
                {"c": conversation_id, "k": key_id, "b": {"$in": named}, "e": []}
            )
            for token in sorted({token_of(b) for b in buckets}):
                left = await self._buckets.find_one(
                    {
                        "c": conversation_id,
                        "k": key_id,
                        "b": {"$gte": bucket_id(token, 0), "$lte": bucket_id(token, LAST_HOUR)},
                    },
                    {"_id": 1},
                )
                if left is None:
                    await self._tokens.delete_one({"c": conversation_id, "k": key_id, "t": token})

    async def remove_messages(self, message_ids: Sequence[str]) -> int:
        """Drops their postings and records; how many postings went."""
        if not message_ids:
            return 0
        ids = list(message_ids)
        records = await self._messages.find(
            {"_id": {"$in": ids}}, {"c": 1, "k": 1, "t": 1, "at": 1}
        ).to_list()
        by_conversation: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            by_conversation.setdefault(record["c"], []).append(record)
        for conversation_id, mine in by_conversation.items():
            await self._take_out(conversation_id, mine)
        await self._messages.delete_many({"_id": {"$in": ids}})
        return sum(len(r.get("t", ())) for r in records)

    async def drop_conversation(self, conversation_id: str) -> int:
        """Drops every posting of the conversation; how many messages had some."""
        await self._buckets.delete_many({"c": conversation_id})
        await self._tokens.delete_many({"c": conversation_id})
        removed = await self._messages.delete_many({"c": conversation_id})
        return int(removed.deleted_count)

    async def sent_by(self, account_id: str, *, limit: int) -> list[str]:
        cursor = self._messages.find({"sender": account_id}, {"_id": 1}).limit(limit)
        return [doc["_id"] async for doc in cursor]

    async def conversations_after(self, after: str, *, limit: int) -> list[str]:
        """Indexed conversations in id order after ``after``: one indexed read each."""
        found: list[str] = []
        while len(found) < limit:
            doc = await self._messages.find_one(
                {"c": {"$gt": after}}, {"c": 1}, sort=[("c", ASCENDING)]
            )
            if doc is None:
                break
            after = doc["c"]
            found.append(after)
        return found

    async def count(self) -> int:
        """Buckets stored (collection metadata: no scan)."""
        return int(await self._buckets.estimated_document_count())

    # -- queries ----------------------------------------------------------------

    async def token_stats(
        self, conversation_id: str, key_id: bytes, tokens: Sequence[bytes]
    ) -> dict[bytes, TokenStats]:
        """Counts and hour span of those of ``tokens`` that ever had a posting."""
        cursor = self._tokens.find(
            {"c": conversation_id, "k": key_id, "t": {"$in": list(tokens)}},
            {"_id": 0, "t": 1, "n": 1, "lo": 1, "hi": 1},
        )
        return {
            bytes(doc["t"]): TokenStats(int(doc["n"]), int(doc["lo"]), int(doc["hi"]))
            async for doc in cursor
        }

    async def hours(
        self, conversation_id: str, key_id: bytes, token: bytes, *, lo: int, hi: int
    ) -> list[Posting]:
        """A token's postings in hours ``lo`` to ``hi`` (both in), unordered:
        one index range of a document per non-empty hour."""
        cursor = self._buckets.find(
            {
                "c": conversation_id,
                "k": key_id,
                "b": {"$gte": bucket_id(token, max(0, lo)), "$lte": bucket_id(token, hi)},
            },
            {"_id": 0, "e": 1},
        )
        return [
            Posting(message_id=e["m"], at_ms=int(e["a"]), seq=int(e["s"]))
            async for doc in cursor
            for e in doc.get("e", ())
        ]

    async def carried(self, message_ids: Sequence[str]) -> dict[str, Carried]:
        """The tokens each of ``message_ids`` carries (absent: not indexed):
        one read of their records by id."""
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return {}
        cursor = self._messages.find({"_id": {"$in": ids}}, {"c": 1, "k": 1, "t": 1})
        return {
            doc["_id"]: Carried(doc["c"], bytes(doc["k"]), frozenset(bytes(t) for t in doc["t"]))
            async for doc in cursor
            if "t" in doc
        }

    async def carriers(
        self, conversation_id: str, key_id: bytes, tokens: Sequence[bytes], hours: Sequence[int]
    ) -> dict[bytes, set[str]]:
        """The messages of ``hours`` that carry each of ``tokens``: one read
        of those tokens' buckets at those hours."""
        found: dict[bytes, set[str]] = {t: set() for t in tokens}
        wanted = sorted({bucket_id(t, w) for t in tokens for w in set(hours)})
        cursor = self._buckets.find(
            {"c": conversation_id, "k": key_id, "b": {"$in": wanted}},
            {"_id": 0, "b": 1, "e.m": 1},
        )
        async for doc in cursor:
            found.setdefault(token_of(bytes(doc["b"])), set()).update(
                e["m"] for e in doc.get("e", ())
            )
        return found
