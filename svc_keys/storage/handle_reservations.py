"""``handle_reservations``: the handles this region registers for accounts of
every region (docs/design/regions.md, "Handles stay unique across regions").

One document per handle, keyed by its case-folded form, so the primary key is
the uniqueness check: ``{_id: handle_key, account_id, home_region,
request_id, reserved_at}``. Only written in a deployment with regions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from svc_keys.model import Reservation

COLLECTION = "handle_reservations"


def _aware(value: datetime) -> datetime:
    # The driver hands datetimes back naive, in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _reservation(doc: dict[str, Any]) -> Reservation:
    return Reservation(
        account_id=doc["account_id"], home_region=doc["home_region"], request_id=doc["request_id"]
    )


class HandleReservationStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._reservations = db[COLLECTION]

    async def reserve(
        self, handle_key: str, *, account_id: str, home_region: str, request_id: str, now: datetime
    ) -> Reservation:
        try:
            await self._reservations.insert_one(
                {
                    "_id": handle_key,
                    "account_id": account_id,
                    "home_region": home_region,
                    "request_id": request_id,
                    "reserved_at": now,
                }
            )
        except DuplicateKeyError:
            doc = await self._reservations.find_one({"_id": handle_key})
            released = None if doc is None else doc.get("released_until")
            if doc is not None and (released is None or _aware(released) > now):
                return _reservation(doc)
            if doc is not None:
                # An erased account's handle past its cooling-off: taken over
                # by whoever replaces exactly that document first.
                replaced = await self._reservations.replace_one(
                    {
                        "_id": handle_key,
                        "account_id": doc["account_id"],
                        "released_until": released,
                    },
                    {
                        "account_id": account_id,
                        "home_region": home_region,
                        "request_id": request_id,
                        "reserved_at": now,
                    },
                )
                if replaced.modified_count:
                    return Reservation(
                        account_id=account_id, home_region=home_region, request_id=request_id
                    )
            # Released between the insert and the read: reserve again.
            return await self.reserve(
                handle_key,
                account_id=account_id,
                home_region=home_region,
                request_id=request_id,
                now=now,
            )
        return Reservation(account_id=account_id, home_region=home_region, request_id=request_id)

    async def find(self, handle_key: str) -> Reservation | None:
        doc = await self._reservations.find_one({"_id": handle_key})
        return None if doc is None else _reservation(doc)

    async def release(self, handle_key: str, *, account_id: str, until: datetime) -> None:
        await self._reservations.update_one(
            {"_id": handle_key, "account_id": account_id}, {"$set": {"released_until": until}}
        )
