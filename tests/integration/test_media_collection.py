"""Garbage collection and session expiry of svc_media at the domain and storage
level, with the clock injected: real SecantusDB and SeaweedFS (the stack's
backends only), the domain objects built here, svc_message's answers given by
an in-process stand-in.

The race that matters: the last message naming a media is deleted while a new
forward names it. Whatever the interleaving, either the forward's reservation
wins (the media stays, the collection backs off) or the collection wins (the
reservation is refused MEDIA_NOT_FOUND and the client uploads again); a
referenced object is never removed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley_core.errors import NotFound
from parley_core.limits import InProcessBuckets, Limiter, rates_from_settings
from parley_core.storage.mongo import DURABLE
from parley_dev.stack import LocalStack
from svc_media.app import LIMITS
from svc_media.domain.access import AccessCheck
from svc_media.domain.collector import Collector, Sweeper
from svc_media.domain.policy import MediaPolicy
from svc_media.domain.references import ReferenceHandler
from svc_media.domain.uploads import UploadHandler
from svc_media.model import ContentClass, MediaRecord, MediaState, MediaStats, digest
from svc_media.storage.admin import QuarantineStore
from svc_media.storage.media import MediaStore
from svc_media.storage.objects import S3Objects
from svc_media.storage.sessions import UploadStore
from svc_media.storage.usage import UsageStore
from tests.users import rid

pytestmark = pytest.mark.slow

SESSION_SECONDS = 3600.0
GRACE = 86400.0
MAX_BACKOFF = 30 * 86400.0
T0 = 1_900_000_000.0


class Messages:
    """svc_message's counts, with a gate to hold a count mid-flight."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.readable: dict[str, set[str]] = {}
        self.gate: asyncio.Event | None = None
        self.counting = asyncio.Event()

    async def readable_ids(self, account_id: str, media_ids: Sequence[str]) -> set[str]:
        return set(media_ids) & self.readable.get(account_id, set())

    async def references(self, media_ids: Sequence[str]) -> Mapping[str, int]:
        answer = {m: self.counts.get(m, 0) for m in media_ids}
        self.counting.set()
        if self.gate is not None:
            await self.gate.wait()
        return answer


class Peer:
    def __init__(self, messages: Messages) -> None:
        self._m = messages

    async def readable(self, account_id: str, media_ids: Sequence[str]) -> set[str]:
        return await self._m.readable_ids(account_id, media_ids)

    async def references(self, media_ids: Sequence[str]) -> Mapping[str, int]:
        return await self._m.references(media_ids)


@dataclass
class World:
    stack: LocalStack
    db: Any
    media: MediaStore
    usage: UsageStore
    objects: S3Objects
    messages: Messages
    uploads: UploadHandler
    references: ReferenceHandler
    collector: Collector
    sweeper: Sweeper
    stats: MediaStats


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    stack = LocalStack.with_free_ports(root=Path(tmp_path_factory.mktemp("media_gc")))
    try:
        await stack.start_backends()
        yield stack
    finally:
        await stack.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def world(backends: LocalStack) -> AsyncIterator[World]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        backends.mongo_uri, retryWrites=False, tz_aware=True
    )
    # A database per test: no test sees another's media.
    db = client.get_database(f"gc_{rid()[:8]}", write_concern=DURABLE)
    objects = await S3Objects.open(backends.settings.s3, timeout_seconds=5)
    stats = MediaStats()
    settings = backends.settings.media.model_copy(
        update={
            "upload_session_seconds": int(SESSION_SECONDS),
            "gc_grace_seconds": int(GRACE),
            "gc_max_backoff_seconds": int(MAX_BACKOFF),
        }
    )
    policy = MediaPolicy.from_settings(settings)
    sessions, media, usage = UploadStore(db), MediaStore(db), UsageStore(db)
    for store in (sessions, media):
        await store.ensure_indexes()
    quarantine = QuarantineStore(db)
    messages = Messages()
    peer = Peer(messages)
    limiter = Limiter(
        InProcessBuckets(),
        rates_from_settings(backends.settings.limits),
        names=LIMITS,
        enabled=False,
    )
    uploads = UploadHandler(
        uploads=sessions,
        media=media,
        usage=usage,
        quarantine=quarantine,
        objects=objects,
        access=AccessCheck(peer),
        limits=limiter,
        policy=policy,
        stats=stats,
    )
    references = ReferenceHandler(media=media, quarantine=quarantine, policy=policy, stats=stats)
    collector = Collector(
        media=media, usage=usage, objects=objects, messages=peer, policy=policy, stats=stats
    )
    sweeper = Sweeper(uploads, collector, stats, interval_seconds=1, batch=100)
    yield World(
        backends,
        db,
        media,
        usage,
        objects,
        messages,
        uploads,
        references,
        collector,
        sweeper,
        stats,
    )
    await objects.close()
    await client.close()


async def http(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> int:
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.request(method, url, content=body, headers=headers or {})
        return reply.status_code


async def stored_media(
    world: World, account: str = "", *, size: int = 4096, now: float = T0
) -> MediaRecord:
    """A completed single-PUT upload, as a client makes it."""
    account = account or rid()
    data = os.urandom(size)
    outcome = await world.uploads.create(
        account_id=account,
        request_id=rid(),
        size=size,
        sha256=digest(data),
        content_class=ContentClass.DOCUMENT,
        part_size=0,
        part_sha256s=[],
        now=now,
    )
    assert outcome.put is not None and outcome.session is not None
    assert await http("PUT", outcome.put.url, data, outcome.put.headers) == 200
    return await world.uploads.complete(
        account_id=account, upload_id=outcome.session.upload_id, now=now
    )


async def exists(world: World, media: MediaRecord) -> bool:
    return await world.objects.head(media.object_key) is not None


async def forward(world: World, media: MediaRecord, *, now: float) -> bool:
    try:
        await world.references.reserve(
            account_id=rid(),
            media_ids=[media.media_id],
            readable_media_ids=[media.media_id],
            now=now,
        )
    except NotFound:
        return False
    return True


# -- the race -------------------------------------------------------------------------


async def test_a_forward_reserved_while_the_collection_counts_wins(world: World) -> None:
    media = await stored_media(world)
    due = media.next_check_at + 1
    world.messages.gate = asyncio.Event()
    collecting = asyncio.create_task(world.collector.collect(now=due, limit=10))
    await asyncio.wait_for(world.messages.counting.wait(), 10)
    # The count said 0 (the forward's send has not committed); the forward
    # reserves its reference now, before the collection decides.
    assert await forward(world, media, now=due)
    world.messages.gate.set()
    assert await collecting == 0
    kept = await world.media.get(media.media_id)
    assert kept is not None and kept.state == MediaState.READY
    assert kept.next_check_at == pytest.approx(due + GRACE, abs=0.01)
    assert await exists(world, media)


async def test_a_forward_after_the_collection_decided_is_refused(world: World) -> None:
    media = await stored_media(world)
    due = media.next_check_at + 1
    assert await world.collector.collect(now=due, limit=10) == 1
    assert not await forward(world, media, now=due), "MEDIA_NOT_FOUND: the client uploads again"
    assert await world.media.get(media.media_id) is None
    assert not await exists(world, media)


async def test_racing_forwards_and_collections_never_lose_a_reserved_object(world: World) -> None:
    for round_ in range(12):
        media = await stored_media(world)
        due = media.next_check_at + 1
        delay = (round_ % 4) * 0.002

        async def late_forward(
            media: MediaRecord = media, delay: float = delay, due: float = due
        ) -> bool:
            await asyncio.sleep(delay)
            return await forward(world, media, now=due)

        _, reserved = await asyncio.gather(
            world.collector.collect(now=due, limit=10), late_forward()
        )
        record = await world.media.get(media.media_id)
        if reserved:
            assert record is not None and record.state == MediaState.READY, round_
            assert await exists(world, media), round_
        else:
            assert record is None and not await exists(world, media), round_


# -- collection and expiry ----------------------------------------------------------------


async def test_an_old_presigned_get_answers_404_once_the_object_is_collected(world: World) -> None:
    media = await stored_media(world)
    get = world.objects.presign_get(media.object_key, expires_in=300, now=T0)
    assert await http("GET", get.url) == 200
    world.messages.counts[media.media_id] = 0
    assert await world.collector.collect(now=media.next_check_at, limit=10) == 1
    assert await http("GET", get.url) == 404


async def test_an_expired_presigned_put_is_refused_by_the_store(world: World) -> None:
    data = b"late" * 100
    put = world.objects.presign_put(
        f"media/test/{rid()}", size=len(data), sha256=digest(data), expires_in=1, now=T0
    )
    await asyncio.sleep(2.5)
    assert await http("PUT", put.url, data, put.headers) == 403


async def test_unreferenced_media_goes_at_session_expiry_and_gives_its_quota_back(
    world: World,
) -> None:
    account = rid()
    media = await stored_media(world, account, size=5000)
    assert media.next_check_at == pytest.approx(T0 + SESSION_SECONDS)
    assert (await world.usage.usage(account, day="x"))[1] == 5000
    assert await world.collector.collect(now=T0 + SESSION_SECONDS - 1, limit=10) == 0
    assert await world.collector.collect(now=T0 + SESSION_SECONDS, limit=10) == 1
    assert (await world.usage.usage(account, day="x"))[1] == 0
    assert not await exists(world, media)


async def test_referenced_media_is_checked_again_later_and_never_kept_for_ever(
    world: World,
) -> None:
    media = await stored_media(world)
    world.messages.counts[media.media_id] = 3
    now = media.next_check_at
    waits = []
    for _ in range(12):
        await world.collector.collect(now=now, limit=10)
        record = await world.media.get(media.media_id)
        assert record is not None
        waits.append(round(record.next_check_at - now))
        now = record.next_check_at
    assert waits[:3] == [2 * GRACE, 4 * GRACE, 8 * GRACE]
    assert max(waits) == MAX_BACKOFF and waits[-1] == MAX_BACKOFF
    # Deleted for everyone: released, checked after the grace, then gone.
    world.messages.counts[media.media_id] = 0
    await world.references.release(media_ids=[media.media_id], now=now)
    assert await world.collector.collect(now=now + GRACE - 1, limit=10) == 0
    assert await world.collector.collect(now=now + GRACE, limit=10) == 1


async def test_expired_sessions_lose_their_parts_and_objects(world: World) -> None:
    account = rid()
    big = os.urandom(9 << 20)
    parts = [big[: 5 << 20], big[5 << 20 :]]
    multipart = await world.uploads.create(
        account_id=account,
        request_id=rid(),
        size=len(big),
        sha256=digest(big),
        content_class=ContentClass.VIDEO,
        part_size=5 << 20,
        part_sha256s=[digest(p) for p in parts],
        now=T0,
    )
    first_part = multipart.parts[0][1]
    assert first_part is not None
    assert await http("PUT", first_part.url, parts[0], first_part.headers) == 200
    small = os.urandom(100)
    single = await world.uploads.create(
        account_id=account,
        request_id=rid(),
        size=len(small),
        sha256=digest(small),
        content_class=ContentClass.DOCUMENT,
        part_size=0,
        part_sha256s=[],
        now=T0,
    )
    assert single.put is not None and single.session is not None
    assert await http("PUT", single.put.url, small, single.put.headers) == 200
    assert await world.sweeper.sweep(now=T0 + SESSION_SECONDS - 1) == (0, 0)
    assert (await world.sweeper.sweep(now=T0 + SESSION_SECONDS))[0] == 2
    assert multipart.session is not None
    keys = {key for key, _ in await world.objects.multipart_uploads()}
    assert multipart.session.object_key not in keys
    assert await world.objects.head(single.session.object_key) is None


async def test_a_completion_that_died_after_storing_the_media_loses_and_leaks_nothing(
    world: World,
) -> None:
    account = rid()
    data = os.urandom(3000)
    outcome = await world.uploads.create(
        account_id=account,
        request_id=rid(),
        size=len(data),
        sha256=digest(data),
        content_class=ContentClass.IMAGE,
        part_size=0,
        part_sha256s=[],
        now=T0,
    )
    session = outcome.session
    assert outcome.put is not None and session is not None
    assert await http("PUT", outcome.put.url, data, outcome.put.headers) == 200
    # The process died between writing the media document and marking the session.
    record = MediaRecord(
        media_id=session.media_id,
        sha256=session.sha256,
        size=session.size,
        content_class=session.content_class,
        object_key=session.object_key,
        created_at=T0,
        state=MediaState.READY,
        uploaders=(account,),
        touch=0,
        next_check_at=session.expires_at,
        check_backoff_seconds=GRACE,
    )
    assert await world.media.create(record) is not None
    # A retry of CompleteUpload finishes it...
    done = await world.uploads.complete(account_id=account, upload_id=session.upload_id, now=T0 + 5)
    assert done.object_key == session.object_key
    # ...and had nobody retried, the expired session keeps the media's object,
    # which then goes unless referenced.
    assert await world.sweeper.sweep(now=session.expires_at) == (0, 1)
    assert not await exists(world, done)
