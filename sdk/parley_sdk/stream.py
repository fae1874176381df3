"""The delivery stream (``MessageService.Connect``) as an async iterator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from grpc import aio

from parley.message.v1 import messages_pb2
from parley_sdk._session import Session, bearer_token
from parley_sdk.errors import (
    ErrorReason,
    ParleyError,
    RateLimitedError,
    TokenExpiredError,
    UnavailableError,
    from_rpc_error,
)
from parley_sdk.models import (
    StreamEvent,
    StreamPosition,
    SyncCompleteEvent,
    event_from_proto,
    position_of,
    positions_proto,
)
from parley_sdk.typing_indicators import TypingThrottle

__all__ = ["AckPolicy", "DeliveryStream", "EventPreparer", "PositionTracker"]

_Call = aio.StreamStreamCall[messages_pb2.ClientEvent, messages_pb2.ServerEvent]

EventPreparer = Callable[[StreamEvent], Awaitable[StreamEvent]]
"""Runs on each new event before it is yielded (so before it is acked), e.g. to
decrypt a message; returns the event to yield."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AckPolicy:
    """When an auto-acking stream tells the server what the consumer handled.

    At most one ack per ``interval`` seconds: handled events are acked at
    once when no ack went out for ``interval`` (a quiet chat's "delivered"
    tick is immediate), otherwise together when ``interval`` has passed since
    the last ack, or at once when ``max_events`` are waiting; a closing
    stream sends what is waiting. Coalescing changes nothing in what an ack
    means (the device stored everything up to those positions); it spares the
    server an ack per event, which in a busy group every member's device
    would otherwise send for every message. An ``interval`` of 0 acks after
    every batch the server sends.
    """

    interval: float = 1.0
    max_events: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.interval <= 60:
            raise ValueError("interval must be within [0, 60] seconds")
        if self.max_events < 1:
            raise ValueError("max_events must be >= 1")

    def delay(self, *, waiting: int, since_last_ack: float) -> float:
        """Seconds until ``waiting`` handled events should be acked (0: now),
        ``since_last_ack`` seconds after the previous ack."""
        if waiting >= self.max_events or since_last_ack >= self.interval:
            return 0.0
        return self.interval - since_last_ack


def reconnectable(error: ParleyError) -> bool:
    # SLOW_CONSUMER is the server asking us to reconnect and resume, whatever code
    # carries it. A rate limit on opening (presence subscriptions) says when.
    return (
        isinstance(error, UnavailableError)
        or error.reason == ErrorReason.SLOW_CONSUMER
        or (isinstance(error, RateLimitedError) and error.retry_after is not None)
    )


class PositionTracker:
    """Per conversation, what a device holds, and what it has yet to ack.

    ``version`` orders every change of a conversation, so an event at or below
    the version already held is a replay the consumer has seen: it is dropped.
    Version 0 means the server did not version the event; it is never dropped.
    """

    def __init__(self, positions: Mapping[str, StreamPosition] | None = None) -> None:
        self._held: dict[str, StreamPosition] = {}
        self._unacked: dict[str, StreamPosition] = {}
        # Events handled since the last take_unacked (what AckPolicy counts).
        self.unacked_events = 0
        positions_proto(positions or {})  # rejects what is not a StreamPosition
        self._held.update(positions or {})

    @property
    def held(self) -> dict[str, StreamPosition]:
        return dict(self._held)

    def resume_positions(self) -> list[messages_pb2.ConversationPosition]:
        # Resume is by version; seq rides along, since it is what the device holds.
        return positions_proto(self._held)

    def is_replay(self, event: StreamEvent) -> bool:
        located = position_of(event)
        if located is None:
            return False
        conversation_id, position = located
        held = self._held.get(conversation_id)
        return 0 < position.version <= (held.version if held is not None else 0)

    def hold(self, event: StreamEvent) -> None:
        """Records that ``event`` was handed to the consumer."""
        located = position_of(event)
        if located is not None:
            conversation_id, position = located
            self._held[conversation_id] = self._held.get(conversation_id, StreamPosition()).merged(
                position
            )

    def handled(self, event: StreamEvent) -> None:
        """The consumer is done with ``event`` (the last one held in its
        conversation): the next ack covers it."""
        located = position_of(event)
        if located is not None:
            conversation_id = located[0]
            self._unacked[conversation_id] = self._held[conversation_id]
            self.unacked_events += 1

    def take_unacked(self) -> dict[str, StreamPosition]:
        pending, self._unacked = self._unacked, {}
        self.unacked_events = 0
        return pending

    def restore_unacked(self, pending: Mapping[str, StreamPosition]) -> None:
        """Puts back acks that could not be sent, for the next stream to send."""
        for conversation_id, position in pending.items():
            current = self._unacked.get(conversation_id)
            self._unacked[conversation_id] = (
                position if current is None else current.merged(position)
            )

    @property
    def has_unacked(self) -> bool:
        return bool(self._unacked)


def cancel_requested() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Reconnects:
    """Whether and when a long-lived stream that failed opens again: after an
    expired token, at once with a refreshed one (once per expiry); after an
    error worth retrying, with backoff under the stream retry policy;
    otherwise never (the error is raised)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._policy = session.stream_retry_policy
        self._failures = 0
        self._refreshed = False

    def succeeded(self) -> None:
        """The stream delivered something: later failures start afresh."""
        self._failures, self._refreshed = 0, False

    async def wait_or_raise(self, failure: aio.AioRpcError | ParleyError, *, token: str) -> None:
        """Return when the stream may be opened again, or raise why not."""
        cause: BaseException | None
        if isinstance(failure, aio.AioRpcError):
            error, cause = from_rpc_error(failure), failure
        else:
            error, cause = failure, failure.__cause__
        if isinstance(error, TokenExpiredError) and not self._refreshed:
            self._refreshed = True
            await self._session.refresh(stale_access_token=token)
            return
        self._failures += 1
        if not reconnectable(error) or self._failures >= self._policy.max_attempts:
            raise error from cause
        await asyncio.sleep(self._policy.backoff(self._failures, retry_after=error.retry_after))


class DeliveryStream:
    """One device's delivery stream.

    Iterate it (once) for :data:`StreamEvent` values. It resumes from the given
    positions and sync token, and on UNAVAILABLE or SLOW_CONSUMER reconnects by
    itself (bounded by the client's ``stream_retry_policy``; the count restarts
    whenever events flow again) from what it has yielded so far. Per
    conversation, changes arrive in version order, and one at or below the
    version already held is dropped as a replay, so a consumer sees each once.

    Positions (:attr:`positions`) track, per conversation, the newest change-feed
    ``version`` (where a stream resumes) and the newest history ``seq`` (what an
    ack raises the delivered watermark to). With ``auto_ack`` (the default), a
    versioned event (message, system message, edit, deletion, reaction) is acked
    once the consumer comes back for the next event, i.e. after it has handled
    it; acks are coalesced as ``ack_policy`` says (:class:`AckPolicy`). Use it
    as an async context manager, or call :meth:`close`, to end it; ``close``
    may be called from another task.

    Holding the stream keeps the device online (presence). Other members'
    typing arrives as :class:`~parley_sdk.TypingIndicatorEvent` (never
    replayed); send this user's with :meth:`typing`.
    """

    def __init__(
        self,
        session: Session,
        *,
        positions: Mapping[str, StreamPosition] | None,
        sync_token: str,
        auto_ack: bool,
        ack_policy: AckPolicy | None = None,
        prepare: EventPreparer | None = None,
    ) -> None:
        self._session = session
        self._prepare = prepare
        self._tracker = PositionTracker(positions)
        self._sync_token = sync_token
        self._auto_ack = auto_ack
        self._ack_policy = ack_policy or AckPolicy()
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()
        # Event-loop time of the last ack sent (none yet: the first goes at once).
        self._last_ack_at = float("-inf")
        self._call: _Call | None = None
        self._write_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._closed = False
        self._iterated = False
        self._synced = False
        self._next_nonce = 1
        self._stream_token = ""
        self._typing = TypingThrottle()
        session.streams.add(self)

    # -- state a caller persists to resume later --------------------------------

    @property
    def positions(self) -> dict[str, StreamPosition]:
        """Per conversation, the newest version and history seq yielded (plus the
        initial positions). Persist it and pass it to the next ``events()``."""
        return self._tracker.held

    @property
    def sync_token(self) -> str:
        """Token of the newest SyncComplete seen; pass it to the next ``events()``."""
        return self._sync_token

    @property
    def synced(self) -> bool:
        """Whether the replay finished at least once; later events are live."""
        return self._synced

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Opens the stream now rather than on first iteration. Errors surface on read."""
        if await self._ensure_call() is None:
            raise RuntimeError("stream is closed")

    async def _ensure_call(self) -> _Call | None:
        """The open call, connecting first if needed; None once closed."""
        # The iterator (reconnecting) and ack()/ping() callers may race to open;
        # only one may, or the other's call would leak.
        async with self._connect_lock:
            if not self._closed and self._call is None:
                await self._connect()
            return None if self._closed else self._call

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._session.streams.discard(self)
        self._cancel_ack_timer()
        with contextlib.suppress(Exception):
            await self._flush_acks()
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    # -- client events ----------------------------------------------------------

    async def ack(self, positions: Mapping[str, StreamPosition]) -> None:
        """Tells the server the device stored everything up to these positions:
        ``version`` is where this device resumes, ``seq`` raises the delivered
        watermark (the senders' receipts)."""
        if positions:
            await self._write(
                messages_pb2.ClientEvent(ack=messages_pb2.Ack(positions=positions_proto(positions)))
            )

    async def ping(self, nonce: int | None = None) -> int:
        """Sends a ping; the matching ``PongEvent`` arrives through the iterator."""
        if nonce is None:
            nonce, self._next_nonce = self._next_nonce, self._next_nonce + 1
        await self._write(messages_pb2.ClientEvent(ping=messages_pb2.Ping(nonce=nonce)))
        return nonce

    async def typing(self, conversation_id: str, typing: bool = True) -> bool:
        """Tells the other members this user is typing in a conversation, or stopped.

        Call it on every keystroke (``typing=True``) and when the user sends,
        clears the draft or leaves (``typing=False``): the stream sends a start
        at most every :data:`~parley_sdk.typing_indicators.TYPING_RENEW_INTERVAL`
        seconds per conversation (renewing it before recipients expire it) and a
        stop only after a start. Returns whether anything was sent.

        Indicators are ephemeral: they reach members with a live stream only,
        are rate limited per device (the server drops the excess silently) and
        are ignored in channels. Recipients see a
        :class:`~parley_sdk.TypingIndicatorEvent`.
        """
        if not self._typing.should_send(conversation_id, typing):
            return False
        event = messages_pb2.ClientEvent(
            typing=messages_pb2.Typing(conversation_id=conversation_id, typing=typing)
        )
        try:
            await self._write(event)
        except BaseException:
            self._typing.unsent(conversation_id)
            raise
        return True

    async def _write(self, event: messages_pb2.ClientEvent) -> None:
        call = self._call if self._call is not None else await self._ensure_call()
        if call is None:
            raise RuntimeError("stream is closed")
        async with self._write_lock:
            try:
                await call.write(event)
            except aio.AioRpcError as rpc_error:
                raise from_rpc_error(rpc_error) from rpc_error

    async def _connect(self) -> None:
        metadata = await self._session.auth_metadata()
        self._stream_token = bearer_token(metadata)
        self._call = self._session.messages.Connect(None, metadata=metadata)
        resume = messages_pb2.Resume(
            positions=self._tracker.resume_positions(), sync_token=self._sync_token
        )
        # A refused stream (bad token, ...) fails this write with the same status
        # the read will report; let the read report it so there is one error path.
        with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.write(messages_pb2.ClientEvent(resume=resume))

    async def _ack_when_due(self) -> None:
        """After a server batch: ack now, or make sure an ack follows (AckPolicy)."""
        if not self._tracker.has_unacked:
            return
        loop = asyncio.get_running_loop()
        delay = self._ack_policy.delay(
            waiting=self._tracker.unacked_events, since_last_ack=loop.time() - self._last_ack_at
        )
        if delay == 0:
            self._cancel_ack_timer()
            await self._flush_acks()
        elif self._ack_timer is None:
            self._ack_timer = loop.call_later(delay, self._ack_timer_fired)

    def _ack_timer_fired(self) -> None:
        self._ack_timer = None
        task = asyncio.create_task(self._flush_acks_in_background())
        # Held until done: the loop keeps only weak references to tasks.
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    async def _flush_acks_in_background(self) -> None:
        # A failed ack keeps its positions (see _flush_acks); anything else
        # wrong with the stream surfaces on its next read, not here.
        with contextlib.suppress(Exception):
            await self._flush_acks()

    def _cancel_ack_timer(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    async def _flush_acks(self) -> None:
        if not self._tracker.has_unacked or self._call is None:
            return
        pending = self._tracker.take_unacked()
        self._last_ack_at = asyncio.get_running_loop().time()
        try:
            await self.ack(pending)
        except (ParleyError, asyncio.InvalidStateError):
            # The stream broke under us; the read reports why. Keep the positions
            # so the ack goes out on the reconnected stream.
            self._tracker.restore_unacked(pending)

    # -- iteration ----------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        if self._iterated:
            raise RuntimeError("a DeliveryStream can be iterated only once")
        self._iterated = True
        return self._events()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        reconnects = Reconnects(self._session)
        try:
            while not self._closed:
                try:
                    call = await self._ensure_call()
                    if call is None:
                        return
                    while True:
                        response = await call.read()
                        if not isinstance(response, messages_pb2.ServerEvent):
                            return  # grpc.aio.EOF: the server ended the stream cleanly
                        reconnects.succeeded()
                        for proto_event in response.events:
                            event = event_from_proto(proto_event)
                            if event is None or self._tracker.is_replay(event):
                                continue
                            if self._prepare is not None:
                                event = await self._prepare(event)
                            if isinstance(event, SyncCompleteEvent):
                                self._sync_token = event.sync_token
                                self._synced = True
                            self._tracker.hold(event)
                            yield event
                            if self._auto_ack:
                                # Back for the next event: the consumer has
                                # handled (stored) this one.
                                self._tracker.handled(event)
                        if self._auto_ack:
                            await self._ack_when_due()
                except asyncio.CancelledError:
                    # close() from another task cancels the call, which wakes our
                    # read with CancelledError; that is an ordinary end, not ours
                    # being cancelled.
                    if self._closed and not cancel_requested():
                        return
                    raise
                except (aio.AioRpcError, ParleyError) as failure:
                    if self._closed:
                        return
                    old_call, self._call = self._call, None
                    if old_call is not None:
                        old_call.cancel()
                    await reconnects.wait_or_raise(failure, token=self._stream_token)
        finally:
            if not self._closed:
                await self.close()
