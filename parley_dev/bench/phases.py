"""The measured phases against the Parley stack: send, deliver, fetch (and the prefill).

send:    closed loop, C senders each sending back-to-back to its pair's
         conversation; durable acks per second and ack latency.
deliver: open loop at a fixed offered rate; latency from the client's send
         timestamp (in the body) to arrival on the recipient's stream.
fetch:   closed loop, R readers each reading the 50 newest messages of
         conversations that hold at least 50.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.bench.load import (
    CALL_TIMEOUT_SECONDS,
    Hook,
    LoadResult,
    OpenLoopResult,
    Window,
    closed_loop,
    open_loop,
)
from parley_dev.bench.population import (
    PHASE_DELIVER,
    PHASE_PREFILL,
    PHASE_SEND,
    BodyCodec,
    Pair,
    User,
    bounded_gather,
    request_id,
)
from parley_dev.bench.streams import DeliveryRecorder

FETCH_PAGE = 50
# How long the deliver phase waits, after its last send, for deliveries in flight.
DELIVER_DRAIN_SECONDS = 5.0
DRAIN_POLL_SECONDS = 0.05


@dataclass
class Messaging:
    """What the phases share: stubs per svc_message target, pairs and body codec."""

    stubs: Sequence[mgrpc.MessageServiceAsyncStub]
    pairs: Sequence[Pair]
    codec: BodyCodec
    recorder: DeliveryRecorder
    # Newest seq acknowledged per conversation: tells whether a conversation
    # already holds a full page for the fetch phase.
    last_seq: dict[str, int] = field(default_factory=dict)

    async def send(
        self, sender: User, pair: Pair, *, phase: int, measured: bool, serial: int
    ) -> mpb.Message:
        body = self.codec.encode(
            phase=phase, measured=measured, sent_ns=time.perf_counter_ns(), serial=serial
        )
        reply = await self.stubs[sender.target].SendMessage(
            mpb.SendMessageRequest(
                request_id=request_id(),
                conversation_id=pair.conversation_id,
                type=mpb.MESSAGE_TYPE_TEXT,
                body=body,
            ),
            metadata=sender.metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        seq = reply.message.seq
        if seq > self.last_seq.get(pair.conversation_id, 0):
            self.last_seq[pair.conversation_id] = seq
        message: mpb.Message = reply.message
        return message


async def prefill(messaging: Messaging, pairs: Sequence[Pair], *, count: int = FETCH_PAGE) -> int:
    """Top up each conversation to at least ``count`` messages; the number sent."""
    todo = [
        (pair, turn)
        for pair in pairs
        for turn in range(max(0, count - messaging.last_seq.get(pair.conversation_id, 0)))
    ]

    async def one(index: int) -> None:
        pair, turn = todo[index]
        sender, _recipient = pair.sender(turn)
        await messaging.send(sender, pair, phase=PHASE_PREFILL, measured=False, serial=index)

    await bounded_gather(len(todo), one, limit=max(1, len(pairs)) * 2)
    short = [p for p in pairs if messaging.last_seq.get(p.conversation_id, 0) < count]
    if short:
        raise RuntimeError(f"{len(short)} conversations still hold fewer than {count} messages")
    return len(todo)


async def send_phase(
    messaging: Messaging,
    *,
    concurrency: int,
    window: Window,
    on_start: Sequence[Hook] = (),
    on_end: Sequence[Hook] = (),
) -> LoadResult:
    """Sender k sends to conversation k mod P; the first P senders are members a, the next b."""
    pairs = messaging.pairs
    serial = 0

    async def call(worker: int) -> None:
        nonlocal serial
        pair = pairs[worker % len(pairs)]
        sender, _recipient = pair.sender(worker // len(pairs))
        serial += 1
        measured = window.contains(time.perf_counter_ns())
        await messaging.send(sender, pair, phase=PHASE_SEND, measured=measured, serial=serial)

    return await closed_loop(concurrency, call, window=window, on_start=on_start, on_end=on_end)


@dataclass
class DeliverOutcome:
    load: OpenLoopResult
    drain_s: float


async def deliver_phase(
    messaging: Messaging,
    *,
    rate: float,
    warmup_s: float,
    duration_s: float,
    max_in_flight: int,
    on_start: Sequence[Hook] = (),
    on_end: Sequence[Hook] = (),
) -> DeliverOutcome:
    """Sends round-robin over the pairs, alternating direction, at ``rate`` per second."""
    pairs = messaging.pairs
    recorder = messaging.recorder

    async def call(serial: int, measured: bool) -> None:
        pair = pairs[serial % len(pairs)]
        sender, _recipient = pair.sender(serial // len(pairs))
        await messaging.send(sender, pair, phase=PHASE_DELIVER, measured=measured, serial=serial)
        if measured:
            recorder.deliver_acked.add(serial)

    began = time.perf_counter_ns()
    window = Window(began + int(warmup_s * 1e9), began + int((warmup_s + duration_s) * 1e9))
    load = await open_loop(
        rate,
        call,
        window=window,
        warmup_start_ns=began,
        max_in_flight=max_in_flight,
        on_start=on_start,
        on_end=on_end,
    )
    drain_started = time.monotonic()
    deadline = drain_started + DELIVER_DRAIN_SECONDS
    # Polled: arrivals are counted by the stream readers, which know nothing of this wait.
    while recorder.deliver_missing and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(DRAIN_POLL_SECONDS)
    return DeliverOutcome(load=load, drain_s=time.monotonic() - drain_started)


async def fetch_phase(
    messaging: Messaging,
    *,
    readers: int,
    pairs: Sequence[Pair],
    window: Window,
    on_start: Sequence[Hook] = (),
    on_end: Sequence[Hook] = (),
) -> LoadResult:
    """Each read takes the next conversation of ``pairs`` round-robin, whoever the reader."""
    cursor = 0

    async def call(_worker: int) -> None:
        nonlocal cursor
        pair = pairs[cursor % len(pairs)]
        # Both members read in turn, so with several svc_message instances every
        # instance serves reads.
        reader, _peer = pair.sender(cursor // len(pairs))
        cursor += 1
        reply = await messaging.stubs[reader.target].ListMessages(
            mpb.ListMessagesRequest(
                conversation_id=pair.conversation_id,
                page_size=FETCH_PAGE,
                direction=mpb.DIRECTION_BACKWARD,
            ),
            metadata=reader.metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        if len(reply.messages) != FETCH_PAGE:
            raise ShortPage(f"{len(reply.messages)} messages instead of {FETCH_PAGE}")

    return await closed_loop(readers, call, window=window, on_start=on_start, on_end=on_end)


class ShortPage(Exception):
    """A fetch returned fewer messages than the conversation holds: counted as an error."""
