"""The history archive's stores: Parquet objects on S3, and in MongoDB the
manifest that maps chunks to them, each conversation's cold head, and the
archiver's shared state (pause switch, lease, last pass).

``archive_manifest``: one document per (conversation, week, first version)
chunk: object key, row group, seq/version/id ranges, row count, the object's
SHA-256, the media ids its rows name. ``archive_heads``: per conversation the
highest version and seq in the archive; readers split hot from cold there,
and the archiver advances it only after the manifest is recorded and before
it deletes anything from the log. ``archive_control``: one document.

Objects are immutable and content-addressed (the key ends in the SHA-256 of
the bytes), so a read cache never serves a stale object and a rerun after a
crash writes the same key again.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

from parley_core.config import S3Settings
from parley_core.errors import Reason, Unavailable
from parley_core.storage.mongo import Database, Document
from parley_core.storage.s3 import ARCHIVE_CLASSES, open_client, parse_restore
from svc_message.model.archive import ArchiveState, ColdHead, ManifestEntry, Tier
from svc_message.storage.archive_lifecycle import Rule, merged_rules

STORE_DOWN = "the object store (S3) holding archived history cannot be reached"
_CONTROL = "archiver"
# Objects kept in memory per process: archived chunks are read in runs
# (paging through a week), and objects never change.
_CACHE_OBJECTS = 16


class MissingObject(Exception):
    """The object is not in the bucket (a rewrite replaced and deleted it)."""


class CorruptObject(Exception):
    """An archive object whose bytes do not hash to what the manifest says."""


class ArchivedObject(Exception):
    """The object is in the glacier class and has no readable restored copy."""


class TransitionsUnsupported(Exception):
    """The store refuses lifecycle transition rules (SeaweedFS answers 501)."""


@dataclass(frozen=True, slots=True)
class ObjectClass:
    """What a HEAD says of an object's tier: its storage class, whether a
    restore is running, and until when a restored copy is readable."""

    storage_class: str
    restoring: bool = False
    restored_until: float | None = None

    @property
    def archived(self) -> bool:
        return self.storage_class in ARCHIVE_CLASSES

    def readable(self, now: float) -> bool:
        return not self.archived or (self.restored_until or 0.0) > now


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _unavailable() -> Unavailable:
    return Unavailable(STORE_DOWN, reason=Reason.DEPENDENCY_UNAVAILABLE, retry_after_seconds=2.0)


class ArchiveObjects:
    """Archive objects under ``prefix`` in the deployment's bucket."""

    def __init__(self, settings: S3Settings, prefix: str, client: Any, exit: Any) -> None:
        self._bucket = settings.bucket
        self.prefix = prefix
        self._client = client
        self._exit = exit
        self._cache: OrderedDict[str, bytes] = OrderedDict()

    @classmethod
    async def open(
        cls, settings: S3Settings, *, prefix: str, timeout_seconds: float
    ) -> ArchiveObjects:
        exit = contextlib.AsyncExitStack()
        client = await open_client(settings, timeout_seconds=timeout_seconds, exit=exit)
        return cls(settings, prefix, client, exit)

    async def close(self) -> None:
        await self._exit.aclose()

    def key_for(self, first_chunk_id: str, sha256: str) -> str:
        return f"{self.prefix}{first_chunk_id}/{sha256}.parquet"

    async def _call(self, operation: str, **params: Any) -> Any:
        try:
            return await getattr(self._client, operation)(Bucket=self._bucket, **params)
        except ClientError as exc:
            code = _code(exc)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise MissingObject(params.get("Key", "")) from None
            if code == "InvalidObjectState":
                # A 403 for the object's class, not for our credentials.
                raise ArchivedObject(params.get("Key", "")) from None
            raise _unavailable() from None
        except (TimeoutError, BotoCoreError, OSError):
            raise _unavailable() from None

    async def put(self, key: str, data: bytes) -> None:
        await self._call("put_object", Key=key, Body=data)

    async def get(self, key: str, *, sha256: str = "", cached: bool = True) -> bytes:
        """The object's bytes; with ``sha256``, refused (CorruptObject) unless
        they hash to it."""
        if cached and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        reply = await self._call("get_object", Key=key)
        async with reply["Body"] as body:
            data = bytes(await body.read())
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise CorruptObject(key)
        if cached:
            self._cache[key] = data
            while len(self._cache) > _CACHE_OBJECTS:
                self._cache.popitem(last=False)
        return data

    async def head(self, key: str) -> ObjectClass:
        reply = await self._call("head_object", Key=key)
        restoring, until = parse_restore(reply.get("Restore"))
        return ObjectClass(str(reply.get("StorageClass") or "STANDARD"), restoring, until)

    async def freeze(self, key: str, storage_class: str) -> None:
        """Copy the object onto itself in ``storage_class`` (stores without
        lifecycle transitions). Already archived: nothing to do."""
        with contextlib.suppress(ArchivedObject):
            await self._call(
                "copy_object",
                Key=key,
                CopySource={"Bucket": self._bucket, "Key": key},
                StorageClass=storage_class,
                MetadataDirective="COPY",
            )

    async def restore(self, key: str, *, days: int, tier: str) -> None:
        """Ask for a readable copy of an archived object for ``days``; one
        already running or an object not archived is fine."""
        try:
            await self._client.restore_object(
                Bucket=self._bucket,
                Key=key,
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
            )
        except ClientError as exc:
            code = _code(exc)
            if code in ("RestoreAlreadyInProgress", "InvalidObjectState") or _status(exc) == 409:
                return
            if code in ("NoSuchKey", "404"):
                raise MissingObject(key) from None
            raise _unavailable() from None
        except (TimeoutError, BotoCoreError, OSError):
            raise _unavailable() from None

    async def install_lifecycle(self, rule: Rule | None) -> bool:
        """Put our rule beside the bucket's others; whether anything changed.
        TransitionsUnsupported when the store refuses transitions (501)."""
        try:
            reply = await self._client.get_bucket_lifecycle_configuration(Bucket=self._bucket)
            existing = list(reply.get("Rules", ()))
        except ClientError as exc:
            if _code(exc) != "NoSuchLifecycleConfiguration":
                raise _unavailable() from None
            existing = []
        except (TimeoutError, BotoCoreError, OSError):
            raise _unavailable() from None
        rules = merged_rules(existing, rule)
        if rules == existing:
            return False
        try:
            if rules:
                await self._client.put_bucket_lifecycle_configuration(
                    Bucket=self._bucket, LifecycleConfiguration={"Rules": rules}
                )
            else:
                await self._client.delete_bucket_lifecycle(Bucket=self._bucket)
        except ClientError as exc:
            if _status(exc) == 501:
                raise TransitionsUnsupported(_code(exc) or "501") from None
            raise _unavailable() from None
        except (TimeoutError, BotoCoreError, OSError):
            raise _unavailable() from None
        return True

    async def lifecycle_rules(self) -> list[Rule]:
        try:
            reply = await self._client.get_bucket_lifecycle_configuration(Bucket=self._bucket)
        except ClientError as exc:
            if _code(exc) == "NoSuchLifecycleConfiguration":
                return []
            raise
        return list(reply.get("Rules", ()))

    async def delete(self, key: str) -> None:
        self._cache.pop(key, None)
        await self._call("delete_object", Key=key)

    async def keys(self, *, limit: int = 1_000_000) -> dict[str, tuple[int, float]]:
        """Every object under the prefix (at most ``limit``): its size and
        when it was last written (Unix seconds)."""
        found: dict[str, tuple[int, float]] = {}
        token: str | None = None
        while len(found) < limit:
            params: dict[str, Any] = {"Prefix": self.prefix, "MaxKeys": 1000}
            if token:
                params["ContinuationToken"] = token
            reply = await self._call("list_objects_v2", **params)
            for item in reply.get("Contents", ()):
                found[item["Key"]] = (int(item["Size"]), item["LastModified"].timestamp())
            token = reply.get("NextContinuationToken")
            if not token:
                break
        return found


def _entry(doc: Mapping[str, Any]) -> ManifestEntry:
    return ManifestEntry(
        chunk_id=doc["_id"],
        conversation_id=doc["conversation_id"],
        week=doc["week"],
        object_key=doc["object_key"],
        row_group=int(doc["row_group"]),
        rows=int(doc["rows"]),
        seq_lo=int(doc["seq_lo"]),
        seq_hi=int(doc["seq_hi"]),
        version_lo=int(doc["version_lo"]),
        version_hi=int(doc["version_hi"]),
        id_lo=doc["id_lo"],
        id_hi=doc["id_hi"],
        sha256=doc["sha256"],
        media_ids=tuple(doc.get("media") or ()),
        tier=Tier(doc.get("tier", Tier.COLD)),
    )


def _doc(entry: ManifestEntry, object_bytes: int) -> Document:
    doc: Document = {
        "conversation_id": entry.conversation_id,
        "week": entry.week,
        "object_key": entry.object_key,
        "object_bytes": object_bytes,
        "row_group": entry.row_group,
        "rows": entry.rows,
        "seq_lo": entry.seq_lo,
        "seq_hi": entry.seq_hi,
        "version_lo": entry.version_lo,
        "version_hi": entry.version_hi,
        "id_lo": entry.id_lo,
        "id_hi": entry.id_hi,
        "sha256": entry.sha256,
        "tier": entry.tier.value,
    }
    if entry.media_ids:
        doc["media"] = list(entry.media_ids)
    return doc


def request_key(conversation_id: str, sender_id: str, request_id: str) -> str:
    """The id of an archived entry's request in ``archive_requests``: a hash,
    so the collection names no account (erasure scans every store for ids)."""
    joined = "\x1f".join((conversation_id, sender_id, request_id))
    return hashlib.sha256(joined.encode()).hexdigest()


class ArchiveLedger:
    def __init__(self, db: Database) -> None:
        self._manifest = db["archive_manifest"]
        self._heads = db["archive_heads"]
        self._control = db["archive_control"]
        self._requests = db["archive_requests"]

    async def ensure_indexes(self) -> None:
        await self._manifest.create_index([("conversation_id", ASCENDING), ("seq_hi", ASCENDING)])
        await self._manifest.create_index(
            [("conversation_id", ASCENDING), ("version_hi", ASCENDING)]
        )
        await self._manifest.create_index([("week", ASCENDING), ("id_lo", ASCENDING)])
        await self._manifest.create_index([("object_key", ASCENDING)])
        await self._manifest.create_index([("media", ASCENDING)], sparse=True)
        await self._requests.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0)

    # -- manifest ------------------------------------------------------------

    async def record(self, entries: Sequence[ManifestEntry], object_bytes: int) -> None:
        """Idempotent: a rerun records the same chunk ids with the same values."""
        for entry in entries:
            await self._manifest.replace_one(
                {"_id": entry.chunk_id}, _doc(entry, object_bytes), upsert=True
            )

    async def repoint(self, entry: ManifestEntry, *, was: str, object_bytes: int) -> bool:
        """A rewritten chunk now lives in ``entry.object_key``; only if it still
        lived in ``was`` (a concurrent rewrite wins otherwise)."""
        reply = await self._manifest.replace_one(
            {"_id": entry.chunk_id, "object_key": was}, _doc(entry, object_bytes)
        )
        return bool(reply.matched_count)

    async def set_tier(self, object_key: str, tier: Tier) -> None:
        """Every chunk of the object is in ``tier`` (the object moves whole)."""
        await self._manifest.update_many(
            {"object_key": object_key, "tier": {"$ne": tier.value}}, {"$set": {"tier": tier.value}}
        )

    async def due_for_glacier(
        self, before_week: str, *, limit: int, checked_before: float | None = None
    ) -> list[str]:
        """Keys of objects not yet in glacier whose chunks' weeks are all
        before ``before_week`` (an object moves whole: its newest week
        decides), at most ``limit``, oldest first; with ``checked_before``,
        only those not checked since."""
        checked: Document = (
            {}
            if checked_before is None
            else {"$or": [{"checked": None}, {"checked": {"$lt": checked_before}}]}
        )
        cursor = await self._manifest.aggregate(
            [
                {"$match": {"tier": {"$ne": Tier.GLACIER.value}}},
                {
                    "$group": {
                        "_id": "$object_key",
                        "newest": {"$max": "$week"},
                        "checked": {"$max": "$tier_checked_at"},
                    }
                },
                {"$match": {"newest": {"$lt": before_week}, **checked}},
                {"$sort": {"newest": 1, "_id": 1}},
                {"$limit": limit},
            ]
        )
        return [str(doc["_id"]) async for doc in cursor]

    async def checked(self, object_key: str, now: float) -> None:
        """The store was asked about the object's class at ``now``."""
        await self._manifest.update_many(
            {"object_key": object_key}, {"$set": {"tier_checked_at": now}}
        )

    async def tier_totals(self) -> dict[Tier, tuple[int, int, int]]:
        """Per tier: (rows, objects, bytes)."""
        rows: dict[Tier, int] = {}
        sizes: dict[Tier, dict[str, int]] = {}
        async for doc in self._manifest.find(
            {}, {"rows": 1, "object_key": 1, "object_bytes": 1, "tier": 1}
        ):
            tier = Tier(doc.get("tier", Tier.COLD))
            rows[tier] = rows.get(tier, 0) + int(doc["rows"])
            sizes.setdefault(tier, {})[doc["object_key"]] = int(doc.get("object_bytes", 0))
        return {
            tier: (rows.get(tier, 0), len(sizes.get(tier, {})), sum(sizes.get(tier, {}).values()))
            for tier in Tier
        }

    async def entry(self, chunk_id: str) -> ManifestEntry | None:
        doc = await self._manifest.find_one({"_id": chunk_id})
        return None if doc is None else _entry(doc)

    async def references(self, object_key: str) -> int:
        return int(await self._manifest.count_documents({"object_key": object_key}, limit=1))

    async def by_seq(self, conversation_id: str, lo: int, hi: int) -> list[ManifestEntry]:
        """Chunks holding history items with seq in [lo, hi], in seq order."""
        cursor = self._manifest.find(
            {"conversation_id": conversation_id, "seq_hi": {"$gte": max(lo, 1)}}
        ).sort("seq_hi", ASCENDING)
        found: list[ManifestEntry] = []
        async for doc in cursor:
            entry = _entry(doc)
            if entry.seq_lo > hi:
                break
            if entry.seq_hi:
                found.append(entry)
        return found

    async def by_version(self, conversation_id: str, lo: int, hi: int) -> list[ManifestEntry]:
        cursor = self._manifest.find(
            {"conversation_id": conversation_id, "version_hi": {"$gte": lo}}
        ).sort("version_hi", ASCENDING)
        found: list[ManifestEntry] = []
        async for doc in cursor:
            entry = _entry(doc)
            if entry.version_lo > hi:
                break
            found.append(entry)
        return found

    async def by_message_id(self, weeks: Sequence[str], message_id: str) -> list[ManifestEntry]:
        cursor = self._manifest.find({"week": {"$in": list(weeks)}, "id_lo": {"$lte": message_id}})
        return [_entry(doc) async for doc in cursor if doc["id_hi"] >= message_id]

    async def of_conversations(
        self, conversation_ids: Sequence[str] | None, *, limit: int
    ) -> list[ManifestEntry]:
        query: Document = (
            {} if conversation_ids is None else {"conversation_id": {"$in": list(conversation_ids)}}
        )
        cursor = self._manifest.find(query).sort("_id", ASCENDING).limit(limit)
        return [_entry(doc) async for doc in cursor]

    async def in_objects(self, object_keys: Sequence[str]) -> list[ManifestEntry]:
        cursor = self._manifest.find({"object_key": {"$in": list(object_keys)}}).sort(
            "_id", ASCENDING
        )
        return [_entry(doc) async for doc in cursor]

    async def with_media(self, media_ids: Sequence[str]) -> list[ManifestEntry]:
        cursor = self._manifest.find({"media": {"$in": list(media_ids)}})
        return [_entry(doc) async for doc in cursor]

    async def totals(self) -> tuple[int, int, int]:
        """(rows, objects, bytes) in the archive."""
        rows = 0
        sizes: dict[str, int] = {}
        async for doc in self._manifest.find({}, {"rows": 1, "object_key": 1, "object_bytes": 1}):
            rows += int(doc["rows"])
            sizes[doc["object_key"]] = int(doc.get("object_bytes", 0))
        return rows, len(sizes), sum(sizes.values())

    async def object_keys(self) -> set[str]:
        return {doc["object_key"] async for doc in self._manifest.find({}, {"object_key": 1})}

    # -- cold heads ----------------------------------------------------------

    # -- request ids of archived entries -------------------------------------

    async def remember_requests(self, versions: Mapping[str, int], *, expire_at: datetime) -> None:
        """``request_key`` -> version of the archived entries that had a
        request id, kept until ``expire_at`` so a late retry is recognised.
        Idempotent (a rerun after a crash writes the same documents)."""
        if not versions:
            return
        # Plain inserts (a batch is one command; upserts cost a lookup each):
        # a rerun's duplicates name the same versions and are skipped.
        try:
            await self._requests.insert_many(
                [
                    {"_id": key, "version": version, "expire_at": expire_at}
                    for key, version in versions.items()
                ],
                ordered=False,
            )
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if exc.details.get("writeConcernErrors") or any(e.get("code") != 11000 for e in errors):
                raise

    async def archived_requests(self, keys: Sequence[str]) -> dict[str, int]:
        """The versions of the archived entries these request keys name."""
        if not keys:
            return {}
        cursor = self._requests.find({"_id": {"$in": list(keys)}}, {"version": 1})
        return {doc["_id"]: int(doc["version"]) async for doc in cursor}

    async def head(self, conversation_id: str) -> ColdHead:
        doc = await self._heads.find_one({"_id": conversation_id})
        if doc is None:
            return ColdHead()
        return ColdHead(version=int(doc["version"]), seq=int(doc["seq"]))

    async def advance(self, conversation_id: str, head: ColdHead) -> None:
        await self._heads.update_one(
            {"_id": conversation_id},
            {"$max": {"version": head.version, "seq": head.seq}},
            upsert=True,
        )

    # -- shared state --------------------------------------------------------

    async def state(self) -> ArchiveState:
        doc = await self._control.find_one({"_id": _CONTROL}) or {}
        return ArchiveState(
            paused=bool(doc.get("paused")),
            last_pass_at=float(doc.get("last_pass_at", 0.0)),
            lag_seconds=float(doc.get("lag_seconds", 0.0)),
            moved_total=int(doc.get("moved_total", 0)),
            hot_entries=int(doc["hot_entries"]) if "hot_entries" in doc else None,
            hot_bytes=int(doc["hot_bytes"]) if "hot_bytes" in doc else None,
        )

    async def set_paused(self, paused: bool) -> None:
        await self._control.update_one({"_id": _CONTROL}, {"$set": {"paused": paused}}, upsert=True)

    async def take_lease(self, owner: str, *, now: float, seconds: float) -> bool:
        """The archiver's lease: free, expired, or already ``owner``'s."""
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
            # The filter missed a live lease of another owner and the upsert
            # then collided with its document.
            return False
        return doc is not None and doc.get("lease_owner") == owner

    async def release_lease(self, owner: str) -> None:
        await self._control.update_one(
            {"_id": _CONTROL, "lease_owner": owner}, {"$unset": {"lease_owner": ""}}
        )

    async def finish_pass(
        self, *, now: float, lag_seconds: float, moved: int, hot_entries: int, hot_bytes: int
    ) -> None:
        await self._control.update_one(
            {"_id": _CONTROL},
            {
                "$set": {
                    "last_pass_at": now,
                    "lag_seconds": lag_seconds,
                    "hot_entries": hot_entries,
                    "hot_bytes": hot_bytes,
                },
                "$inc": {"moved_total": moved},
            },
            upsert=True,
        )
