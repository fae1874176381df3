"""parley.media.v1.MediaService over gRPC: validation and conversion only."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from parley.media.v1 import media_pb2 as pb
from parley.media.v1 import media_pb2_grpc
from parley_core.rpc.convert import timestamp
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_media.domain.downloads import DownloadHandler
from svc_media.domain.restores import MAX_DAYS as MAX_RESTORE_DAYS
from svc_media.domain.restores import RestoreHandler
from svc_media.domain.uploads import UploadHandler
from svc_media.model import (
    SHA256_BYTES,
    ContentClass,
    MediaRecord,
    Presigned,
    RestoreState,
    RestoreView,
    UploadOutcome,
    is_media_id,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MediaService"].full_name
CONTENT_CLASSES = frozenset(int(c) for c in ContentClass)
MAX_PART_HASHES = 10_000
RESTORE_STATES = {
    RestoreState.NOT_ARCHIVED: pb.Restore.STATE_NOT_ARCHIVED,
    RestoreState.QUEUED: pb.Restore.STATE_QUEUED,
    RestoreState.RESTORING: pb.Restore.STATE_RESTORING,
    RestoreState.READY: pb.Restore.STATE_READY,
    RestoreState.EXPIRED: pb.Restore.STATE_EXPIRED,
}


def check_sha256(check: Check, field: str, value: bytes) -> None:
    if len(value) != SHA256_BYTES:
        check.fail(field, f"must be a SHA-256: {SHA256_BYTES} bytes, got {len(value)}")


def check_media_id(check: Check, field: str, value: str) -> None:
    if not value:
        check.fail(field, "required")
    elif not is_media_id(value):
        check.fail(field, "not a media id from MediaService")


def check_upload_id(check: Check, value: str) -> None:
    check.id("upload_id", value)


def presigned_proto(request: Presigned) -> pb.PresignedRequest:
    return pb.PresignedRequest(
        method=request.method,
        url=request.url,
        headers=request.headers,
        expire_time=timestamp(request.expires_at),
    )


def media_proto(media: MediaRecord) -> pb.Media:
    return pb.Media(
        media_id=media.media_id,
        size=media.size,
        sha256=media.sha256,
        content_class=int(media.content_class),  # type: ignore[arg-type]
        create_time=timestamp(media.created_at),
        tier=int(media.tier),  # type: ignore[arg-type]
    )


def upload_proto(outcome: UploadOutcome) -> pb.Upload:
    session = outcome.session
    assert session is not None
    upload = pb.Upload(
        upload_id=session.upload_id,
        media_id=session.media_id,
        expire_time=timestamp(session.expires_at),
        part_size=session.part_size,
    )
    if outcome.put is not None:
        upload.put.CopyFrom(presigned_proto(outcome.put))
    for plan, request in outcome.parts:
        part = pb.UploadPart(part_number=plan.number, size=plan.size, stored=request is None)
        if request is not None:
            part.request.CopyFrom(presigned_proto(request))
        upload.parts.append(part)
    return upload


def restore_proto(view: RestoreView) -> pb.Restore:
    restore = pb.Restore(media_id=view.media_id, state=RESTORE_STATES[view.state])
    for name, value in (
        ("request_time", view.requested_at),
        ("ready_time", view.ready_at),
        ("expire_time", view.expires_at),
    ):
        if value:
            getattr(restore, name).CopyFrom(timestamp(value))
    return restore


class MediaServicer(media_pb2_grpc.MediaServiceServicer):
    def __init__(
        self,
        uploads: UploadHandler,
        downloads: DownloadHandler,
        restores: RestoreHandler,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._uploads = uploads
        self._downloads = downloads
        self._restores = restores
        self._clock = clock

    async def CreateUpload(
        self, request: pb.CreateUploadRequest, context: Any
    ) -> pb.CreateUploadResponse:
        check = Check()
        check.request_id(request.request_id)
        if request.size < 1:
            check.fail("size", "required: the ciphertext's size in bytes, at least 1")
        check_sha256(check, "sha256", request.sha256)
        check.enum("content_class", request.content_class, CONTENT_CLASSES)
        if request.part_size < 0:
            check.fail("part_size", "must not be negative")
        if len(request.part_sha256s) > MAX_PART_HASHES:
            check.fail("part_sha256s", f"at most {MAX_PART_HASHES} parts")
        else:
            for index, part in enumerate(request.part_sha256s):
                check_sha256(check, f"part_sha256s[{index}]", part)
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        outcome = await self._uploads.create(
            account_id=rpc.account_id,
            request_id=rpc.request_id,
            size=request.size,
            sha256=request.sha256,
            content_class=ContentClass(request.content_class),
            part_size=request.part_size,
            part_sha256s=list(request.part_sha256s),
            now=rpc.now,
        )
        if outcome.stored is not None:
            return pb.CreateUploadResponse(already_stored=media_proto(outcome.stored))
        return pb.CreateUploadResponse(upload=upload_proto(outcome))

    async def GetUpload(self, request: pb.GetUploadRequest, context: Any) -> pb.Upload:
        check = Check()
        check_upload_id(check, request.upload_id)
        check.done()
        rpc = request_context(context, clock=self._clock)
        outcome = await self._uploads.get(
            account_id=rpc.account_id, upload_id=request.upload_id, now=rpc.now
        )
        return upload_proto(outcome)

    async def CompleteUpload(self, request: pb.CompleteUploadRequest, context: Any) -> pb.Media:
        check = Check()
        check_upload_id(check, request.upload_id)
        check.done()
        rpc = request_context(context, clock=self._clock)
        media = await self._uploads.complete(
            account_id=rpc.account_id, upload_id=request.upload_id, now=rpc.now
        )
        return media_proto(media)

    async def AbortUpload(
        self, request: pb.AbortUploadRequest, context: Any
    ) -> pb.AbortUploadResponse:
        check = Check()
        check_upload_id(check, request.upload_id)
        check.done()
        rpc = request_context(context, clock=self._clock)
        await self._uploads.abort(
            account_id=rpc.account_id, upload_id=request.upload_id, now=rpc.now
        )
        return pb.AbortUploadResponse()

    async def GetDownload(self, request: pb.GetDownloadRequest, context: Any) -> pb.Download:
        check = Check()
        check_media_id(check, "media_id", request.media_id)
        check.done()
        rpc = request_context(context, clock=self._clock)
        grant = await self._downloads.grant(
            account_id=rpc.account_id, media_id=request.media_id, now=rpc.now
        )
        return pb.Download(media=media_proto(grant.media), get=presigned_proto(grant.get))

    async def RestoreMedia(self, request: pb.RestoreMediaRequest, context: Any) -> pb.Restore:
        check = Check()
        check_media_id(check, "media_id", request.media_id)
        if not 0 <= request.days <= MAX_RESTORE_DAYS:
            check.fail("days", f"must be 1 to {MAX_RESTORE_DAYS} (0: 1)")
        check.done()
        rpc = request_context(context, clock=self._clock)
        view = await self._restores.request(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            media_id=request.media_id,
            days=request.days,
            now=rpc.now,
        )
        return restore_proto(view)

    async def GetRestore(self, request: pb.GetRestoreRequest, context: Any) -> pb.Restore:
        check = Check()
        check_media_id(check, "media_id", request.media_id)
        check.done()
        rpc = request_context(context, clock=self._clock)
        view = await self._restores.status(
            account_id=rpc.account_id, media_id=request.media_id, now=rpc.now
        )
        return restore_proto(view)

    async def GetQuota(self, request: pb.GetQuotaRequest, context: Any) -> pb.Quota:
        rpc = request_context(context, clock=self._clock)
        usage = await self._uploads.quota(account_id=rpc.account_id, now=rpc.now)
        return pb.Quota(
            uploaded_today_bytes=usage.uploaded_today,
            daily_upload_limit_bytes=usage.daily_limit,
            stored_bytes=usage.stored,
            stored_limit_bytes=usage.stored_limit,
        )
