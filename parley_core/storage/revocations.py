"""Device revocations: durable in MongoDB, announced on Redis.

svc_keys records a revocation here (its own, or one a peer region pushed:
docs/design/regions.md, "Revocations"); every service runs a RevocationFeed
that keeps its in-memory RevocationList current: at once through Redis
pub/sub, and within ``revocation_poll_seconds`` through MongoDB when a publish
is lost or Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import structlog
from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from parley_core.auth.revocations import Revocation, RevocationList
from parley_core.storage.mongo import Document
from parley_core.storage.redis import REDIS_ERRORS, Redis

CHANNEL = "parley:revocations"
# Redis failing, or a payload that is not a revocation.
_LISTEN_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, ValueError, KeyError)
log = structlog.get_logger(__name__)


class RevocationStore:
    """The region's ``revocations``: ``{_id: device_id, revoked_at, expire_at,
    recorded_at}``, plus for revocations made here ``unsent`` (the peer regions
    that have not acknowledged it yet: the outbox of svc_keys' push) and for
    revocations pushed here by a peer ``source`` (that region)."""

    def __init__(self, db: AsyncDatabase[Document], redis: Redis, *, token_ttl_seconds: int):
        self._coll = db["revocations"]
        self._peers_seen = db["revocation_peers"]
        self._redis = redis
        self.token_ttl_seconds = token_ttl_seconds

    async def ensure_indexes(self) -> None:
        # Once every token issued before the revocation has expired, the entry is moot.
        await self._coll.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0)
        await self._coll.create_index([("revoked_at", ASCENDING)])
        await self._coll.create_index([("recorded_at", ASCENDING)])
        await self._coll.create_index([("unsent", ASCENDING)], sparse=True)

    def _update(self, revoked_at: datetime, *, recorded_at: datetime) -> Document:
        return {
            "$max": {
                "revoked_at": revoked_at,
                "expire_at": revoked_at + timedelta(seconds=self.token_ttl_seconds),
            },
            # Polls read by the time of the write here, not of the revocation:
            # a peer's revocation may arrive long after it was made.
            "$set": {"recorded_at": recorded_at},
        }

    async def revoke_device(self, device_id: str, *, now: float, peers: Sequence[str] = ()) -> None:
        """Record and announce a revocation made here; ``peers`` are the
        regions it must still be pushed to."""
        revoked_at = datetime.fromtimestamp(now, UTC)
        update = self._update(revoked_at, recorded_at=revoked_at)
        if peers:
            update["$addToSet"] = {"unsent": {"$each": list(peers)}}
        await self._coll.update_one({"_id": device_id}, update, upsert=True)
        await self._announce([Revocation(device_id=device_id, revoked_at=now)])

    async def apply_from_peer(
        self, revocations: Sequence[Revocation], *, source: str, now: float
    ) -> None:
        """Record and announce revocations the ``source`` region made."""
        if not revocations:
            return
        recorded_at = datetime.fromtimestamp(now, UTC)
        await self._coll.bulk_write(
            [
                UpdateOne(
                    {"_id": r.device_id},
                    {
                        **self._update(
                            datetime.fromtimestamp(r.revoked_at, UTC), recorded_at=recorded_at
                        ),
                        "$setOnInsert": {"source": source},
                    },
                    upsert=True,
                )
                for r in revocations
            ],
            ordered=False,
        )
        await self._announce(revocations)

    async def _announce(self, revocations: Sequence[Revocation]) -> None:
        try:
            for r in revocations:
                await self._redis.publish(
                    CHANNEL, json.dumps({"d": r.device_id, "t": r.revoked_at})
                )
        except REDIS_ERRORS as exc:
            # The poll of every process finds it within revocation_poll_seconds.
            log.warning("revocation_publish_failed", error=str(exc))

    async def load_since(self, since: datetime | None) -> list[Revocation]:
        if since is None:
            return [self._revocation(doc) async for doc in self._coll.find({})]
        # Two queries, each on its own index (an $or may scan the collection):
        # by recorded_at for revocations peers pushed late, by revoked_at for
        # documents written before recorded_at existed.
        found: dict[str, Revocation] = {}
        for field in ("recorded_at", "revoked_at"):
            async for doc in self._coll.find({field: {"$gte": since}}):
                found[doc["_id"]] = self._revocation(doc)
        return list(found.values())

    @staticmethod
    def _revocation(doc: Document) -> Revocation:
        return Revocation(device_id=doc["_id"], revoked_at=doc["revoked_at"].timestamp())

    # The outbox of the push to peer regions (svc_keys).

    async def unsent(self, peer: str, *, limit: int) -> list[Revocation]:
        """Revocations made here that ``peer`` has not acknowledged, oldest first."""
        cursor = self._coll.find({"unsent": peer}).sort("revoked_at", ASCENDING).limit(limit)
        return [self._revocation(doc) async for doc in cursor]

    async def mark_sent(self, peer: str, revocations: Sequence[Revocation]) -> None:
        """``peer`` acknowledged these; a newer revocation of the same device
        made meanwhile stays unsent."""
        if not revocations:
            return
        await self._coll.bulk_write(
            [
                UpdateOne(
                    {
                        "_id": r.device_id,
                        # A millisecond of slack: the stored time is whole
                        # milliseconds, the float read back may fall below it.
                        "revoked_at": {"$lte": datetime.fromtimestamp(r.revoked_at + 0.001, UTC)},
                    },
                    {"$pull": {"unsent": peer}},
                )
                for r in revocations
            ],
            ordered=False,
        )

    async def backlog(self, peer: str) -> int:
        return await self._coll.count_documents({"unsent": peer})

    async def unacknowledged(self, peer: str, device_ids: Sequence[str]) -> int:
        """Of these devices, how many revocations ``peer`` still owes an
        acknowledgement for (an expired one is moot: it no longer counts)."""
        if not device_ids:
            return 0
        return await self._coll.count_documents({"_id": {"$in": list(device_ids)}, "unsent": peer})

    async def add_peer(self, peer: str, *, now: float) -> bool:
        """The first time ``peer`` is seen, queue every live revocation made
        here for it (a region that joins verifies tokens issued before it
        did). True when it was new."""
        if await self._peers_seen.find_one({"_id": peer}) is not None:
            return False
        await self._coll.update_many(
            {"source": {"$exists": False}}, {"$addToSet": {"unsent": peer}}
        )
        await self._peers_seen.update_one(
            {"_id": peer},
            {"$setOnInsert": {"added_at": datetime.fromtimestamp(now, UTC)}},
            upsert=True,
        )
        return True


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
