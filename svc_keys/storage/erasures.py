"""Account erasure jobs, erasure records and handle holds in MongoDB.

Collections:
- ``erasures``: ``_id`` the opaque erasure id. While the job runs it also
  holds what the job needs and nothing else does once it is over:
  ``account_id`` (unique, sparse: one job per account, so a repeated
  DeleteAccount finds the running one), ``device_ids``, ``lease_until`` and
  ``holder``, and, when the handle's registrar is a peer region,
  ``handle_key`` and ``handle_registrar`` (its release there is a later
  step). Always: ``steps`` (the steps done, in order), ``state`` (running,
  done), ``created_at``, ``finished_at``, ``cold_deadline``. When the job
  finishes, ``account_id``, ``device_ids``, the handle and the lease are
  removed in the same write that marks it done, which leaves the erasure record:
  what was erased and when, with no personal data.
- ``handle_holds``: ``_id`` the SHA-256 of the handle key (never the handle
  itself), ``until``: a sign-up of that handle is refused before ``until``.
  A TTL index deletes holds a day after they end (expiry is checked on
  read, so the TTL monitor's delay never matters).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from parley_core.storage.mongo import Database, Document
from svc_keys.model import ErasureJob, ErasureRecord

RUNNING = "running"
DONE = "done"


def hold_key(handle_key: str) -> str:
    return hashlib.sha256(handle_key.encode()).hexdigest()


def _job(doc: Document) -> ErasureJob:
    return ErasureJob(
        erasure_id=doc["_id"],
        account_id=doc["account_id"],
        device_ids=tuple(doc.get("device_ids") or ()),
        steps=tuple(doc.get("steps") or ()),
        created_at=doc["created_at"],
        cold_deadline=doc["cold_deadline"],
        handle_release_at=doc["handle_release_at"],
        handle_key=doc.get("handle_key"),
        handle_registrar=doc.get("handle_registrar"),
    )


def _record(doc: Document) -> ErasureRecord:
    return ErasureRecord(
        erasure_id=doc["_id"],
        state=doc["state"],
        steps=tuple(doc.get("steps") or ()),
        created_at=doc["created_at"],
        finished_at=doc.get("finished_at"),
        cold_deadline=doc["cold_deadline"],
        handle_release_at=doc["handle_release_at"],
    )


class ErasureStore:
    def __init__(self, db: Database) -> None:
        self._erasures = db["erasures"]
        self._holds = db["handle_holds"]

    async def ensure_indexes(self) -> None:
        await self._erasures.create_index([("account_id", ASCENDING)], unique=True, sparse=True)
        await self._erasures.create_index([("state", ASCENDING), ("lease_until", ASCENDING)])
        await self._holds.create_index([("until", ASCENDING)], expireAfterSeconds=86_400)

    # -- jobs --------------------------------------------------------------

    async def start(self, job: ErasureJob, *, holder: str, lease_until: datetime) -> ErasureJob:
        """Record the job, held by ``holder``; an account with a job already
        gets that one back (a repeated DeleteAccount)."""
        try:
            await self._erasures.insert_one(
                {
                    "_id": job.erasure_id,
                    "account_id": job.account_id,
                    "device_ids": list(job.device_ids),
                    "steps": [],
                    "state": RUNNING,
                    "created_at": job.created_at,
                    "cold_deadline": job.cold_deadline,
                    "handle_release_at": job.handle_release_at,
                    "holder": holder,
                    "lease_until": lease_until,
                }
            )
        except DuplicateKeyError:
            existing = await self._erasures.find_one({"account_id": job.account_id})
            if existing is None:  # finished in between: the account is gone
                raise
            return _job(existing)
        return job

    async def of_account(self, account_id: str) -> ErasureJob | None:
        doc = await self._erasures.find_one({"account_id": account_id})
        return None if doc is None else _job(doc)

    async def add_devices(self, erasure_id: str, device_ids: Sequence[str]) -> None:
        await self._erasures.update_one(
            {"_id": erasure_id}, {"$addToSet": {"device_ids": {"$each": list(device_ids)}}}
        )

    async def defer_handle_release(
        self, erasure_id: str, *, handle_key: str, registrar: str
    ) -> None:
        """Keep the handle for its release at ``registrar`` (a later step)."""
        await self._erasures.update_one(
            {"_id": erasure_id},
            {"$set": {"handle_key": handle_key, "handle_registrar": registrar}},
        )

    async def claim(
        self, *, holder: str, now: datetime, lease: timedelta, erasure_id: str | None = None
    ) -> ErasureJob | None:
        """Take a running job nobody holds (or whose holder's lease ran out)."""
        query: Document = {"state": RUNNING, "lease_until": {"$lte": now}}
        if erasure_id is not None:
            query["_id"] = erasure_id
        doc = await self._erasures.find_one_and_update(
            query,
            {"$set": {"holder": holder, "lease_until": now + lease}},
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else _job(doc)

    async def extend(self, erasure_id: str, *, holder: str, until: datetime) -> bool:
        result = await self._erasures.update_one(
            {"_id": erasure_id, "holder": holder, "state": RUNNING},
            {"$set": {"lease_until": until}},
        )
        return result.matched_count == 1

    async def step_done(self, erasure_id: str, step: str) -> None:
        await self._erasures.update_one({"_id": erasure_id}, {"$addToSet": {"steps": step}})

    async def release(self, erasure_id: str, *, holder: str, retry_at: datetime) -> None:
        """Give the job up until ``retry_at`` (a step failed; try later)."""
        await self._erasures.update_one(
            {"_id": erasure_id, "holder": holder, "state": RUNNING},
            {"$set": {"lease_until": retry_at}},
        )

    async def finish(self, erasure_id: str, *, now: datetime) -> None:
        """Mark done and strip everything personal: what is left is the record."""
        await self._erasures.update_one(
            {"_id": erasure_id},
            {
                "$set": {"state": DONE, "finished_at": now},
                "$unset": {
                    "account_id": "",
                    "device_ids": "",
                    "holder": "",
                    "lease_until": "",
                    "handle_key": "",
                    "handle_registrar": "",
                },
            },
        )

    async def record(self, erasure_id: str) -> ErasureRecord | None:
        doc = await self._erasures.find_one({"_id": erasure_id})
        return None if doc is None else _record(doc)

    async def running(self) -> int:
        return await self._erasures.count_documents({"state": RUNNING})

    # -- handle holds ------------------------------------------------------

    async def hold_handle(self, handle_key: str, *, until: datetime) -> None:
        await self._holds.update_one(
            {"_id": hold_key(handle_key)}, {"$max": {"until": until}}, upsert=True
        )

    async def handle_held(self, handle_key: str, *, now: datetime) -> bool:
        doc = await self._holds.find_one({"_id": hold_key(handle_key)})
        return doc is not None and doc["until"] > now
