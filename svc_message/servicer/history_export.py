"""MessageService's history export RPCs: RequestHistoryExport,
GetHistoryExport, ListHistoryExports, CancelHistoryExport."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from google.protobuf.duration_pb2 import Duration

from parley.message.v1 import messages_pb2 as pb
from parley_core.errors import Reason
from parley_core.pagination import decode_page_token, encode_page_token
from parley_core.rpc.convert import timestamp
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_message.domain.history_export import HistoryExports, eta_seconds
from svc_message.model.history_export import ExportJob, ExportState

DEFAULT_PAGE = 20
MAX_PAGE = 100
# Tokens carry an offset; no account has this many exports.
MAX_OFFSET = 1_000_000


class HistoryExportServicer:
    def __init__(self, exports: HistoryExports, *, clock: Callable[[], float] = time.time) -> None:
        self._exports = exports
        self._clock = clock

    def _proto(self, job: ExportJob, now: float) -> pb.HistoryExport:
        reply = pb.HistoryExport(
            export_id=job.export_id,
            state=int(job.state),  # type: ignore[arg-type]
            conversation_id=job.conversation_id,
            objects_done=job.objects_done,
            objects_total=job.objects_total,
            bytes_done=job.bytes_done,
            bytes_total=job.bytes_total,
            message_count=job.message_count,
            failure=job.failure,
            create_time=timestamp(job.created_at),
            update_time=timestamp(job.updated_at),
        )
        eta = eta_seconds(job, now)
        if eta is not None:
            reply.eta.CopyFrom(Duration(seconds=int(eta), nanos=int((eta % 1) * 1e9)))
        if job.state is ExportState.READY and job.expire_at is not None:
            reply.download_url = self._exports.download_url(job, now)
            reply.expire_time.CopyFrom(timestamp(job.expire_at))
        return reply

    async def RequestHistoryExport(
        self, request: pb.RequestHistoryExportRequest, context: Any
    ) -> pb.HistoryExport:
        check = Check().request_id(request.request_id)
        scope = request.WhichOneof("scope")
        if scope is None or (scope == "all" and not request.all):
            check.fail("scope", "set conversation_id, or all to true")
        elif scope == "conversation_id":
            check.id("conversation_id", request.conversation_id)
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        job = await self._exports.request(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            request_id=rpc.request_id,
            conversation_id=request.conversation_id if scope == "conversation_id" else "",
            now=rpc.now,
        )
        return self._proto(job, rpc.now)

    async def GetHistoryExport(
        self, request: pb.GetHistoryExportRequest, context: Any
    ) -> pb.HistoryExport:
        Check().id("export_id", request.export_id).done()
        rpc = request_context(context, clock=self._clock)
        job = await self._exports.get(account_id=rpc.account_id, export_id=request.export_id)
        return self._proto(job, rpc.now)

    async def ListHistoryExports(
        self, request: pb.ListHistoryExportsRequest, context: Any
    ) -> pb.ListHistoryExportsResponse:
        check = Check()
        size = check.page_size(request.page_size, default=DEFAULT_PAGE, maximum=MAX_PAGE)
        check.done()
        rpc = request_context(context, clock=self._clock)
        scope = {"rpc": "ListHistoryExports", "account": rpc.account_id}
        offset = 0
        if request.page_token:
            position = decode_page_token(request.page_token, scope=scope)
            offset = position.get("offset", 0)
            if not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
                Check().fail(
                    "page_token",
                    "not a page token from this API",
                    reason=Reason.PAGE_TOKEN_INVALID,
                ).done()
        jobs = await self._exports.page(account_id=rpc.account_id, offset=offset, limit=size + 1)
        reply = pb.ListHistoryExportsResponse(
            exports=[self._proto(job, rpc.now) for job in jobs[:size]]
        )
        if len(jobs) > size:
            reply.next_page_token = encode_page_token({"offset": offset + size}, scope=scope)
        return reply

    async def CancelHistoryExport(
        self, request: pb.CancelHistoryExportRequest, context: Any
    ) -> pb.HistoryExport:
        Check().id("export_id", request.export_id).done()
        rpc = request_context(context, clock=self._clock)
        job = await self._exports.cancel(
            account_id=rpc.account_id, export_id=request.export_id, now=rpc.now
        )
        return self._proto(job, rpc.now)
