"""parley.message.v1.MessageService: the unary RPCs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from parley.message.v1 import messages_pb2 as pb
from parley_core.errors import InvalidArgument, Reason
from parley_core.pagination import decode_page_token, encode_page_token
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.inbox import InboxHandler
from svc_message.domain.messages import MessagesHandler
from svc_message.model.media import MAX_MEDIA_PER_MESSAGE
from svc_message.servicer.convert import (
    encode_list_messages,
    view_proto,
    watermarks_proto,
)
from svc_message.servicer.media import check_media_ids

# Clients cannot write system messages.
MESSAGE_TYPES = frozenset(pb.MessageType.values()) - {
    pb.MESSAGE_TYPE_UNSPECIFIED,
    pb.MESSAGE_TYPE_SYSTEM,
}
INBOX_PAGE_DEFAULT, INBOX_PAGE_MAX = 20, 100
HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX = 50, 200


class MessageUnaryServicer:
    """The unary half of MessageService; the stream lives in ``stream``."""

    def __init__(
        self,
        conversations: ConversationsHandler,
        messages: MessagesHandler,
        inbox: InboxHandler,
        *,
        max_body_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conversations = conversations
        self._messages = messages
        self._inbox = inbox
        self._max_body = max_body_bytes
        self._clock = clock

    async def CreateDirectConversation(
        self, request: pb.CreateDirectConversationRequest, context: Any
    ) -> pb.ConversationView:
        Check().request_id(request.request_id).id("peer_account_id", request.peer_account_id).done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        entry = await self._conversations.create_direct(
            account_id=rpc.account_id,
            peer_account_id=request.peer_account_id,
            bearer_token=rpc.bearer_token,
            now=rpc.now,
        )
        return view_proto(await self._inbox.decorate_one(rpc.account_id, entry, now=rpc.now))

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: Any
    ) -> pb.ConversationView:
        Check().id("conversation_id", request.conversation_id).done()
        rpc = request_context(context, clock=self._clock)
        account_id = rpc.account_id
        entry = await self._conversations.get(
            conversation_id=request.conversation_id, account_id=account_id
        )
        return view_proto(await self._inbox.decorate_one(account_id, entry, now=rpc.now))

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Any
    ) -> pb.SendMessageResponse:
        check = Check().request_id(request.request_id)
        check.id("conversation_id", request.conversation_id)
        check.enum("type", request.type, MESSAGE_TYPES)
        check.payload("body", request.body, max_bytes=self._max_body, reason=Reason.BODY_TOO_LARGE)
        check.id("reply_to_message_id", request.reply_to_message_id, required=False)
        media_ids = check_media_ids(check, request.media_ids, maximum=MAX_MEDIA_PER_MESSAGE)
        if media_ids and request.type == pb.MESSAGE_TYPE_SYSTEM:
            check.fail("media_ids", "not allowed on system messages")
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        sent = await self._messages.send(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            conversation_id=request.conversation_id,
            request_id=rpc.request_id,
            type=request.type,
            body=request.body,
            reply_to_message_id=request.reply_to_message_id,
            forwarded=request.forwarded,
            now=rpc.now,
            media_ids=media_ids,
        )
        # The stream event built at commit already holds the message proto.
        return pb.SendMessageResponse(message=cast(pb.Event, sent.envelope.wire).message)

    async def ListMessages(self, request: pb.ListMessagesRequest, context: Any) -> bytes:
        check = Check().id("conversation_id", request.conversation_id)
        limit = check.page_size(
            request.page_size, default=HISTORY_PAGE_DEFAULT, maximum=HISTORY_PAGE_MAX
        )
        direction = request.direction or pb.DIRECTION_BACKWARD
        if direction not in (pb.DIRECTION_BACKWARD, pb.DIRECTION_FORWARD):
            check.fail("direction", f"unknown value {request.direction}")
        check.non_negative("start_seq", request.start_seq)
        check.done()
        rpc = request_context(context, clock=self._clock)
        account_id = rpc.account_id
        forward = direction == pb.DIRECTION_FORWARD
        scope = {
            "rpc": "ListMessages",
            "account": account_id,
            "conversation": request.conversation_id,
            "forward": forward,
        }
        start = request.start_seq
        if request.page_token:
            position = decode_page_token(request.page_token, scope=scope)
            start = position.get("seq", -1)
            if not isinstance(start, int) or start < 0:
                raise InvalidArgument.field(
                    "page_token", "not a page token from this API", reason=Reason.PAGE_TOKEN_INVALID
                )
        page = await self._messages.page(
            account_id=account_id,
            conversation_id=request.conversation_id,
            start_seq=start,
            forward=forward,
            limit=limit,
        )
        token = ""
        if page.next_start is not None:
            token = encode_page_token({"seq": page.next_start}, scope=scope)
        # The page is already in wire form: sent as it is.
        return encode_list_messages(page.wire, token)

    async def _mark(self, request: Any, context: Any, *, read: bool) -> pb.Watermarks:
        check = Check().request_id(request.request_id)
        check.id("conversation_id", request.conversation_id)
        check.non_negative("seq", request.seq)
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        watermarks = await self._conversations.mark(
            conversation_id=request.conversation_id,
            account_id=rpc.account_id,
            delivered=request.seq,
            read=request.seq if read else 0,
            now=rpc.now,
        )
        if read:
            await self._inbox.clear_unread_mark(request.conversation_id, rpc.account_id)
        return watermarks_proto(watermarks)

    async def MarkDelivered(self, request: pb.MarkDeliveredRequest, context: Any) -> pb.Watermarks:
        return await self._mark(request, context, read=False)

    async def MarkRead(self, request: pb.MarkReadRequest, context: Any) -> pb.Watermarks:
        return await self._mark(request, context, read=True)
