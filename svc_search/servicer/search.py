"""parley.search.v1.SearchService over gRPC: validation, conversion, and
padding responses to their size bucket."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from parley.search.v1 import search_pb2 as pb
from parley.search.v1 import search_pb2_grpc
from parley_core.errors import InvalidArgument, Reason
from parley_core.pagination import decode_page_token, encode_page_token
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_search.domain.indexing import IndexHandler
from svc_search.domain.pages import fingerprint, padding_length
from svc_search.domain.queries import SearchHandler
from svc_search.model import KEY_ID_BYTES, Group, Page, Position, Shape

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SearchService"].full_name
PAGE_DEFAULT, PAGE_MAX = 20, 100


def check_key_id(check: Check, field: str, value: bytes) -> None:
    if len(value) != KEY_ID_BYTES:
        check.fail(field, f"must be {KEY_ID_BYTES} bytes, got {len(value)}")


def check_token_lengths(check: Check, field: str, tokens: Sequence[bytes], shape: Shape) -> None:
    for i, token in enumerate(tokens):
        if not shape.min_token_bytes <= len(token) <= shape.max_token_bytes:
            check.fail(
                f"{field}[{i}]",
                f"must be {shape.min_token_bytes} to {shape.max_token_bytes} bytes, "
                f"got {len(token)}",
            )
            return


def settings_proto(shape: Shape) -> pb.SearchSettings:
    return pb.SearchSettings(
        groups_per_query=shape.groups_per_query,
        tokens_per_group=shape.tokens_per_group,
        min_token_bytes=shape.min_token_bytes,
        max_token_bytes=shape.max_token_bytes,
        max_tokens_per_message=shape.max_tokens_per_message,
    )


def _time(at_ms: int) -> Timestamp:
    return Timestamp(seconds=at_ms // 1000, nanos=(at_ms % 1000) * 1_000_000)


def _position(raw: dict[str, Any]) -> Position:
    at, message_id, group = raw.get("a"), raw.get("m"), raw.get("g")
    if not (isinstance(at, int) and isinstance(message_id, str) and isinstance(group, int)):
        raise InvalidArgument.field(
            "page_token", "not a page token from this API", reason=Reason.PAGE_TOKEN_INVALID
        )
    return (at, message_id, group)


def padded(reply: pb.SearchResponse, *, smallest: int) -> pb.SearchResponse:
    """The reply rounded up to its size bucket (a power of two bytes)."""
    reply.padding = b"\x00" * padding_length(reply.ByteSize(), smallest=smallest)
    return reply


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(
        self,
        searches: SearchHandler,
        indexing: IndexHandler,
        shape: Shape,
        *,
        response_bucket_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._searches = searches
        self._indexing = indexing
        self._shape = shape
        self._bucket = response_bucket_bytes
        self._clock = clock

    async def GetSearchSettings(
        self, request: pb.GetSearchSettingsRequest, context: Any
    ) -> pb.SearchSettings:
        return settings_proto(self._shape)

    async def IndexMessage(
        self, request: pb.IndexMessageRequest, context: Any
    ) -> pb.IndexMessageResponse:
        shape = self._shape
        check = Check().request_id(request.request_id)
        check.id("conversation_id", request.conversation_id).id("message_id", request.message_id)
        check_key_id(check, "key_id", request.key_id)
        tokens = list(request.tokens)
        if len(tokens) > shape.max_tokens_per_message:
            check.fail("tokens", f"at most {shape.max_tokens_per_message}, got {len(tokens)}")
        else:
            check_token_lengths(check, "tokens", tokens, shape)
            if len(set(tokens)) != len(tokens):
                check.fail("tokens", "must be distinct")
            if len({len(t) for t in tokens}) > 1:
                check.fail("tokens", "must all be of one length")
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        count = await self._indexing.index(
            account_id=rpc.account_id,
            request_id=rpc.request_id,
            conversation_id=request.conversation_id,
            message_id=request.message_id,
            key_id=request.key_id,
            tokens=tokens,
            now=rpc.now,
        )
        return pb.IndexMessageResponse(posting_count=count)

    async def RemoveMessage(
        self, request: pb.RemoveMessageRequest, context: Any
    ) -> pb.RemoveMessageResponse:
        Check().id("conversation_id", request.conversation_id).id(
            "message_id", request.message_id
        ).done()
        rpc = request_context(context, clock=self._clock)
        await self._indexing.remove(
            account_id=rpc.account_id,
            conversation_id=request.conversation_id,
            message_id=request.message_id,
            now=rpc.now,
        )
        return pb.RemoveMessageResponse()

    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        shape = self._shape
        check = Check()
        if len(request.groups) != shape.groups_per_query:
            check.fail(
                "groups", f"must be exactly {shape.groups_per_query}, got {len(request.groups)}"
            )
        groups = []
        for i, group in enumerate(request.groups[: shape.groups_per_query]):
            field = f"groups[{i}]"
            check.id(f"{field}.conversation_id", group.conversation_id)
            check_key_id(check, f"{field}.key_id", group.key_id)
            if len(group.tokens) != shape.tokens_per_group:
                check.fail(
                    f"{field}.tokens",
                    f"must be exactly {shape.tokens_per_group}, got {len(group.tokens)}",
                )
            else:
                check_token_lengths(check, f"{field}.tokens", group.tokens, shape)
            groups.append(
                Group(
                    conversation_id=group.conversation_id,
                    key_id=group.key_id,
                    tokens=tuple(dict.fromkeys(group.tokens)),
                )
            )
        page_size = check.page_size(request.page_size, default=PAGE_DEFAULT, maximum=PAGE_MAX)
        check.done()
        rpc = request_context(context, clock=self._clock)
        scope = {"rpc": "Search", "account": rpc.account_id, "query": fingerprint(groups)}
        start = (
            _position(decode_page_token(request.page_token, scope=scope))
            if request.page_token
            else None
        )
        page = await self._searches.search(
            account_id=rpc.account_id, groups=groups, start=start, page_size=page_size, now=rpc.now
        )
        return padded(self._reply(page, scope), smallest=self._bucket)

    def _reply(self, page: Page, scope: dict[str, str]) -> pb.SearchResponse:
        reply = pb.SearchResponse(
            hits=[
                pb.SearchHit(
                    group_index=hit.group_index,
                    conversation_id=hit.conversation_id,
                    message_id=hit.message_id,
                    seq=hit.seq,
                    send_time=_time(hit.at_ms),
                )
                for hit in page.hits
            ]
        )
        if page.next_position is not None:
            at, message_id, group = page.next_position
            reply.next_page_token = encode_page_token(
                {"a": at, "m": message_id, "g": group}, scope=scope
            )
        return reply
