"""Sender-key distribution envelopes in MongoDB.

Collections:
- ``sender_key_envelopes``: ``_id`` envelope id, ``conversation_id``,
  ``sender_account_id``, ``sender_device_id``, ``recipient_account_id``,
  ``recipient_device_id``, ``ciphertext``, ``created_at``, ``expires_at``
  (TTL), ``claim`` (None while waiting, then the claiming call's token).
  Sparse index ``(recipient_device_id, created_at)``.
- ``sender_key_requests``: ``_id`` ``<sender device>:<request id>``,
  ``conversation_id``, ``stored``, ``expires_at`` (TTL): written after the
  request's envelopes, so a retry that finds it answers as the first call did.

Exactly once, retries included. An envelope's id is derived from (sender
device, request id, recipient device), so every attempt of one request writes
the same ids and a duplicate insert is ignored. A claimed envelope is not
deleted but stripped to a tombstone (``_id``, ``claim``, ``expires_at``): its
id stays taken until it expires with the request record, so an attempt that
was still in flight (or crashed before writing the request record) and inserts
after the recipient claimed cannot bring the envelope back. The tombstone has
neither ``recipient_device_id`` nor ``created_at``, so the sparse index, the
claims and the cap never see it.

Claims: read the oldest waiting ids, take them with one conditional
``update_many`` (``claim: None`` -> this call's token; per document, so two
claimers never both take one), read back what carries the token, strip it.
No ``find_one_and_delete``: SecantusDB runs it as a collection scan. A
process that dies between taking and answering loses those envelopes (handed
out at most once); they expire with the rest.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError

from parley_core.storage.mongo import Database, Document
from svc_keys.model import NewEnvelope, SenderKeyEnvelope

# An envelope nobody claims is dropped after this long (KeyService contract);
# request records and tombstones live as long, so retries stay safe as long
# as the envelopes exist.
ENVELOPE_LIFETIME = timedelta(days=30)
_DUPLICATE_KEY = 11000
# Rounds of a claim that lost candidates to concurrent claimers of the device.
_CLAIM_ROUNDS = 8
# Fields a claimed envelope loses (the tombstone keeps _id, claim, expires_at).
_STRIPPED = (
    "conversation_id",
    "sender_account_id",
    "sender_device_id",
    "recipient_account_id",
    "recipient_device_id",
    "ciphertext",
    "created_at",
)
_ENVELOPE_ID_NAMESPACE = uuid.UUID("5b0f3c62-8a52-4c1e-9d0e-6a1f6b1d2e31")


def envelope_id(sender_device_id: str, request_id: str, recipient_device_id: str) -> str:
    """The same for every attempt of one request (a UUIDv5)."""
    name = f"{sender_device_id}:{request_id.lower()}:{recipient_device_id}"
    return str(uuid.uuid5(_ENVELOPE_ID_NAMESPACE, name))


def _request_key(sender_device_id: str, request_id: str) -> str:
    return f"{sender_device_id}:{request_id.lower()}"


@dataclass(frozen=True, slots=True)
class StoredRequest:
    conversation_id: str
    stored: int


def _envelope(doc: Document) -> SenderKeyEnvelope:
    return SenderKeyEnvelope(
        envelope_id=doc["_id"],
        conversation_id=doc["conversation_id"],
        sender_account_id=doc["sender_account_id"],
        sender_device_id=doc["sender_device_id"],
        recipient_account_id=doc["recipient_account_id"],
        recipient_device_id=doc["recipient_device_id"],
        ciphertext=bytes(doc["ciphertext"]),
        created_at=doc["created_at"],
    )


class SenderKeyStore:
    def __init__(self, db: Database) -> None:
        self._envelopes = db["sender_key_envelopes"]
        self._requests = db["sender_key_requests"]

    async def ensure_indexes(self) -> None:
        await self._envelopes.create_index(
            [("recipient_device_id", ASCENDING), ("created_at", ASCENDING)], sparse=True
        )
        await self._envelopes.create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)
        await self._requests.create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)

    async def stored_request(self, sender_device_id: str, request_id: str) -> StoredRequest | None:
        doc = await self._requests.find_one({"_id": _request_key(sender_device_id, request_id)})
        if doc is None:
            return None
        return StoredRequest(conversation_id=doc["conversation_id"], stored=int(doc["stored"]))

    async def waiting_counts(self, device_ids: Sequence[str]) -> dict[str, int]:
        """Envelopes waiting for each device (devices with none are left out)."""
        cursor = await self._envelopes.aggregate(
            [
                {"$match": {"recipient_device_id": {"$in": list(device_ids)}}},
                {"$group": {"_id": "$recipient_device_id", "n": {"$sum": 1}}},
            ]
        )
        return {doc["_id"]: int(doc["n"]) async for doc in cursor}

    async def store(
        self,
        *,
        request_id: str,
        conversation_id: str,
        sender_account_id: str,
        sender_device_id: str,
        envelopes: Sequence[NewEnvelope],
        now: datetime,
    ) -> None:
        """Insert the envelopes (ids another attempt already wrote, or a
        recipient already claimed, are skipped), then the request record."""
        expires_at = now + ENVELOPE_LIFETIME
        docs = [
            {
                "_id": envelope_id(sender_device_id, request_id, e.recipient_device_id),
                "conversation_id": conversation_id,
                "sender_account_id": sender_account_id,
                "sender_device_id": sender_device_id,
                "recipient_account_id": e.recipient_account_id,
                "recipient_device_id": e.recipient_device_id,
                "ciphertext": e.ciphertext,
                "created_at": now,
                "expires_at": expires_at,
                "claim": None,
            }
            for e in envelopes
        ]
        try:
            await self._envelopes.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                raise
        # A concurrent attempt of the same request may have finished first.
        with contextlib.suppress(DuplicateKeyError):
            await self._requests.insert_one(
                {
                    "_id": _request_key(sender_device_id, request_id),
                    "conversation_id": conversation_id,
                    "stored": len(docs),
                    "expires_at": expires_at,
                }
            )

    async def claim(
        self, recipient_device_id: str, *, limit: int
    ) -> tuple[list[SenderKeyEnvelope], bool]:
        """Take up to ``limit`` of the oldest envelopes waiting for the device;
        whether more are waiting."""
        token = uuid.uuid4().hex
        tried: list[str] = []
        taken = 0
        for _ in range(_CLAIM_ROUNDS):
            if taken >= limit:
                break
            cursor = (
                self._envelopes.find(
                    {"recipient_device_id": recipient_device_id, "claim": None}, {"_id": 1}
                )
                .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
                .limit(limit - taken)
            )
            candidates = [doc["_id"] async for doc in cursor]
            if not candidates:
                break
            result = await self._envelopes.update_many(
                {"_id": {"$in": candidates}, "claim": None}, {"$set": {"claim": token}}
            )
            tried.extend(candidates)
            taken += result.modified_count
        mine: list[SenderKeyEnvelope] = []
        if taken:
            cursor = self._envelopes.find({"_id": {"$in": tried}, "claim": token})
            mine = sorted(
                [_envelope(doc) async for doc in cursor],
                key=lambda e: (e.created_at, e.envelope_id),
            )
            await self._envelopes.update_many(
                {"_id": {"$in": [e.envelope_id for e in mine]}, "claim": token},
                {"$unset": dict.fromkeys(_STRIPPED, "")},
            )
        more = (
            await self._envelopes.find_one(
                {"recipient_device_id": recipient_device_id, "claim": None}, {"_id": 1}
            )
            is not None
        )
        return mine, more

    async def delete_for_device(self, recipient_device_id: str) -> None:
        """Drop what waits for a removed device (its tombstones expire)."""
        await self._envelopes.delete_many({"recipient_device_id": recipient_device_id})

    async def delete_from_devices(self, sender_device_ids: Sequence[str]) -> None:
        """Drop what erased devices sent (and their request records)."""
        ids = list(sender_device_ids)
        await self._envelopes.delete_many({"sender_device_id": {"$in": ids}})
        for device_id in ids:
            # Request records are keyed "<sender device>:<request id>".
            await self._requests.delete_many(
                {"_id": {"$gte": f"{device_id}:", "$lt": f"{device_id};"}}
            )
