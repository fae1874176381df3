"""Per-member inbox settings in MongoDB: mute, pin, archive, mark-unread.

``inbox_settings`` holds one document per (conversation, account) that ever
changed a setting, ``_id`` = ``"{conversation_id}:{account_id}"``:
``crdt``, the replicated state (``model.member_replica``: it merges with
other regions' copies, docs/design/crdt.md), ``version``, raised by every
write (writes are compare-and-set on it), and fields derived from the state
for the inbox's queries: ``muted_until`` (None: not muted), ``pinned`` (true
while the state is pinned, absent otherwise) with ``pin_rank``, ``archived``
with ``archived_seq`` (the conversation's last_seq when archived),
``unread_mark_seq`` (the member's read_seq when they marked it unread). Local
to the region: ``slotted`` with ``pin_slot`` (below) and ``requests``, the ids
of the last requests applied, so that a retried request never changes
anything twice.

Every query and write names ``account_id``: the collection is meant to be
sharded by ``{account_id: 1}`` (ranged), which keeps an account's settings on
one shard (the inbox reads many of them at once) and lets the pin-slot index
be unique cluster-wide (a unique index must start with the shard key).

The pin cap holds under concurrent pins in one region by a unique index
rather than by a counter: a pin made here holds a ``pin_slot`` in
``0..cap-1``, and the unique index on ``(account_id, pin_slot)``, partial to
``slotted`` documents, lets no two of them share a slot. Each pin is a
single-document write: nothing is left half done by a crash and no
multi-document transaction is needed. A pin takes a free slot of the pinned
list it has just read; losing the race for that slot is a duplicate-key
error, and it reads again. Pins merged from another region hold no slot:
across regions the cap is a display rule (``domain.member_replica.pin_layout``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from parley_core.crdt import AddWinsSet, EpochMaxRegister, LWWRegister
from parley_core.hlc import ZERO, Timestamp
from parley_core.storage.mongo import Database, Document
from svc_message.model.inbox import SettingsRecord, SettingsWrite, WriteOutcome
from svc_message.model.member_replica import ArchiveMark, MemberReplica, from_dict, to_dict

# How many recent request ids a settings document remembers: a retry arriving
# after this many other changes of the same conversation's settings applies again.
REMEMBERED_REQUESTS = 16
# The node of the pin tag a document written before the CRDT state carries.
_LEGACY_NODE = "legacy"


def settings_key(conversation_id: str, account_id: str) -> str:
    return f"{conversation_id}:{account_id}"


_OLD_PIN_INDEX = "pinned"


class InboxSettingsStore:
    def __init__(self, db: Database) -> None:
        self._settings = db["inbox_settings"]

    async def ensure_indexes(self) -> None:
        # Before settings merged across regions, "pinned" was the unique
        # (account, slot) index over every pin; merged pins hold no slot, so
        # it would refuse them. "pin_slots" below replaces it.
        if _OLD_PIN_INDEX in await self._settings.index_information():
            await self._settings.drop_index(_OLD_PIN_INDEX)
        # The account's pinned ones (a merge may bring more than the cap).
        # Partial by an equality: SecantusDB plans no partial index filtered
        # by $exists.
        await self._settings.create_index(
            [("account_id", ASCENDING), ("pinned", ASCENDING)],
            name="pinned_list",
            partialFilterExpression={"pinned": True},
        )
        # The arbiter of the pin cap among this region's own pins.
        await self._settings.create_index(
            [("account_id", ASCENDING), ("pin_slot", ASCENDING)],
            name="pin_slots",
            unique=True,
            partialFilterExpression={"slotted": True},
        )
        # The account's archived ones (a small part of its conversations).
        await self._settings.create_index(
            [("account_id", ASCENDING), ("archived", ASCENDING)],
            name="archived",
            partialFilterExpression={"archived": True},
        )

    # -- reads -----------------------------------------------------------------

    async def records(
        self, account_id: str, conversation_ids: Iterable[str]
    ) -> dict[str, SettingsRecord]:
        """The account's settings documents of these conversations, by conversation id."""
        keys = [settings_key(c, account_id) for c in conversation_ids]
        if not keys:
            return {}
        cursor = self._settings.find({"_id": {"$in": keys}, "account_id": account_id})
        return {doc["conversation_id"]: _record(doc) async for doc in cursor}

    async def record(self, conversation_id: str, account_id: str) -> SettingsRecord:
        """The stored document, or an empty state at version 0."""
        doc = await self._settings.find_one(
            {"_id": settings_key(conversation_id, account_id), "account_id": account_id}
        )
        if doc is None:
            return SettingsRecord(MemberReplica(conversation_id, account_id))
        return _record(doc)

    async def pinned(self, account_id: str) -> list[SettingsRecord]:
        """The account's documents whose state is pinned (the cap is applied
        by the caller: a merge may have brought more)."""
        cursor = self._settings.find({"account_id": account_id, "pinned": True})
        return [_record(doc) async for doc in cursor]

    async def archived(self, account_id: str) -> list[SettingsRecord]:
        """The account's conversations stored as archived (a new message may
        have brought some back: the inbox decides)."""
        cursor = self._settings.find({"account_id": account_id, "archived": True})
        return [_record(doc) async for doc in cursor]

    # -- writes ----------------------------------------------------------------

    async def write(self, change: SettingsWrite) -> WriteOutcome:
        """Replace the document if it is still at the version read."""
        record = change.record
        state = change.state
        requests = list(record.requests)
        if change.request_id is not None:
            requests = [*requests, change.request_id][-REMEMBERED_REQUESTS:]
        shown = change.shown
        doc: Document = {
            "_id": settings_key(state.conversation_id, state.account_id),
            "account_id": state.account_id,
            "conversation_id": state.conversation_id,
            "version": record.version + 1,
            "crdt": to_dict(state),
            "muted_until": shown.muted_until,
            "pin_rank": shown.pin_rank if change.pinned else 0,
            "archived": shown.archived,
            "archived_seq": shown.archived_seq,
            "unread_mark_seq": shown.unread_mark_seq,
            "requests": requests,
        }
        if change.pinned:
            doc["pinned"] = True
        if change.pin_slot is not None:
            doc["slotted"] = True
            doc["pin_slot"] = change.pin_slot
        if record.version == 0:
            try:
                await self._settings.insert_one(doc)
            except DuplicateKeyError:
                exists = await self._settings.find_one(
                    {"_id": doc["_id"], "account_id": state.account_id}, {"_id": 1}
                )
                return WriteOutcome.CONFLICT if exists is not None else WriteOutcome.SLOT_TAKEN
            return WriteOutcome.WRITTEN
        # A document written before versions were stored reads as version 1.
        version: Any = {"$in": [1, None]} if record.version == 1 else record.version
        try:
            result = await self._settings.replace_one(
                {"_id": doc["_id"], "account_id": state.account_id, "version": version},
                doc,
            )
        except DuplicateKeyError:
            # Filtered by _id, the only other unique key is the pin slot.
            return WriteOutcome.SLOT_TAKEN
        return WriteOutcome.WRITTEN if result.matched_count else WriteOutcome.CONFLICT


def _record(doc: Mapping[str, Any]) -> SettingsRecord:
    crdt = doc.get("crdt")
    state = from_dict(crdt) if crdt is not None else _legacy_state(doc)
    return SettingsRecord(
        state=state,
        version=int(doc.get("version") or 0) or 1,
        pin_slot=doc.get("pin_slot") if doc.get("slotted") else None,
        requests=tuple(doc.get("requests") or ()),
    )


def _legacy_state(doc: Mapping[str, Any]) -> MemberReplica:
    """A document written before the CRDT state was stored: its fields as a
    state no write stamped (every later write, here or merged, wins)."""
    conversation_id, account_id = doc["conversation_id"], doc["account_id"]
    muted_until: datetime | None = doc.get("muted_until")
    pin: AddWinsSet[str] = AddWinsSet()
    if doc.get("pinned"):
        pin = pin.add(conversation_id, Timestamp(0, 0, _LEGACY_NODE))
    return MemberReplica(
        conversation_id,
        account_id,
        mute=EpochMaxRegister(ZERO, int(muted_until.timestamp() * 1000) if muted_until else 0),
        pin=pin,
        pin_rank=LWWRegister(int(doc.get("pin_rank") or 0)),
        archive=LWWRegister(
            ArchiveMark(bool(doc.get("archived")), int(doc.get("archived_seq") or 0))
        ),
        unread_mark=LWWRegister(doc.get("unread_mark_seq")),
    )
