"""Reads each region's stored state for the history checker
(tests/region_checker.py): from its MongoDB (database ``parley``) the feed
entries, heads and member documents of the history's conversations; and,
through tests/store_scan.py, every MongoDB document, Redis key and value and
S3 object of the region searched for what residency says must not be there
(the ids and ciphertexts of conversations it should not hold)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo import AsyncMongoClient

from parley_dev.regions import RegionsStack
from tests.region_checker import Entry, History, RegionSnapshot, body_hash
from tests.store_scan import scan_all

DB_NAME = "parley"


def entry_from_doc(doc: Mapping[str, Any]) -> Entry:
    body = bytes(doc.get("body") or b"")
    seq = doc.get("seq")
    return Entry(
        id=str(doc["_id"]),
        conversation_id=str(doc["conversation_id"]),
        kind=str(doc.get("kind", "message")),
        version=int(doc.get("version", 0)),
        state_version=int(doc.get("state_version", doc.get("version", 0))),
        sender_id=str(doc.get("sender_id", "")),
        request_id=str(doc.get("request_id") or ""),
        seq=None if seq is None else int(seq),
        body_hash=body_hash(body) if body else None,
        deleted=bool(doc.get("deleted")),
        target=str(doc.get("target") or ""),
    )


async def read_region(
    regions: RegionsStack, region: str, history: History, *, scan: bool = True
) -> RegionSnapshot:
    stack = regions.region(region)
    snapshot = RegionSnapshot(region=region)
    ids = sorted(history.plans)
    client: AsyncMongoClient[Any] = AsyncMongoClient(stack.mongo_uri)
    try:
        db = client[DB_NAME]
        async for doc in db["messages"].find({"conversation_id": {"$in": ids}}):
            entry = entry_from_doc(doc)
            snapshot.entries.setdefault(entry.conversation_id, []).append(entry)
        async for doc in db["conversations"].find({"_id": {"$in": ids}}, {"_id": 1}):
            snapshot.heads.add(str(doc["_id"]))
        async for doc in db["members"].find(
            {"conversation_id": {"$in": ids}}, {"conversation_id": 1}
        ):
            cid = str(doc["conversation_id"])
            snapshot.member_docs[cid] = snapshot.member_docs.get(cid, 0) + 1
    finally:
        await client.close()
    needles = history.needles(region)
    if scan and needles:
        hits, _ = await scan_all(stack, list(needles))
        for hit in hits:
            snapshot.found.setdefault(needles[hit.needle], set()).add(f"{hit.store}:{hit.where}")
    return snapshot


async def read_regions(
    regions: RegionsStack, history: History, *, scan: bool = True
) -> dict[str, RegionSnapshot]:
    """Every region's snapshot; ``scan=False`` skips the (slower) residency
    scan of whole stores, for polling until replication caught up."""
    return {name: await read_region(regions, name, history, scan=scan) for name in regions.names}
