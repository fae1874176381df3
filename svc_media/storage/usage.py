"""Per-account media usage in MongoDB, for the quotas.

``media_usage``: ``_id`` the account id; ``day`` (the UTC day of
``uploaded``), ``uploaded`` (ciphertext bytes of uploads started that day)
and ``stored`` (bytes of the media the account uploaded that are kept).
Daily bytes are charged with one conditional update that also checks the
stored bytes (within both limits or not at all), so concurrent uploads
cannot together pass the daily limit.
"""

from __future__ import annotations

from pymongo.errors import DuplicateKeyError

from parley_core.storage.mongo import Database

# Concurrent first charges of one account race on the upsert: one retry wins.
_ATTEMPTS = 3
DAILY, STORED = "daily_upload_bytes", "stored_bytes"


def refusal(
    uploaded: int, stored: int, size: int, daily_limit: int, stored_limit: int
) -> str | None:
    """The quota an upload of ``size`` would pass, stored bytes first; None if neither."""
    if stored + size > stored_limit:
        return STORED
    if uploaded + size > daily_limit:
        return DAILY
    return None


class UsageStore:
    def __init__(self, db: Database) -> None:
        self._usage = db["media_usage"]

    async def charge_upload(
        self, account_id: str, size: int, *, day: str, daily_limit: int, stored_limit: int
    ) -> str | None:
        # The usual case (today's document, room in both quotas) is one
        # update_one that also checks the stored bytes, so no read comes
        # before it: SecantusDB answers it in a third of a
        # find_one_and_update's time.
        if await self._charge_today(account_id, size, day, daily_limit, stored_limit):
            return None
        refused: str | None = DAILY
        for _ in range(_ATTEMPTS):
            doc = await self._usage.find_one({"_id": account_id})
            uploaded = 0
            if doc is not None and doc.get("day") == day:
                uploaded = int(doc.get("uploaded", 0))
            stored = 0 if doc is None else int(doc.get("stored", 0))
            refused = refusal(uploaded, stored, size, daily_limit, stored_limit)
            if refused is not None:
                return refused
            try:
                if doc is None:
                    await self._usage.insert_one(
                        {"_id": account_id, "day": day, "uploaded": size, "stored": 0}
                    )
                    return None
                if doc.get("day") != day:
                    # A new day starts at zero; only a document still on an
                    # older day is reset, so two processes resetting at once agree.
                    await self._usage.update_one(
                        {"_id": account_id, "day": {"$ne": day}},
                        {"$set": {"day": day, "uploaded": 0}},
                    )
                if await self._charge_today(account_id, size, day, daily_limit, stored_limit):
                    return None
            except DuplicateKeyError:
                # Created meanwhile (a concurrent first charge): read it again.
                continue
        return refused

    async def refund_upload(self, account_id: str, size: int, *, day: str) -> None:
        # Only today's charge is given back: a new day started from zero.
        await self._usage.update_one(
            {"_id": account_id, "day": day, "uploaded": {"$gte": size}},
            {"$inc": {"uploaded": -size}},
        )

    async def _charge_today(
        self, account_id: str, size: int, day: str, daily_limit: int, stored_limit: int
    ) -> bool:
        result = await self._usage.update_one(
            {
                "_id": account_id,
                "day": day,
                "uploaded": {"$lte": daily_limit - size},
                "stored": {"$lte": stored_limit - size},
            },
            {"$inc": {"uploaded": size}},
        )
        return result.modified_count == 1

    async def add_stored(self, account_id: str, size: int) -> None:
        await self._usage.update_one({"_id": account_id}, {"$inc": {"stored": size}}, upsert=True)

    async def usage(self, account_id: str, *, day: str) -> tuple[int, int]:
        doc = await self._usage.find_one({"_id": account_id})
        if doc is None:
            return 0, 0
        uploaded = int(doc.get("uploaded", 0)) if doc.get("day") == day else 0
        return uploaded, max(0, int(doc.get("stored", 0)))

    async def forget(self, account_id: str) -> None:
        await self._usage.delete_one({"_id": account_id})
