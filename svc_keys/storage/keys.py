"""The key directory in MongoDB.

Collections:
- ``device_keys``: ``_id`` device id, ``account_id``, ``identity_key``,
  ``signed_pre_key`` (``key_id``, ``public_key``, ``signature``),
  ``updated_at``, ``identity_change_pending`` (the identity key replaced
  another and the change is not recorded yet).
- ``one_time_pre_keys``: ``_id`` ``<device>:<key_id>``, ``device_id``,
  ``key_id``, ``public_key``, ``uploaded_at``; indexed by ``device_id``.

A one-time prekey is handed out by deleting it: whoever's ``delete_one``
reports a deletion owns it, so no key is handed out twice however many
processes fetch at once. ``find_one_and_delete`` would do the same in one call,
but SecantusDB runs it as a collection scan.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError

from parley_core.storage.mongo import Database, Document
from svc_keys.model import DeviceKeys, PreKey, PreKeyConflict, SignedPreKey

# Candidates read per attempt: a few, so concurrent fetchers mostly pick
# different keys instead of all racing for the first one.
_CANDIDATES = 8
# A round is lost only when every candidate it read was taken by someone else
# meanwhile, so each lost round means _CANDIDATES fewer keys: with the
# per-device cap this bound is never the reason a present key is not found.
_ATTEMPTS = 130
_DUPLICATE_KEY = 11000


def _pre_key_id(device_id: str, key_id: int) -> str:
    return f"{device_id}:{key_id}"


def _device_keys(doc: Document) -> DeviceKeys:
    spk = doc["signed_pre_key"]
    return DeviceKeys(
        device_id=doc["_id"],
        account_id=doc["account_id"],
        identity_key=bytes(doc["identity_key"]),
        signed_pre_key=SignedPreKey(
            key_id=int(spk["key_id"]),
            public_key=bytes(spk["public_key"]),
            signature=bytes(spk["signature"]),
        ),
        updated_at=doc["updated_at"],
        identity_change_pending=bool(doc.get("identity_change_pending", False)),
    )


class KeyStore:
    def __init__(self, db: Database) -> None:
        self._device_keys = db["device_keys"]
        self._pre_keys = db["one_time_pre_keys"]

    async def ensure_indexes(self) -> None:
        await self._device_keys.create_index([("account_id", ASCENDING)])
        await self._pre_keys.create_index([("device_id", ASCENDING)])

    async def set_device_keys(self, keys: DeviceKeys) -> None:
        spk = keys.signed_pre_key
        await self._device_keys.replace_one(
            {"_id": keys.device_id},
            {
                "account_id": keys.account_id,
                "identity_key": keys.identity_key,
                "signed_pre_key": {
                    "key_id": spk.key_id,
                    "public_key": spk.public_key,
                    "signature": spk.signature,
                },
                "updated_at": keys.updated_at,
                "identity_change_pending": keys.identity_change_pending,
            },
            upsert=True,
        )

    async def identity_change_recorded(self, device_id: str, identity_key: bytes) -> None:
        """Clear the pending mark, unless the key was replaced again meanwhile
        (that publish records its own change)."""
        await self._device_keys.update_one(
            {"_id": device_id, "identity_key": identity_key},
            {"$set": {"identity_change_pending": False}},
        )

    async def device_keys(self, device_id: str) -> DeviceKeys | None:
        doc = await self._device_keys.find_one({"_id": device_id})
        return None if doc is None else _device_keys(doc)

    async def devices_keys(self, device_ids: Sequence[str]) -> list[DeviceKeys]:
        cursor = self._device_keys.find({"_id": {"$in": list(device_ids)}}).sort("_id", ASCENDING)
        return [_device_keys(doc) async for doc in cursor]

    async def accounts_keys(self, account_ids: Sequence[str]) -> list[DeviceKeys]:
        cursor = self._device_keys.find({"account_id": {"$in": list(account_ids)}})
        return [_device_keys(doc) async for doc in cursor]

    async def count_pre_keys(self, device_id: str, *, up_to: int | None = None) -> int:
        """How many one-time prekeys the device holds; with ``up_to``, the
        count stops there (enough to compare with a low-water mark)."""
        if up_to is None:
            return await self._pre_keys.count_documents({"device_id": device_id})
        return await self._pre_keys.count_documents({"device_id": device_id}, limit=up_to)

    async def _conflicts(self, device_id: str, pre_keys: Sequence[PreKey]) -> list[int]:
        wanted = {_pre_key_id(device_id, k.key_id): k for k in pre_keys}
        cursor = self._pre_keys.find({"_id": {"$in": list(wanted)}})
        return sorted(
            [
                int(doc["key_id"])
                async for doc in cursor
                if bytes(doc["public_key"]) != wanted[doc["_id"]].public_key
            ]
        )

    async def existing_pre_key_ids(self, device_id: str, key_ids: Sequence[int]) -> set[int]:
        ids = [_pre_key_id(device_id, k) for k in key_ids]
        cursor = self._pre_keys.find({"_id": {"$in": ids}}, {"key_id": 1})
        return {int(doc["key_id"]) async for doc in cursor}

    async def add_pre_keys(
        self, device_id: str, pre_keys: Sequence[PreKey], *, now: datetime
    ) -> None:
        """Insert the keys; ids already stored with the same key are skipped.

        Raises PreKeyConflict (before inserting anything) when an id is stored
        with another key; a conflict that appears concurrently is reported
        after the other keys were inserted."""
        if not pre_keys:
            return
        conflicts = await self._conflicts(device_id, pre_keys)
        if conflicts:
            raise PreKeyConflict(conflicts)
        docs = [
            {
                "_id": _pre_key_id(device_id, k.key_id),
                "device_id": device_id,
                "key_id": k.key_id,
                "public_key": k.public_key,
                "uploaded_at": now,
            }
            for k in pre_keys
        ]
        try:
            await self._pre_keys.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                raise
            conflicts = await self._conflicts(device_id, pre_keys)
            if conflicts:
                raise PreKeyConflict(conflicts) from None

    async def take_pre_key(self, device_id: str) -> PreKey | None:
        """Remove and return one of the device's one-time prekeys; None when
        it has none left."""
        for _ in range(_ATTEMPTS):
            cursor = self._pre_keys.find({"device_id": device_id}).limit(_CANDIDATES)
            candidates = [doc async for doc in cursor]
            if not candidates:
                return None
            random.shuffle(candidates)
            for doc in candidates:
                result = await self._pre_keys.delete_one({"_id": doc["_id"]})
                if result.deleted_count == 1:
                    return PreKey(key_id=int(doc["key_id"]), public_key=bytes(doc["public_key"]))
        return None

    async def delete_pre_keys(self, device_id: str) -> None:
        await self._pre_keys.delete_many({"device_id": device_id})

    async def delete_device(self, device_id: str) -> None:
        """Forget every key of a device (it was removed)."""
        await self._device_keys.delete_one({"_id": device_id})
        await self._pre_keys.delete_many({"device_id": device_id})
