"""parley.message.v1.MessageInternalService (called by svc_media, svc_search,
and by svc_keys for erasures, with the service credential, which the interceptor
checks), and the checks of media ids shared with SendMessage."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from parley.message.v1 import internal_pb2 as ipb
from parley.message.v1 import internal_pb2_grpc as igrpc
from parley.message.v1 import messages_pb2 as pb
from parley_core.validation import Check
from svc_message.domain.erasure import AccountErasure
from svc_message.domain.media import MediaAccess, MediaNotices, distinct
from svc_message.domain.search_access import SearchAccess
from svc_message.model.media import (
    MAX_ACCESS_CHECK_IDS,
    MAX_COUNTED_IDS,
    MEDIA_ID_MAX_CHARS,
    MediaNotice,
)
from svc_message.servicer.search import check_search_messages

SERVICE_NAME = ipb.DESCRIPTOR.services_by_name["MessageInternalService"].full_name
NOTICE_KINDS = frozenset(pb.MediaNotice.Kind.values()) - {pb.MediaNotice.KIND_UNSPECIFIED}
# Every device an account ever had: revoked ones free their slot, so more
# than the cap over a lifetime, but not without bound.
MAX_ERASED_DEVICES = 10_000
# The range of google.protobuf.Timestamp: 0001-01-01 to 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def media_id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a media id (svc_media decides which ids exist)."""
    if not value:
        return "required: a media id from MediaService"
    if len(value) > MEDIA_ID_MAX_CHARS:
        return f"at most {MEDIA_ID_MAX_CHARS} characters"
    if not (value.isascii() and value.isprintable()) or " " in value:
        return "must be printable ASCII without spaces"
    return None


def check_media_ids(
    check: Check, values: Sequence[str], *, maximum: int, field: str = "media_ids"
) -> list[str]:
    """The distinct ids in their first order (repeats collapse), each checked;
    a bad one is named by its position, never echoed (it may be any size)."""
    ids = distinct(values)
    if len(ids) > maximum:
        check.fail(field, f"at most {maximum} distinct ids, got {len(ids)}")
        return []
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            continue
        seen.add(value)
        problem = media_id_problem(value)
        if problem is not None:
            check.fail(f"{field}[{i}]", problem)
    return ids


class MessageInternalServicer(igrpc.MessageInternalServiceServicer):
    def __init__(
        self,
        access: MediaAccess,
        notices: MediaNotices,
        erasure: AccountErasure,
        search: SearchAccess,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._erasure = erasure
        self._search = search
        self._clock = clock
        self._access = access
        self._notices = notices

    async def CheckMediaAccess(
        self, request: ipb.CheckMediaAccessRequest, context: Any
    ) -> ipb.CheckMediaAccessResponse:
        check = Check().id("account_id", request.account_id)
        ids = check_media_ids(check, request.media_ids, maximum=MAX_ACCESS_CHECK_IDS)
        check.done()
        readable = await self._access.readable(request.account_id, ids)
        return ipb.CheckMediaAccessResponse(readable_media_ids=[m for m in ids if m in readable])

    async def CountMediaReferences(
        self, request: ipb.CountMediaReferencesRequest, context: Any
    ) -> ipb.CountMediaReferencesResponse:
        check = Check()
        ids = check_media_ids(check, request.media_ids, maximum=MAX_COUNTED_IDS)
        check.done()
        return ipb.CountMediaReferencesResponse(references=await self._access.counts(ids))

    async def NotifyDevice(
        self, request: ipb.NotifyDeviceRequest, context: Any
    ) -> ipb.NotifyDeviceResponse:
        check = Check().id("account_id", request.account_id).id("device_id", request.device_id)
        notice = request.notice
        expire_at: datetime | None = None
        if not request.HasField("notice"):
            check.fail("notice", "required")
        else:
            check.enum("notice.kind", notice.kind, NOTICE_KINDS)
            problem = media_id_problem(notice.media_id)
            if problem is not None:
                check.fail("notice.media_id", problem)
            if notice.HasField("expire_time"):
                seconds, nanos = notice.expire_time.seconds, notice.expire_time.nanos
                if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
                    check.fail("notice.expire_time", "not a valid timestamp")
                else:
                    expire_at = notice.expire_time.ToDatetime(tzinfo=UTC)
        check.done()
        await self._notices.notify(
            account_id=request.account_id,
            device_id=request.device_id,
            notice=MediaNotice(kind=notice.kind, media_id=notice.media_id, expire_at=expire_at),
        )
        return ipb.NotifyDeviceResponse()

    async def EraseAccount(
        self, request: ipb.EraseAccountRequest, context: Any
    ) -> ipb.EraseAccountResponse:
        check = Check().id("account_id", request.account_id)
        check.text("erasure_id", request.erasure_id, min_len=1, max_len=64)
        if len(request.device_ids) > MAX_ERASED_DEVICES:
            check.fail("device_ids", f"at most {MAX_ERASED_DEVICES}")
        for i, device_id in enumerate(request.device_ids[:MAX_ERASED_DEVICES]):
            check.id(f"device_ids[{i}]", device_id)
        check.done()
        done = await self._erasure.erase(
            account_id=request.account_id,
            device_ids=list(request.device_ids),
            erasure_id=request.erasure_id,
            now=self._clock(),
        )
        return ipb.EraseAccountResponse(done=done)

    async def CheckSearchMessages(
        self, request: ipb.CheckSearchMessagesRequest, context: Any
    ) -> ipb.CheckSearchMessagesResponse:
        return await check_search_messages(self._search, request)
