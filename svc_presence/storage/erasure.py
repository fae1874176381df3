"""What an account erasure removes from svc_presence's stores besides its
contact lists (storage/contacts.py): the presence hash, the entries peer
regions pushed of it and the account's places in the due and save sets in
Redis, its privacy settings and last
seen in MongoDB."""

from __future__ import annotations

from redis.exceptions import RedisError

from parley_core.storage.liveness import PresenceKeys
from parley_core.storage.mongo import Database
from parley_core.storage.redis import Redis
from svc_presence.model import PresenceStoreDown


class PresenceErasureStore:
    def __init__(self, db: Database, redis: Redis, keys: PresenceKeys) -> None:
        self._settings = db["presence_settings"]
        self._seen = db["presence_last_seen"]
        self._redis = redis
        self._keys = keys

    async def forget_live(self, account_id: str) -> None:
        try:
            # The hash and the shard's due and save sets share a hash tag.
            shard = self._keys.shard(account_id)
            async with self._redis.pipeline() as pipe:
                pipe.delete(self._keys.account(account_id))
                # What peer regions pushed of it (they expire anyway; not kept longer).
                pipe.delete(self._keys.remote(account_id))
                pipe.zrem(self._keys.due(shard), account_id)
                pipe.zrem(self._keys.save(shard), account_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise PresenceStoreDown(str(exc)) from None

    async def forget_documents(self, account_id: str) -> None:
        await self._settings.delete_one({"_id": account_id})
        await self._seen.delete_one({"_id": account_id})
