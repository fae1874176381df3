"""Presence settings and last seen in MongoDB.

Collections:
- ``presence_settings``: ``_id`` account id, ``online`` and ``last_seen``
  (Visibility numbers), ``invisible``, ``updated_at`` and ``v`` (bumped by
  every change; a change is written only over the version it was computed
  from, so two concurrent partial updates cannot combine into settings that
  break the online/last seen rule). No document means the defaults.
- ``presence_last_seen``: ``_id`` account id, ``seen`` (a date, ms). Written
  with ``$max`` upserts in unordered batches, so late or repeated writes
  never move it backwards; the durable copy of Redis' ``seen``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from parley_core.storage.mongo import Database, Document
from svc_presence.model import DEFAULT_SETTINGS, PresenceSettings, SeenRecord, Visibility

DUPLICATE_KEY = 11000


def _settings(doc: Document) -> PresenceSettings:
    return PresenceSettings(
        online=Visibility(doc.get("online", DEFAULT_SETTINGS.online)),
        last_seen=Visibility(doc.get("last_seen", DEFAULT_SETTINGS.last_seen)),
        invisible=bool(doc.get("invisible", False)),
        updated_at=doc.get("updated_at"),
        version=int(doc.get("v", 0)),
    )


def _ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


class SettingsStore:
    def __init__(self, db: Database) -> None:
        self._settings = db["presence_settings"]

    async def get(self, account_id: str) -> PresenceSettings:
        doc = await self._settings.find_one({"_id": account_id})
        return DEFAULT_SETTINGS if doc is None else _settings(doc)

    async def get_many(self, account_ids: Sequence[str]) -> dict[str, PresenceSettings]:
        """Settings of each account (the defaults for those that never chose)."""
        if not account_ids:
            return {}
        if len(account_ids) == 1:
            return {account_ids[0]: await self.get(account_ids[0])}
        found = {
            doc["_id"]: _settings(doc)
            async for doc in self._settings.find({"_id": {"$in": list(account_ids)}})
        }
        return {a: found.get(a, DEFAULT_SETTINGS) for a in account_ids}

    async def replace(
        self, account_id: str, settings: PresenceSettings, *, now: datetime
    ) -> PresenceSettings | None:
        """Store ``settings`` if the stored version is still ``settings.version``;
        the stored result, or None when someone else changed them meanwhile."""
        # BSON dates hold milliseconds: answer with what a later read returns.
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        fields = {
            "online": int(settings.online),
            "last_seen": int(settings.last_seen),
            "invisible": settings.invisible,
            "updated_at": now,
            "v": settings.version + 1,
        }
        try:
            if settings.version == 0:
                await self._settings.insert_one({"_id": account_id, **fields})
            else:
                result = await self._settings.update_one(
                    {"_id": account_id, "v": settings.version}, {"$set": fields}
                )
                if result.matched_count != 1:
                    return None
        except DuplicateKeyError:
            return None
        return _settings(fields)


class LastSeenStore:
    def __init__(self, db: Database) -> None:
        self._seen = db["presence_last_seen"]

    async def get_many(self, account_ids: Sequence[str]) -> dict[str, int]:
        """Stored last seen (Unix ms) of those accounts that have one."""
        if not account_ids:
            return {}
        return {
            doc["_id"]: _ms(doc["seen"])
            async for doc in self._seen.find({"_id": {"$in": list(account_ids)}})
        }

    async def write(self, records: Iterable[SeenRecord]) -> int:
        """Raise each account's stored last seen to the given one (never lower)."""
        latest: dict[str, int] = {}
        for record in records:
            latest[record.account_id] = max(latest.get(record.account_id, 0), record.seen_ms)
        if not latest:
            return 0
        retry = await self._upsert(latest)
        if retry:
            # Two processes created the same document at once: it exists now.
            await self._upsert(retry)
        return len(latest)

    async def _upsert(self, latest: Mapping[str, int]) -> dict[str, int]:
        ops = [
            UpdateOne(
                {"_id": account_id},
                {"$max": {"seen": datetime.fromtimestamp(ms / 1000, UTC)}},
                upsert=True,
            )
            for account_id, ms in latest.items()
        ]
        try:
            await self._seen.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            accounts = list(latest)
            return {accounts[e["index"]]: latest[accounts[e["index"]]] for e in errors}
        return {}
