"""Device revocations: durable in MongoDB, announced on Redis.

svc_keys records a revocation here; every service runs a RevocationFeed that
keeps its in-memory RevocationList current: at once through Redis pub/sub, and
within ``revocation_poll_seconds`` through MongoDB when a publish is lost or
Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from parley_core.auth.revocations import Revocation, RevocationList
from parley_core.storage.mongo import Document
from parley_core.storage.redis import REDIS_ERRORS, Redis

CHANNEL = "parley:revocations"
# Redis failing, or a payload that is not a revocation.
_LISTEN_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, ValueError, KeyError)
log = structlog.get_logger(__name__)


class RevocationStore:
    def __init__(self, db: AsyncDatabase[Document], redis: Redis, *, token_ttl_seconds: int):
        self._coll = db["revocations"]
        self._redis = redis
        self.token_ttl_seconds = token_ttl_seconds

    async def ensure_indexes(self) -> None:
        # Once every token issued before the revocation has expired, the entry is moot.
        await self._coll.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0)
        await self._coll.create_index([("revoked_at", ASCENDING)])

    async def revoke_device(self, device_id: str, *, now: float) -> None:
        revoked_at = datetime.fromtimestamp(now, UTC)
        await self._coll.update_one(
            {"_id": device_id},
            {
                "$max": {"revoked_at": revoked_at},
                "$set": {"expire_at": revoked_at + timedelta(seconds=self.token_ttl_seconds)},
            },
            upsert=True,
        )
        try:
            await self._redis.publish(CHANNEL, json.dumps({"d": device_id, "t": now}))
        except REDIS_ERRORS as exc:
            log.warning("revocation_publish_failed", error=str(exc))

    async def load_since(self, since: datetime | None) -> list[Revocation]:
        query: Document = {} if since is None else {"revoked_at": {"$gte": since}}
        return [
            Revocation(device_id=doc["_id"], revoked_at=doc["revoked_at"].timestamp())
            async for doc in self._coll.find(query)
        ]


class RevocationFeed:
    """Keeps a RevocationList current; run() until cancelled."""

    def __init__(
        self,
        store: RevocationStore,
        redis: Redis,
        revocations: RevocationList,
        *,
        poll_seconds: float,
        on_revoked: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._redis = redis
        self._list = revocations
        self._poll = poll_seconds
        self._token_ttl = store.token_ttl_seconds
        self._on_revoked = on_revoked
        self._last_poll: datetime | None = None

    def _apply(self, revocation: Revocation) -> None:
        self._list.add(revocation)
        if self._on_revoked is not None:
            self._on_revoked(revocation.device_id)

    async def load(self) -> None:
        """Load every live revocation; call once before serving."""
        started = datetime.now(UTC)
        for revocation in await self._store.load_since(None):
            self._list.add(revocation)
        self._last_poll = started

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._poll_forever())
            tasks.create_task(self._listen_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            started = datetime.now(UTC)
            # Overlap the window a little: clocks of writers may lag ours.
            since = (self._last_poll or started) - timedelta(seconds=self._poll + 5)
            try:
                for revocation in await self._store.load_since(since):
                    self._apply(revocation)
                self._last_poll = started
                # Every token issued before this has expired: nothing left to refuse.
                self._list.forget_before(started.timestamp() - self._token_ttl)
            except Exception as exc:  # keep polling through database outages
                log.warning("revocation_poll_failed", error=str(exc))

    async def _listen_forever(self) -> None:
        backoff = 0.1
        while True:
            subscription = self._redis.subscription()
            try:
                await subscription.subscribe(CHANNEL)
                backoff = 0.1
                async for heard in subscription.listen():
                    if heard.kind != "message":
                        continue
                    data = json.loads(heard.data)
                    self._apply(Revocation(device_id=data["d"], revoked_at=float(data["t"])))
            except _LISTEN_ERRORS as exc:
                log.warning("revocation_listen_failed", error=str(exc))
            finally:
                with contextlib.suppress(Exception):
                    await subscription.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
