"""parley.media.v1.MediaReferenceService: internal, for svc_message (and
svc_keys' erasure job: EraseUploader) only (the interceptor requires the
service credential)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from parley.media.v1 import references_pb2 as pb
from parley.media.v1 import references_pb2_grpc
from parley_core.validation import Check
from svc_media.domain.references import ReferenceHandler
from svc_media.domain.uploads import UploadHandler
from svc_media.servicer.media import check_media_id

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MediaReferenceService"].full_name
# SendMessageRequest.media_ids holds at most 16.
MAX_RESERVE = 16
# Erasing an account may release many at once; svc_message batches above this.
MAX_RELEASE = 1024


def check_ids(check: Check, field: str, ids: Sequence[str], *, most: int, required: bool) -> None:
    if not ids:
        if required:
            check.fail(field, f"required: 1 to {most} media ids")
        return
    if len(ids) > most:
        check.fail(field, f"at most {most} media ids, got {len(ids)}")
        return
    for index, media_id in enumerate(ids):
        check_media_id(check, f"{field}[{index}]", media_id)
    if len(set(ids)) != len(ids):
        check.fail(field, "must not repeat a media id")


class MediaReferenceServicer(references_pb2_grpc.MediaReferenceServiceServicer):
    def __init__(
        self,
        references: ReferenceHandler,
        uploads: UploadHandler,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._uploads = uploads
        self._references = references
        self._clock = clock

    async def ReserveReferences(
        self, request: pb.ReserveReferencesRequest, context: Any
    ) -> pb.ReserveReferencesResponse:
        check = Check()
        check.id("account_id", request.account_id)
        check.id("conversation_id", request.conversation_id)
        check_ids(check, "media_ids", request.media_ids, most=MAX_RESERVE, required=True)
        if not set(request.readable_media_ids) <= set(request.media_ids):
            check.fail("readable_media_ids", "must be a subset of media_ids")
        check.done()
        await self._references.reserve(
            account_id=request.account_id,
            media_ids=list(request.media_ids),
            readable_media_ids=list(request.readable_media_ids),
            now=self._clock(),
        )
        return pb.ReserveReferencesResponse()

    async def ReleaseReferences(
        self, request: pb.ReleaseReferencesRequest, context: Any
    ) -> pb.ReleaseReferencesResponse:
        check = Check()
        check_ids(check, "media_ids", request.media_ids, most=MAX_RELEASE, required=True)
        check.done()
        await self._references.release(media_ids=list(request.media_ids), now=self._clock())
        return pb.ReleaseReferencesResponse()

    async def EraseUploader(
        self, request: pb.EraseUploaderRequest, context: Any
    ) -> pb.EraseUploaderResponse:
        Check().id("account_id", request.account_id).done()
        await self._uploads.erase_uploader(account_id=request.account_id, now=self._clock())
        return pb.EraseUploaderResponse()
