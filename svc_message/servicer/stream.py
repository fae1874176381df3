"""MessageService.Connect: the per-device delivery stream.

Writes go to gRPC one ServerEvent at a time, each at most
MAX_SERVER_EVENT_BYTES (clients refuse messages over 4 MiB by default).

A client that stops reading fills its flow-control windows, and gRPC then holds
the handler in a write until the client reads again, possibly forever. The
handler cannot notice meanwhile that its session was closed (a slow consumer
whose queue overflowed, a revoked device), so a watchdog does: when the
session is closed and the handler has not ended within WRITE_STALL_SECONDS, it
queues the session's status (the client sees it after what was already
buffered for it, once it reads), cancels the stuck handler and detaches the
session, so the process stops holding or routing anything for that stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog
from opentelemetry.trace import Span

from parley.message.v1 import messages_pb2 as pb
from parley_core.auth.caller import Caller
from parley_core.errors import InvalidArgument, ParleyError
from parley_core.rpc.request import request_context
from parley_core.rpc.status import to_grpc_status
from parley_core.telemetry import Tracing
from parley_core.validation import Check
from svc_message.domain.acks import AckBatcher
from svc_message.domain.delivery import DeliveryService
from svc_message.domain.streams import StreamSession, valid_sync_token
from svc_message.domain.typing_indicators import TypingRelay
from svc_message.model import Envelope
from svc_message.servicer.convert import ProtoEventCodec

log = structlog.get_logger(__name__)

RESUME_TIMEOUT_SECONDS = 30.0
MAX_POSITIONS = 10_000
# Events per ServerEvent are also capped by their encoded size.
MAX_SERVER_EVENT_BYTES = 1 << 20
# How long a closed session's handler may stay stuck in a write before the
# watchdog ends the RPC for it.
WRITE_STALL_SECONDS = 2.0


def server_events(batch: list[Envelope], *, max_bytes: int = MAX_SERVER_EVENT_BYTES) -> list[Any]:
    """The batch's events in order, as ServerEvents of at most ``max_bytes``
    each (an event larger than that travels alone). Events that came framed
    (live, from the doorbell) make ServerEvents in wire form: a repeated field
    is its elements one after another, so no stream copies or re-encodes them."""
    if batch and all(envelope.framed for envelope in batch):
        return _chunks([e.framed for e in batch], len, b"".join, max_bytes)
    return _chunks(
        [e.wire for e in batch],
        lambda event: event.ByteSize(),
        lambda events: pb.ServerEvent(events=events),
        max_bytes,
    )


def _chunks(
    items: list[Any],
    size_of: Callable[[Any], int],
    make: Callable[[list[Any]], Any],
    max_bytes: int,
) -> list[Any]:
    out: list[Any] = []
    chunk: list[Any] = []
    size = 0
    for item in items:
        item_size = size_of(item)
        if chunk and size + item_size > max_bytes:
            out.append(make(chunk))
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk or not out:
        out.append(make(chunk))
    return out


def _deliver_spans(tracing: Tracing, batch: list[Envelope], device_id: str) -> list[Span]:
    """A "deliver" span per traced event, child of its sending call's span."""
    spans: list[Span] = []
    for envelope in batch:
        if envelope.trace:
            span = tracing.start_child(
                "deliver",
                envelope.trace,
                attributes={
                    "parley.conversation_id": envelope.conversation_id,
                    "parley.seq": envelope.seq,
                    "parley.version": envelope.version,
                    "parley.device_id": device_id,
                },
            )
            if span is not None:
                spans.append(span)
    return spans


def _positions(check: Check, field: str, positions: Any) -> dict[str, int]:
    if len(positions) > MAX_POSITIONS:
        check.fail(field, f"at most {MAX_POSITIONS} positions")
        return {}
    result: dict[str, int] = {}
    for i, position in enumerate(positions):
        check.id(f"{field}[{i}].conversation_id", position.conversation_id)
        check.non_negative(f"{field}[{i}].seq", position.seq)
        check.non_negative(f"{field}[{i}].version", position.version)
        result[position.conversation_id] = max(
            result.get(position.conversation_id, 0), position.version
        )
    return result


class StreamServicer:
    def __init__(
        self,
        delivery: DeliveryService,
        acks: AckBatcher,
        codec: ProtoEventCodec,
        typing: TypingRelay,
        *,
        write_stall_seconds: float = WRITE_STALL_SECONDS,
        tracing: Tracing | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._delivery = delivery
        # Only when tracing is on: then each traced event's write is a span
        # in its sender's trace.
        self._tracing = tracing if tracing is not None and tracing.enabled else None
        self._acks = acks
        self._codec = codec
        self._typing = typing
        self._write_stall = write_stall_seconds
        # Statuses queued for clients that are not reading (see the module doc).
        self._pending_aborts: set[asyncio.Task[None]] = set()

    async def Connect(
        self, request_iterator: AsyncIterator[pb.ClientEvent], context: Any
    ) -> AsyncIterator[pb.ServerEvent]:
        caller = request_context(context, clock=self._clock).caller
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
        handler = asyncio.current_task()
        assert handler is not None
        watchdog = asyncio.create_task(self._end_if_stuck(session, context, handler, reader))
        events = self._delivery.stream(
            session, positions=positions, sync_token=first.resume.sync_token
        )
        try:
            # Closed here, not whenever it is collected: its cleanup ends the
            # device's routing and presence lease.
            async with contextlib.aclosing(events):
                async for batch in events:
                    spans = (
                        None
                        if self._tracing is None
                        else _deliver_spans(self._tracing, batch, caller.device_id)
                    )
                    try:
                        for server_event in server_events(batch):
                            yield server_event
                    finally:
                        for span in spans or ():
                            span.end()
        finally:
            watchdog.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._acks.flush_device(caller.device_id)

    async def _end_if_stuck(
        self,
        session: StreamSession,
        context: Any,
        handler: asyncio.Task[Any],
        reader: asyncio.Task[None],
    ) -> None:
        error = await session.wait_closed()
        # A handler that is not stuck ends the stream itself at once.
        await asyncio.sleep(self._write_stall)
        if handler.done() or context.done():
            return
        log.warning(
            "stream_stuck_ended",
            account=session.account_id,
            device=session.device_id,
            reason=str(error.reason),
        )
        abort = asyncio.create_task(self._queue_status(context, error))
        self._pending_aborts.add(abort)
        abort.add_done_callback(self._pending_aborts.discard)
        # Let the status be handed to gRPC before the write is abandoned, or
        # the client would never learn why its stream ended.
        for _ in range(100):
            if context.done():
                break
            await asyncio.sleep(0)
        handler.cancel()
        reader.cancel()
        await self._delivery.release(session)

    @staticmethod
    async def _queue_status(context: Any, error: ParleyError) -> None:
        # Completes once the client has read what was buffered before it, or
        # has gone away; either way there is nothing left to do.
        with contextlib.suppress(grpc.aio.AbortError, Exception):
            await context.abort_with_status(to_grpc_status(error))

    async def _read(
        self, requests: AsyncIterator[pb.ClientEvent], session: StreamSession, caller: Caller
    ) -> None:
        try:
            await self._read_events(requests, session, caller)
        except ParleyError as error:
            # A client event that is not one (undecodable bytes, or a kind that may
            # not follow resume): end the stream with the error instead of
            # silently ignoring the client from now on.
            session.close(error)
            return
        # The client half-closed. Left open, the stream would keep the device
        # online until the client cancels; ended after what is pending, it
        # goes offline now.
        session.finish()

    async def _read_events(
        self, requests: AsyncIterator[pb.ClientEvent], session: StreamSession, caller: Caller
    ) -> None:
        async for event in requests:
            kind = event.WhichOneof("kind")
            if kind == "ack":
                for position in event.ack.positions:
                    at, delivered, conversation_type = self._delivery.ackable(
                        session,
                        position.conversation_id,
                        seq=position.seq,
                        version=position.version,
                    )
                    if at:
                        self._acks.ack(
                            account_id=caller.account_id,
                            device_id=caller.device_id,
                            conversation_id=position.conversation_id,
                            position=at,
                            delivered=delivered,
                            kind=conversation_type,
                        )
            elif kind == "ping":
                session.offer(self._codec.pong(event.ping.nonce))
            elif kind == "typing":
                conversation_id = event.typing.conversation_id
                # Ignored like an ack for an unknown conversation: a typing
                # event is a hint, not worth ending the stream over.
                if Check().id("typing.conversation_id", conversation_id).violations:
                    self._typing.malformed()
                else:
                    await self._typing.handle(session, conversation_id, event.typing.typing)
            else:
                raise InvalidArgument.field(
                    kind or "kind", "only ack, ping and typing may follow resume"
                )
