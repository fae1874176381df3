"""MessageService.Connect: the per-device delivery stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog

from parley.message.v1 import messages_pb2 as pb
from parley_core.auth.caller import Caller, current_caller
from parley_core.errors import InvalidArgument, ParleyError
from parley_core.validation import Check
from svc_message.domain.delivery import (
    AckBatcher,
    DeliveryService,
    StreamSession,
    valid_sync_token,
)
from svc_message.servicer.convert import ProtoEventCodec

log = structlog.get_logger(__name__)

RESUME_TIMEOUT_SECONDS = 30.0
MAX_POSITIONS = 10_000


def _positions(check: Check, field: str, positions: Any) -> dict[str, int]:
    if len(positions) > MAX_POSITIONS:
        check.fail(field, f"at most {MAX_POSITIONS} positions")
        return {}
    result: dict[str, int] = {}
    for i, position in enumerate(positions):
        check.id(f"{field}[{i}].conversation_id", position.conversation_id)
        check.non_negative(f"{field}[{i}].seq", position.seq)
        result[position.conversation_id] = max(
            result.get(position.conversation_id, 0), position.seq
        )
    return result


class StreamServicer:
    def __init__(self, delivery: DeliveryService, acks: AckBatcher, codec: ProtoEventCodec) -> None:
        self._delivery = delivery
        self._acks = acks
        self._codec = codec

    async def Connect(
        self, request_iterator: AsyncIterator[pb.ClientEvent], context: Any
    ) -> AsyncIterator[pb.ServerEvent]:
        caller = current_caller()
        try:
            first = await asyncio.wait_for(anext(request_iterator), RESUME_TIMEOUT_SECONDS)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise InvalidArgument.field("resume", "send resume first, within 30 s") from None
        check = Check()
        if first.WhichOneof("kind") != "resume":
            check.fail("resume", "the first event of a stream must be resume")
        positions = _positions(check, "resume.positions", first.resume.positions)
        if not valid_sync_token(first.resume.sync_token):
            check.fail("resume.sync_token", "not a sync token from this API")
        check.done()

        session = self._delivery.open(
            account_id=caller.account_id, device_id=caller.device_id, expires_at=caller.expires_at
        )
        reader = asyncio.create_task(self._read(request_iterator, session, caller))
        try:
            async for batch in self._delivery.stream(
                session, positions=positions, sync_token=first.resume.sync_token
            ):
                yield pb.ServerEvent(events=[envelope.wire for envelope in batch])  # type: ignore[misc]
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(
        self, requests: AsyncIterator[pb.ClientEvent], session: StreamSession, caller: Caller
    ) -> None:
        try:
            await self._read_events(requests, session, caller)
        except ParleyError as error:
            # A client event that is not one (undecodable bytes): end the stream
            # with the error instead of silently ignoring the client from now on.
            session.close(error)

    async def _read_events(
        self, requests: AsyncIterator[pb.ClientEvent], session: StreamSession, caller: Caller
    ) -> None:
        async for event in requests:
            kind = event.WhichOneof("kind")
            if kind == "ack":
                for position in event.ack.positions:
                    if self._delivery.may_ack(session, position.conversation_id, position.seq):
                        self._acks.ack(
                            account_id=caller.account_id,
                            device_id=caller.device_id,
                            conversation_id=position.conversation_id,
                            seq=position.seq,
                        )
            elif kind == "ping":
                session.offer(self._codec.pong(event.ping.nonce))
            else:
                session.close(
                    InvalidArgument.field(kind or "kind", "only ack and ping may follow resume")
                )
                return
