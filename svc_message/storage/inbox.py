"""Per-member inbox settings in MongoDB: mute, pin, archive, mark-unread.

``inbox_settings`` holds one document per (conversation, account) that ever
changed a setting, ``_id`` = ``"{conversation_id}:{account_id}"``:
``account_id``, ``conversation_id``, ``muted_until`` (None: not muted),
``pinned`` (true while pinned, absent otherwise) with ``pin_slot`` and
``pin_rank``, ``archived`` with ``archived_seq`` (the conversation's last_seq
when archived), ``unread_mark_seq`` (the member's read_seq when they marked it
unread), and ``requests``: the ids of the last requests applied, so that a
retried request never changes anything twice.

Every query and write names ``account_id``: the collection is meant to be
sharded by ``{account_id: 1}`` (ranged), which keeps an account's settings on
one shard (the inbox reads many of them at once) and lets the pin-slot index
be unique cluster-wide (a unique index must start with the shard key).

The pin cap holds under concurrent pins by a unique index rather than by a
counter: a pinned document holds a ``pin_slot`` in ``0..cap-1``, and the
unique index on ``(account_id, pin_slot)``, partial to pinned documents, lets
no two pinned documents of one account share a slot, so an account never has
more than ``cap`` pins whatever the concurrency. Each pin is a single-document
write: nothing is left half done by a crash (a counter document would drift
when a process dies between its two writes) and no multi-document transaction
is needed. A pin takes a free slot of the pinned list it has just read; losing
the race for that slot is a duplicate-key error, and it reads again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from parley_core.errors import Aborted
from parley_core.storage.mongo import Database, Document
from svc_message.model.inbox import Pin, StoredSettings

# How many recent request ids a settings document remembers: a retry arriving
# after this many other changes of the same conversation's settings applies again.
REMEMBERED_REQUESTS = 16


def settings_key(conversation_id: str, account_id: str) -> str:
    return f"{conversation_id}:{account_id}"


def _settings(doc: Mapping[str, Any]) -> StoredSettings:
    return StoredSettings(
        conversation_id=doc["conversation_id"],
        account_id=doc["account_id"],
        muted_until=doc.get("muted_until"),
        pin_rank=doc.get("pin_rank") or 0,
        pin_slot=doc.get("pin_slot") if doc.get("pinned") else None,
        archived=bool(doc.get("archived")),
        archived_seq=doc.get("archived_seq") or 0,
        unread_mark_seq=doc.get("unread_mark_seq"),
    )


class InboxSettingsStore:
    def __init__(self, db: Database) -> None:
        self._settings = db["inbox_settings"]

    async def ensure_indexes(self) -> None:
        # The account's pinned ones, and the arbiter of the pin cap. Partial
        # by an equality: SecantusDB plans no partial index filtered by $exists.
        await self._settings.create_index(
            [("account_id", ASCENDING), ("pin_slot", ASCENDING)],
            name="pinned",
            unique=True,
            partialFilterExpression={"pinned": True},
        )
        # The account's archived ones (a small part of its conversations).
        await self._settings.create_index(
            [("account_id", ASCENDING), ("archived", ASCENDING)],
            name="archived",
            partialFilterExpression={"archived": True},
        )

    # -- reads -----------------------------------------------------------------

    async def of_account(
        self, account_id: str, conversation_ids: Iterable[str]
    ) -> dict[str, StoredSettings]:
        """The account's stored settings of these conversations, by conversation id."""
        keys = [settings_key(c, account_id) for c in conversation_ids]
        if not keys:
            return {}
        cursor = self._settings.find({"_id": {"$in": keys}, "account_id": account_id})
        return {doc["conversation_id"]: _settings(doc) async for doc in cursor}

    async def one(self, conversation_id: str, account_id: str) -> StoredSettings | None:
        doc = await self._settings.find_one(
            {"_id": settings_key(conversation_id, account_id), "account_id": account_id}
        )
        return None if doc is None else _settings(doc)

    async def pinned(self, account_id: str) -> list[StoredSettings]:
        """The account's pinned conversations, newest pin first."""
        cursor = self._settings.find({"account_id": account_id, "pinned": True})
        pins = [_settings(doc) async for doc in cursor]
        # At most `cap` documents: sorted here rather than by another index.
        pins.sort(key=lambda s: (s.pin_rank, s.conversation_id), reverse=True)
        return pins

    async def archived(self, account_id: str) -> list[StoredSettings]:
        """The account's conversations stored as archived (a new message may
        have brought some back: the inbox decides)."""
        cursor = self._settings.find({"account_id": account_id, "archived": True})
        return [_settings(doc) async for doc in cursor]

    # -- writes ----------------------------------------------------------------

    async def _apply(
        self, conversation_id: str, account_id: str, request_id: str, update: Document
    ) -> bool:
        """Apply ``update`` once per request id; False if it was applied before.

        The filter skips documents that remember the request; the upsert then
        collides with the existing ``_id``, and that duplicate-key error means
        "applied before". Two first writes of the same document racing each
        other collide the same way, so the loser checks and tries again (the
        document exists by then).
        """
        key = settings_key(conversation_id, account_id)
        update = {
            **update,
            "$setOnInsert": {"conversation_id": conversation_id},
            "$push": {"requests": {"$each": [request_id], "$slice": -REMEMBERED_REQUESTS}},
        }
        query = {"_id": key, "account_id": account_id, "requests": {"$ne": request_id}}
        for _ in range(3):
            try:
                await self._settings.update_one(query, update, upsert=True)
            except DuplicateKeyError:
                doc = await self._settings.find_one({"_id": key, "account_id": account_id})
                if doc is not None and request_id in (doc.get("requests") or ()):
                    return False
                continue
            return True
        raise Aborted("the settings changed concurrently; retry")

    async def set_muted(
        self,
        conversation_id: str,
        account_id: str,
        *,
        until: datetime | None,
        request_id: str,
        archive: tuple[bool, int] | None = None,
    ) -> bool:
        """Mute until ``until`` (None: unmute). ``archive``, if given, is the
        (archived, archived_seq) to store with it."""
        fields: Document = {"muted_until": until}
        if archive is not None:
            fields["archived"], fields["archived_seq"] = archive
        return await self._apply(conversation_id, account_id, request_id, {"$set": fields})

    async def set_archived(
        self,
        conversation_id: str,
        account_id: str,
        *,
        archived: bool,
        archived_seq: int,
        request_id: str,
    ) -> bool:
        """Archive (as of ``archived_seq``) or unarchive. Archiving unpins: a
        conversation is never pinned and archived at once."""
        update: Document = {"$set": {"archived": archived, "archived_seq": archived_seq}}
        if archived:
            update["$set"]["pin_rank"] = 0
            update["$unset"] = {"pinned": "", "pin_slot": ""}
        return await self._apply(conversation_id, account_id, request_id, update)

    async def mark_unread(
        self, conversation_id: str, account_id: str, *, read_seq: int, request_id: str
    ) -> bool:
        return await self._apply(
            conversation_id, account_id, request_id, {"$set": {"unread_mark_seq": read_seq}}
        )

    async def clear_unread_mark(self, conversation_id: str, account_id: str) -> None:
        """Drop the unread mark, if any (a write only when there is one)."""
        await self._settings.update_one(
            {
                "_id": settings_key(conversation_id, account_id),
                "account_id": account_id,
                "unread_mark_seq": {"$ne": None},
            },
            {"$set": {"unread_mark_seq": None}},
        )

    async def unpin(self, conversation_id: str, account_id: str, *, request_id: str) -> bool:
        return await self._apply(
            conversation_id,
            account_id,
            request_id,
            {"$set": {"pin_rank": 0}, "$unset": {"pinned": "", "pin_slot": ""}},
        )

    async def unpin_many(self, account_id: str, conversation_ids: Iterable[str]) -> None:
        """Release the pins of conversations the account can no longer see."""
        keys = [settings_key(c, account_id) for c in conversation_ids]
        if keys:
            await self._settings.update_many(
                {"_id": {"$in": keys}, "account_id": account_id},
                {"$set": {"pin_rank": 0}, "$unset": {"pinned": "", "pin_slot": ""}},
            )

    async def pin(
        self,
        conversation_id: str,
        account_id: str,
        *,
        now_ms: int,
        request_id: str,
        cap: int,
    ) -> Pin:
        """Pin with a rank above every current pin; pinning unarchives.

        FULL when the account holds ``cap`` pins (by a fresh read)."""
        key = settings_key(conversation_id, account_id)
        # A concurrent first write may create it at the same time: either does.
        with contextlib.suppress(DuplicateKeyError):
            await self._settings.update_one(
                {"_id": key, "account_id": account_id},
                {"$setOnInsert": {"conversation_id": conversation_id}},
                upsert=True,
            )
        # Each lost race means another pin took a slot, so this ends quickly
        # unless pins and unpins of one account storm; then the client retries.
        for _ in range(2 * cap + 2):
            pins = await self.pinned(account_id)
            if any(p.conversation_id == conversation_id for p in pins):
                return Pin.UNCHANGED
            free = sorted(set(range(cap)) - {p.pin_slot for p in pins})
            if len(pins) >= cap or not free:
                return Pin.FULL
            rank = max([now_ms, *(p.pin_rank + 1 for p in pins)])
            try:
                result = await self._settings.update_one(
                    {
                        "_id": key,
                        "account_id": account_id,
                        "pinned": {"$ne": True},
                        "requests": {"$ne": request_id},
                    },
                    {
                        "$set": {
                            "pinned": True,
                            "pin_slot": free[0],
                            "pin_rank": rank,
                            "archived": False,
                            "archived_seq": 0,
                        },
                        "$push": {
                            "requests": {"$each": [request_id], "$slice": -REMEMBERED_REQUESTS}
                        },
                    },
                )
            except DuplicateKeyError:
                continue  # another pin took that slot
            return Pin.PINNED if result.matched_count else Pin.UNCHANGED
        raise Aborted("pins changed concurrently; retry")
