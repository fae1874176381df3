"""Scans every store of a local stack for byte strings: every MongoDB
collection of every database (listed, not named), every Redis key and value
(SCAN), every S3 object of the bucket (listed and read). Used by the erasure
tests, with the same scan as a positive control before the erasure."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import bson
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

from parley_dev.seaweed import s3_client
from parley_dev.stack import LocalStack

SYSTEM_DATABASES = frozenset({"admin", "local", "config"})
MAX_DOCUMENTS = 200_000
MAX_KEYS = 200_000


@dataclass(frozen=True, slots=True)
class Hit:
    store: str  # mongo, redis, s3
    where: str  # db.collection, key, object key
    needle: bytes
    context: str  # the document id, hash field, ...


def _found(blob: bytes, needles: Iterable[bytes]) -> list[bytes]:
    return [n for n in needles if n in blob]


async def scan_mongo(stack: LocalStack, needles: list[bytes]) -> list[Hit]:
    client: AsyncMongoClient[Any] = AsyncMongoClient(stack.mongo_uri)
    hits: list[Hit] = []
    seen = 0
    try:
        for db_name in await client.list_database_names():
            if db_name in SYSTEM_DATABASES:
                continue
            db = client[db_name]
            for collection in await db.list_collection_names():
                async for doc in db[collection].find({}):
                    seen += 1
                    assert seen < MAX_DOCUMENTS, "too many documents to scan"
                    for needle in _found(bson.encode(doc), needles):
                        hits.append(
                            Hit("mongo", f"{db_name}.{collection}", needle, str(doc.get("_id")))
                        )
    finally:
        await client.close()
    return hits


async def _redis_value(client: aioredis.Redis, key: bytes) -> bytes:
    kind = (await client.type(key)).decode()
    if kind == "string":
        return bytes(await client.get(key) or b"")
    if kind == "hash":
        pairs = await client.hgetall(key)
        return b"\x00".join(k + b"=" + v for k, v in pairs.items())
    if kind == "zset":
        return b"\x00".join(await client.zrange(key, 0, -1))
    if kind == "set":
        return b"\x00".join(await client.smembers(key))
    if kind == "list":
        return b"\x00".join(await client.lrange(key, 0, -1))
    if kind == "stream":
        entries = await client.xrange(key)
        return b"\x00".join(k + b"=" + v for _, fields in entries for k, v in fields.items())
    return b""


async def scan_redis(stack: LocalStack, needles: list[bytes]) -> list[Hit]:
    client = aioredis.Redis.from_url(stack.redis_url)
    hits: list[Hit] = []
    try:
        count = 0
        async for key in client.scan_iter(count=1000):
            count += 1
            assert count < MAX_KEYS, "too many keys to scan"
            blob = key + b"\x00" + await _redis_value(client, key)
            for needle in _found(blob, needles):
                hits.append(Hit("redis", key.decode(errors="replace"), needle, ""))
    finally:
        await client.aclose()
    return hits


def _scan_s3_sync(stack: LocalStack, needles: list[bytes]) -> tuple[list[Hit], list[str]]:
    client: Any = s3_client(stack.s3_endpoint, stack.s3_keys, timeout=10.0)
    hits: list[Hit] = []
    keys: list[str] = []
    token: str | None = None
    for _ in range(10_000):
        params: dict[str, Any] = {"Bucket": stack.s3_bucket}
        if token:
            params["ContinuationToken"] = token
        page = client.list_objects_v2(**params)
        for item in page.get("Contents", ()):
            key = item["Key"]
            keys.append(key)
            body = client.get_object(Bucket=stack.s3_bucket, Key=key)["Body"].read()
            for needle in _found(key.encode() + b"\x00" + body, needles):
                hits.append(Hit("s3", key, needle, ""))
        if not page.get("IsTruncated"):
            break
        token = page.get("NextContinuationToken")
    return hits, keys


async def scan_s3(stack: LocalStack, needles: list[bytes]) -> tuple[list[Hit], list[str]]:
    """Hits, and every object key of the bucket."""
    return await asyncio.to_thread(_scan_s3_sync, stack, needles)


async def scan_all(stack: LocalStack, needles: list[bytes]) -> tuple[list[Hit], list[str]]:
    mongo = await scan_mongo(stack, needles)
    cache = await scan_redis(stack, needles)
    objects, keys = await scan_s3(stack, needles)
    return [*mongo, *cache, *objects], keys
