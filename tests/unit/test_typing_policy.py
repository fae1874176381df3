"""Typing indicators: the per-device rate limit (injected clock), what a
stream shows, and the wire form."""

from __future__ import annotations

from itertools import pairwise

import pytest

from parley.message.v1 import messages_pb2 as mpb
from svc_message.domain.streams import StreamSession
from svc_message.domain.typing_limits import (
    NOT_STARTED,
    RATE_LIMITED,
    REPEAT,
    TypingLimiter,
    TypingLimits,
)
from svc_message.model import CHANNEL, DIRECT, GROUP, Envelope, EventKind
from svc_message.servicer.convert import ProtoEventCodec

LIMITS = TypingLimits(expires_seconds=6.0, min_interval_seconds=2.0, burst=3, per_second=0.5)


def limiter(limits: TypingLimits = LIMITS) -> TypingLimiter:
    return TypingLimiter(limits, now=100.0)


def test_a_start_is_forwarded_once_per_interval() -> None:
    typing = limiter()
    assert typing.admit("c", True, now=100.0) is None
    assert typing.admit("c", True, now=100.5) == REPEAT
    assert typing.admit("c", True, now=101.99) == REPEAT
    # Renewed once the interval has passed, well before recipients expire it.
    assert typing.admit("c", True, now=102.0) is None
    assert typing.admit("c", True, now=103.0) == REPEAT


def test_the_interval_is_per_conversation() -> None:
    typing = limiter()
    assert typing.admit("a", True, now=100.0) is None
    assert typing.admit("b", True, now=100.1) is None
    assert typing.admit("a", True, now=100.2) == REPEAT


def test_a_stop_is_forwarded_only_after_a_forwarded_start() -> None:
    typing = limiter()
    assert typing.admit("c", False, now=100.0) == NOT_STARTED
    assert typing.admit("c", True, now=100.0) is None
    assert typing.admit("c", False, now=101.0) is None
    # Already stopped: nothing showing to stop.
    assert typing.admit("c", False, now=101.1) == NOT_STARTED


def test_a_start_after_a_stop_is_forwarded_at_once() -> None:
    # Otherwise recipients would show "not typing" while the user types.
    typing = limiter()
    assert typing.admit("c", True, now=100.0) is None
    assert typing.admit("c", False, now=100.5) is None
    assert typing.admit("c", True, now=100.6) is None


def test_a_stop_after_recipients_expired_the_start_is_dropped() -> None:
    typing = limiter()
    assert typing.admit("c", True, now=100.0) is None
    assert typing.admit("c", False, now=106.0) == NOT_STARTED


def test_the_bucket_limits_starts_over_all_conversations() -> None:
    typing = limiter()
    assert [typing.admit(c, True, now=100.0) for c in "abcde"] == [
        None,
        None,
        None,
        RATE_LIMITED,
        RATE_LIMITED,
    ]
    # 0.5 tokens per second: one more after 2 s, not before.
    assert typing.admit("d", True, now=101.9) == RATE_LIMITED
    assert typing.admit("d", True, now=102.0) is None
    assert typing.admit("e", True, now=102.0) == RATE_LIMITED


def test_a_rate_limited_start_is_not_remembered() -> None:
    # It was never shown, so its stop must not be forwarded either.
    typing = limiter()
    for c in "abc":
        assert typing.admit(c, True, now=100.0) is None
    assert typing.admit("d", True, now=100.0) == RATE_LIMITED
    assert typing.admit("d", False, now=100.1) == NOT_STARTED


def test_stops_take_no_tokens() -> None:
    typing = limiter()
    for c in "abc":
        assert typing.admit(c, True, now=100.0) is None
    for c in "abc":
        assert typing.admit(c, False, now=100.0) is None
    assert typing.admit("a", True, now=100.0) == RATE_LIMITED


def test_the_bucket_refills_only_up_to_the_burst() -> None:
    typing = limiter()
    later = 100.0 + 3600.0
    results = [typing.admit(f"c{i}", True, now=later) for i in range(5)]
    assert results == [None, None, None, RATE_LIMITED, RATE_LIMITED]


def test_a_steady_typist_is_renewed_every_interval() -> None:
    """One conversation, a keystroke every 100 ms for a minute: one start
    per interval reaches recipients, each before the previous expires."""
    typing = limiter()
    forwarded = [t / 10 for t in range(1000, 1600) if typing.admit("c", True, now=t / 10) is None]
    assert forwarded[0] == 100.0
    gaps = [b - a for a, b in pairwise(forwarded)]
    assert all(2.0 <= gap < LIMITS.expires_seconds for gap in gaps), gaps
    assert len(forwarded) == 30


def test_no_interval_leaves_only_the_bucket() -> None:
    typing = limiter(
        TypingLimits(expires_seconds=6.0, min_interval_seconds=0.0, burst=2, per_second=1.0)
    )
    assert typing.admit("c", True, now=100.0) is None
    assert typing.admit("c", True, now=100.0) is None
    assert typing.admit("c", True, now=100.0) == RATE_LIMITED


def test_memory_stays_bounded_over_many_conversations() -> None:
    typing = limiter(
        TypingLimits(expires_seconds=1.0, min_interval_seconds=0.5, burst=10, per_second=10.0)
    )
    now = 100.0
    for i in range(10_000):
        now += 0.1
        typing.admit(f"c{i}", True, now=now)
    # Only starts younger than the expiry can still be stopped.
    assert len(typing._started) <= 64 + 1
    assert typing.admit("c9999", False, now=now) is None
    assert typing.admit("c0", False, now=now) == NOT_STARTED


def indicator(conversation_id: str, account_id: str) -> Envelope:
    return ProtoEventCodec().typing(conversation_id, account_id, True, 6.0)


@pytest.mark.parametrize(
    ("kind", "sender", "shown"),
    [
        (DIRECT, "peer", True),
        (GROUP, "peer", True),
        (GROUP, "me", False),  # the typist's own account, any device
        (CHANNEL, "peer", False),
        (None, "peer", False),  # a conversation the stream does not follow
    ],
)
def test_what_a_stream_shows(kind: int | None, sender: str, shown: bool) -> None:
    session = StreamSession(account_id="me", device_id="d", expires_at=1e12, queue_limit=8)
    if kind is not None:
        session.follow("c", kind=kind, position=0, own_last=0)
    assert session.shows_typing(indicator("c", sender)) is shown


def test_a_stream_stops_showing_typing_of_a_conversation_it_left() -> None:
    session = StreamSession(account_id="me", device_id="d", expires_at=1e12, queue_limit=8)
    session.follow("c", kind=GROUP, position=3, own_last=0)
    session.unfollow("c")
    assert not session.shows_typing(indicator("c", "peer"))


def test_the_indicator_round_trips_through_the_doorbell() -> None:
    codec = ProtoEventCodec()
    sent = codec.typing("c", "peer", True, 6.0)
    payload = codec.encode(sent)
    received = codec.decode(payload)
    assert received is not None
    assert (received.kind, received.conversation_id, received.sender_account_id) == (
        EventKind.TYPING,
        "c",
        "peer",
    )
    # No version: the feed bookkeeping never sees it.
    assert (received.version, received.seq) == (0, 0)
    assert received.size == len(payload)
    wire = received.wire
    assert isinstance(wire, mpb.Event)
    assert wire.typing.typing is True
    assert wire.typing.expires_in.ToTimedelta().total_seconds() == 6.0
