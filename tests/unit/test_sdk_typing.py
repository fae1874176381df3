"""Typing indicators in the SDK without servers: recipient-side expiry, sender-side
throttling, and the stream sending and yielding them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc import aio

from parley.message.v1 import messages_pb2 as pb
from parley_sdk import (
    Credentials,
    MessageEvent,
    RetryPolicy,
    StreamEvent,
    SyncCompleteEvent,
    TypingIndicatorEvent,
    TypingThrottle,
    TypingTracker,
    UnavailableError,
)
from parley_sdk._session import Session
from parley_sdk.stream import DeliveryStream
from parley_sdk.typing_indicators import DEFAULT_TYPING_EXPIRY, TYPING_RENEW_INTERVAL


def typing(
    account_id: str, conversation_id: str = "c1", *, on: bool = True, expires: float = 6.0
) -> TypingIndicatorEvent:
    return TypingIndicatorEvent(
        conversation_id=conversation_id,
        account_id=account_id,
        typing=on,
        expires_in=timedelta(seconds=expires),
    )


def message_from(account_id: str, conversation_id: str = "c1") -> MessageEvent:
    return MessageEvent(
        pb.Message(conversation_id=conversation_id, sender_account_id=account_id, seq=1, version=1)
    )


# -- recipient side: the tracker ----------------------------------------------------------


def test_an_indicator_counts_until_it_expires() -> None:
    tracker = TypingTracker()
    assert tracker.observe(typing("bob", expires=6), now=100.0)
    assert tracker.typing("c1", now=100.0) == ["bob"]
    assert tracker.typing("c1", now=105.9) == ["bob"]
    assert tracker.typing("c1", now=106.0) == []
    assert tracker.typing("c2", now=100.0) == []


def test_renewals_extend_without_reordering_and_are_not_changes() -> None:
    tracker = TypingTracker()
    assert tracker.observe(typing("bob"), now=0.0)
    assert tracker.observe(typing("cy"), now=1.0)
    assert not tracker.observe(typing("bob"), now=4.0), "a renewal changes nothing visible"
    assert tracker.typing("c1", now=6.5) == ["bob", "cy"]
    # bob renewed at 4 s (until 10 s); cy's ran out at 7 s.
    assert tracker.typing("c1", now=8.0) == ["bob"]
    assert tracker.typing("c1", now=10.0) == []


def test_a_delayed_renewal_never_shortens_an_indicator() -> None:
    tracker = TypingTracker()
    tracker.observe(typing("bob", expires=10), now=0.0)
    tracker.observe(typing("bob", expires=2), now=1.0)
    assert tracker.typing("c1", now=5.0) == ["bob"]


def test_an_expired_typist_who_types_again_is_a_change() -> None:
    tracker = TypingTracker()
    assert tracker.observe(typing("bob", expires=1), now=0.0)
    assert tracker.observe(typing("bob", expires=1), now=2.0)


def test_stop_and_a_message_end_typing_in_that_conversation_only() -> None:
    tracker = TypingTracker()
    tracker.observe(typing("bob", "c1"), now=0.0)
    tracker.observe(typing("bob", "c2"), now=0.0)
    tracker.observe(typing("cy", "c1"), now=0.0)
    assert tracker.observe(typing("bob", "c1", on=False), now=1.0)
    assert not tracker.observe(typing("bob", "c1", on=False), now=1.0), "already stopped"
    assert tracker.typing("c1", now=1.0) == ["cy"]
    assert tracker.typing("c2", now=1.0) == ["bob"]
    assert tracker.observe(message_from("cy", "c1"), now=2.0)
    assert not tracker.observe(message_from("dan", "c1"), now=2.0)
    assert tracker.typing("c1", now=2.0) == []
    assert tracker.typing("c2", now=2.0) == ["bob"]
    assert not tracker.observe(SyncCompleteEvent("tok"), now=2.0)


def test_a_missing_expiry_falls_back_to_the_default() -> None:
    tracker = TypingTracker()
    tracker.observe(typing("bob", expires=0), now=0.0)
    limit = DEFAULT_TYPING_EXPIRY.total_seconds()
    assert tracker.typing("c1", now=limit - 0.1) == ["bob"]
    assert tracker.typing("c1", now=limit) == []


def test_next_expiry_tells_when_to_redraw() -> None:
    tracker = TypingTracker()
    assert tracker.next_expiry(now=0.0) is None
    tracker.observe(typing("bob", "c1", expires=6), now=0.0)
    tracker.observe(typing("cy", "c2", expires=3), now=1.0)
    assert tracker.next_expiry(now=2.0) == pytest.approx(2.0)
    tracker.clear("c2")
    assert tracker.next_expiry(now=2.0) == pytest.approx(4.0)
    tracker.clear()
    assert tracker.typing("c1", now=2.0) == []


def test_the_own_account_is_ignored_when_asked() -> None:
    tracker = TypingTracker(ignore_account_id="me")
    assert not tracker.observe(typing("me"), now=0.0)
    assert tracker.typing("c1", now=0.0) == []


def test_the_default_clock_is_monotonic_time() -> None:
    tracker = TypingTracker()
    tracker.observe(typing("bob", expires=60))
    assert tracker.typing("c1") == ["bob"]


# -- sender side: the throttle ------------------------------------------------------------


def test_starts_are_sent_once_per_renew_interval_per_conversation() -> None:
    throttle = TypingThrottle(renew_after=3.0)
    assert throttle.should_send("c1", True, now=0.0)
    assert not throttle.should_send("c1", True, now=1.0)
    assert throttle.should_send("c2", True, now=1.0), "conversations are independent"
    assert not throttle.should_send("c1", True, now=2.9)
    assert throttle.should_send("c1", True, now=3.0)


def test_a_stop_is_sent_only_after_a_start_and_rearms_the_next_start() -> None:
    throttle = TypingThrottle(renew_after=3.0)
    assert not throttle.should_send("c1", False, now=0.0)
    assert throttle.should_send("c1", True, now=0.0)
    assert throttle.should_send("c1", False, now=1.0)
    assert not throttle.should_send("c1", False, now=1.1)
    assert throttle.should_send("c1", True, now=1.2)


def test_an_unsent_start_is_retried_on_the_next_keystroke() -> None:
    throttle = TypingThrottle(renew_after=3.0)
    assert throttle.should_send("c1", True, now=0.0)
    throttle.unsent("c1")
    assert throttle.should_send("c1", True, now=0.1)


def test_the_renew_interval_fits_between_the_server_limit_and_the_expiry() -> None:
    # The server drops a second start within 2 s; recipients expire one after 6 s.
    assert 2.0 < TYPING_RENEW_INTERVAL < DEFAULT_TYPING_EXPIRY.total_seconds()
    with pytest.raises(ValueError, match="renew_after"):
        TypingThrottle(renew_after=-1)


# -- through the delivery stream -------------------------------------------------------------


class FakeCall:
    def __init__(self, script: list[pb.ServerEvent]) -> None:
        self.script = list(script)
        self.writes: list[pb.ClientEvent] = []
        self.fail_writes = False

    async def write(self, event: pb.ClientEvent) -> None:
        if self.fail_writes:
            raise aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                aio.Metadata(),
                aio.Metadata(),
                "down",
                None,
            )
        self.writes.append(event)

    async def read(self) -> Any:
        await asyncio.sleep(0)
        if not self.script:
            return aio.EOF  # type: ignore[attr-defined]
        return self.script.pop(0)

    def cancel(self) -> bool:
        return True

    def typings(self) -> list[tuple[str, bool]]:
        return [
            (w.typing.conversation_id, w.typing.typing)
            for w in self.writes
            if w.WhichOneof("kind") == "typing"
        ]


class FakeMessages:
    def __init__(self, call: FakeCall) -> None:
        self.call = call

    def Connect(self, request: Any, *, metadata: Any) -> FakeCall:
        return self.call


def open_stream(call: FakeCall) -> DeliveryStream:
    now = datetime.now(UTC)
    session = Session(
        keys_channel=aio.insecure_channel("127.0.0.1:9"),
        message_channel=aio.insecure_channel("127.0.0.1:9"),
        credentials=Credentials(
            access_token="at",
            access_token_expire_time=now + timedelta(hours=1),
            refresh_token="rt",
            refresh_token_expire_time=now + timedelta(days=30),
            account_id="acc",
            device_id="dev",
        ),
        retry_policy=RetryPolicy(max_attempts=1),
        stream_retry_policy=RetryPolicy(max_attempts=1),
        timeout=1.0,
        refresh_margin=timedelta(seconds=60),
        on_credentials_changed=None,
    )
    session.messages = FakeMessages(call)  # type: ignore[assignment]
    return DeliveryStream(session, positions=None, sync_token="", auto_ack=True)


async def test_the_stream_sends_throttled_typing_events() -> None:
    call = FakeCall([])
    stream = open_stream(call)
    async with stream:
        assert await stream.typing("c1")
        assert not await stream.typing("c1"), "a keystroke right after is not sent"
        assert await stream.typing("c2")
        assert await stream.typing("c1", False)
        assert not await stream.typing("c1", False)
        assert await stream.typing("c1", typing=True), "a stop re-arms the start"
    assert call.writes[0].WhichOneof("kind") == "resume"
    assert call.typings() == [("c1", True), ("c2", True), ("c1", False), ("c1", True)]


async def test_a_typing_event_that_could_not_be_written_is_not_counted_as_sent() -> None:
    call = FakeCall([])
    stream = open_stream(call)
    async with stream:
        call.fail_writes = True
        with pytest.raises(UnavailableError):
            await stream.typing("c1")
        call.fail_writes = False
        assert await stream.typing("c1")
    assert call.typings() == [("c1", True)]


async def test_the_stream_yields_indicators_and_never_acks_them() -> None:
    indicator = pb.Event(
        typing=pb.TypingIndicator(
            conversation_id="c1",
            account_id="bob",
            typing=True,
            expires_in=duration_pb2.Duration(seconds=6),
        )
    )
    call = FakeCall([pb.ServerEvent(events=[indicator, indicator])])
    stream = open_stream(call)
    events: list[StreamEvent] = []
    async with asyncio.timeout(10):
        async for event in stream:
            events.append(event)
    expected = typing("bob", expires=6)
    # Unversioned: a repeat is a renewal, not a replay to drop.
    assert events == [expected, expected]
    assert not [w for w in call.writes if w.WhichOneof("kind") == "ack"]
