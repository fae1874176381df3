"""What the key directory (svc_keys) tells devices through the delivery
streams (svc_message): the one place both services share for it.

- ``pre_key_lows``: ``_id`` device id, ``account_id``, ``count``,
  ``updated_at``. Present while a device holds fewer one-time prekeys than
  the low-water mark, so a stream that opens later still tells it.
- ``identity_changes``: an outbox. ``_id`` change id, ``account_id``,
  ``device_id``, ``created_at``, and while a worker holds it ``claimed_by``
  and ``lease_until``. svc_keys inserts one when a device publishes a new
  identity key; a svc_message worker writes the system message into every
  conversation of the account and deletes it. A worker that dies loses its
  lease and another one finishes (the system messages are idempotent by
  change id).
- Live notices go out on the account's doorbell channel as an encoded
  ``parley.message.v1.Event``; a lost publish is made good by the stored
  record at the next stream start.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo import ASCENDING

from parley_core.storage.mongo import Database
from parley_core.storage.redis import REDIS_ERRORS, Redis

# One-time prekeys below this many: the device is told to upload more.
PRE_KEY_LOW_WATER = 20

ACCOUNT_CHANNEL_PREFIX = "parley:u:"


def account_channel(account_id: str) -> str:
    """The doorbell channel of everything that concerns the account itself."""
    return ACCOUNT_CHANNEL_PREFIX + account_id


async def publish_to_account(redis: Redis, account_id: str, event: bytes) -> bool:
    """Best effort: False when Redis did not take it (the stored record, if
    any, is delivered at the next stream start)."""
    try:
        await redis.publish(account_channel(account_id), event)
    except REDIS_ERRORS:
        return False
    return True


class PreKeyLows:
    def __init__(self, db: Database) -> None:
        self._docs = db["pre_key_lows"]

    async def ensure_indexes(self) -> None:
        # Removing an account's devices finds their records by account.
        await self._docs.create_index([("account_id", ASCENDING)])

    async def record(self, *, account_id: str, device_id: str, count: int, now: datetime) -> None:
        """Remember the device's count if it is below the low-water mark, and
        forget it otherwise."""
        if count >= PRE_KEY_LOW_WATER:
            await self._docs.delete_one({"_id": device_id})
            return
        await self._docs.update_one(
            {"_id": device_id},
            {"$set": {"account_id": account_id, "count": count, "updated_at": now}},
            upsert=True,
        )

    async def forget(self, device_id: str) -> None:
        await self._docs.delete_one({"_id": device_id})

    async def low_count(self, device_id: str) -> int | None:
        """The device's one-time prekey count if it is below the mark."""
        doc = await self._docs.find_one({"_id": device_id}, {"count": 1})
        return None if doc is None else int(doc["count"])

    async def devices_below(self) -> int:
        """How many devices are below the low-water mark now (all accounts)."""
        return await self._docs.count_documents({})


@dataclass(frozen=True, slots=True)
class IdentityChange:
    change_id: str
    account_id: str
    device_id: str
    created_at: datetime


class IdentityChanges:
    def __init__(self, db: Database) -> None:
        self._docs = db["identity_changes"]

    async def ensure_indexes(self) -> None:
        await self._docs.create_index([("lease_until", ASCENDING), ("created_at", ASCENDING)])

    async def record(self, *, account_id: str, device_id: str, now: datetime) -> str:
        change_id = uuid.uuid4().hex
        await self._docs.insert_one(
            {
                "_id": change_id,
                "account_id": account_id,
                "device_id": device_id,
                "created_at": now,
                # Claimable at once: a lease that ran out long ago.
                "lease_until": datetime.fromtimestamp(0, now.tzinfo),
            }
        )
        return change_id

    async def claim(
        self, *, worker_id: str, now: datetime, lease: timedelta
    ) -> IdentityChange | None:
        """Take the oldest change nobody holds (or whose holder's lease ran
        out) for ``lease``; None when there is none."""
        candidate = await self._docs.find_one(
            {"lease_until": {"$lte": now}}, sort=[("lease_until", ASCENDING)]
        )
        if candidate is None:
            return None
        # Conditional on the lease we read, so two workers cannot both win.
        taken = await self._docs.update_one(
            {"_id": candidate["_id"], "lease_until": candidate["lease_until"]},
            {"$set": {"claimed_by": worker_id, "lease_until": now + lease}},
        )
        if taken.modified_count != 1:
            return None
        return IdentityChange(
            change_id=candidate["_id"],
            account_id=candidate["account_id"],
            device_id=candidate["device_id"],
            created_at=candidate["created_at"],
        )

    async def done(self, change_id: str) -> None:
        await self._docs.delete_one({"_id": change_id})

    async def pending(self) -> int:
        return await self._docs.count_documents({})

    async def forget_account(self, account_id: str) -> None:
        """An erased account's changes are moot: it is in no conversation."""
        await self._docs.delete_many({"account_id": account_id})
