"""The SDK's delivery stream without servers: resume and ack positions, replays, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from grpc import aio

from parley.message.v1 import messages_pb2 as pb
from parley_sdk import (
    Credentials,
    MessageEditedEvent,
    MessageEvent,
    RetryPolicy,
    StreamEvent,
    StreamPosition,
    SyncCompleteEvent,
    SystemMessageEvent,
)
from parley_sdk._session import Session
from parley_sdk.models import event_from_proto
from parley_sdk.stream import AckPolicy, DeliveryStream, PositionTracker


def message(conversation_id: str, seq: int, version: int, *, system: bool = False) -> pb.Event:
    kind = pb.MESSAGE_TYPE_SYSTEM if system else pb.MESSAGE_TYPE_TEXT
    return pb.Event(
        message=pb.Message(
            conversation_id=conversation_id, seq=seq, version=version, type=kind, body=b"x"
        )
    )


def edit(conversation_id: str, seq: int, version: int) -> pb.Event:
    return pb.Event(
        edit=pb.MessageEdited(conversation_id=conversation_id, seq=seq, version=version, body=b"y")
    )


def reaction(conversation_id: str, seq: int, version: int) -> pb.Event:
    return pb.Event(
        reaction=pb.ReactionChanged(
            conversation_id=conversation_id, seq=seq, version=version, emoji="👍", account_id="a"
        )
    )


def synced(token: str = "tok-1") -> pb.Event:
    return pb.Event(sync_complete=pb.SyncComplete(sync_token=token))


def batch(*events: pb.Event) -> pb.ServerEvent:
    return pb.ServerEvent(events=list(events))


def unavailable() -> aio.AioRpcError:
    return aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, aio.Metadata(), aio.Metadata(), "down", None
    )


class FakeCall:
    """One Connect call: reads come from a script (ServerEvents, errors, then EOF)."""

    def __init__(self, script: list[pb.ServerEvent | BaseException]) -> None:
        self.script = list(script)
        self.writes: list[pb.ClientEvent] = []
        self.cancelled = False

    async def write(self, event: pb.ClientEvent) -> None:
        self.writes.append(event)

    async def read(self) -> Any:
        await asyncio.sleep(0)
        if not self.script:
            return aio.EOF  # type: ignore[attr-defined]
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    @property
    def resume(self) -> pb.Resume:
        assert self.writes[0].WhichOneof("kind") == "resume"
        return self.writes[0].resume

    @property
    def acks(self) -> list[list[tuple[str, int, int]]]:
        return [
            [(p.conversation_id, p.seq, p.version) for p in w.ack.positions]
            for w in self.writes
            if w.WhichOneof("kind") == "ack"
        ]


class FakeMessages:
    def __init__(self, *scripts: list[pb.ServerEvent | BaseException]) -> None:
        self.calls = [FakeCall(script) for script in scripts]
        self._next = 0

    def Connect(self, request: Any, *, metadata: Any) -> FakeCall:
        call = self.calls[self._next]
        self._next += 1
        return call


def credentials() -> Credentials:
    now = datetime.now(UTC)
    return Credentials(
        access_token="at",
        access_token_expire_time=now + timedelta(hours=1),
        refresh_token="rt",
        refresh_token_expire_time=now + timedelta(days=30),
        account_id="acc",
        device_id="dev",
    )


async def open_stream(
    fake: FakeMessages,
    *,
    positions: dict[str, StreamPosition] | None = None,
    auto_ack: bool = True,
    ack_policy: AckPolicy | None = None,
) -> tuple[Session, DeliveryStream]:
    session = Session(
        keys_channel=aio.insecure_channel("127.0.0.1:9"),
        message_channel=aio.insecure_channel("127.0.0.1:9"),
        credentials=credentials(),
        retry_policy=RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.01),
        stream_retry_policy=RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.01),
        timeout=1.0,
        refresh_margin=timedelta(seconds=60),
        on_credentials_changed=None,
    )
    session.messages = fake  # type: ignore[assignment]
    stream = DeliveryStream(
        session, positions=positions, sync_token="", auto_ack=auto_ack, ack_policy=ack_policy
    )
    return session, stream


async def drain(stream: DeliveryStream, limit: int = 100) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    async with asyncio.timeout(10):
        async for event in stream:
            events.append(event)
            assert len(events) <= limit
    return events


# -- the tracker -------------------------------------------------------------------------


def test_tracker_keeps_the_newest_seq_and_version_apart() -> None:
    tracker = PositionTracker({"c1": StreamPosition(seq=2, version=4)})
    for proto in (message("c1", 3, 5), edit("c1", 1, 6), reaction("c2", 7, 9)):
        event = event_from_proto(proto)
        assert event is not None
        assert not tracker.is_replay(event)
        tracker.hold(event)
        tracker.handled(event)
    assert tracker.held == {
        "c1": StreamPosition(seq=3, version=6),
        "c2": StreamPosition(seq=0, version=9),
    }
    assert tracker.take_unacked() == tracker.held
    assert not tracker.has_unacked


def test_tracker_flags_replays_but_never_unversioned_events() -> None:
    tracker = PositionTracker({"c1": StreamPosition(seq=3, version=5)})
    for proto, replay in [
        (message("c1", 3, 5), True),
        (edit("c1", 2, 4), True),
        (message("c1", 4, 6), False),
        (message("c2", 1, 1), False),
        # A server that does not version events: nothing can be judged a replay.
        (message("c1", 2, 0), False),
        (synced(), False),
    ]:
        event = event_from_proto(proto)
        assert event is not None
        assert tracker.is_replay(event) is replay, proto


def test_tracker_restores_acks_that_could_not_be_sent() -> None:
    tracker = PositionTracker()
    tracker.restore_unacked({"c1": StreamPosition(2, 3)})
    tracker.restore_unacked({"c1": StreamPosition(1, 5)})
    assert tracker.take_unacked() == {"c1": StreamPosition(2, 5)}


def test_tracker_refuses_bare_seqs() -> None:
    with pytest.raises(TypeError):
        PositionTracker({"c1": 3})  # type: ignore[dict-item]


# -- the stream --------------------------------------------------------------------------


async def test_resume_sends_the_versions_and_seqs_held() -> None:
    fake = FakeMessages([batch(synced())])
    session, stream = await open_stream(
        fake, positions={"c2": StreamPosition(seq=4, version=9), "c1": StreamPosition(1, 2)}
    )
    try:
        await drain(stream)
    finally:
        await session.close()
    resume = fake.calls[0].resume
    assert [(p.conversation_id, p.seq, p.version) for p in resume.positions] == [
        ("c1", 1, 2),
        ("c2", 4, 9),
    ]


async def test_every_feed_change_is_acked_with_seq_and_version() -> None:
    fake = FakeMessages(
        [
            batch(message("c1", 1, 1), message("c1", 2, 2), synced()),
            batch(edit("c1", 1, 3), reaction("c2", 5, 8)),
            batch(message("c1", 3, 4, system=True)),
        ]
    )
    session, stream = await open_stream(fake, ack_policy=AckPolicy(interval=0))
    try:
        events = await drain(stream)
    finally:
        await session.close()
    assert [type(e) for e in events] == [
        MessageEvent,
        MessageEvent,
        SyncCompleteEvent,
        MessageEditedEvent,
        type(event_from_proto(reaction("c2", 5, 8))),
        SystemMessageEvent,
    ]
    # interval=0: one ack per server batch, covering what the consumer handled.
    assert fake.calls[0].acks == [
        [("c1", 2, 2)],
        [("c1", 2, 3), ("c2", 0, 8)],
        [("c1", 3, 4)],
    ]
    assert stream.positions == {"c1": StreamPosition(3, 4), "c2": StreamPosition(0, 8)}
    assert stream.sync_token == "tok-1"
    assert stream.synced


async def test_replayed_changes_are_dropped() -> None:
    fake = FakeMessages(
        [batch(message("c1", 5, 9), edit("c1", 4, 10), message("c1", 6, 11), message("c1", 7, 12))]
    )
    session, stream = await open_stream(fake, positions={"c1": StreamPosition(seq=6, version=11)})
    try:
        events = await drain(stream)
    finally:
        await session.close()
    assert [e.message.version for e in events if isinstance(e, MessageEvent)] == [12]
    assert len(events) == 1


async def test_without_auto_ack_nothing_is_acked() -> None:
    fake = FakeMessages([batch(message("c1", 1, 1), edit("c1", 1, 2))])
    session, stream = await open_stream(fake, auto_ack=False)
    try:
        events = await drain(stream)
        assert len(events) == 2
    finally:
        await session.close()
    assert fake.calls[0].acks == []
    # Positions still track what was yielded: the app acks and persists them itself.
    assert stream.positions == {"c1": StreamPosition(1, 2)}


async def test_manual_acks_carry_both_fields() -> None:
    fake = FakeMessages([batch(message("c1", 1, 1))])
    session, stream = await open_stream(fake, auto_ack=False)
    try:
        async for _ in stream:
            await stream.ack(stream.positions)
            break
    finally:
        await session.close()
    assert fake.calls[0].acks == [[("c1", 1, 1)]]


async def test_a_consumer_that_stops_early_does_not_ack_the_event_it_stopped_at() -> None:
    fake = FakeMessages([batch(message("c1", 1, 1), message("c1", 2, 2))])
    session, stream = await open_stream(fake)
    try:
        async for event in stream:
            if isinstance(event, MessageEvent) and event.message.seq == 2:
                break
    finally:
        await session.close()
    # #1 was handled (the consumer came back for #2); #2 was not.
    assert fake.calls[0].acks == [[("c1", 1, 1)]]
    # Yet positions say what was yielded, so a caller that persists them after
    # handling the last event resumes after it.
    assert stream.positions == {"c1": StreamPosition(2, 2)}


async def test_a_reconnect_resumes_after_what_was_yielded() -> None:
    fake = FakeMessages(
        [batch(message("c1", 1, 1), edit("c1", 1, 2)), unavailable()],
        [batch(edit("c1", 1, 2), message("c1", 2, 3))],
    )
    session, stream = await open_stream(fake)
    try:
        events = await drain(stream)
    finally:
        await session.close()
    resume = fake.calls[1].resume
    assert [(p.conversation_id, p.seq, p.version) for p in resume.positions] == [("c1", 1, 2)]
    # The edit the new stream sent again is not shown twice.
    versions = [getattr(e, "version", None) for e in events]
    assert versions == [1, 2, 3]
    assert fake.calls[0].cancelled


# -- ack coalescing (AckPolicy) ------------------------------------------------------


class HeldCall(FakeCall):
    """A call whose reads, once the script is done, wait until released."""

    def __init__(self, script: list[pb.ServerEvent | BaseException]) -> None:
        super().__init__(script)
        self.release = asyncio.Event()

    async def read(self) -> Any:
        if not self.script:
            await self.release.wait()
        return await super().read()


def test_ack_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="interval"):
        AckPolicy(interval=-1)
    with pytest.raises(ValueError, match="max_events"):
        AckPolicy(max_events=0)


@contextlib.asynccontextmanager
async def consuming(
    script: list[pb.ServerEvent | BaseException], policy: AckPolicy
) -> AsyncIterator[tuple[HeldCall, DeliveryStream, list[StreamEvent]]]:
    """A stream over one held call, consumed in the background: the call, the
    stream and what the consumer received so far."""
    fake = FakeMessages([])
    call = HeldCall(script)
    fake.calls = [call]
    session, stream = await open_stream(fake, ack_policy=policy)
    received: list[StreamEvent] = []

    async def consume() -> None:
        async for event in stream:
            received.append(event)

    consumer = asyncio.create_task(consume())
    try:
        yield call, stream, received
    finally:
        call.release.set()
        await stream.close()
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await session.close()


async def wait_until(condition: Callable[[], bool], seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.001)


def test_the_ack_delay_leads_then_throttles() -> None:
    policy = AckPolicy(interval=1.0, max_events=3)
    assert policy.delay(waiting=1, since_last_ack=float("inf")) == 0
    assert policy.delay(waiting=1, since_last_ack=0.25) == 0.75
    assert policy.delay(waiting=3, since_last_ack=0.25) == 0
    assert AckPolicy(interval=0).delay(waiting=1, since_last_ack=0) == 0


async def test_the_first_ack_goes_at_once_and_later_ones_together_after_the_interval() -> None:
    script = [
        batch(message("c1", 1, 1), synced()),
        batch(message("c1", 2, 2)),
        batch(message("c2", 7, 9)),
    ]
    async with consuming(script, AckPolicy(interval=0.2, max_events=64)) as (call, _, received):
        await wait_until(lambda: len(received) == 4)
        # No ack for a while before the first batch: acked at once. The next
        # two came within the interval: they wait.
        assert call.acks == [[("c1", 1, 1)]]
        await wait_until(lambda: len(call.acks) == 2)
        assert call.acks[1] == [("c1", 2, 2), ("c2", 7, 9)]


async def test_an_ack_goes_out_at_once_when_max_events_are_waiting() -> None:
    script = [
        batch(message("c1", 1, 1), synced()),
        batch(message("c1", 2, 2), message("c1", 3, 3)),
        batch(message("c1", 4, 4), message("c1", 5, 5)),
    ]
    async with consuming(script, AckPolicy(interval=30, max_events=3)) as (call, _, received):
        await wait_until(lambda: len(received) == 6)
        await wait_until(lambda: len(call.acks) == 2)
        # The second batch leaves two handled events waiting (below
        # max_events, and the interval is long); the third makes four.
        assert call.acks == [[("c1", 1, 1)], [("c1", 5, 5)]]


async def test_closing_sends_the_acks_still_waiting() -> None:
    script = [batch(message("c1", 1, 1), synced()), batch(message("c1", 2, 2))]
    async with consuming(script, AckPolicy(interval=30, max_events=64)) as (
        call,
        stream,
        received,
    ):
        await wait_until(lambda: len(received) == 3)
        assert call.acks == [[("c1", 1, 1)]]
        await stream.close()
        assert call.acks == [[("c1", 1, 1)], [("c1", 2, 2)]]
