"""Restores of archived media against moto (the one local server with archived
objects): GetDownload answers MEDIA_ARCHIVED, RestoreMedia starts S3's
RestoreObject, the poller marks the restore ready and tells each requesting
device through svc_message, and the copy's expiry makes the media archived
again.

First at the domain level with the clock injected (real SecantusDB, moto,
the notices recorded), then end to end: a stack whose svc_media stores on
moto, the SDK's restore_media / get_restore, and the MediaNotice on the
requesting device's stream."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest
import pytest_asyncio
from botocore.config import Config
from pymongo import AsyncMongoClient

from parley_core.errors import FailedPrecondition, PermissionDenied, Reason, Unavailable
from parley_core.limits import InProcessBuckets, Limiter, rates_from_settings
from parley_core.storage.mongo import DURABLE
from parley_dev.stack import LocalStack
from parley_sdk import MediaArchivedError, MediaNoticeEvent, MediaNoticeKind, RestoreState
from svc_media.app import LIMITS
from svc_media.domain.access import AccessCheck
from svc_media.domain.downloads import DownloadHandler
from svc_media.domain.policy import MediaPolicy
from svc_media.domain.restores import RestoreHandler, RestorePolicy
from svc_media.model import (
    ContentClass,
    MediaRecord,
    MediaState,
    MediaStats,
    QuarantineEntry,
    Requester,
    RestoreStart,
    RestoreView,
    Tier,
    digest,
    media_id_of,
)
from svc_media.model import (
    RestoreState as State,
)
from svc_media.storage.admin import QuarantineStore
from svc_media.storage.media import MediaStore
from svc_media.storage.objects import S3Objects
from svc_media.storage.restores import RestoreStore
from tests.helpers import TEST_LIMITS, wait_until
from tests.integration.test_sdk_media import direct, newest, user
from tests.moto_server import MotoS3, own_moto_server
from tests.sdk_e2ee_inbox import listening
from tests.users import rid

pytestmark = pytest.mark.slow

POLL = 60.0
WAIT = 30.0


def s3_client(moto: MotoS3) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        region_name=moto.settings.region,
        endpoint_url=moto.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def moto(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MotoS3]:
    async with own_moto_server(Path(tmp_path_factory.mktemp("restore_moto"))) as server:
        yield server


# -- the domain, clock injected -----------------------------------------------------------


class Readers:
    """svc_message's answer to who may read which media."""

    def __init__(self) -> None:
        self.allowed: dict[str, set[str]] = {}

    async def readable(self, account_id: str, media_ids: Sequence[str]) -> set[str]:
        return set(media_ids) & self.allowed.get(account_id, set())

    async def references(self, media_ids: Sequence[str]) -> Mapping[str, int]:
        return dict.fromkeys(media_ids, 1)


class Notices:
    """svc_message's NotifyDevice, recorded; devices in ``refuse`` fail once."""

    def __init__(self) -> None:
        self.told: list[tuple[Requester, str, float]] = []
        self.refuse: set[str] = set()

    async def restore_ready(
        self, requester: Requester, *, media_id: str, expires_at: float
    ) -> None:
        if requester.device_id in self.refuse:
            self.refuse.discard(requester.device_id)
            raise Unavailable("svc_message is down")
        self.told.append((requester, media_id, expires_at))


class FlakyObjects:
    """The moto bucket, with RestoreObject unanswered while ``down``."""

    def __init__(self, objects: S3Objects) -> None:
        self._objects = objects
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._objects, name)

    async def restore(self, key: str, *, days: int, tier: str) -> RestoreStart:
        if self.down:
            raise Unavailable("the object store (S3) cannot be reached")
        return await self._objects.restore(key, days=days, tier=tier)


@dataclass
class World:
    moto: MotoS3
    media: MediaStore
    restores: RestoreStore
    quarantine: QuarantineStore
    objects: FlakyObjects
    readers: Readers
    notices: Notices
    downloads: DownloadHandler
    stats: MediaStats
    limiter: Limiter

    def handler(self, *, max_active: int = 20) -> RestoreHandler:
        """A handler of its own, as another process would have."""
        return RestoreHandler(
            downloads=self.downloads,
            restores=self.restores,
            quarantine=self.quarantine,
            objects=self.objects,  # type: ignore[arg-type]
            notices=self.notices,
            limits=self.limiter,
            policy=RestorePolicy(
                tier="Standard", poll_seconds=POLL, batch=10, max_active_per_account=max_active
            ),
            stats=self.stats,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    stack = LocalStack.with_free_ports(root=Path(tmp_path_factory.mktemp("media_restore")))
    try:
        await stack.start_backends()
        yield stack
    finally:
        await stack.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def world(backends: LocalStack, moto: MotoS3) -> AsyncIterator[World]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        backends.mongo_uri, retryWrites=False, tz_aware=True
    )
    db = client.get_database(f"restore_{rid()[:8]}", write_concern=DURABLE)
    objects = await S3Objects.open(moto.settings, timeout_seconds=5)
    media, restores, quarantine = MediaStore(db), RestoreStore(db), QuarantineStore(db)
    await media.ensure_indexes()
    await restores.ensure_indexes()
    readers, stats = Readers(), MediaStats()
    limiter = Limiter(
        InProcessBuckets(),
        rates_from_settings(backends.settings.limits),
        names=LIMITS,
        enabled=False,
    )
    flaky = FlakyObjects(objects)
    downloads = DownloadHandler(
        media=media,
        quarantine=quarantine,
        objects=flaky,  # type: ignore[arg-type]
        access=AccessCheck(readers),
        limits=limiter,
        policy=MediaPolicy.from_settings(backends.settings.media),
        stats=stats,
    )
    yield World(
        moto, media, restores, quarantine, flaky, readers, Notices(), downloads, stats, limiter
    )
    await objects.close()
    await client.close()


async def archived_media(
    world: World, uploader: str, *, storage_class: str = "GLACIER"
) -> MediaRecord:
    """Media whose object the lifecycle rules moved to ``storage_class``."""
    data = os.urandom(300)
    sha = digest(data)
    media_id = media_id_of(sha)
    key = f"media/{media_id[:2]}/{media_id}/{rid()}"
    s3_client(world.moto).put_object(
        Bucket=world.moto.settings.bucket, Key=key, Body=data, StorageClass=storage_class
    )
    record = MediaRecord(
        media_id=media_id,
        sha256=sha,
        size=len(data),
        content_class=ContentClass.DOCUMENT,
        object_key=key,
        created_at=time.time(),
        state=MediaState.READY,
        uploaders=(uploader,),
        touch=0,
        next_check_at=time.time() + 86400,
        check_backoff_seconds=0,
    )
    assert await world.media.create(record) is not None
    return record


async def refusal(call: Any) -> Any:
    try:
        await call
    except (FailedPrecondition, PermissionDenied) as exc:
        return exc
    raise AssertionError("the call succeeded")


async def test_a_restore_goes_from_request_to_ready_to_the_devices_then_expires(
    world: World,
) -> None:
    # moto dates the restored copy from the real clock: so does this test.
    now = time.time()
    restores = world.handler()
    media = await archived_media(world, "alice")
    media_id = media.media_id
    archived = await refusal(world.downloads.grant(account_id="alice", media_id=media_id, now=now))
    assert archived.reason == Reason.MEDIA_ARCHIVED
    # Nobody asked for a restore yet: GetRestore says the same.
    unasked = await refusal(restores.status(account_id="alice", media_id=media_id, now=now))
    assert unasked.reason == Reason.MEDIA_ARCHIVED
    outsider = await refusal(restores.status(account_id="mallory", media_id=media_id, now=now))
    assert outsider.reason == Reason.MEDIA_ACCESS_DENIED
    outsider = await refusal(
        restores.request(account_id="mallory", device_id="m1", media_id=media_id, days=1, now=now)
    )
    assert outsider.reason == Reason.MEDIA_ACCESS_DENIED
    assert (await world.media.get(media.media_id)).tier == Tier.ARCHIVE  # type: ignore[union-attr]

    asked = await restores.request(
        account_id="alice", device_id="phone", media_id=media.media_id, days=2, now=now
    )
    assert asked == RestoreView(media.media_id, State.RESTORING, requested_at=pytest.approx(now))
    # Idempotent: the same restore for the uploader's laptop and for a reader.
    world.readers.allowed["bob"] = {media.media_id}
    for account, device in (("alice", "laptop"), ("bob", "tablet"), ("alice", "phone")):
        again = await restores.request(
            account_id=account, device_id=device, media_id=media.media_id, days=1, now=now + 5
        )
        assert again.state == State.RESTORING and again.requested_at == asked.requested_at
    assert world.stats.restores_started == 1
    assert await world.restores.queue_length() == 1

    # Two processes poll at once: one takes the restore, each device is told once.
    world.notices.refuse = {"laptop"}
    handled = await asyncio.gather(
        restores.poll(now=now + POLL), world.handler().poll(now=now + POLL)
    )
    assert sorted(handled) == [0, 1]
    ready = await restores.status(account_id="bob", media_id=media.media_id, now=now + POLL)
    assert ready.state == State.READY and ready.ready_at == pytest.approx(now + POLL)
    assert now + 86400 < ready.expires_at <= now + 3 * 86400
    assert sorted(r.device_id for r, _, _ in world.notices.told) == ["phone", "tablet"]
    assert {(m, e) for _, m, e in world.notices.told} == {(media.media_id, ready.expires_at)}
    assert world.stats.restore_queue == 0 and world.stats.restores_ready == 1
    # Downloadable now.
    grant = await world.downloads.grant(account_id="bob", media_id=media.media_id, now=now + POLL)
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(grant.get.url)).status_code == 200

    # svc_message took no notice for the laptop: the next pass tells it, once.
    for later in (2, 3):
        await restores.poll(now=now + later * POLL)
    assert sorted(r.device_id for r, _, _ in world.notices.told) == ["laptop", "phone", "tablet"]

    # The copy expires: archived again, and a new request starts a new restore.
    gone = ready.expires_at + 1
    assert await restores.poll(now=gone) == 1
    expired = await restores.status(account_id="alice", media_id=media.media_id, now=gone)
    assert expired.state == State.EXPIRED
    archived = await refusal(
        world.downloads.grant(account_id="alice", media_id=media.media_id, now=gone)
    )
    assert archived.reason == Reason.MEDIA_ARCHIVED
    renewed = await restores.request(
        account_id="alice", device_id="phone", media_id=media.media_id, days=1, now=gone
    )
    assert renewed.state == State.RESTORING and renewed.requested_at == pytest.approx(gone)


async def test_a_restore_the_store_did_not_take_or_lost_is_started_by_the_poller(
    world: World,
) -> None:
    now = time.time()
    restores = world.handler()
    media = await archived_media(world, "carol")
    world.objects.down = True
    queued = await restores.request(
        account_id="carol", device_id="c1", media_id=media.media_id, days=1, now=now
    )
    assert queued.state == State.QUEUED
    await restores.poll(now=now + POLL)
    assert world.stats.restore_queue == 1
    assert (await restores.status(account_id="carol", media_id=media.media_id, now=now)).state == (
        State.QUEUED
    )

    world.objects.down = False
    await restores.poll(now=now + 2 * POLL)
    assert (await world.restores.get(media.media_id)).state == State.RESTORING  # type: ignore[union-attr]
    # The object is stored again (archived, no restore): the store lost it.
    s3_client(world.moto).put_object(
        Bucket=world.moto.settings.bucket,
        Key=media.object_key,
        Body=b"x" * 300,
        StorageClass="GLACIER",
    )
    for step in (3, 4, 5, 6):
        await restores.poll(now=now + step * POLL)
    record = await world.restores.get(media.media_id)
    assert record is not None and record.state == State.READY
    assert [r.device_id for r, _, _ in world.notices.told] == ["c1"]


async def test_standard_media_has_nothing_to_restore_and_quarantined_media_none_to_give(
    world: World,
) -> None:
    now = time.time()
    restores = world.handler()
    plain = await archived_media(world, "dave", storage_class="STANDARD_IA")
    for view in (
        await restores.request(
            account_id="dave", device_id="d1", media_id=plain.media_id, days=1, now=now
        ),
        await restores.status(account_id="dave", media_id=plain.media_id, now=now),
    ):
        assert view == RestoreView(plain.media_id, State.NOT_ARCHIVED)
    assert await world.restores.get(plain.media_id) is None
    assert (await world.media.get(plain.media_id)).tier == Tier.INFREQUENT  # type: ignore[union-attr]
    await world.downloads.grant(account_id="dave", media_id=plain.media_id, now=now)

    banned = await archived_media(world, "dave")
    await world.quarantine.add(QuarantineEntry(banned.sha256, "abuse", "ops", now))
    refused = await refusal(
        restores.request(
            account_id="dave", device_id="d1", media_id=banned.media_id, days=1, now=now
        )
    )
    assert refused.reason == Reason.MEDIA_QUARANTINED
    assert world.stats.restores_started == 0


# -- end to end: a stack on moto, the SDK, the device's stream ---------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def moto_stack(
    tmp_path_factory: pytest.TempPathFactory, moto: MotoS3
) -> AsyncIterator[LocalStack]:
    config: dict[str, Any] = {
        **TEST_LIMITS,
        "s3": moto.settings.model_dump(mode="json"),
        "media": {"tiers": {"archive_after_days": 90, "restore_poll_seconds": 0.2}},
    }
    async with LocalStack.with_free_ports(
        root=Path(tmp_path_factory.mktemp("moto_stack")),
        shutdown_grace_seconds=2.0,
        extra_config=config,
    ) as stack:
        yield stack


async def age_media(stack: LocalStack, media_id: str, *, days: int) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        stack.mongo_uri, retryWrites=False, tz_aware=True
    )
    try:
        changed = await client["parley"]["media_objects"].update_one(
            {"_id": media_id},
            {"$set": {"created_at": datetime.now(UTC) - timedelta(days=days)}},
        )
    finally:
        await client.close()
    assert changed.modified_count == 1


async def test_the_requesting_device_hears_when_its_restore_is_ready(
    moto_stack: LocalStack, moto: MotoS3, tmp_path: Path
) -> None:
    alice = await user(moto_stack, tmp_path / "alice.db", "ralice")
    bob = await user(moto_stack, tmp_path / "bob.db", "rbob")
    async with alice, bob:
        chat = await direct(alice, bob)
        data = os.urandom(150_000)
        sent = await alice.send_file(chat, data, file_name="old.bin")
        received = await newest(bob, chat)
        assert await bob.download(received) == data
        # Months later the lifecycle rules moved it to GLACIER.
        s3 = s3_client(moto)
        bucket = moto.settings.bucket
        (key,) = [
            o["Key"]
            for o in s3.list_objects_v2(
                Bucket=bucket, Prefix=f"media/{sent.attachment.media_id[:2]}/"
            )["Contents"]
            if sent.attachment.media_id in o["Key"]
        ]
        ciphertext = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        s3.put_object(Bucket=bucket, Key=key, Body=ciphertext, StorageClass="GLACIER")
        # As old as the rules (archive_after_days 90) need: svc_media asks the
        # store about an object's class only once they may have moved it.
        await age_media(moto_stack, sent.attachment.media_id, days=91)
        with pytest.raises(MediaArchivedError):
            await bob.download(received)

        async with listening(bob) as bob_in, listening(alice) as alice_in:
            restore = await bob.restore_media(received, days=2)
            assert restore.media_id == sent.attachment.media_id
            assert restore.state in (RestoreState.QUEUED, RestoreState.RESTORING)
            await bob_in.wait_for(
                "the restore-ready notice",
                lambda: any(
                    e.kind is MediaNoticeKind.RESTORE_READY for e in bob_in.of(MediaNoticeEvent)
                ),
            )
            (notice,) = bob_in.of(MediaNoticeEvent)
            assert notice.media_id == sent.attachment.media_id and notice.expire_time is not None
            status = await bob.get_restore(received)
            assert status.state is RestoreState.READY and status.expire_time == notice.expire_time
            assert await bob.download(received) == data
            # Only the device that asked was told.
            await asyncio.sleep(0.5)
            assert alice_in.of(MediaNoticeEvent) == []

    async def restore_queue_empty() -> bool:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(moto_stack.media_metrics_url)).text
        return (
            "parley_media_restore_queue 0.0" in text
            and "parley_media_restores_ready_total 1.0" in text
        )

    await wait_until(restore_queue_empty, timeout=WAIT, what="the restore counted in the metrics")
