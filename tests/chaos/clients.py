"""Clients that behave like real devices under failure: they retry sends with the
same request_id (failing over between svc_message instances) and reconnect
delivery streams with their positions. Every loop is bounded in count and time."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from tests.helpers import http_get
from tests.users import Device, rid

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
# Short reconnect backoff: a restarted server is found again within a second.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# Default client limit on one received message (gRPC's 4 MiB).
CLIENT_MAX_RECEIVE_BYTES = 4 * 1024 * 1024


class Channels:
    """One channel per target, shared by the clients of a test."""

    def __init__(self, targets: Sequence[str]) -> None:
        self.targets = list(targets)
        self._channels = {
            t: grpc.aio.insecure_channel(t, options=CHANNEL_OPTIONS) for t in self.targets
        }

    def stub(self, target: str) -> mgrpc.MessageServiceStub:
        return mgrpc.MessageServiceStub(self._channels[target])

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)


@dataclass
class SendLog:
    """What the senders of a test saw: acks by body, and every failed attempt."""

    acked: dict[bytes, mpb.Message] = field(default_factory=dict)
    acked_by: dict[bytes, str] = field(default_factory=dict)
    failures: list[tuple[bytes, str, str]] = field(default_factory=list)


async def send_until_acked(
    channels: Channels,
    device: Device,
    conversation_id: str,
    body: bytes,
    *,
    log: SendLog,
    deadline: float,
    prefer: int = 0,
    attempt_timeout: float = 8.0,
) -> mpb.Message:
    """Send like a real client: one request_id for every attempt; after a
    retryable failure, try the next instance."""
    request_id = rid()
    targets = channels.targets
    for attempt in range(1000):
        target = targets[(prefer + attempt) % len(targets)]
        try:
            reply = await channels.stub(target).SendMessage(
                mpb.SendMessageRequest(
                    request_id=request_id,
                    conversation_id=conversation_id,
                    type=mpb.MESSAGE_TYPE_TEXT,
                    body=body,
                ),
                metadata=device.md,
                timeout=attempt_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            log.failures.append((body, target, exc.code().name))
        else:
            log.acked[body] = reply.message
            log.acked_by[body] = target
            return reply.message
        if time.monotonic() > deadline:
            raise AssertionError(f"send {body!r} not acknowledged in time")
        await asyncio.sleep(0.05 * min(attempt + 1, 10))
    raise AssertionError(f"send {body!r} not acknowledged after 1000 attempts")


class ResilientStream:
    """A device's delivery stream that reconnects with its positions.

    It records every message in arrival order across all connections, so a
    test can check that the device got each seq exactly once, in order.
    """

    def __init__(
        self,
        channels: Channels,
        device: Device,
        *,
        conversations: Sequence[str],
        prefer: int = 0,
        reconnect_codes: frozenset[grpc.StatusCode] = RETRYABLE,
        max_connections: int = 50,
    ) -> None:
        self.channels = channels
        self.device = device
        self.conversations = list(conversations)
        self.target_index = prefer
        self.reconnect_codes = reconnect_codes
        self.max_connections = max_connections
        self.messages: list[mpb.Message] = []
        self.sync_completes = 0
        self.connections: list[str] = []
        self.errors: list[tuple[str, grpc.StatusCode, str]] = []
        self.fatal: BaseException | None = None
        self.arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._call: grpc.aio.StreamStreamCall | None = None  # type: ignore[type-arg]
        self._stopping = False

    # -- what the device holds ---------------------------------------------------

    def positions(self) -> dict[str, int]:
        result = dict.fromkeys(self.conversations, 0)
        for m in self.messages:
            result[m.conversation_id] = max(result.get(m.conversation_id, 0), m.seq)
        return result

    def seqs(self, conversation_id: str) -> list[int]:
        return [m.seq for m in self.messages if m.conversation_id == conversation_id]

    def bodies(self, conversation_id: str) -> list[bytes]:
        return [m.body for m in self.messages if m.conversation_id == conversation_id]

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def wait_for(self, predicate: object, *, timeout: float, what: str = "") -> None:
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if self.fatal is not None:
                raise AssertionError(f"stream gave up: {self.fatal!r}; errors {self.errors}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out waiting for {what or predicate}: "
                    f"{len(self.messages)} messages, connections {self.connections}, "
                    f"errors {self.errors}"
                )
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout=min(remaining, 0.25))

    def current_target(self) -> str:
        return self.channels.targets[self.target_index % len(self.channels.targets)]

    async def _run(self) -> None:
        try:
            for _ in range(self.max_connections):
                if self._stopping:
                    return
                target = self.current_target()
                code = await self._connect_once(target)
                if self._stopping:
                    return
                if code not in self.reconnect_codes:
                    raise AssertionError(f"stream ended with {code}; errors {self.errors}")
                # Another instance may still be up: fail over.
                self.target_index += 1
                await asyncio.sleep(0.2)
            raise AssertionError(f"more than {self.max_connections} connections")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.fatal = exc
            self.arrived.set()

    async def _connect_once(self, target: str) -> grpc.StatusCode:
        outgoing: asyncio.Queue[mpb.ClientEvent | None] = asyncio.Queue()
        outgoing.put_nowait(
            mpb.ClientEvent(
                resume=mpb.Resume(
                    positions=[
                        mpb.ConversationPosition(conversation_id=c, seq=s, version=s)
                        for c, s in self.positions().items()
                    ]
                )
            )
        )

        async def requests() -> AsyncIterator[mpb.ClientEvent]:
            while True:
                event = await outgoing.get()
                if event is None:
                    return
                yield event

        self.connections.append(target)
        call = self.channels.stub(target).Connect(requests(), metadata=self.device.md)
        self._call = call
        try:
            async for server_event in call:
                for event in server_event.events:
                    kind = event.WhichOneof("kind")
                    if kind == "message":
                        self.messages.append(event.message)
                    elif kind == "sync_complete":
                        self.sync_completes += 1
                acks = [
                    mpb.ConversationPosition(conversation_id=c, seq=s, version=s)
                    for c, s in self.positions().items()
                    if s > 0
                ]
                if acks:
                    outgoing.put_nowait(mpb.ClientEvent(ack=mpb.Ack(positions=acks)))
                self.arrived.set()
        except grpc.aio.AioRpcError as exc:
            self.errors.append((target, exc.code(), exc.details() or ""))
            self.arrived.set()
            return exc.code()
        finally:
            outgoing.put_nowait(None)
        self.errors.append((target, grpc.StatusCode.OK, "stream ended"))
        return grpc.StatusCode.OK


def assert_exactly_once_in_order(stream: ResilientStream, conversation_id: str, last: int) -> None:
    seqs = stream.seqs(conversation_id)
    duplicates = sorted({s for s in seqs if seqs.count(s) > 1})
    missing = sorted(set(range(1, last + 1)) - set(seqs))
    assert not duplicates, f"seqs delivered twice: {duplicates[:20]}"
    assert not missing, f"seqs never delivered: {missing[:20]}"
    assert seqs == list(range(1, last + 1)), "seqs out of order"


def assert_history_exactly_once(history: Sequence[mpb.Message], log: SendLog) -> None:
    """Every acknowledged message is stored once, under the id its ack named,
    and the conversation's seqs are gapless from 1."""
    by_body: dict[bytes, list[str]] = {}
    for message in history:
        by_body.setdefault(message.body, []).append(message.message_id)
    lost = [b for b in log.acked if b not in by_body]
    assert not lost, f"acknowledged messages lost: {lost[:10]}"
    duplicates = {b: ids for b, ids in by_body.items() if len(ids) > 1}
    assert not duplicates, f"retries created duplicates: {list(duplicates.items())[:5]}"
    unacked = [b for b in by_body if b not in log.acked]
    assert not unacked, f"stored but never acknowledged: {unacked[:10]}"
    for body, message in log.acked.items():
        assert by_body[body] == [message.message_id], f"the ack of {body!r} named another message"
    assert [m.seq for m in history] == list(range(1, len(history) + 1)), "seqs are not gapless"


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of a Prometheus metric at ``url`` that carry
    these labels."""
    _status, text = await http_get(url)
    total, found = 0.0, False
    pattern = re.compile(rf"^{re.escape(name)}(?:{{([^}}]*)}})? (\S+)$")
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for line in text.splitlines():
        match = pattern.match(line)
        if match and wanted <= set((match.group(1) or "").split(",")):
            total += float(match.group(2))
            found = True
    assert found, f"metric {name} {labels} not exported at {url}"
    return total


async def wait_inbox(
    stub: mgrpc.MessageServiceStub, device: Device, expected: dict[str, int], *, timeout: float
) -> float:
    """Poll the device's inbox until each conversation shows the expected
    last_seq (the metadata is written behind the log); the seconds it took."""
    started = time.monotonic()
    seen: dict[str, int] = {}
    for _ in range(10_000):
        inbox = await stub.ListConversations(
            mpb.ListConversationsRequest(page_size=100), metadata=device.md, timeout=10
        )
        seen = {
            v.conversation.conversation_id: v.conversation.last_seq for v in inbox.conversations
        }
        if all(seen.get(c) == s for c, s in expected.items()):
            return time.monotonic() - started
        assert all(seen.get(c, 0) <= s for c, s in expected.items()), f"ahead of the log: {seen}"
        if time.monotonic() - started > timeout:
            break
        await asyncio.sleep(0.2)
    raise AssertionError(f"inbox still shows {seen}, expected {expected}, after {timeout}s")
