"""MessageService.SetServerSearch, and MessageInternalService.CheckSearchMessages
(svc_search's one question about a page of candidate hits)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from parley.message.v1 import internal_pb2 as ipb
from parley.message.v1 import messages_pb2 as pb
from parley_core.rpc.convert import timestamp
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_message.domain.search_access import SearchAccess
from svc_message.domain.search_setting import ServerSearchSetting
from svc_message.model.search import MAX_CHECKED_CONVERSATIONS, MAX_CHECKED_MESSAGES
from svc_message.servicer.convert import view_proto


class ServerSearchServicer:
    def __init__(
        self, setting: ServerSearchSetting, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._setting = setting
        self._clock = clock

    async def SetServerSearch(
        self, request: pb.SetServerSearchRequest, context: Any
    ) -> pb.ConversationView:
        Check().request_id(request.request_id).id("conversation_id", request.conversation_id).done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        entry = await self._setting.set(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            request_id=rpc.request_id,
            conversation_id=request.conversation_id,
            enabled=request.enabled,
            now=rpc.now,
        )
        return view_proto(entry)


def _ids(check: Check, field: str, values: Any, maximum: int) -> list[str]:
    if len(values) > maximum:
        check.fail(field, f"at most {maximum}, got {len(values)}")
        return []
    for i, value in enumerate(values):
        check.id(f"{field}[{i}]", value)
    return list(dict.fromkeys(values))


async def check_search_messages(
    access: SearchAccess, request: ipb.CheckSearchMessagesRequest
) -> ipb.CheckSearchMessagesResponse:
    # No account: the settings alone (svc_search's sweeper).
    check = Check().id("account_id", request.account_id, required=False)
    conversation_ids = _ids(
        check, "conversation_ids", request.conversation_ids, MAX_CHECKED_CONVERSATIONS
    )
    message_ids = _ids(check, "message_ids", request.message_ids, MAX_CHECKED_MESSAGES)
    check.done()
    answer = await access.check(request.account_id, conversation_ids, message_ids)
    reply = ipb.CheckSearchMessagesResponse(
        conversations=[
            ipb.SearchConversationState(
                conversation_id=c.conversation_id,
                server_search=c.server_search,
                searchable=c.searchable,
            )
            for c in answer.conversations
        ]
    )
    for m in answer.messages:
        reply.messages.append(
            ipb.SearchMessageState(
                message_id=m.message_id,
                conversation_id=m.conversation_id,
                sender_account_id=m.sender_account_id,
                seq=m.seq,
                send_time=timestamp(m.created_at),
                deleted=m.deleted,
                readable=m.readable,
            )
        )
    return reply
