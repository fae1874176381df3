"""Contact lists in MongoDB.

Collections:
- ``presence_contacts``: one document per (owner, contact): ``owner``,
  ``contact``, ``added_at``; unique on (owner, contact); listed oldest first
  by (owner, added_at, contact).
- ``presence_contact_counts``: ``_id`` owner, ``n`` the length of the list.

The cap is exact under concurrency: an add raises the count and inserts the
contacts in one transaction, so two concurrent adds that would together pass
the cap conflict on the count document and one of them is retried against
the new count; a crash cannot leave the count out of step with the list.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from pymongo import ASCENDING, ReturnDocument, WriteConcern
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
)

from parley_core.storage.mongo import Database, Document, MongoClient
from svc_presence.model import Contact, ContactsBusy, OverCap

T = TypeVar("T")

DURABLE = WriteConcern(w="majority", j=True)
DUPLICATE_KEY = 11000
# Attempts of one transaction that keeps conflicting with concurrent ones.
TRANSACTION_ATTEMPTS = 12


def _retryable(exc: BaseException) -> bool:
    # A concurrent add of the same contact committed first.
    if isinstance(exc, DuplicateKeyError):
        return True
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors", [])
        if errors and all(e.get("code") == DUPLICATE_KEY for e in errors):
            return True
    if isinstance(exc, OperationFailure | ConnectionFailure):
        return exc.has_error_label("TransientTransactionError")
    return False


class ContactStore:
    def __init__(self, client: MongoClient, db: Database) -> None:
        self._client = client
        self._contacts = db["presence_contacts"]
        self._counts = db["presence_contact_counts"]

    async def ensure_indexes(self) -> None:
        await self._contacts.create_index(
            [("owner", ASCENDING), ("contact", ASCENDING)], unique=True
        )
        await self._contacts.create_index(
            [("owner", ASCENDING), ("added_at", ASCENDING), ("contact", ASCENDING)]
        )
        # "Who lists this account": the other direction of the privacy check.
        await self._contacts.create_index([("contact", ASCENDING), ("owner", ASCENDING)])

    async def _transaction(self, body: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        for attempt in range(TRANSACTION_ATTEMPTS):
            try:
                async with (
                    self._client.start_session() as session,
                    await session.start_transaction(write_concern=DURABLE),
                ):
                    return await body(session)
            except (OperationFailure, ConnectionFailure) as exc:
                if not _retryable(exc) or attempt == TRANSACTION_ATTEMPTS - 1:
                    if _retryable(exc):
                        raise ContactsBusy from exc
                    raise
            await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise ContactsBusy

    async def add(self, owner: str, contacts: Sequence[str], *, cap: int, now: datetime) -> int:
        """Add the contacts not yet listed; how many were new. Raises OverCap
        (adding nothing) when the list would exceed ``cap``."""

        async def body(session: AsyncClientSession) -> int:
            existing = {
                doc["contact"]
                async for doc in self._contacts.find(
                    {"owner": owner, "contact": {"$in": list(contacts)}},
                    {"contact": 1},
                    session=session,
                )
            }
            fresh = [c for c in contacts if c not in existing]
            if not fresh:
                return 0
            counted = await self._counts.find_one_and_update(
                {"_id": owner},
                {"$inc": {"n": len(fresh)}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            total = int(counted["n"]) if counted else len(fresh)
            if total > cap:
                # Raising aborts the transaction, the count's increment with it.
                raise OverCap(total - len(fresh), len(fresh))
            await self._contacts.insert_many(
                [{"owner": owner, "contact": c, "added_at": now} for c in fresh],
                ordered=True,
                session=session,
            )
            return len(fresh)

        return await self._transaction(body)

    async def remove(self, owner: str, contacts: Sequence[str]) -> int:
        """Remove those listed; how many were."""

        async def body(session: AsyncClientSession) -> int:
            result = await self._contacts.delete_many(
                {"owner": owner, "contact": {"$in": list(contacts)}}, session=session
            )
            if result.deleted_count:
                await self._counts.update_one(
                    {"_id": owner}, {"$inc": {"n": -result.deleted_count}}, session=session
                )
            return int(result.deleted_count)

        return await self._transaction(body)

    async def count(self, owner: str) -> int:
        doc = await self._counts.find_one({"_id": owner})
        return int(doc["n"]) if doc else 0

    async def page(
        self, owner: str, *, after: tuple[datetime, str] | None, limit: int
    ) -> list[Contact]:
        """Up to ``limit`` contacts, oldest first, after the given (added_at, contact)."""
        query: Document = {"owner": owner}
        if after is not None:
            at, contact = after
            query["$or"] = [
                {"added_at": {"$gt": at}},
                {"added_at": at, "contact": {"$gt": contact}},
            ]
        cursor = (
            self._contacts.find(query, {"contact": 1, "added_at": 1})
            .sort([("added_at", ASCENDING), ("contact", ASCENDING)])
            .limit(limit)
        )
        return [Contact(doc["contact"], doc["added_at"]) async for doc in cursor]

    async def listed(self, owners: Sequence[str], contacts: Sequence[str]) -> set[tuple[str, str]]:
        """The (owner, contact) pairs among owners x contacts that exist. One
        side is expected to hold a single account (a viewer or a target)."""
        if not owners or not contacts:
            return set()
        query: dict[str, Any] = {
            "owner": owners[0] if len(owners) == 1 else {"$in": list(owners)},
            "contact": contacts[0] if len(contacts) == 1 else {"$in": list(contacts)},
        }
        return {
            (doc["owner"], doc["contact"])
            async for doc in self._contacts.find(query, {"owner": 1, "contact": 1, "_id": 0})
        }

    async def owners_listing(self, contact: str, *, limit: int) -> list[str]:
        """Accounts whose lists hold ``contact`` (a scan: erasures only)."""
        cursor = self._contacts.find({"contact": contact}, {"owner": 1}).limit(limit)
        return list(dict.fromkeys([doc["owner"] async for doc in cursor]))

    async def delete_list(self, owner: str) -> None:
        """The owner's whole list and its count (the owner is erased)."""
        await self._contacts.delete_many({"owner": owner})
        await self._counts.delete_one({"_id": owner})
