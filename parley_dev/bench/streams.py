"""Connect streams held by the simulated devices, and what arrives on them.

A device behaves like a real client: it resumes, waits for SyncComplete, and
acks the newest seq it received per conversation as the SDK does
(``parley_sdk.AckPolicy``: at most one ack a second, at once after a quiet
second or when 64 events wait). The arrival
time is taken once per ServerEvent, as soon as it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.bench.population import PHASE_DELIVER, BodyCodec, User
from parley_sdk import AckPolicy

SYNC_TIMEOUT_SECONDS = 30.0
CLOSE_TIMEOUT_SECONDS = 5.0


class MessageSink(Protocol):
    """What a stream tells about each message event it reads."""

    def on_message(self, stream_account: str, message: mpb.Message, arrived_ns: int) -> None: ...


@dataclass
class DeliveryRecorder:
    """Counts every message event and times the deliver phase's arrivals at recipients."""

    codec: BodyCodec
    # Message events on all streams, the senders' own copies included.
    message_events: int = 0
    # Copies of a device's own message on its own stream (multi-device sync).
    echo_events: int = 0
    recipient_arrivals: dict[int, int] = field(default_factory=dict)
    # Serials of measured deliver-phase sends the server acknowledged, and of
    # those that reached the recipient; the difference is what got lost.
    deliver_acked: set[int] = field(default_factory=set)
    deliver_arrived: set[int] = field(default_factory=set)
    deliver_latencies_ns: list[int] = field(default_factory=list)
    duplicates: int = 0

    def on_message(self, stream_account: str, message: mpb.Message, arrived_ns: int) -> None:
        self.message_events += 1
        header = self.codec.decode(message.body)
        if header is None:
            return
        if message.sender_account_id == stream_account:
            self.echo_events += 1
            return
        self.recipient_arrivals[header.phase] = self.recipient_arrivals.get(header.phase, 0) + 1
        if header.phase != PHASE_DELIVER or not header.measured:
            return
        if header.serial in self.deliver_arrived:
            self.duplicates += 1
            return
        self.deliver_arrived.add(header.serial)
        self.deliver_latencies_ns.append(arrived_ns - header.sent_ns)

    @property
    def deliver_missing(self) -> int:
        return len(self.deliver_acked - self.deliver_arrived)


class DeviceStream:
    """One device's Connect stream, read in a background task."""

    def __init__(
        self,
        user: User,
        stub: mgrpc.MessageServiceAsyncStub,
        recorder: MessageSink,
        *,
        ack: bool = True,
        ack_policy: AckPolicy | None = None,
    ) -> None:
        self.user = user
        self._ack = ack
        self._ack_policy = ack_policy or AckPolicy()
        # Per conversation, the newest seq received and not yet acked.
        self._unacked: dict[str, int] = {}
        self._unacked_events = 0
        self._ack_timer: asyncio.TimerHandle | None = None
        self._last_ack_at = float("-inf")
        self._stub = stub
        self._recorder = recorder
        self._outgoing: asyncio.Queue[mpb.ClientEvent | None] = asyncio.Queue()
        self._call: grpc.aio.StreamStreamCall[mpb.ClientEvent, mpb.ServerEvent] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.synced = asyncio.Event()
        self.ended = asyncio.Event()
        self.error: str | None = None
        self.acks_sent = 0

    def open(self) -> None:
        self._outgoing.put_nowait(mpb.ClientEvent(resume=mpb.Resume()))
        call = self._stub.Connect(self._requests(), metadata=self.user.metadata)
        self._call = call
        self._task = asyncio.create_task(self._read(call))

    async def _requests(self) -> AsyncIterator[mpb.ClientEvent]:
        while (event := await self._outgoing.get()) is not None:
            yield event

    async def _read(
        self, call: grpc.aio.StreamStreamCall[mpb.ClientEvent, mpb.ServerEvent]
    ) -> None:
        account = self.user.account_id
        try:
            async for server_event in call:
                arrived = time.perf_counter_ns()
                newest: dict[str, int] = {}
                for event in server_event.events:
                    kind = event.WhichOneof("kind")
                    if kind == "message":
                        message = event.message
                        if message.seq > newest.get(message.conversation_id, 0):
                            newest[message.conversation_id] = message.seq
                        self._recorder.on_message(account, message, arrived)
                    elif kind == "sync_complete":
                        self.synced.set()
                if newest and self._ack:
                    self._held(newest, len(server_event.events))
        except grpc.aio.AioRpcError as exc:
            if not self._closing:
                self.error = f"{exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:
            if not self._closing:
                raise
        else:
            if not self._closing:
                self.error = "the server ended the stream"
        finally:
            self.ended.set()

    def _held(self, newest: dict[str, int], events: int) -> None:
        for conversation_id, seq in newest.items():
            if seq > self._unacked.get(conversation_id, 0):
                self._unacked[conversation_id] = seq
        self._unacked_events += events
        loop = asyncio.get_running_loop()
        delay = self._ack_policy.delay(
            waiting=self._unacked_events, since_last_ack=loop.time() - self._last_ack_at
        )
        if delay == 0:
            self._send_ack()
        elif self._ack_timer is None:
            self._ack_timer = loop.call_later(delay, self._send_ack)

    def _send_ack(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if not self._unacked or self._closing:
            return
        positions = [
            mpb.ConversationPosition(conversation_id=c, seq=s, version=s)
            for c, s in self._unacked.items()
        ]
        self._unacked, self._unacked_events = {}, 0
        self._last_ack_at = asyncio.get_running_loop().time()
        self._outgoing.put_nowait(mpb.ClientEvent(ack=mpb.Ack(positions=positions)))
        self.acks_sent += 1

    async def wait_synced(self, timeout: float = SYNC_TIMEOUT_SECONDS) -> None:
        synced = asyncio.create_task(self.synced.wait())
        ended = asyncio.create_task(self.ended.wait())
        try:
            await asyncio.wait({synced, ended}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            synced.cancel()
            ended.cancel()
        if not self.synced.is_set():
            reason = self.error or f"no SyncComplete within {timeout:.0f}s"
            raise RuntimeError(f"stream of {self.user.handle} did not sync: {reason}")

    async def close(self) -> None:
        self._closing = True
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        self._outgoing.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                await asyncio.wait_for(self._task, CLOSE_TIMEOUT_SECONDS)


async def open_streams(
    users: Sequence[User],
    stubs: Sequence[mgrpc.MessageServiceAsyncStub],
    recorder: DeliveryRecorder,
) -> list[DeviceStream]:
    """One stream per device, all synced before this returns."""
    streams = [DeviceStream(user, stubs[user.target], recorder) for user in users]
    for stream in streams:
        stream.open()
    try:
        await asyncio.gather(*(s.wait_synced() for s in streams))
    except BaseException:
        await close_streams(streams)
        raise
    return streams


async def close_streams(streams: Sequence[DeviceStream]) -> None:
    await asyncio.gather(*(s.close() for s in streams))


def stream_errors(streams: Sequence[DeviceStream]) -> list[str]:
    return [f"{s.user.handle}: {s.error}" for s in streams if s.error is not None]
