"""Push notifications in MongoDB: tokens, settings, and the durable outbox.

``push_tokens``: one document per device that registered a token,
``_id`` = device id, ``account_id``, ``provider``, ``token``, ``token_key``
(SHA-256 of provider and token), ``locale``, ``updated_at``. Sharded by
``{account_id: 1}`` in production: the planner reads the tokens of a
message's recipients by account. A provider token names an app install, so
registering it for one device takes it away from any other device (another
account signed in on the same phone must not receive the first one's
notifications); that is a best-effort delete rather than a unique index,
which a collection sharded by account could not enforce.

``push_settings``: one document per account that changed a setting,
``_id`` = account id, ``dnd`` (enabled, start, end, tz), ``updated_at``.

``push_outbox``: one document per notification job::

    _id         job id (UUIDv7), also the provider's idempotency key
    device_id, account_id
    state       pending | sending | delivered | dead | dropped
    messages    ["<conversation>:<seq>", ...] the messages it stands for
    newest      "<message id>|<sender>" of the newest ($max: UUIDv7 sort by time)
    due_at      when a worker may take it (first message + collapse, or a retry)
    attempts    sends started; while sending: lease_until, worker, claim
    last_error, reason (dropped), delivered_at, expire_at (TTL, finished jobs)

A unique index on ``device_id`` partial to pending jobs is what collapses:
however many processes plan at once, a device has one pending job and new
messages join it.

A worker claims a batch in three round trips whatever its size: a read of
due candidates, one ``update_many`` that moves those still due to sending
under a fresh claim id (each document's update is atomic, so of two workers
racing for a candidate only the first one's filter still matches), and a read
of the documents carrying that claim id. Every later write names the claim id
and attempt number, so a worker whose lease ran out cannot overwrite what
the next one decided. (``find_one_and_update`` would claim one job per round
trip, and SecantusDB runs it as a collection scan.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from parley_core.ids import new_id
from parley_core.storage.mongo import Database, Document
from svc_message.model import DoNotDisturb, PushToken
from svc_message.model.push import NewMessages, OutboxJob, StoredPushSettings
from svc_message.storage.inbox import settings_key

PENDING, SENDING, DELIVERED, DEAD, DROPPED = "pending", "sending", "delivered", "dead", "dropped"
# Messages one notification stands for at most: keeps a job document small
# when a device stays unreachable in a busy group. Further messages are not
# counted ("100+" is what a badge shows anyway).
MAX_MESSAGES_PER_JOB = 100
_DUPLICATE_KEY = 11000


def token_key(provider: int, token: str) -> str:
    """Fixed-size key of a token (tokens run to 4096 characters)."""
    return hashlib.sha256(f"{provider}:{token}".encode()).hexdigest()


def _token(doc: Mapping[str, Any]) -> PushToken:
    return PushToken(
        account_id=doc["account_id"],
        device_id=doc["_id"],
        provider=doc["provider"],
        token=doc["token"],
        locale=doc.get("locale") or "en",
        updated_at=doc["updated_at"],
    )


class PushTokenStore:
    def __init__(self, db: Database) -> None:
        self._coll = db["push_tokens"]

    async def ensure_indexes(self) -> None:
        await self._coll.create_index([("account_id", ASCENDING)])
        await self._coll.create_index([("token_key", ASCENDING)])

    async def put(self, token: PushToken) -> list[str]:
        """Register (or replace) the device's token; returns the other
        devices that held the same token and lost it."""
        key = token_key(token.provider, token.token)
        others = [
            doc["_id"]
            async for doc in self._coll.find(
                {"token_key": key, "_id": {"$ne": token.device_id}}, projection={"_id": 1}
            )
        ]
        if others:
            await self._coll.delete_many({"_id": {"$in": others}, "token_key": key})
        await self._coll.update_one(
            {"_id": token.device_id},
            {
                "$set": {
                    "account_id": token.account_id,
                    "provider": token.provider,
                    "token": token.token,
                    "token_key": key,
                    "locale": token.locale,
                    "updated_at": token.updated_at,
                }
            },
            upsert=True,
        )
        return others

    async def remove(self, device_id: str, *, account_id: str | None = None) -> bool:
        query: Document = {"_id": device_id}
        if account_id is not None:
            query["account_id"] = account_id
        result = await self._coll.delete_one(query)
        return result.deleted_count > 0

    async def of_accounts(self, account_ids: Iterable[str]) -> list[PushToken]:
        accounts = list(dict.fromkeys(account_ids))
        if not accounts:
            return []
        cursor = self._coll.find({"account_id": {"$in": accounts}})
        return [_token(doc) async for doc in cursor]

    async def of_devices(self, device_ids: Iterable[str]) -> dict[str, PushToken]:
        devices = list(dict.fromkeys(device_ids))
        if not devices:
            return {}
        cursor = self._coll.find({"_id": {"$in": devices}})
        return {doc["_id"]: _token(doc) async for doc in cursor}


def _dnd(doc: Mapping[str, Any] | None) -> DoNotDisturb:
    if not doc:
        return DoNotDisturb()
    return DoNotDisturb(
        enabled=bool(doc.get("enabled")),
        start_minute=int(doc.get("start") or 0),
        end_minute=int(doc.get("end") or 0),
        time_zone=doc.get("tz") or "",
    )


class PushSettingsStore:
    def __init__(self, db: Database) -> None:
        self._coll = db["push_settings"]

    async def get(self, account_id: str) -> StoredPushSettings:
        doc = await self._coll.find_one({"_id": account_id})
        if doc is None:
            return StoredPushSettings(DoNotDisturb(), None)
        return StoredPushSettings(_dnd(doc.get("dnd")), doc.get("updated_at"))

    async def put(self, account_id: str, dnd: DoNotDisturb, *, now: datetime) -> None:
        await self._coll.update_one(
            {"_id": account_id},
            {
                "$set": {
                    "dnd": {
                        "enabled": dnd.enabled,
                        "start": dnd.start_minute,
                        "end": dnd.end_minute,
                        "tz": dnd.time_zone,
                    },
                    "updated_at": now,
                }
            },
            upsert=True,
        )

    async def quiet_hours(self, account_ids: Iterable[str]) -> dict[str, DoNotDisturb]:
        """The enabled do-not-disturb windows of these accounts (one query)."""
        accounts = list(dict.fromkeys(account_ids))
        if not accounts:
            return {}
        cursor = self._coll.find({"_id": {"$in": accounts}, "dnd.enabled": True})
        return {doc["_id"]: _dnd(doc.get("dnd")) async for doc in cursor}


class MuteLookup:
    """Reads ``muted_until`` of many (conversation, account) pairs at once from
    ``inbox_settings`` (owned by ``storage.inbox``; same key)."""

    def __init__(self, db: Database) -> None:
        self._coll = db["inbox_settings"]

    async def muted_until(
        self, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], datetime]:
        wanted = list(dict.fromkeys(pairs))
        if not wanted:
            return {}
        cursor = self._coll.find(
            {
                # account_id too: the collection is sharded by it.
                "account_id": {"$in": list({a for _, a in wanted})},
                "_id": {"$in": [settings_key(c, a) for c, a in wanted]},
                "muted_until": {"$ne": None},
            },
            projection={"conversation_id": 1, "account_id": 1, "muted_until": 1},
        )
        return {
            (doc["conversation_id"], doc["account_id"]): doc["muted_until"] async for doc in cursor
        }


def _job(doc: Mapping[str, Any]) -> OutboxJob:
    return OutboxJob(
        job_id=doc["_id"],
        claim=doc.get("claim") or "",
        account_id=doc["account_id"],
        device_id=doc["device_id"],
        keys=tuple(doc.get("messages") or ()),
        newest=doc.get("newest") or "|",
        attempts=int(doc.get("attempts") or 0),
        due_at=doc["due_at"],
    )


def _due(now: datetime) -> list[Document]:
    # Two queries rather than one $or: each is an index range (SecantusDB
    # scans the whole collection for an $or).
    return [
        {"state": PENDING, "due_at": {"$lte": now}},
        # A worker that took it vanished (crash): retried after its lease.
        {"state": SENDING, "lease_until": {"$lt": now}},
    ]


class PushOutbox:
    def __init__(self, db: Database, *, retention: timedelta) -> None:
        self._coll = db["push_outbox"]
        self._retention = retention

    async def ensure_indexes(self) -> None:
        await self._coll.create_index(
            [("device_id", ASCENDING)],
            name="one_pending_per_device",
            unique=True,
            partialFilterExpression={"state": PENDING},
        )
        # Dropping a device's pending jobs.
        await self._coll.create_index([("device_id", ASCENDING), ("state", ASCENDING)])
        # What a replay already handled: the jobs holding given messages.
        await self._coll.create_index([("messages", ASCENDING)])
        # Claims: due pending jobs, and sending ones whose lease ran out.
        await self._coll.create_index([("state", ASCENDING), ("due_at", ASCENDING)])
        await self._coll.create_index([("state", ASCENDING), ("lease_until", ASCENDING)])
        # Finished jobs carry their own expiry; pending ones never expire.
        await self._coll.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0)

    # -- planning ----------------------------------------------------------------

    async def add(self, jobs: Sequence[NewMessages], *, now: datetime) -> int:
        """Add messages to each device's pending job, creating it if there is
        none. Returns the documents written.

        Most devices have no pending job (they were notified already, or never
        had anything to collapse with), so one read finds those that have one,
        the others' jobs are created by one ``insert_many`` (one commit) and
        only the few joining an existing job get an upsert each. Races resolve
        through the partial unique index: a job created meanwhile by another
        process makes the insert collide, and that device joins it instead; a
        job claimed meanwhile by a worker no longer matches the upsert, which
        then creates a new one. A job already holding MAX_MESSAGES_PER_JOB
        messages takes no more (its upsert collides and is left out)."""
        if not jobs:
            return 0
        cursor = self._coll.find(
            {"device_id": {"$in": [j.device_id for j in jobs]}, "state": PENDING},
            projection={"device_id": 1},
        )
        pending = {doc["device_id"] async for doc in cursor}
        fresh = [j for j in jobs if j.device_id not in pending]
        joining = [j for j in jobs if j.device_id in pending]
        written = 0
        if fresh:
            try:
                result = await self._coll.insert_many(
                    [self._new(j, now) for j in fresh], ordered=False
                )
                written += len(result.inserted_ids)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors") or []
                if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                    raise
                written += int(exc.details.get("nInserted", 0))
                joining += [fresh[e["index"]] for e in errors]
        if joining:
            written += await self._join_all(joining, now)
        return written

    async def _join_all(self, jobs: Sequence[NewMessages], now: datetime) -> int:
        ops = [self._join(job, now) for job in jobs]
        written = 0
        for _ in range(2):
            try:
                result = await self._coll.bulk_write(ops, ordered=False)
            except BulkWriteError as exc:
                details = exc.details
                written += int(details.get("nUpserted", 0)) + int(details.get("nModified", 0))
                errors = details.get("writeErrors") or []
                if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                    raise
                ops = [ops[e["index"]] for e in errors]
                continue
            return written + result.upserted_count + result.modified_count
        return written

    @staticmethod
    def _new(job: NewMessages, now: datetime) -> Document:
        return {
            "_id": new_id(),
            "device_id": job.device_id,
            "account_id": job.account_id,
            "state": PENDING,
            "messages": list(job.keys[:MAX_MESSAGES_PER_JOB]),
            "newest": job.newest,
            "due_at": job.due_at,
            "attempts": 0,
            "created_at": now,
        }

    @staticmethod
    def _join(job: NewMessages, now: datetime) -> UpdateOne:
        return UpdateOne(
            {
                "device_id": job.device_id,
                "state": PENDING,
                f"messages.{MAX_MESSAGES_PER_JOB - 1}": {"$exists": False},
            },
            {
                "$setOnInsert": {
                    "_id": new_id(),
                    "account_id": job.account_id,
                    "due_at": job.due_at,
                    "attempts": 0,
                    "created_at": now,
                },
                "$addToSet": {"messages": {"$each": list(job.keys)}},
                "$max": {"newest": job.newest},
            },
            upsert=True,
        )

    async def handled(self, device_ids: Iterable[str], keys: Iterable[str]) -> set[tuple[str, str]]:
        """(device, message key) pairs some job already holds, in any state."""
        devices, wanted = list(dict.fromkeys(device_ids)), set(keys)
        if not devices or not wanted:
            return set()
        # By message only (the multikey index): a device filter would make it
        # read every job the devices ever had.
        cursor = self._coll.find(
            {"messages": {"$in": list(wanted)}}, projection={"device_id": 1, "messages": 1}
        )
        targets = set(devices)
        found: set[tuple[str, str]] = set()
        async for doc in cursor:
            if doc["device_id"] in targets:
                found.update(
                    (doc["device_id"], k) for k in doc.get("messages") or () if k in wanted
                )
        return found

    async def remove_pending(self, device_id: str) -> int:
        result = await self._coll.delete_many({"device_id": device_id, "state": PENDING})
        return result.deleted_count

    # -- the worker --------------------------------------------------------------

    async def claim(
        self, *, now: datetime, lease: timedelta, worker_id: str, limit: int
    ) -> list[OutboxJob]:
        """Up to ``limit`` due jobs, now leased to this worker (see the module
        doc). Idle, this is two indexed reads and no write."""
        claimed: list[OutboxJob] = []
        for due in _due(now):
            if len(claimed) >= limit:
                break
            ids = [
                doc["_id"]
                async for doc in self._coll.find(due, projection={"_id": 1}).limit(
                    limit - len(claimed)
                )
            ]
            if not ids:
                continue
            claim = new_id()
            await self._coll.update_many(
                {"_id": {"$in": ids}, **due},
                {
                    "$set": {
                        "state": SENDING,
                        "lease_until": now + lease,
                        "worker": worker_id,
                        "claim": claim,
                    },
                    "$inc": {"attempts": 1},
                },
            )
            cursor = self._coll.find({"_id": {"$in": ids}, "claim": claim})
            claimed.extend([_job(doc) async for doc in cursor])
        return claimed

    def _mine(self, job: OutboxJob) -> Document:
        # Only while this claim still holds it: after its lease ran out
        # another worker may have taken it (with a new claim id), and that
        # one decides.
        return {"_id": job.job_id, "state": SENDING, "claim": job.claim}

    async def _finish(self, jobs: Sequence[OutboxJob], fields: Document) -> int:
        """One write per claim for jobs ending the same way."""
        by_claim: dict[str, list[str]] = {}
        for job in jobs:
            by_claim.setdefault(job.claim, []).append(job.job_id)
        modified = 0
        for claim, ids in by_claim.items():
            result = await self._coll.update_many(
                {"_id": {"$in": ids}, "state": SENDING, "claim": claim},
                {"$set": fields, "$unset": {"lease_until": "", "worker": "", "claim": ""}},
            )
            modified += result.modified_count
        return modified

    async def delivered(self, jobs: Sequence[OutboxJob], *, now: datetime) -> int:
        return await self._finish(
            jobs, {"state": DELIVERED, "delivered_at": now, "expire_at": now + self._retention}
        )

    async def dead(self, jobs: Sequence[OutboxJob], *, now: datetime, error: str) -> int:
        return await self._finish(
            jobs,
            {
                "state": DEAD,
                "last_error": error,
                "failed_at": now,
                "expire_at": now + self._retention,
            },
        )

    async def dropped(self, jobs: Sequence[OutboxJob], *, now: datetime, reason: str) -> int:
        return await self._finish(
            jobs, {"state": DROPPED, "reason": reason, "expire_at": now + self._retention}
        )

    async def retry(self, job: OutboxJob, *, due_at: datetime, error: str) -> bool:
        """Back to pending, due at ``due_at``. If new messages started another
        pending job for the device meanwhile, this one's messages join it
        (keeping the later due time and the attempts made) and this one goes."""
        try:
            moved = await self._coll.update_one(
                self._mine(job),
                {
                    "$set": {"state": PENDING, "due_at": due_at, "last_error": error},
                    "$unset": {"lease_until": "", "worker": "", "claim": ""},
                },
            )
            return moved.modified_count > 0
        except DuplicateKeyError:
            pass
        await self._coll.update_one(
            {"device_id": job.device_id, "state": PENDING},
            {
                "$addToSet": {"messages": {"$each": list(job.keys)}},
                "$max": {"newest": job.newest, "due_at": due_at, "attempts": job.attempts},
                "$set": {"last_error": error},
            },
        )
        gone = await self._coll.delete_one(self._mine(job))
        return gone.deleted_count > 0

    async def pending_count(self) -> int:
        return await self._coll.count_documents({"state": PENDING})
