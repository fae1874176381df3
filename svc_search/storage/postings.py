"""Postings and per-message records in MongoDB.

``search_postings``: one document per (conversation ``c``, epoch key id
``k``, token ``t``, message ``m``) with the message's send time ``at``
(milliseconds) and ``s`` (seq). The compound index (c, k, t, at desc, m
desc) makes a token's postings within a time window one bounded index range
(queries walk back in growing windows: SecantusDB sorts a whole token's
postings before a limit, a window it reads no further than asked).

``search_messages``: ``_id`` the message id; its conversation, sender,
key id, posting count, tokens ``t``, time, seq and the request ids that set
them. A query checks a candidate's other tokens in ``t``: one read of a
page's candidates instead of a scan of each token's postings. An edit
replaces its postings through it; erasure finds an account's messages by
``sender``; the sweeper lists indexed conversations by ``c``.

Tokens and key ids are opaque bytes from the SDK: no word is ever stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import ASCENDING, DESCENDING

from parley_core.storage.mongo import Database
from svc_search.model import Carried, Posting

# Request ids remembered per message, for AIP-155 retries of IndexMessage.
REMEMBERED_REQUESTS = 8


class PostingStore:
    def __init__(self, db: Database) -> None:
        self._postings = db["search_postings"]
        self._messages = db["search_messages"]

    async def ensure_indexes(self) -> None:
        await self._postings.create_index(
            [
                ("c", ASCENDING),
                ("k", ASCENDING),
                ("t", ASCENDING),
                ("at", DESCENDING),
                ("m", DESCENDING),
            ],
            name="token_newest_first",
        )
        await self._postings.create_index([("m", ASCENDING)], name="message")
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
        The record (with its sender, for erasure) is written first and the
        request id last, so a retry after a crash redoes the whole step."""
        if not tokens:
            await self._postings.delete_many({"m": message_id})
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
        await self._postings.delete_many({"m": message_id})
        await self._postings.insert_many(
            [
                {"c": conversation_id, "k": key_id, "t": t, "at": at_ms, "m": message_id, "s": seq}
                for t in tokens
            ],
            ordered=False,
        )
        await self._messages.update_one(
            {"_id": message_id},
            {"$push": {"requests": {"$each": [request_id], "$slice": -REMEMBERED_REQUESTS}}},
        )

    async def remove_messages(self, message_ids: Sequence[str]) -> int:
        """Drops their postings and records; how many postings went."""
        if not message_ids:
            return 0
        ids = list(message_ids)
        removed = await self._postings.delete_many({"m": {"$in": ids}})
        await self._messages.delete_many({"_id": {"$in": ids}})
        return int(removed.deleted_count)

    async def drop_conversation(self, conversation_id: str) -> int:
        removed = await self._postings.delete_many({"c": conversation_id})
        await self._messages.delete_many({"c": conversation_id})
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
        return int(await self._postings.estimated_document_count())

    # -- queries ----------------------------------------------------------------

    async def window(
        self,
        conversation_id: str,
        key_id: bytes,
        token: bytes,
        *,
        above: int,
        at_most: int,
        limit: int,
    ) -> list[Posting]:
        """A token's postings sent in (``above``, ``at_most``] ms, unordered.
        A bounded index range: cheap whatever the token's total, where a
        sorted scan of it may fetch every posting first."""
        cursor = self._postings.find(
            {"c": conversation_id, "k": key_id, "t": token, "at": {"$gt": above, "$lte": at_most}},
            {"_id": 0, "m": 1, "at": 1, "s": 1},
        ).limit(limit)
        return [
            Posting(message_id=doc["m"], at_ms=int(doc["at"]), seq=int(doc["s"]))
            async for doc in cursor
        ]

    async def carried(self, message_ids: Sequence[str]) -> dict[str, Carried]:
        """The tokens each of ``message_ids`` carries (absent: not indexed).
        One read of the records by id; a record written before they held
        their tokens is answered from its postings (the ``m`` index)."""
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return {}
        found: dict[str, Carried] = {}
        older: list[str] = []
        async for doc in self._messages.find({"_id": {"$in": ids}}, {"c": 1, "k": 1, "t": 1}):
            if "t" in doc:
                found[doc["_id"]] = Carried(
                    doc["c"], bytes(doc["k"]), frozenset(bytes(t) for t in doc["t"])
                )
            else:
                older.append(doc["_id"])
        if older:
            tokens: dict[str, set[bytes]] = {}
            where: dict[str, tuple[str, bytes]] = {}
            cursor = self._postings.find(
                {"m": {"$in": older}}, {"_id": 0, "m": 1, "c": 1, "k": 1, "t": 1}
            )
            async for doc in cursor:
                tokens.setdefault(doc["m"], set()).add(bytes(doc["t"]))
                where[doc["m"]] = (doc["c"], bytes(doc["k"]))
            for m, carried in tokens.items():
                found[m] = Carried(where[m][0], where[m][1], frozenset(carried))
        return found
