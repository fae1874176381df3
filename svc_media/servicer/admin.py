"""parley.media.v1.MediaAdminService: operator-only (the interceptor checks the
operator credential; the principal's name is what the audit log records)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from parley.media.v1 import media_pb2 as pb
from parley.media.v1 import media_pb2_grpc
from parley_core.auth.caller import current_principal
from parley_core.pagination import decode_page_token, encode_page_token
from parley_core.rpc.convert import timestamp
from parley_core.validation import Check
from svc_media.domain.admin import AdminHandler
from svc_media.model import AuditEvent
from svc_media.servicer.media import check_sha256

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MediaAdminService"].full_name
AUDIT_PAGE_DEFAULT = 100
AUDIT_PAGE_MAX = 1000
MAX_REASON = 1024


def event_proto(event: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        action=int(event.action),  # type: ignore[arg-type]
        sha256=event.sha256,
        reason=event.reason,
        operator=event.operator,
        time=timestamp(event.at),
    )


class MediaAdminServicer(media_pb2_grpc.MediaAdminServiceServicer):
    def __init__(self, admin: AdminHandler, *, clock: Callable[[], float] = time.time) -> None:
        self._admin = admin
        self._clock = clock

    async def QuarantineMedia(
        self, request: pb.QuarantineMediaRequest, context: Any
    ) -> pb.QuarantineEntry:
        check = Check()
        check_sha256(check, "sha256", request.sha256)
        check.text("reason", request.reason, min_len=1, max_len=MAX_REASON)
        check.done()
        entry = await self._admin.quarantine(
            sha256=request.sha256,
            reason=request.reason,
            operator=current_principal().name,
            now=self._clock(),
        )
        return pb.QuarantineEntry(
            sha256=entry.sha256,
            reason=entry.reason,
            operator=entry.operator,
            create_time=timestamp(entry.created_at),
        )

    async def LiftQuarantine(
        self, request: pb.LiftQuarantineRequest, context: Any
    ) -> pb.LiftQuarantineResponse:
        check = Check()
        check_sha256(check, "sha256", request.sha256)
        check.text("reason", request.reason, min_len=1, max_len=MAX_REASON)
        check.done()
        await self._admin.lift(
            sha256=request.sha256,
            reason=request.reason,
            operator=current_principal().name,
            now=self._clock(),
        )
        return pb.LiftQuarantineResponse()

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Any
    ) -> pb.ListAuditEventsResponse:
        check = Check()
        limit = check.page_size(
            request.page_size, default=AUDIT_PAGE_DEFAULT, maximum=AUDIT_PAGE_MAX
        )
        check.done()
        scope = {"rpc": "ListAuditEvents"}
        before = None
        if request.page_token:
            position = decode_page_token(request.page_token, scope=scope)
            at, event_id = position.get("t"), position.get("e")
            if not isinstance(at, int) or not isinstance(event_id, str):
                check.fail("page_token", "not a page token from this API").done()
            else:
                before = (at / 1000, event_id)
        events = await self._admin.events(before=before, limit=limit + 1)
        token = ""
        if len(events) > limit:
            events = events[:limit]
            last = events[-1]
            token = encode_page_token({"t": round(last.at * 1000), "e": last.event_id}, scope=scope)
        return pb.ListAuditEventsResponse(
            events=[event_proto(e) for e in events], next_page_token=token
        )
