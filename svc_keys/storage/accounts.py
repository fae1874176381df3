"""Accounts and devices in MongoDB.

Collections:
- ``accounts``: ``_id`` account id, ``handle_key`` (case-folded, unique),
  ``signup_request_id`` (unique, makes SignUp idempotent), ``device_count``
  (active devices, the cap is enforced by a conditional increment).
- ``devices``: ``_id`` device id, ``account_id``, ``request_id`` (unique per
  account, makes RegisterDevice idempotent), ``refresh_hash`` and expiry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from parley_core.storage.mongo import Database, Document
from svc_keys.model import Account, Device, HandleTaken, SignupRequestSeen


def _account(doc: Document) -> Account:
    return Account(
        account_id=doc["_id"],
        handle=doc["handle"],
        display_name=doc.get("display_name", ""),
        created_at=doc["created_at"],
    )


def _device(doc: Document) -> Device:
    return Device(
        device_id=doc["_id"],
        account_id=doc["account_id"],
        name=doc["name"],
        platform=doc.get("platform", 0),
        created_at=doc["created_at"],
        revoked_at=doc.get("revoked_at"),
    )


def _duplicate_index(error: DuplicateKeyError) -> set[str]:
    details: Mapping[str, Any] = error.details or {}
    return set((details.get("keyPattern") or {}).keys())


class AccountStore:
    def __init__(self, db: Database) -> None:
        self._accounts = db["accounts"]
        self._devices = db["devices"]

    async def ensure_indexes(self) -> None:
        await self._accounts.create_index([("handle_key", ASCENDING)], unique=True)
        await self._accounts.create_index(
            [("signup_request_id", ASCENDING)], unique=True, sparse=True
        )
        await self._devices.create_index(
            [("account_id", ASCENDING), ("request_id", ASCENDING)], unique=True
        )
        await self._devices.create_index([("account_id", ASCENDING), ("_id", ASCENDING)])

    # -- accounts ----------------------------------------------------------

    async def insert_account(self, account: Account, *, handle_key: str, request_id: str) -> None:
        try:
            await self._accounts.insert_one(
                {
                    "_id": account.account_id,
                    "handle": account.handle,
                    "handle_key": handle_key,
                    "display_name": account.display_name,
                    "created_at": account.created_at,
                    "signup_request_id": request_id,
                    # The first device is counted from the start.
                    "device_count": 1,
                }
            )
        except DuplicateKeyError as exc:
            if "signup_request_id" in _duplicate_index(exc):
                raise SignupRequestSeen from None
            raise HandleTaken from None

    async def account_by_signup_request(self, request_id: str) -> Account | None:
        doc = await self._accounts.find_one({"signup_request_id": request_id})
        return None if doc is None else _account(doc)

    async def account_by_id(self, account_id: str) -> Account | None:
        doc = await self._accounts.find_one({"_id": account_id})
        return None if doc is None else _account(doc)

    async def account_by_handle_key(self, handle_key: str) -> Account | None:
        doc = await self._accounts.find_one({"handle_key": handle_key})
        return None if doc is None else _account(doc)

    async def reserve_device_slot(self, account_id: str, *, cap: int) -> bool:
        doc = await self._accounts.find_one_and_update(
            {"_id": account_id, "device_count": {"$lt": cap}},
            {"$inc": {"device_count": 1}},
            return_document=ReturnDocument.AFTER,
        )
        return doc is not None

    async def release_device_slot(self, account_id: str) -> None:
        await self._accounts.update_one(
            {"_id": account_id, "device_count": {"$gt": 0}}, {"$inc": {"device_count": -1}}
        )

    async def recount_device_slots(self, account_id: str) -> int:
        """Repair the counter from the devices themselves (a crash between
        reserving a slot and inserting the device leaks one)."""
        active = await self._devices.count_documents({"account_id": account_id, "revoked_at": None})
        await self._accounts.update_one({"_id": account_id}, {"$set": {"device_count": active}})
        return active

    # -- devices -----------------------------------------------------------

    async def insert_device(
        self,
        device: Device,
        *,
        request_id: str,
        refresh_hash: str,
        refresh_expires_at: datetime,
    ) -> bool:
        """Insert a device; False when this (account, request_id) already has one."""
        try:
            await self._devices.insert_one(
                {
                    "_id": device.device_id,
                    "account_id": device.account_id,
                    "name": device.name,
                    "platform": device.platform,
                    "created_at": device.created_at,
                    "request_id": request_id,
                    "revoked_at": None,
                    "refresh_hash": refresh_hash,
                    "refresh_expires_at": refresh_expires_at,
                }
            )
        except DuplicateKeyError:
            return False
        return True

    async def device_by_request(self, account_id: str, request_id: str) -> Device | None:
        doc = await self._devices.find_one({"account_id": account_id, "request_id": request_id})
        return None if doc is None else _device(doc)

    async def device_by_id(self, device_id: str) -> Device | None:
        doc = await self._devices.find_one({"_id": device_id})
        return None if doc is None else _device(doc)

    async def refresh_state(self, device_id: str) -> tuple[Device, str | None, datetime | None]:
        doc = await self._devices.find_one({"_id": device_id})
        if doc is None:
            raise KeyError(device_id)
        return _device(doc), doc.get("refresh_hash"), doc.get("refresh_expires_at")

    async def rotate_refresh(
        self,
        device_id: str,
        *,
        expected_hash: str,
        new_hash: str,
        new_expires_at: datetime,
    ) -> bool:
        """Swap the refresh token only if it is still the one presented, so two
        concurrent refreshes with the same token cannot both succeed."""
        result = await self._devices.update_one(
            {"_id": device_id, "refresh_hash": expected_hash, "revoked_at": None},
            {"$set": {"refresh_hash": new_hash, "refresh_expires_at": new_expires_at}},
        )
        return result.modified_count == 1

    async def set_refresh(self, device_id: str, *, new_hash: str, new_expires_at: datetime) -> None:
        await self._devices.update_one(
            {"_id": device_id, "revoked_at": None},
            {"$set": {"refresh_hash": new_hash, "refresh_expires_at": new_expires_at}},
        )

    async def revoke_device(self, device_id: str, *, now: datetime) -> bool:
        """Mark revoked; True only for the call that revoked it."""
        result = await self._devices.update_one(
            {"_id": device_id, "revoked_at": None},
            {"$set": {"revoked_at": now, "refresh_hash": None}},
        )
        return result.modified_count == 1

    async def active_devices_of(self, account_ids: Sequence[str]) -> set[str]:
        """The ids of the active devices of these accounts."""
        cursor = self._devices.find(
            {"account_id": {"$in": list(account_ids)}, "revoked_at": None}, {"_id": 1}
        )
        return {doc["_id"] async for doc in cursor}

    async def active_device_accounts(self, device_ids: Sequence[str]) -> dict[str, str]:
        """Device id -> account id, for those of the ids that are active devices."""
        cursor = self._devices.find(
            {"_id": {"$in": list(device_ids)}, "revoked_at": None}, {"account_id": 1}
        )
        return {doc["_id"]: doc["account_id"] async for doc in cursor}

    async def list_devices(
        self, account_id: str, *, after_device_id: str | None, limit: int
    ) -> list[Device]:
        query: Document = {"account_id": account_id, "revoked_at": None}
        if after_device_id:
            query["_id"] = {"$gt": after_device_id}
        cursor = self._devices.find(query).sort("_id", ASCENDING).limit(limit)
        return [_device(doc) async for doc in cursor]

    # -- erasure -----------------------------------------------------------

    async def handle_key_of(self, account_id: str) -> str | None:
        doc = await self._accounts.find_one({"_id": account_id}, {"handle_key": 1})
        return None if doc is None else str(doc["handle_key"])

    async def device_ids_of(self, account_id: str) -> list[str]:
        """Every device the account ever had, revoked ones included."""
        cursor = self._devices.find({"account_id": account_id}, {"_id": 1})
        return [doc["_id"] async for doc in cursor]

    async def delete_devices(self, account_id: str) -> None:
        """With them go their names and refresh token hashes."""
        await self._devices.delete_many({"account_id": account_id})

    async def delete_account(self, account_id: str) -> None:
        await self._accounts.delete_one({"_id": account_id})
