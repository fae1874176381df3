"""History exports in MongoDB, and their objects on S3.

``history_exports``: one document per export, ``_id`` = export id: the
account and device that asked, its request id (unique per account), the
conversation (empty: all), state, progress, and once READY the object key
and expiry. ``history_export_parts``: the plan of an export, one document
per part (``export_id``, ``index``, conversation and seq range).
``history_export_control``: the worker's lease (one document).

Everything the worker needs to resume is here: parts below ``next_part``
are written (as objects under ``<prefix>parts/<export id>/``), so a process
killed at any step reruns at most one part.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from parley_core.config import S3Settings
from parley_core.errors import Reason, Unavailable
from parley_core.storage.mongo import Database, Document
from parley_core.storage.s3 import open_client, read_credentials, signing_options
from svc_message.model.history_export import (
    ACTIVE_STATES,
    ExportJob,
    ExportPart,
    ExportState,
)
from svc_message.storage.archive import MissingObject

_CONTROL = "export_worker"


def _unavailable() -> Unavailable:
    return Unavailable(
        "the object store (S3) holding history exports cannot be reached",
        reason=Reason.DEPENDENCY_UNAVAILABLE,
        retry_after_seconds=5.0,
    )


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _at(value: Any) -> datetime | None:
    return None if value is None else _utc(value)


def _job(doc: Mapping[str, Any]) -> ExportJob:
    return ExportJob(
        export_id=doc["_id"],
        account_id=doc["account_id"],
        device_id=doc.get("device_id", ""),
        request_id=doc.get("request_id", ""),
        conversation_id=doc.get("conversation_id", ""),
        state=ExportState(int(doc["state"])),
        created_at=_utc(doc["created_at"]),
        updated_at=_utc(doc["updated_at"]),
        objects_done=int(doc.get("objects_done", 0)),
        objects_total=int(doc.get("objects_total", 0)),
        bytes_done=int(doc.get("bytes_done", 0)),
        bytes_total=int(doc.get("bytes_total", 0)),
        running_at=_at(doc.get("running_at")),
        expire_at=_at(doc.get("expire_at")),
        object_key=doc.get("object_key", ""),
        message_count=int(doc.get("message_count", 0)),
        failure=doc.get("failure", ""),
        next_part=int(doc.get("next_part", 0)),
        notified=bool(doc.get("notified", False)),
        glacier_keys=tuple(doc.get("glacier_keys") or ()),
    )


class ExportStore:
    def __init__(self, db: Database) -> None:
        self._jobs = db["history_exports"]
        self._parts = db["history_export_parts"]
        self._control = db["history_export_control"]
        self._conversations = db["conversations"]
        self._members = db["members"]

    async def ensure_indexes(self) -> None:
        await self._jobs.create_index(
            [("account_id", ASCENDING), ("request_id", ASCENDING)], unique=True
        )
        await self._jobs.create_index([("account_id", ASCENDING), ("created_at", DESCENDING)])
        await self._jobs.create_index([("state", ASCENDING), ("created_at", ASCENDING)])
        await self._jobs.create_index([("cleaned", ASCENDING), ("state", ASCENDING)])
        await self._parts.create_index(
            [("export_id", ASCENDING), ("index", ASCENDING)], unique=True
        )

    # -- jobs ----------------------------------------------------------------------

    async def create(self, job: ExportJob) -> ExportJob:
        """Insert ``job``; the account's job of the same request id if there
        is one (a retried request)."""
        try:
            await self._jobs.insert_one(
                {
                    "_id": job.export_id,
                    "account_id": job.account_id,
                    "device_id": job.device_id,
                    "request_id": job.request_id,
                    "conversation_id": job.conversation_id,
                    "state": int(job.state),
                    "created_at": job.created_at,
                    "updated_at": job.updated_at,
                    "next_part": 0,
                    "cleaned": False,
                }
            )
        except DuplicateKeyError:
            existing = await self.by_request(job.account_id, job.request_id)
            if existing is None:
                raise
            return existing
        return job

    async def by_request(self, account_id: str, request_id: str) -> ExportJob | None:
        doc = await self._jobs.find_one({"account_id": account_id, "request_id": request_id})
        return _job(doc) if doc else None

    async def active(self, account_id: str, conversation_id: str) -> ExportJob | None:
        doc = await self._jobs.find_one(
            {
                "account_id": account_id,
                "conversation_id": conversation_id,
                "state": {"$in": [int(s) for s in ACTIVE_STATES]},
            }
        )
        return _job(doc) if doc else None

    async def get(self, export_id: str) -> ExportJob | None:
        doc = await self._jobs.find_one({"_id": export_id})
        return _job(doc) if doc else None

    async def of_account(self, account_id: str, *, offset: int, limit: int) -> list[ExportJob]:
        cursor = (
            self._jobs.find({"account_id": account_id})
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .skip(offset)
            .limit(limit)
        )
        return [_job(doc) async for doc in cursor]

    async def next_active(self) -> ExportJob | None:
        """The oldest job the worker has not finished."""
        cursor = (
            self._jobs.find({"state": {"$in": [int(s) for s in ACTIVE_STATES]}})
            .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
            .limit(1)
        )
        found = [_job(doc) async for doc in cursor]
        return found[0] if found else None

    async def unfinished(self) -> dict[ExportState, int]:
        """Jobs per unfinished state (the export queue)."""
        return {
            state: await self._jobs.count_documents({"state": int(state)})
            for state in ACTIVE_STATES
        }

    async def expired(self, now: datetime, *, limit: int) -> list[ExportJob]:
        cursor = self._jobs.find(
            {"state": int(ExportState.READY), "expire_at": {"$lte": now}}
        ).limit(limit)
        return [_job(doc) async for doc in cursor]

    async def unnotified(self, *, limit: int) -> list[ExportJob]:
        cursor = self._jobs.find({"state": int(ExportState.READY), "notified": False}).limit(limit)
        return [_job(doc) async for doc in cursor]

    async def uncleaned(self, *, limit: int) -> list[ExportJob]:
        """Finished jobs whose parts and plan may remain."""
        stopped = [int(s) for s in ExportState if s not in ACTIVE_STATES]
        # Every job starts uncleaned: the index keeps this to the few not done yet.
        cursor = self._jobs.find({"cleaned": False, "state": {"$in": stopped}}).limit(limit)
        return [_job(doc) async for doc in cursor]

    async def update(
        self,
        export_id: str,
        *,
        states: Sequence[ExportState],
        fields: Mapping[str, Any],
        next_part: int | None = None,
    ) -> ExportJob | None:
        """Set ``fields`` if the job is in one of ``states`` (and at
        ``next_part``); the job after, or None (it moved on: cancelled)."""
        query: Document = {"_id": export_id, "state": {"$in": [int(s) for s in states]}}
        if next_part is not None:
            query["next_part"] = next_part
        doc = await self._jobs.find_one_and_update(
            query,
            {"$set": {k: int(v) if isinstance(v, ExportState) else v for k, v in fields.items()}},
            return_document=ReturnDocument.AFTER,
        )
        return _job(doc) if doc else None

    # -- plans ---------------------------------------------------------------------

    async def save_plan(self, export_id: str, parts: Sequence[ExportPart]) -> None:
        await self._parts.delete_many({"export_id": export_id})
        if parts:
            await self._parts.insert_many(
                [
                    {
                        "export_id": export_id,
                        "index": p.index,
                        "conversation_id": p.conversation_id,
                        "seq_lo": p.seq_lo,
                        "seq_hi": p.seq_hi,
                        "rows": p.rows,
                    }
                    for p in parts
                ]
            )

    async def parts(self, export_id: str, *, start: int, limit: int) -> list[ExportPart]:
        cursor = (
            self._parts.find({"export_id": export_id, "index": {"$gte": start}})
            .sort("index", ASCENDING)
            .limit(limit)
        )
        return [
            ExportPart(
                index=int(d["index"]),
                conversation_id=d["conversation_id"],
                seq_lo=int(d["seq_lo"]),
                seq_hi=int(d["seq_hi"]),
                rows=int(d.get("rows", 0)),
            )
            async for d in cursor
        ]

    async def drop_plan(self, export_id: str) -> None:
        await self._parts.delete_many({"export_id": export_id})

    # -- where the account has history ---------------------------------------------------

    async def conversation_ids_of(self, account_id: str, *, limit: int) -> list[str]:
        """Conversations naming the account: as a member, or through a
        member record (channels, and those it left)."""
        found: list[str] = []
        cursor = self._conversations.find({"member_ids": account_id}, {"_id": 1}).limit(limit)
        found += [doc["_id"] async for doc in cursor]
        records = self._members.find({"account_id": account_id}, {"conversation_id": 1})
        found += [doc["conversation_id"] async for doc in records.limit(limit)]
        return sorted(set(found))[:limit]

    # -- the worker's lease ----------------------------------------------------------------

    async def take_lease(self, owner: str, *, now: float, seconds: float) -> bool:
        until = datetime.fromtimestamp(now + seconds, UTC)
        try:
            doc = await self._control.find_one_and_update(
                {
                    "_id": _CONTROL,
                    "$or": [
                        {"lease_owner": owner},
                        {"lease_until": {"$lt": datetime.fromtimestamp(now, UTC)}},
                        {"lease_owner": {"$exists": False}},
                    ],
                },
                {"$set": {"lease_owner": owner, "lease_until": until}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            # Another owner's live lease: the filter missed, the upsert collided.
            return False
        return doc is not None and doc.get("lease_owner") == owner

    async def release_lease(self, owner: str) -> None:
        await self._control.update_one(
            {"_id": _CONTROL, "lease_owner": owner}, {"$unset": {"lease_owner": ""}}
        )


class ExportObjects:
    """Export objects (and their parts) under ``prefix`` in the deployment's bucket."""

    def __init__(self, settings: S3Settings, prefix: str, client: Any, presigner: Any, exit: Any):
        self._bucket = settings.bucket
        self.prefix = prefix
        self._client = client
        self._presigner = presigner
        self._exit = exit

    @classmethod
    async def open(
        cls, settings: S3Settings, *, prefix: str, timeout_seconds: float
    ) -> ExportObjects:
        exit = contextlib.AsyncExitStack()
        client = await open_client(settings, timeout_seconds=timeout_seconds, exit=exit)
        # URLs sign the host clients reach the store at.
        presigner = botocore.session.get_session().create_client(
            "s3",
            region_name=settings.region,
            endpoint_url=settings.public_endpoint_url or settings.endpoint_url or None,
            config=Config(**signing_options(settings)),
            **read_credentials(settings),
        )
        return cls(settings, prefix, client, presigner, exit)

    async def close(self) -> None:
        await self._exit.aclose()

    def export_key(self, export_id: str) -> str:
        return f"{self.prefix}{export_id}.jsonl"

    def part_key(self, export_id: str, index: int) -> str:
        return f"{self.prefix}parts/{export_id}/{index:08d}.jsonl"

    async def _call(self, operation: str, **params: Any) -> Any:
        try:
            return await getattr(self._client, operation)(Bucket=self._bucket, **params)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise MissingObject(params.get("Key", "")) from None
            raise _unavailable() from None
        except (TimeoutError, BotoCoreError, OSError):
            raise _unavailable() from None

    async def put(self, key: str, data: bytes) -> None:
        await self._call("put_object", Key=key, Body=data, ContentType="application/x-ndjson")

    async def get(self, key: str) -> bytes:
        reply = await self._call("get_object", Key=key)
        async with reply["Body"] as body:
            return bytes(await body.read())

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Key=key)

    async def delete_parts(self, export_id: str) -> None:
        prefix = f"{self.prefix}parts/{export_id}/"
        while True:
            listed = await self._call("list_objects_v2", Prefix=prefix, MaxKeys=1000)
            keys = [item["Key"] for item in listed.get("Contents", ())]
            if not keys:
                return
            for key in keys:
                await self.delete(key)

    def presign_get(self, key: str, *, expires_in: int) -> str:
        url: str = self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=expires_in
        )
        return url
