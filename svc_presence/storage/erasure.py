"""What an account erasure removes from svc_presence's stores besides its
contact lists (storage/contacts.py): the presence hash and the account's
places in the due and save sets in Redis, its privacy settings and last
seen in MongoDB."""

from __future__ import annotations

from redis.exceptions import RedisError

from parley_core.storage.liveness import ACCOUNT_PREFIX, DUE_KEY, SAVE_KEY
from parley_core.storage.mongo import Database
from parley_core.storage.redis import Redis
from svc_presence.model import PresenceStoreDown


class PresenceErasureStore:
    def __init__(self, db: Database, redis: Redis) -> None:
        self._settings = db["presence_settings"]
        self._seen = db["presence_last_seen"]
        self._redis = redis

    async def forget_live(self, account_id: str) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(ACCOUNT_PREFIX + account_id)
                pipe.zrem(DUE_KEY, account_id)
                pipe.zrem(SAVE_KEY, account_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise PresenceStoreDown(str(exc)) from None

    async def forget_documents(self, account_id: str) -> None:
        await self._settings.delete_one({"_id": account_id})
        await self._seen.delete_one({"_id": account_id})
