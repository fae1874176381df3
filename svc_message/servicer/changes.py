"""MessageService RPCs that change existing messages or read their receipts."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable
from typing import Any, cast

from parley.message.v1 import messages_pb2 as pb
from parley_core.errors import Reason
from parley_core.pagination import decode_page_token, encode_page_token
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_message.domain.changes import ChangesHandler, reaction_counts

EMOJI_MAX_BYTES = 32
LIST_PAGE_DEFAULT, LIST_PAGE_MAX = 100, 1000
RECEIPTS_PAGE_DEFAULT, RECEIPTS_PAGE_MAX = 256, 1024
DELETE_SCOPES = frozenset({pb.DELETE_SCOPE_FOR_ME, pb.DELETE_SCOPE_FOR_EVERYONE})


def check_emoji(check: Check, value: str) -> None:
    """One emoji-like symbol: no letters, digits, spaces or controls, so the
    field cannot carry text."""
    if not value:
        check.fail("emoji", "required")
        return
    if len(value.encode()) > EMOJI_MAX_BYTES:
        check.fail("emoji", f"at most {EMOJI_MAX_BYTES} bytes of UTF-8")
        return
    for ch in value:
        category = unicodedata.category(ch)
        if category[0] in "LNZC" and category not in ("Cf",) and ch not in "\u20e3":
            check.fail("emoji", "must be an emoji")
            return


def _paged(request: Any, scope: dict[str, Any], *, default: int, maximum: int) -> tuple[int, int]:
    """(offset, limit) of a page over a small, fully computed list."""
    check = Check()
    limit = check.page_size(request.page_size, default=default, maximum=maximum)
    check.done()
    offset = 0
    if request.page_token:
        offset = decode_page_token(request.page_token, scope=scope).get("offset", 0)
        if not isinstance(offset, int) or offset < 0:
            Check().fail(
                "page_token", "not a page token from this API", reason=Reason.PAGE_TOKEN_INVALID
            ).done()
    return offset, limit


class ChangesServicer:
    def __init__(
        self,
        changes: ChangesHandler,
        *,
        max_body_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._changes = changes
        self._max_body = max_body_bytes
        self._clock = clock

    async def EditMessage(
        self, request: pb.EditMessageRequest, context: Any
    ) -> pb.EditMessageResponse:
        check = (
            Check().request_id(request.request_id).id("conversation_id", request.conversation_id)
        )
        check.id("message_id", request.message_id)
        check.payload("body", request.body, max_bytes=self._max_body, reason=Reason.BODY_TOO_LARGE)
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        done = await self._changes.edit(
            account_id=rpc.account_id,
            conversation_id=request.conversation_id,
            message_id=request.message_id,
            body=request.body,
            request_id=rpc.request_id,
            now=rpc.now,
        )
        return pb.EditMessageResponse(edit=cast(pb.Event, done.envelope.wire).edit)

    async def DeleteMessage(
        self, request: pb.DeleteMessageRequest, context: Any
    ) -> pb.DeleteMessageResponse:
        check = (
            Check().request_id(request.request_id).id("conversation_id", request.conversation_id)
        )
        check.id("message_id", request.message_id)
        check.enum("scope", request.scope, DELETE_SCOPES)
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        done = await self._changes.delete(
            account_id=rpc.account_id,
            conversation_id=request.conversation_id,
            message_id=request.message_id,
            for_everyone=request.scope == pb.DELETE_SCOPE_FOR_EVERYONE,
            request_id=rpc.request_id,
            now=rpc.now,
        )
        return pb.DeleteMessageResponse(deletion=cast(pb.Event, done.envelope.wire).deletion)

    async def ReactToMessage(
        self, request: pb.ReactToMessageRequest, context: Any
    ) -> pb.ReactToMessageResponse:
        check = (
            Check().request_id(request.request_id).id("conversation_id", request.conversation_id)
        )
        check.id("message_id", request.message_id)
        check_emoji(check, request.emoji)
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        message, changed = await self._changes.react(
            account_id=rpc.account_id,
            conversation_id=request.conversation_id,
            message_id=request.message_id,
            emoji=request.emoji,
            remove=request.remove,
            request_id=rpc.request_id,
            now=rpc.now,
        )
        return pb.ReactToMessageResponse(
            reactions=[pb.ReactionCount(emoji=e, count=n) for e, n in reaction_counts(message)],
            changed=changed,
        )

    async def ListReactions(
        self, request: pb.ListReactionsRequest, context: Any
    ) -> pb.ListReactionsResponse:
        Check().id("conversation_id", request.conversation_id).id(
            "message_id", request.message_id
        ).done()
        rpc = request_context(context, clock=self._clock)
        account_id = rpc.account_id
        scope = {"rpc": "ListReactions", "account": account_id, "message": request.message_id}
        offset, limit = _paged(request, scope, default=LIST_PAGE_DEFAULT, maximum=LIST_PAGE_MAX)
        rows = await self._changes.reactions(
            account_id=account_id,
            conversation_id=request.conversation_id,
            message_id=request.message_id,
        )
        page = rows[offset : offset + limit]
        token = ""
        if offset + limit < len(rows):
            token = encode_page_token({"offset": offset + limit}, scope=scope)
        return pb.ListReactionsResponse(
            reactions=[pb.Reaction(account_id=a, emoji=e) for a, e in page], next_page_token=token
        )

    async def ListMessageReceipts(
        self, request: pb.ListMessageReceiptsRequest, context: Any
    ) -> pb.ListMessageReceiptsResponse:
        check = Check().id("conversation_id", request.conversation_id)
        if request.seq <= 0:
            check.fail("seq", "must be a message seq (1 or more)")
        check.done()
        rpc = request_context(context, clock=self._clock)
        account_id = rpc.account_id
        scope = {
            "rpc": "ListMessageReceipts",
            "account": account_id,
            "conversation": request.conversation_id,
            "seq": request.seq,
        }
        offset, limit = _paged(
            request, scope, default=RECEIPTS_PAGE_DEFAULT, maximum=RECEIPTS_PAGE_MAX
        )
        rows = await self._changes.receipts(
            account_id=account_id, conversation_id=request.conversation_id, seq=request.seq
        )
        page = rows[offset : offset + limit]
        token = ""
        if offset + limit < len(rows):
            token = encode_page_token({"offset": offset + limit}, scope=scope)
        return pb.ListMessageReceiptsResponse(
            receipts=[pb.MessageReceipt(account_id=a, delivered=d, read=r) for a, d, r in page],
            next_page_token=token,
            delivered_count=sum(1 for _, d, _ in rows if d),
            read_count=sum(1 for _, _, r in rows if r),
        )
