"""svc_media when its parts fail: the object store stopped or killed, svc_media
itself SIGKILLed between a completion and the reference to it.

- S3 unreachable: media RPCs answer UNAVAILABLE (DEPENDENCY_UNAVAILABLE) naming
  the object store, messaging keeps working, and media comes back with it.
- SeaweedFS killed during a multipart upload: the client resumes, the parts
  stored before the kill are not sent again.
- svc_media killed after CompleteUpload: the media is referenced after the
  restart (nothing lost); what nobody referenced, and the half-done upload,
  are gone once their sessions expired (nothing leaked).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.media.v1 import media_pb2 as mpb
from parley.media.v1 import media_pb2_grpc as mgrpc
from parley.media.v1 import references_pb2 as rpb
from parley.media.v1 import references_pb2_grpc as rgrpc
from parley.message.v1 import messages_pb2_grpc
from parley_dev.seaweed import s3_client
from parley_dev.stack import LocalStack
from tests.chaos.clients import metric
from tests.helpers import TEST_LIMITS, wait_until
from tests.media_world import MIB, Blob, MessageStandIn, error_info, send, upload_parts
from tests.users import direct, rid, sign_up
from tests.users import send as send_message

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

# Long enough that svc_media's restart on a loaded machine ends before the
# session it must complete expires; short enough for the sweep wait below.
SESSION_SECONDS = 20


async def failure(call: Any) -> grpc.aio.AioRpcError:
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"the call succeeded: {reply!r:.300}")


def keys_under(stack: LocalStack, prefix: str) -> list[str]:
    client: Any = s3_client(stack.s3_endpoint, stack.s3_keys)
    reply = client.list_objects_v2(Bucket=stack.s3_bucket, Prefix=prefix)
    return [item["Key"] for item in reply.get("Contents", ())]


def multipart_keys(stack: LocalStack) -> list[str]:
    client: Any = s3_client(stack.s3_endpoint, stack.s3_keys)
    uploads = client.list_multipart_uploads(Bucket=stack.s3_bucket).get("Uploads", ())
    return [u["Key"] for u in uploads]


async def complete(media: mgrpc.MediaServiceStub, md: Any, blob: Blob) -> mpb.Media:
    created = await media.CreateUpload(blob.request(), metadata=md)
    assert (await send(created.upload.put, blob.data)).status_code == 200
    return await media.CompleteUpload(
        mpb.CompleteUploadRequest(upload_id=created.upload.upload_id), metadata=md
    )


async def test_an_unreachable_store_is_unavailable_for_media_only(fresh_stack: LocalStack) -> None:
    stack = fresh_stack
    async with (
        grpc.aio.insecure_channel(stack.keys_target) as keys_channel,
        grpc.aio.insecure_channel(stack.media_target) as media_channel,
        grpc.aio.insecure_channel(stack.message_targets[0]) as message_channel,
    ):
        keys = kgrpc.AccountServiceStub(keys_channel)
        media = mgrpc.MediaServiceStub(media_channel)
        messages = messages_pb2_grpc.MessageServiceStub(message_channel)
        alice, bob = await sign_up(keys), await sign_up(keys)
        conversation = await direct(messages, alice, bob)
        kept = await complete(media, alice.md, Blob.random(2000))
        pending = await media.CreateUpload(Blob.random(3000).request(), metadata=alice.md)

        # SeaweedFS killed mid-upload: the client resumes where it was.
        blob = Blob.random(11 * MIB, part_size=5 * MIB)
        big = await media.CreateUpload(blob.request(), metadata=alice.md)
        await upload_parts(big.upload, blob, numbers=[1])
        await stack.kill_s3()

        async def store_down() -> bool:
            return await metric(stack.media_metrics_url, "parley_media_store_available") == 0

        await wait_until(store_down, timeout=20, what="svc_media to see the store down")
        for call in (
            media.CreateUpload(Blob.random(10).request(), metadata=alice.md),
            media.GetDownload(mpb.GetDownloadRequest(media_id=kept.media_id), metadata=alice.md),
            media.CompleteUpload(
                mpb.CompleteUploadRequest(upload_id=pending.upload.upload_id), metadata=alice.md
            ),
            media.GetUpload(
                mpb.GetUploadRequest(upload_id=big.upload.upload_id), metadata=alice.md
            ),
        ):
            error = await failure(asyncio.wait_for(call, 30))
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert error_info(error).reason == "ERROR_REASON_DEPENDENCY_UNAVAILABLE"
            assert "object store" in (error.details() or "")
        # Messaging does not notice.
        await send_message(messages, alice, conversation, b"still here")

        await stack.start_s3()

        async def store_up() -> bool:
            return await metric(stack.media_metrics_url, "parley_media_store_available") == 1

        await wait_until(store_up, timeout=20, what="svc_media to see the store back")
        download = await media.GetDownload(
            mpb.GetDownloadRequest(media_id=kept.media_id), metadata=alice.md
        )
        assert (await send(download.get)).status_code == 200, "stored media survived the kill"
        resumed = await media.GetUpload(
            mpb.GetUploadRequest(upload_id=big.upload.upload_id), metadata=alice.md
        )
        assert [p.stored for p in resumed.parts] == [True, False, False]
        assert await upload_parts(resumed, blob) == 2
        done = await media.CompleteUpload(
            mpb.CompleteUploadRequest(upload_id=big.upload.upload_id), metadata=alice.md
        )
        assert done.media_id == blob.media_id


@pytest_asyncio.fixture(loop_scope="session")
async def short_sessions(tmp_path: Path) -> AsyncIterator[tuple[LocalStack, MessageStandIn]]:
    stand_in = MessageStandIn()
    await stand_in.start()
    stack = LocalStack.with_free_ports(
        root=tmp_path / "stack",
        shutdown_grace_seconds=2.0,
        extra_config={
            **TEST_LIMITS,
            "media": {
                "message_target": stand_in.target,
                "upload_session_seconds": SESSION_SECONDS,
                "sweep_interval_seconds": 0.5,
            },
        },
    )
    try:
        async with stack:
            yield stack, stand_in
    finally:
        await stand_in.stop()


async def test_a_killed_svc_media_loses_nothing_and_leaks_nothing(
    short_sessions: tuple[LocalStack, MessageStandIn],
) -> None:
    stack, stand_in = short_sessions
    service = (("authorization", f"Bearer {stack.service_token}"),)
    async with (
        grpc.aio.insecure_channel(stack.keys_target) as keys_channel,
        grpc.aio.insecure_channel(stack.media_target) as media_channel,
    ):
        alice = await sign_up(kgrpc.AccountServiceStub(keys_channel))
        media = mgrpc.MediaServiceStub(media_channel)
        referenced = await complete(media, alice.md, Blob.random(4000))
        forgotten = await complete(media, alice.md, Blob.random(5000))
        blob = Blob.random(11 * MIB, part_size=5 * MIB)
        half = await media.CreateUpload(blob.request(), metadata=alice.md)
        await upload_parts(half.upload, blob, numbers=[1])

        await stack.kill_media()
        await stack.start_media()

        # The send that names it after the restart reserves it: nothing lost.
        references = rgrpc.MediaReferenceServiceStub(media_channel)
        await references.ReserveReferences(
            rpb.ReserveReferencesRequest(
                account_id=alice.account_id, conversation_id=rid(), media_ids=[referenced.media_id]
            ),
            metadata=service,
        )
        stand_in.references[referenced.media_id] = 1

        async def swept() -> bool:
            return (
                keys_under(stack, f"media/{forgotten.media_id[:2]}/{forgotten.media_id}/") == []
                and all(not key.endswith(half.upload.upload_id) for key in multipart_keys(stack))
                and keys_under(stack, f"media/{blob.media_id[:2]}/{blob.media_id}/") == []
            )

        await wait_until(swept, timeout=60, interval=0.5, what="the sweeper to remove leftovers")
        download = await media.GetDownload(
            mpb.GetDownloadRequest(media_id=referenced.media_id), metadata=alice.md
        )
        assert (await send(download.get)).status_code == 200
        assert len(keys_under(stack, "media/")) == 1, "only the referenced object is left"
        assert await metric(stack.media_metrics_url, "parley_media_orphans_collected_total") >= 1
