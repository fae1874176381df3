"""Per-account media usage in MongoDB, for the quotas.

``media_usage``: ``_id`` the account id; ``day`` (the UTC day of
``uploaded``), ``uploaded`` (ciphertext bytes of uploads started that day)
and ``stored`` (bytes of the media the account uploaded that are kept).
Daily bytes are charged with one conditional update (within the limit or
not at all), so concurrent uploads cannot together pass it.
"""

from __future__ import annotations

from pymongo.errors import DuplicateKeyError

from parley_core.storage.mongo import Database

# Concurrent first charges of one account race on the upsert: one retry wins.
_ATTEMPTS = 3


class UsageStore:
    def __init__(self, db: Database) -> None:
        self._usage = db["media_usage"]

    async def charge_upload(self, account_id: str, size: int, *, day: str, limit: int) -> bool:
        # The usual case (today's document, room left) is one update_one:
        # SecantusDB answers it in a third of a find_one_and_update's time.
        if await self._charge_today(account_id, size, day=day, limit=limit):
            return True
        for _ in range(_ATTEMPTS):
            # A new day starts at zero; only a document still on an older day
            # is reset, so two processes resetting at once agree.
            await self._usage.update_one(
                {"_id": account_id, "day": {"$ne": day}}, {"$set": {"day": day, "uploaded": 0}}
            )
            try:
                if await self._charge_today(account_id, size, day=day, limit=limit):
                    return True
                if size > limit:
                    return False
                await self._usage.insert_one(
                    {"_id": account_id, "day": day, "uploaded": size, "stored": 0}
                )
                return True
            except DuplicateKeyError:
                # It exists: either over the limit, or created meanwhile.
                existing = await self._usage.find_one({"_id": account_id})
                if (
                    existing is not None
                    and existing.get("day") == day
                    and int(existing.get("uploaded", 0)) > limit - size
                ):
                    return False
        return False

    async def _charge_today(self, account_id: str, size: int, *, day: str, limit: int) -> bool:
        result = await self._usage.update_one(
            {"_id": account_id, "day": day, "uploaded": {"$lte": limit - size}},
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
