"""MediaService and MediaReferenceService requests for another region's
objects go to that region (domain/region_routing.py says which).

A user's request is forwarded as bytes with the caller's own token and the
region-forwarded mark, and the holder region's answer (or refusal) is
relayed. ReserveReferences and ReleaseReferences name up to many media ids,
possibly held by several regions: each region gets the ids it holds (with
the service credential), this region's go to the local handler. Ids that are
not media ids are left to the local handler, which refuses them. Without
regions every request is local and this adds one dictionary lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from parley.media.v1 import media_pb2 as pb
from parley.media.v1 import media_pb2_grpc, references_pb2_grpc
from parley.media.v1 import references_pb2 as rpb
from parley_core.auth.caller import current_caller
from parley_core.regions import region_forwarded
from parley_core.rpc.interceptor import bearer_token
from svc_media.domain.region_routing import MediaRegionRouter
from svc_media.model import is_media_id
from svc_media.servicer import media as media_servicer
from svc_media.servicer import references as reference_servicer

Answer = TypeVar("Answer", bound=Message)


def _path(service: str, method: str) -> str:
    return f"/{service}/{method}"


class RegionRoutedMedia(media_pb2_grpc.MediaServiceServicer):
    """MediaService, each request served by the region holding what it names."""

    def __init__(self, local: media_servicer.MediaServicer, router: MediaRegionRouter) -> None:
        self._local = local
        self._router = router

    async def _serve(
        self,
        region: str | None,
        method: str,
        request: Message,
        context: Any,
        answer: Callable[[bytes], Answer],
        local: Callable[[Any, Any], Awaitable[Answer]],
    ) -> Answer:
        router = self._router
        if region is None or router.is_local(region):
            return await local(request, context)
        metadata = context.invocation_metadata()
        reply = await router.forward(
            region,
            _path(media_servicer.SERVICE_NAME, method),
            request.SerializeToString(),
            bearer_token=bearer_token(metadata),
            timeout=context.time_remaining(),
            forwarded=region_forwarded(metadata),
        )
        return answer(reply)

    def _home(self) -> str:
        return self._router.home_of(current_caller().account_id)

    def _by_media(self, media_id: str) -> str | None:
        return self._router.holder_of_media(media_id) if is_media_id(media_id) else None

    def _by_upload(self, upload_id: str) -> str | None:
        return self._router.holder_of_upload(upload_id) if upload_id else None

    async def CreateUpload(
        self, request: pb.CreateUploadRequest, context: Any
    ) -> pb.CreateUploadResponse:
        return await self._serve(
            self._home(),
            "CreateUpload",
            request,
            context,
            pb.CreateUploadResponse.FromString,
            self._local.CreateUpload,
        )

    async def GetQuota(self, request: pb.GetQuotaRequest, context: Any) -> pb.Quota:
        return await self._serve(
            self._home(), "GetQuota", request, context, pb.Quota.FromString, self._local.GetQuota
        )

    async def GetUpload(self, request: pb.GetUploadRequest, context: Any) -> pb.Upload:
        return await self._serve(
            self._by_upload(request.upload_id),
            "GetUpload",
            request,
            context,
            pb.Upload.FromString,
            self._local.GetUpload,
        )

    async def CompleteUpload(self, request: pb.CompleteUploadRequest, context: Any) -> pb.Media:
        return await self._serve(
            self._by_upload(request.upload_id),
            "CompleteUpload",
            request,
            context,
            pb.Media.FromString,
            self._local.CompleteUpload,
        )

    async def AbortUpload(
        self, request: pb.AbortUploadRequest, context: Any
    ) -> pb.AbortUploadResponse:
        return await self._serve(
            self._by_upload(request.upload_id),
            "AbortUpload",
            request,
            context,
            pb.AbortUploadResponse.FromString,
            self._local.AbortUpload,
        )

    async def GetDownload(self, request: pb.GetDownloadRequest, context: Any) -> pb.Download:
        return await self._serve(
            self._by_media(request.media_id),
            "GetDownload",
            request,
            context,
            pb.Download.FromString,
            self._local.GetDownload,
        )

    async def RestoreMedia(self, request: pb.RestoreMediaRequest, context: Any) -> pb.Restore:
        return await self._serve(
            self._by_media(request.media_id),
            "RestoreMedia",
            request,
            context,
            pb.Restore.FromString,
            self._local.RestoreMedia,
        )

    async def GetRestore(self, request: pb.GetRestoreRequest, context: Any) -> pb.Restore:
        return await self._serve(
            self._by_media(request.media_id),
            "GetRestore",
            request,
            context,
            pb.Restore.FromString,
            self._local.GetRestore,
        )


class RegionRoutedReferences(references_pb2_grpc.MediaReferenceServiceServicer):
    """MediaReferenceService, each media id's part served by the region holding it."""

    def __init__(
        self, local: reference_servicer.MediaReferenceServicer, router: MediaRegionRouter
    ) -> None:
        self._local = local
        self._router = router

    def _by_region(self, media_ids: Sequence[str]) -> dict[str, list[str]] | None:
        """The ids grouped by holder region; None when all are local (or one
        is no media id: the local handler refuses the request whole)."""
        if not all(is_media_id(m) for m in media_ids):
            return None
        groups: dict[str, list[str]] = {}
        for media_id in media_ids:
            groups.setdefault(self._router.holder_of_media(media_id), []).append(media_id)
        if all(self._router.is_local(region) for region in groups):
            return None
        return groups

    async def _remote(self, region: str, method: str, request: Message, context: Any) -> None:
        await self._router.forward(
            region,
            _path(reference_servicer.SERVICE_NAME, method),
            request.SerializeToString(),
            bearer_token=None,
            timeout=context.time_remaining(),
            forwarded=region_forwarded(context.invocation_metadata()),
        )

    async def ReserveReferences(
        self, request: rpb.ReserveReferencesRequest, context: Any
    ) -> rpb.ReserveReferencesResponse:
        groups = self._by_region(request.media_ids)
        if groups is None:
            return await self._local.ReserveReferences(request, context)
        readable = set(request.readable_media_ids)
        calls: list[Awaitable[object]] = []
        for region, ids in groups.items():
            part = rpb.ReserveReferencesRequest(
                account_id=request.account_id,
                conversation_id=request.conversation_id,
                media_ids=ids,
                readable_media_ids=[m for m in ids if m in readable],
            )
            if self._router.is_local(region):
                calls.append(self._local.ReserveReferences(part, context))
            else:
                calls.append(self._remote(region, "ReserveReferences", part, context))
        await asyncio.gather(*calls)
        return rpb.ReserveReferencesResponse()

    async def ReleaseReferences(
        self, request: rpb.ReleaseReferencesRequest, context: Any
    ) -> rpb.ReleaseReferencesResponse:
        groups = self._by_region(request.media_ids)
        if groups is None:
            return await self._local.ReleaseReferences(request, context)
        calls: list[Awaitable[object]] = []
        for region, ids in groups.items():
            part = rpb.ReleaseReferencesRequest(media_ids=ids)
            if self._router.is_local(region):
                calls.append(self._local.ReleaseReferences(part, context))
            else:
                calls.append(self._remote(region, "ReleaseReferences", part, context))
        await asyncio.gather(*calls)
        return rpb.ReleaseReferencesResponse()

    async def EraseUploader(
        self, request: rpb.EraseUploaderRequest, context: Any
    ) -> rpb.EraseUploaderResponse:
        return await self._local.EraseUploader(request, context)
