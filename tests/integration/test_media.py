"""svc_media end to end on a real stack (SecantusDB, Redis, SeaweedFS, gRPC):
presigned uploads the object store itself checks, resumable multipart,
verified completion, dedup by forwarding, download permissions, quotas,
quarantine and what is (and is not) stored.

svc_message's internal service is played by a stand-in served over real gRPC
in this process (tests/media_world.py), so each test sets who may read what.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.media.v1 import media_pb2 as mpb
from parley.media.v1 import media_pb2_grpc as mgrpc
from parley.media.v1 import references_pb2 as rpb
from parley.media.v1 import references_pb2_grpc as rgrpc
from parley_dev.seaweed import s3_client
from parley_dev.stack import LocalStack
from tests.chaos.clients import metric
from tests.helpers import TEST_LIMITS
from tests.media_world import (
    MIB,
    Blob,
    MessageStandIn,
    bad_fields,
    error_info,
    operator,
    send,
    upload_parts,
)
from tests.users import Device, rid, sign_up

pytestmark = pytest.mark.slow

PENDING_CAP = 4
DAILY_QUOTA = 24 * MIB
STORED_QUOTA = 16 * MIB


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stand_in() -> AsyncIterator[MessageStandIn]:
    messages = MessageStandIn()
    await messages.start()
    yield messages
    await messages.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def media_stack(
    tmp_path_factory: pytest.TempPathFactory, stand_in: MessageStandIn
) -> AsyncIterator[LocalStack]:
    config: dict[str, Any] = {
        **TEST_LIMITS,
        "media": {
            "message_target": stand_in.target,
            "max_pending_uploads_per_account": PENDING_CAP,
            "quotas": {"daily_upload_bytes": DAILY_QUOTA, "stored_bytes": STORED_QUOTA},
        },
    }
    stack = LocalStack.with_free_ports(
        root=Path(tmp_path_factory.mktemp("media")),
        shutdown_grace_seconds=2.0,
        extra_config=config,
    )
    # The stand-in refuses anything but the deployment's service credential.
    stack.prepare_files()
    stand_in.expected_token = stack.service_token
    async with stack:
        yield stack


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stubs(
    media_stack: LocalStack,
) -> AsyncIterator[tuple[kgrpc.AccountServiceStub, mgrpc.MediaServiceStub, Any, Any]]:
    keys_channel = grpc.aio.insecure_channel(media_stack.keys_target)
    media_channel = grpc.aio.insecure_channel(media_stack.media_target)
    yield (
        kgrpc.AccountServiceStub(keys_channel),
        mgrpc.MediaServiceStub(media_channel),
        mgrpc.MediaAdminServiceStub(media_channel),
        rgrpc.MediaReferenceServiceStub(media_channel),
    )
    await keys_channel.close()
    await media_channel.close()


async def users(stubs: Any, count: int) -> list[Device]:
    return [await sign_up(stubs[0]) for _ in range(count)]


async def failure(call: Any) -> grpc.aio.AioRpcError:
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"the call succeeded: {reply!r:.300}")


async def upload(media: mgrpc.MediaServiceStub, device: Device, blob: Blob) -> mpb.Media:
    """The whole upload as a client does it; the completed media."""
    created = await media.CreateUpload(blob.request(), metadata=device.md)
    if created.HasField("already_stored"):
        return created.already_stored
    if blob.part_size:
        await upload_parts(created.upload, blob)
    else:
        reply = await send(created.upload.put, blob.data)
        assert reply.status_code == 200, reply.text
    return await media.CompleteUpload(
        mpb.CompleteUploadRequest(upload_id=created.upload.upload_id), metadata=device.md
    )


def objects_of(stack: LocalStack, media_id: str) -> list[str]:
    client: Any = s3_client(stack.s3_endpoint, stack.s3_keys)
    reply = client.list_objects_v2(
        Bucket=stack.s3_bucket, Prefix=f"media/{media_id[:2]}/{media_id}/"
    )
    return [item["Key"] for item in reply.get("Contents", ())]


def multipart_uploads(stack: LocalStack) -> list[str]:
    client: Any = s3_client(stack.s3_endpoint, stack.s3_keys)
    return [
        u["Key"] for u in client.list_multipart_uploads(Bucket=stack.s3_bucket).get("Uploads", ())
    ]


def service_md(stack: LocalStack) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {stack.service_token}"),)


# -- uploads ---------------------------------------------------------------------------


async def test_single_put_upload_is_checked_by_the_store_then_downloads_with_ranges(
    media_stack: LocalStack, stubs: Any
) -> None:
    _, media, _, _ = stubs
    (alice,) = await users(stubs, 1)
    blob = Blob.random(300_000)
    created = await media.CreateUpload(blob.request(mpb.CONTENT_CLASS_IMAGE), metadata=alice.md)
    put = created.upload.put
    assert created.upload.media_id == blob.media_id and put.method == "PUT"
    assert dict(put.headers)["Content-Length"] == str(len(blob.data))
    # The URL signs the exact length and the SHA-256: the store refuses anything else.
    corrupted = bytes([blob.data[0] ^ 1]) + blob.data[1:]
    assert (await send(put, corrupted)).status_code == 400
    longer = dict(put.headers, **{"Content-Length": str(len(blob.data) + 1)})
    assert (await send(put, blob.data + b"x", headers=longer)).status_code == 403
    unsigned = {"Content-Length": str(len(blob.data))}
    assert (await send(put, blob.data, headers=unsigned)).status_code == 403
    assert (await send(put, blob.data)).status_code == 200
    done = await media.CompleteUpload(
        mpb.CompleteUploadRequest(upload_id=created.upload.upload_id), metadata=alice.md
    )
    assert (done.media_id, done.size, done.sha256) == (blob.media_id, len(blob.data), blob.sha256)
    assert done.tier == mpb.STORAGE_TIER_STANDARD
    again = await media.CompleteUpload(
        mpb.CompleteUploadRequest(upload_id=created.upload.upload_id), metadata=alice.md
    )
    assert again == done, "CompleteUpload is idempotent"

    download = await media.GetDownload(
        mpb.GetDownloadRequest(media_id=done.media_id), metadata=alice.md
    )
    assert download.get.expire_time.seconds - download.media.create_time.seconds <= 300 + 5
    whole = await send(download.get)
    assert whole.status_code == 200 and whole.content == blob.data
    part = await send(download.get, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == blob.data[1000:2000]


async def test_create_upload_is_idempotent_by_request_id(stubs: Any) -> None:
    _, media, _, _ = stubs
    (alice,) = await users(stubs, 1)
    blob = Blob.random(1000)
    request = blob.request()
    first = await media.CreateUpload(request, metadata=alice.md)
    retry = await media.CreateUpload(request, metadata=alice.md)
    assert retry.upload.upload_id == first.upload.upload_id
    other = Blob.random(1000).request(request_id=request.request_id)
    error = await failure(media.CreateUpload(other, metadata=alice.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["request_id"]


async def test_multipart_upload_resumes_without_resending_stored_parts(
    media_stack: LocalStack, stubs: Any
) -> None:
    _, media, _, _ = stubs
    (alice,) = await users(stubs, 1)
    blob = Blob.random(12 * MIB, part_size=5 * MIB)
    created = await media.CreateUpload(blob.request(mpb.CONTENT_CLASS_VIDEO), metadata=alice.md)
    upload = created.upload
    assert not upload.HasField("put") and [p.size for p in upload.parts] == [
        5 * MIB,
        5 * MIB,
        2 * MIB,
    ]
    # A corrupted part is refused by the store at once.
    bad = bytes([blob.parts[0][0] ^ 1]) + blob.parts[0][1:]
    assert (await send(upload.parts[0].request, bad)).status_code == 400
    # Two parts go up, then the client "dies".
    assert await upload_parts(upload, blob, numbers=[1, 2]) == 2
    incomplete = await failure(
        media.CompleteUpload(
            mpb.CompleteUploadRequest(upload_id=upload.upload_id), metadata=alice.md
        )
    )
    assert incomplete.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(incomplete).reason == "ERROR_REASON_UPLOAD_INCOMPLETE"

    resumed = await media.GetUpload(
        mpb.GetUploadRequest(upload_id=upload.upload_id), metadata=alice.md
    )
    assert [(p.part_number, p.stored, p.HasField("request")) for p in resumed.parts] == [
        (1, True, False),
        (2, True, False),
        (3, False, True),
    ]
    assert await upload_parts(resumed, blob) == 1, "only the missing part is sent"
    done = await media.CompleteUpload(
        mpb.CompleteUploadRequest(upload_id=upload.upload_id), metadata=alice.md
    )
    assert done.media_id == blob.media_id and done.size == len(blob.data)
    download = await media.GetDownload(
        mpb.GetDownloadRequest(media_id=done.media_id), metadata=alice.md
    )
    body = (await send(download.get)).content
    assert hashlib.sha256(body).digest() == blob.sha256
    assert multipart_uploads(media_stack) == [] or all(
        not key.endswith(upload.upload_id) for key in multipart_uploads(media_stack)
    )


async def test_a_completion_that_does_not_match_deletes_the_object_and_names_the_field(
    media_stack: LocalStack, stubs: Any
) -> None:
    _, media, _, _ = stubs
    (alice,) = await users(stubs, 1)
    # Parts hashed right, but the whole file declared with another SHA-256.
    blob = Blob.random(11 * MIB, part_size=5 * MIB)
    request = blob.request()
    request.sha256 = hashlib.sha256(b"another file").digest()
    created = await media.CreateUpload(request, metadata=alice.md)
    await upload_parts(created.upload, blob)
    error = await failure(
        media.CompleteUpload(
            mpb.CompleteUploadRequest(upload_id=created.upload.upload_id), metadata=alice.md
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(error) == ["sha256"]
    assert objects_of(media_stack, request.sha256.hex()) == []

    # A size mismatch (an object put behind the service's back) names `size`.
    small = Blob.random(2000)
    created = await media.CreateUpload(small.request(), metadata=alice.md)
    key = objects_of_key(created.upload)
    client: Any = s3_client(media_stack.s3_endpoint, media_stack.s3_keys)
    client.put_object(Bucket=media_stack.s3_bucket, Key=key, Body=small.data[:1000])
    error = await failure(
        media.CompleteUpload(
            mpb.CompleteUploadRequest(upload_id=created.upload.upload_id), metadata=alice.md
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(error) == ["size"]
    assert objects_of(media_stack, small.media_id) == []
    gone = await failure(
        media.GetUpload(mpb.GetUploadRequest(upload_id=created.upload.upload_id), metadata=alice.md)
    )
    assert error_info(gone).reason == "ERROR_REASON_UPLOAD_NOT_FOUND"


def objects_of_key(upload: mpb.Upload) -> str:
    media_id = upload.media_id
    return f"media/{media_id[:2]}/{media_id}/{upload.upload_id}"


async def test_abort_removes_the_stored_parts_and_the_pending_cap_holds(
    media_stack: LocalStack, stubs: Any
) -> None:
    _, media, _, _ = stubs
    (alice,) = await users(stubs, 1)
    big = Blob.random(9 * MIB, part_size=5 * MIB)
    first = await media.CreateUpload(big.request(), metadata=alice.md)
    await upload_parts(first.upload, big, numbers=[1])
    for _ in range(PENDING_CAP - 1):
        await media.CreateUpload(Blob.random(10).request(), metadata=alice.md)
    capped = await failure(media.CreateUpload(Blob.random(10).request(), metadata=alice.md))
    assert capped.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(capped).reason == "ERROR_REASON_TOO_MANY_UPLOADS"

    await media.AbortUpload(
        mpb.AbortUploadRequest(upload_id=first.upload.upload_id), metadata=alice.md
    )
    await media.AbortUpload(
        mpb.AbortUploadRequest(upload_id=first.upload.upload_id), metadata=alice.md
    )
    assert objects_of_key(first.upload) not in multipart_uploads(media_stack)
    gone = await failure(
        media.GetUpload(mpb.GetUploadRequest(upload_id=first.upload.upload_id), metadata=alice.md)
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(gone).reason == "ERROR_REASON_UPLOAD_NOT_FOUND"
    await media.CreateUpload(Blob.random(10).request(), metadata=alice.md)


async def test_bad_requests_name_their_fields(stubs: Any) -> None:
    _, media, _, _ = stubs
    (alice,) = await users(stubs, 1)
    error = await failure(
        media.CreateUpload(
            mpb.CreateUploadRequest(request_id="x", size=-1, sha256=b"short"), metadata=alice.md
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_fields(error)) == {"request_id", "size", "sha256", "content_class"}
    request = Blob.random(9 * MIB).request()  # above the threshold, no part hashes
    error = await failure(media.CreateUpload(request, metadata=alice.md))
    assert bad_fields(error) == ["part_sha256s"]
    thumbnail = Blob.random(65 * 1024).request(mpb.CONTENT_CLASS_THUMBNAIL)
    error = await failure(media.CreateUpload(thumbnail, metadata=alice.md))
    assert bad_fields(error) == ["size"]
    error = await failure(
        media.GetDownload(mpb.GetDownloadRequest(media_id="nope"), metadata=alice.md)
    )
    assert bad_fields(error) == ["media_id"]
    error = await failure(media.GetUpload(mpb.GetUploadRequest(), metadata=alice.md))
    assert bad_fields(error) == ["upload_id"]


# -- dedup, permissions, stored fields ---------------------------------------------------


async def test_forwarding_fifty_times_keeps_one_object_and_uploads_nothing(
    media_stack: LocalStack, stubs: Any, stand_in: MessageStandIn
) -> None:
    _, media, _, references = stubs
    alice, *forwarders = await users(stubs, 6)
    blob = Blob.random(200_000)
    stored = await upload(media, alice, blob)
    uploaded = await metric(media_stack.media_metrics_url, "parley_media_uploaded_bytes_total")
    conversation = rid()
    for index in range(50):
        forwarder = forwarders[index % len(forwarders)]
        stand_in.grant(forwarder.account_id, stored.media_id)
        # What a forwarding client does: CreateUpload answers already_stored...
        created = await media.CreateUpload(blob.request(), metadata=forwarder.md)
        assert created.WhichOneof("result") == "already_stored"
        assert created.already_stored.media_id == stored.media_id
        # ...and svc_message reserves the reference of its send.
        await references.ReserveReferences(
            rpb.ReserveReferencesRequest(
                account_id=forwarder.account_id,
                conversation_id=conversation,
                media_ids=[stored.media_id],
                readable_media_ids=[stored.media_id],
            ),
            metadata=service_md(media_stack),
        )
    assert len(objects_of(media_stack, stored.media_id)) == 1
    after = await metric(media_stack.media_metrics_url, "parley_media_uploaded_bytes_total")
    assert after == uploaded, "a forward uploads no byte"
    for forwarder in forwarders:
        quota = await media.GetQuota(mpb.GetQuotaRequest(), metadata=forwarder.md)
        assert (quota.uploaded_today_bytes, quota.stored_bytes) == (0, 0), "forwards are free"


async def test_an_upload_racing_a_stored_copy_is_deduplicated_at_completion(
    media_stack: LocalStack, stubs: Any
) -> None:
    _, media, _, _ = stubs
    alice, bob = await users(stubs, 2)
    blob = Blob.random(50_000)
    # Bob may not read alice's copy, so he uploads his own; both complete.
    alice_session = await media.CreateUpload(blob.request(), metadata=alice.md)
    bob_session = await media.CreateUpload(blob.request(), metadata=bob.md)
    for device, session in ((alice, alice_session), (bob, bob_session)):
        assert (await send(session.upload.put, blob.data)).status_code == 200
        await media.CompleteUpload(
            mpb.CompleteUploadRequest(upload_id=session.upload.upload_id), metadata=device.md
        )
    assert len(objects_of(media_stack, blob.media_id)) == 1
    for device in (alice, bob):
        await media.GetDownload(mpb.GetDownloadRequest(media_id=blob.media_id), metadata=device.md)


async def test_downloads_are_for_uploaders_and_readers_only(
    stubs: Any, stand_in: MessageStandIn
) -> None:
    _, media, _, _ = stubs
    uploader, member, removed, outsider = await users(stubs, 4)
    blob = Blob.random(10_000)
    stored = await upload(media, uploader, blob)
    stand_in.grant(member.account_id, stored.media_id)
    stand_in.grant(removed.account_id, stored.media_id)
    for device in (uploader, member, removed):
        await media.GetDownload(
            mpb.GetDownloadRequest(media_id=stored.media_id), metadata=device.md
        )
    stand_in.revoke(removed.account_id, stored.media_id)
    missing = Blob.random(10).media_id
    for device, media_id in (
        (removed, stored.media_id),
        (outsider, stored.media_id),
        (outsider, missing),
    ):
        error = await failure(
            media.GetDownload(mpb.GetDownloadRequest(media_id=media_id), metadata=device.md)
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(error).reason == "ERROR_REASON_MEDIA_ACCESS_DENIED"
    # An outsider uploading the same ciphertext is not told it exists: it
    # gets a session and uploads its own copy.
    created = await media.CreateUpload(blob.request(), metadata=outsider.md)
    assert created.WhichOneof("result") == "upload"


async def test_stored_metadata_has_no_key_and_no_plaintext_hash(
    media_stack: LocalStack, stubs: Any
) -> None:
    _, media, _, _ = stubs
    (alice,) = await users(stubs, 1)
    stored = await upload(media, alice, Blob.random(4096))
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(media_stack.mongo_uri)
    try:
        db = client["parley"]
        doc = await db["media_objects"].find_one({"_id": stored.media_id})
        session = await db["media_uploads"].find_one({"media_id": stored.media_id})
    finally:
        await client.close()
    assert doc is not None and session is not None
    assert set(doc) == {
        "_id",
        "sha256",
        "size",
        "content_class",
        "object_key",
        "created_at",
        "state",
        "uploaders",
        "touch",
        "next_check_at",
        "backoff",
        "tier",
        "reserves",
    }
    assert bytes(doc["sha256"]) == stored.sha256
    assert set(session) <= {
        "_id",
        "account",
        "request_id",
        "media_id",
        "sha256",
        "size",
        "content_class",
        "object_key",
        "created_at",
        "expires_at",
        "state",
        "lease_until",
        "finished_at",
        "multipart_id",
        "part_size",
        "part_sha256s",
    }
    # The only digests stored are of the ciphertext.
    for value in (*doc.values(), *session.values()):
        if isinstance(value, bytes):
            assert value == stored.sha256


# -- quotas ---------------------------------------------------------------------------


async def test_quotas_refuse_with_the_limit_and_the_usage(stubs: Any) -> None:
    _, media, _, _ = stubs
    keeper, starter = await users(stubs, 2)
    for _ in range(2):
        await upload(media, keeper, Blob.random(6 * MIB))
    error = await failure(media.CreateUpload(Blob.random(6 * MIB).request(), metadata=keeper.md))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error)
    assert info.reason == "ERROR_REASON_QUOTA_EXCEEDED"
    assert dict(info.metadata) == {
        "quota": "stored_bytes",
        "limit_bytes": str(STORED_QUOTA),
        "used_bytes": str(12 * MIB),
    }
    for _ in range(3):
        await media.CreateUpload(Blob.random(7 * MIB).request(), metadata=starter.md)
    error = await failure(media.CreateUpload(Blob.random(7 * MIB).request(), metadata=starter.md))
    assert dict(error_info(error).metadata) == {
        "quota": "daily_upload_bytes",
        "limit_bytes": str(DAILY_QUOTA),
        "used_bytes": str(21 * MIB),
    }
    quota = await media.GetQuota(mpb.GetQuotaRequest(), metadata=keeper.md)
    assert (quota.uploaded_today_bytes, quota.stored_bytes) == (12 * MIB, 12 * MIB)
    assert (quota.daily_upload_limit_bytes, quota.stored_limit_bytes) == (DAILY_QUOTA, STORED_QUOTA)


# -- quarantine and credentials ---------------------------------------------------------


async def test_quarantine_blocks_downloads_and_new_references_and_is_audited(
    media_stack: LocalStack, stubs: Any
) -> None:
    _, media, admin, references = stubs
    alice, bob = await users(stubs, 2)
    blob = Blob.random(5000)
    stored = await upload(media, alice, blob)
    ops = operator(media_stack.operator_token)
    entry = await admin.QuarantineMedia(
        mpb.QuarantineMediaRequest(sha256=blob.sha256, reason="reported abuse"), metadata=ops
    )
    assert (entry.operator, entry.reason) == ("local", "reported abuse")
    again = await admin.QuarantineMedia(
        mpb.QuarantineMediaRequest(sha256=blob.sha256, reason="twice"), metadata=ops
    )
    assert again.reason == "reported abuse", "idempotent: the first entry stands"

    error = await failure(
        media.GetDownload(mpb.GetDownloadRequest(media_id=stored.media_id), metadata=alice.md)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "ERROR_REASON_MEDIA_QUARANTINED"
    error = await failure(
        references.ReserveReferences(
            rpb.ReserveReferencesRequest(
                account_id=alice.account_id, conversation_id=rid(), media_ids=[stored.media_id]
            ),
            metadata=service_md(media_stack),
        )
    )
    assert error_info(error).reason == "ERROR_REASON_MEDIA_QUARANTINED"
    error = await failure(media.CreateUpload(blob.request(), metadata=bob.md))
    assert error_info(error).reason == "ERROR_REASON_MEDIA_QUARANTINED"

    await admin.LiftQuarantine(
        mpb.LiftQuarantineRequest(sha256=blob.sha256, reason="appeal upheld"), metadata=ops
    )
    await media.GetDownload(mpb.GetDownloadRequest(media_id=stored.media_id), metadata=alice.md)
    events = await admin.ListAuditEvents(mpb.ListAuditEventsRequest(page_size=1), metadata=ops)
    assert [(e.action, e.reason, e.operator) for e in events.events] == [
        (mpb.AuditEvent.ACTION_LIFT_QUARANTINE, "appeal upheld", "local")
    ]
    older = await admin.ListAuditEvents(
        mpb.ListAuditEventsRequest(page_size=1, page_token=events.next_page_token), metadata=ops
    )
    assert [(e.action, e.sha256) for e in older.events] == [
        (mpb.AuditEvent.ACTION_QUARANTINE, blob.sha256)
    ]


async def test_privileged_services_refuse_user_tokens(media_stack: LocalStack, stubs: Any) -> None:
    _, _, admin, references = stubs
    (alice,) = await users(stubs, 1)
    for md in (alice.md, service_md(media_stack), ()):
        error = await failure(admin.ListAuditEvents(mpb.ListAuditEventsRequest(), metadata=md))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    for md in (alice.md, operator(media_stack.operator_token)):
        error = await failure(
            references.ReleaseReferences(
                rpb.ReleaseReferencesRequest(media_ids=[Blob.random(5).media_id]), metadata=md
            )
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_reserve_refuses_media_the_sender_may_not_use(
    media_stack: LocalStack, stubs: Any
) -> None:
    _, media, _, references = stubs
    alice, mallory = await users(stubs, 2)
    stored = await upload(media, alice, Blob.random(700))
    for account, media_ids in (
        (mallory.account_id, [stored.media_id]),
        (alice.account_id, [stored.media_id, Blob.random(3).media_id]),
    ):
        error = await failure(
            references.ReserveReferences(
                rpb.ReserveReferencesRequest(
                    account_id=account, conversation_id=rid(), media_ids=media_ids
                ),
                metadata=service_md(media_stack),
            )
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(error).reason == "ERROR_REASON_MEDIA_NOT_FOUND"


async def test_media_metrics_are_exported(media_stack: LocalStack, stubs: Any) -> None:
    for name in (
        "parley_media_uploaded_bytes_total",
        "parley_media_download_granted_bytes_total",
        "parley_media_objects",
        "parley_media_stored_bytes",
        "parley_media_references_per_object",
        "parley_media_gc_lag_seconds",
        "parley_media_orphans_collected_total",
        "parley_media_quota_refusals_total",
        "parley_media_restore_queue",
        "parley_media_store_available",
    ):
        await metric(media_stack.media_metrics_url, name)
    assert await metric(media_stack.media_metrics_url, "parley_media_store_available") == 1
    await asyncio.sleep(0)
