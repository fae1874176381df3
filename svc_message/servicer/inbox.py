"""parley.message.v1.MessageService: the inbox list and the per-member inbox controls."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from parley.message.v1 import messages_pb2 as pb
from parley_core.errors import InvalidArgument, Reason
from parley_core.pagination import decode_page_token, encode_page_token
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.inbox import (
    ACTIVE,
    ALL,
    ARCHIVED,
    ActivityCursor,
    InboxCursor,
    InboxHandler,
    PinCursor,
)
from svc_message.servicer.convert import view_proto

INBOX_PAGE_DEFAULT, INBOX_PAGE_MAX = 20, 100
ARCHIVE_FILTERS = {
    pb.ARCHIVE_FILTER_UNSPECIFIED: ACTIVE,
    pb.ARCHIVE_FILTER_ACTIVE: ACTIVE,
    pb.ARCHIVE_FILTER_ARCHIVED: ARCHIVED,
    pb.ARCHIVE_FILTER_ALL: ALL,
}
# The range of google.protobuf.Timestamp: 0001-01-01 to 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def _bad_token() -> InvalidArgument:
    return InvalidArgument.field(
        "page_token", "not a page token from this API", reason=Reason.PAGE_TOKEN_INVALID
    )


def encode_cursor(cursor: InboxCursor, *, scope: dict[str, Any]) -> str:
    if isinstance(cursor, PinCursor):
        return encode_page_token(
            {"pin": cursor.pin_rank, "id": cursor.conversation_id}, scope=scope
        )
    return encode_page_token(
        {"at": cursor.at.isoformat(), "id": cursor.conversation_id}, scope=scope
    )


def decode_cursor(token: str, *, scope: dict[str, Any]) -> InboxCursor:
    """The position a page token continues from: inside the pinned part (the
    pinned conversations only come on the first pages) or past it."""
    position = decode_page_token(token, scope=scope)
    conversation_id = position.get("id")
    if not isinstance(conversation_id, str):
        raise _bad_token()
    rank = position.get("pin")
    if rank is not None:
        if not isinstance(rank, int) or isinstance(rank, bool):
            raise _bad_token()
        return PinCursor(rank, conversation_id)
    try:
        at = datetime.fromisoformat(position["at"])
    except (KeyError, TypeError, ValueError):
        raise _bad_token() from None
    if at.tzinfo is None:
        raise _bad_token()
    return ActivityCursor(at, conversation_id)


class InboxServicer:
    """ListConversations, SetMuted, SetPinned, SetArchived and MarkUnread."""

    def __init__(
        self,
        inbox: InboxHandler,
        conversations: ConversationsHandler,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inbox = inbox
        # Kept for the composition root's call; the inbox handler holds its own.
        self._conversations = conversations
        self._clock = clock

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: Any
    ) -> pb.ListConversationsResponse:
        check = Check()
        limit = check.page_size(
            request.page_size, default=INBOX_PAGE_DEFAULT, maximum=INBOX_PAGE_MAX
        )
        archive_filter = ARCHIVE_FILTERS.get(request.archive_filter)
        if archive_filter is None:
            check.fail("archive_filter", f"unknown value {request.archive_filter}")
        check.done()
        rpc = request_context(context, clock=self._clock)
        assert archive_filter is not None
        account_id = rpc.account_id
        # UNSPECIFIED and ACTIVE share tokens: they are the same list.
        scope = {"rpc": "ListConversations", "account": account_id, "filter": archive_filter}
        after = decode_cursor(request.page_token, scope=scope) if request.page_token else None
        page = await self._inbox.inbox(
            account_id,
            after=after,
            limit=limit,
            archive_filter=archive_filter,
            now=rpc.now,
        )
        token = "" if page.next is None else encode_cursor(page.next, scope=scope)
        return pb.ListConversationsResponse(
            conversations=[view_proto(e) for e in page.entries], next_page_token=token
        )

    async def SetMuted(self, request: pb.SetMutedRequest, context: Any) -> pb.ConversationView:
        check = Check().request_id(request.request_id)
        check.id("conversation_id", request.conversation_id)
        until: datetime | None = None
        if request.HasField("until"):
            seconds, nanos = request.until.seconds, request.until.nanos
            if request.forever:
                check.fail("until", "must be unset when forever is true")
            elif not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
                check.fail("until", "not a valid timestamp")
            else:
                until = request.until.ToDatetime(tzinfo=UTC)
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        entry = await self._inbox.set_muted(
            conversation_id=request.conversation_id,
            account_id=rpc.account_id,
            until=until,
            forever=request.forever,
            request_id=rpc.request_id,
            now=rpc.now,
        )
        return view_proto(entry)

    async def SetPinned(self, request: pb.SetPinnedRequest, context: Any) -> pb.ConversationView:
        Check().request_id(request.request_id).id("conversation_id", request.conversation_id).done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        entry = await self._inbox.set_pinned(
            conversation_id=request.conversation_id,
            account_id=rpc.account_id,
            pinned=request.pinned,
            request_id=rpc.request_id,
            now=rpc.now,
        )
        return view_proto(entry)

    async def SetArchived(
        self, request: pb.SetArchivedRequest, context: Any
    ) -> pb.ConversationView:
        Check().request_id(request.request_id).id("conversation_id", request.conversation_id).done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        entry = await self._inbox.set_archived(
            conversation_id=request.conversation_id,
            account_id=rpc.account_id,
            archived=request.archived,
            request_id=rpc.request_id,
            now=rpc.now,
        )
        return view_proto(entry)

    async def MarkUnread(self, request: pb.MarkUnreadRequest, context: Any) -> pb.ConversationView:
        Check().request_id(request.request_id).id("conversation_id", request.conversation_id).done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        entry = await self._inbox.mark_unread(
            conversation_id=request.conversation_id,
            account_id=rpc.account_id,
            request_id=rpc.request_id,
            now=rpc.now,
        )
        return view_proto(entry)
