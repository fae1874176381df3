"""svc_media end to end on a real stack (SecantusDB, Redis, SeaweedFS, gRPC):
presigned uploads the object store itself checks, resumable multipart,
verified completion, dedup by forwarding, download permissions and what is
(and is not) stored.

svc_message's internal service is played by a stand-in served over real gRPC
in this process (tests/media_world.py), so each test sets who may read what.
The stack is the session's media stack (tests/integration/conftest.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
import pytest
from pymongo import AsyncMongoClient

from parley.media.v1 import media_pb2 as mpb
from parley.media.v1 import references_pb2 as rpb
from parley_dev.seaweed import s3_client
from parley_dev.stack import LocalStack
from tests.chaos.clients import metric
from tests.media_stack import (
    PENDING_CAP,
    failure,
    multipart_uploads,
    objects_of,
    objects_of_key,
    service_md,
    upload,
    users,
)
from tests.media_world import (
    MIB,
    Blob,
    MessageStandIn,
    bad_fields,
    error_info,
    send,
    upload_parts,
)
from tests.users import rid

pytestmark = pytest.mark.slow

# -- uploads ---------------------------------------------------------------------------


async def test_single_put_upload_is_checked_by_the_store_then_downloads_with_ranges(
    media_stack: LocalStack, media_stubs: Any
) -> None:
    _, media, _, _ = media_stubs
    (alice,) = await users(media_stubs, 1)
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


async def test_create_upload_is_idempotent_by_request_id(media_stubs: Any) -> None:
    _, media, _, _ = media_stubs
    (alice,) = await users(media_stubs, 1)
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
    media_stack: LocalStack, media_stubs: Any
) -> None:
    _, media, _, _ = media_stubs
    (alice,) = await users(media_stubs, 1)
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
    media_stack: LocalStack, media_stubs: Any
) -> None:
    _, media, _, _ = media_stubs
    (alice,) = await users(media_stubs, 1)
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


async def test_abort_removes_the_stored_parts_and_the_pending_cap_holds(
    media_stack: LocalStack, media_stubs: Any
) -> None:
    _, media, _, _ = media_stubs
    (alice,) = await users(media_stubs, 1)
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


async def test_bad_requests_name_their_fields(media_stubs: Any) -> None:
    _, media, _, _ = media_stubs
    (alice,) = await users(media_stubs, 1)
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
    media_stack: LocalStack, media_stubs: Any, stand_in: MessageStandIn
) -> None:
    _, media, _, references = media_stubs
    alice, *forwarders = await users(media_stubs, 6)
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
    media_stack: LocalStack, media_stubs: Any
) -> None:
    _, media, _, _ = media_stubs
    alice, bob = await users(media_stubs, 2)
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
    media_stubs: Any, stand_in: MessageStandIn
) -> None:
    _, media, _, _ = media_stubs
    uploader, member, removed, outsider = await users(media_stubs, 4)
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
    media_stack: LocalStack, media_stubs: Any
) -> None:
    _, media, _, _ = media_stubs
    (alice,) = await users(media_stubs, 1)
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
