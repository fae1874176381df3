"""The media tests' stack: svc_media pointed at a stand-in for svc_message's
internal service (tests/media_world.py), with a small pending-upload cap and
small quotas, and the helpers the media test modules share."""

from __future__ import annotations

from typing import Any

import grpc

from parley.media.v1 import media_pb2 as mpb
from parley.media.v1 import media_pb2_grpc as mgrpc
from parley_dev.seaweed import s3_client
from parley_dev.stack import LocalStack
from tests.media_world import MIB, Blob, send, upload_parts
from tests.users import Device, sign_up

PENDING_CAP = 4
DAILY_QUOTA = 24 * MIB
STORED_QUOTA = 16 * MIB


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


def objects_of_key(upload: mpb.Upload) -> str:
    media_id = upload.media_id
    return f"media/{media_id[:2]}/{media_id}/{upload.upload_id}"
