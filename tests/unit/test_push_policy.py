"""Push policy: mute, do-not-disturb (wrap past midnight, time zones), collapse
keys, streaming devices, backoff bounds and the dead-letter rule."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from svc_message.domain.push_policy import (
    MAX_PUSH_AGE,
    MAX_RETRY_AFTER_SECONDS,
    Next,
    PushMessage,
    Suppressed,
    backoff_seconds,
    decide,
    in_quiet_hours,
    is_muted,
    message_key,
    parse_key,
    plan,
    read_already,
    time_zone,
)
from svc_message.model import DoNotDisturb, PushOutcome, PushResult

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def at_utc(hour: int, minute: int = 0) -> datetime:
    return datetime(2030, 6, 1, hour, minute, tzinfo=UTC)


def dnd(start: tuple[int, int], end: tuple[int, int], tz: str = "") -> DoNotDisturb:
    return DoNotDisturb(
        enabled=True,
        start_minute=start[0] * 60 + start[1],
        end_minute=end[0] * 60 + end[1],
        time_zone=tz,
    )


def message(
    seq: int,
    *,
    conversation: str = "c1",
    sender: str = "alice",
    recipients: tuple[str, ...] = ("bob",),
    at: datetime = NOW,
) -> PushMessage:
    return PushMessage(
        conversation_id=conversation,
        seq=seq,
        message_id=f"0190{seq:04d}-0000-7000-8000-000000000000",
        sender_account_id=sender,
        created_at=at,
        recipients=recipients,
    )


# -- mute and do-not-disturb ------------------------------------------------------


def test_mute_holds_until_its_end_only() -> None:
    assert not is_muted(None, NOW)
    assert is_muted(NOW + timedelta(seconds=1), NOW)
    assert not is_muted(NOW, NOW)
    assert not is_muted(NOW - timedelta(days=1), NOW)


def test_quiet_hours_inside_one_day() -> None:
    window = dnd((9, 0), (17, 30))
    assert not in_quiet_hours(window, at_utc(8, 59))
    assert in_quiet_hours(window, at_utc(9, 0))
    assert in_quiet_hours(window, at_utc(17, 29))
    assert not in_quiet_hours(window, at_utc(17, 30))


def test_quiet_hours_wrap_past_midnight() -> None:
    window = dnd((22, 0), (7, 0))
    assert in_quiet_hours(window, at_utc(23, 59))
    assert in_quiet_hours(window, at_utc(0, 0))
    assert in_quiet_hours(window, at_utc(6, 59))
    assert not in_quiet_hours(window, at_utc(7, 0))
    assert not in_quiet_hours(window, at_utc(12, 0))
    assert not in_quiet_hours(window, at_utc(21, 59))
    assert in_quiet_hours(window, at_utc(22, 0))


def test_quiet_hours_disabled_or_absent_never_hold() -> None:
    assert not in_quiet_hours(None, NOW)
    assert not in_quiet_hours(DoNotDisturb(enabled=False, start_minute=0, end_minute=1439), NOW)


def test_equal_start_and_end_mean_all_day() -> None:
    window = dnd((8, 0), (8, 0))
    for hour in range(24):
        assert in_quiet_hours(window, at_utc(hour, 17))


def test_quiet_hours_follow_the_users_time_zone() -> None:
    # 22:00-07:00 in Berlin (UTC+2 in June) is 20:00-05:00 UTC.
    berlin = dnd((22, 0), (7, 0), "Europe/Berlin")
    assert in_quiet_hours(berlin, at_utc(20, 0))
    assert in_quiet_hours(berlin, at_utc(4, 59))
    assert not in_quiet_hours(berlin, at_utc(5, 0))
    assert not in_quiet_hours(berlin, at_utc(19, 59))
    # In January Berlin is UTC+1: the same window is 21:00-06:00 UTC.
    january = datetime(2030, 1, 15, 20, 30, tzinfo=UTC)
    assert not in_quiet_hours(berlin, january)
    assert in_quiet_hours(berlin, january + timedelta(minutes=30))
    # West of UTC, and a half-hour zone.
    new_york = dnd((9, 0), (10, 0), "America/New_York")  # UTC-4 in June
    assert in_quiet_hours(new_york, at_utc(13, 30))
    assert not in_quiet_hours(new_york, at_utc(9, 30))
    kolkata = dnd((12, 0), (12, 30), "Asia/Kolkata")  # UTC+5:30
    assert not in_quiet_hours(kolkata, at_utc(6, 29))
    assert in_quiet_hours(kolkata, at_utc(6, 30))
    assert in_quiet_hours(kolkata, at_utc(6, 59))
    assert not in_quiet_hours(kolkata, at_utc(7, 0))


def test_time_zone_names() -> None:
    assert time_zone("") is UTC
    assert time_zone("Europe/Berlin") is not None
    assert time_zone("America/Argentina/Buenos_Aires") is not None
    for bad in ("Mars/Olympus", "../../etc/passwd", "/etc/localtime", "Europe/", "x" * 65):
        assert time_zone(bad) is None, bad


def test_a_zone_that_vanished_counts_as_utc() -> None:
    window = dnd((12, 0), (13, 0), "Nowhere/Gone")
    assert in_quiet_hours(window, at_utc(12, 30))


# -- planning and collapse ---------------------------------------------------------------


def test_keys_round_trip() -> None:
    key = message_key("0d5c6a52-2f0c-4a8e-9f00-1c2d3e4f5a6b", 42)
    assert parse_key(key) == ("0d5c6a52-2f0c-4a8e-9f00-1c2d3e4f5a6b", 42)


def test_messages_to_one_device_collapse_into_one_job() -> None:
    messages = [
        message(3, at=NOW + timedelta(seconds=1)),
        message(1, at=NOW - timedelta(seconds=1)),
        message(2),
        message(7, conversation="c2", sender="carol", at=NOW + timedelta(seconds=2)),
    ]
    result = plan(
        messages,
        devices={"bob": ["phone"]},
        streaming={},
        muted_until={},
        quiet={},
        now=NOW,
        collapse_seconds=2.0,
    )
    (job,) = result.jobs
    assert (job.account_id, job.device_id) == ("bob", "phone")
    # Oldest first; due collapse_seconds after the first message.
    assert job.keys == ("c1:1", "c1:2", "c1:3", "c2:7")
    assert job.due_at == NOW - timedelta(seconds=1) + timedelta(seconds=2)
    # The newest message (by time) and its sender.
    assert job.newest == f"{messages[3].message_id}|carol"
    assert not result.suppressed


def test_a_message_listed_twice_counts_once() -> None:
    result = plan(
        [message(1), message(1)],
        devices={"bob": ["phone"]},
        streaming={},
        muted_until={},
        quiet={},
        now=NOW,
        collapse_seconds=0,
    )
    assert result.jobs[0].keys == ("c1:1",)


def test_each_device_gets_its_own_job_and_streaming_ones_none() -> None:
    result = plan(
        [message(1, recipients=("bob", "dave", "erin"))],
        devices={"bob": ["phone", "tablet"], "dave": ["laptop"]},
        streaming={"bob": {"tablet"}},
        muted_until={},
        quiet={},
        now=NOW,
        collapse_seconds=1,
    )
    assert sorted(j.device_id for j in result.jobs) == ["laptop", "phone"]
    assert result.suppressed == {Suppressed.STREAMING: 1}


def test_mute_and_quiet_hours_suppress_per_recipient() -> None:
    quiet = {"dave": dnd((11, 0), (13, 0))}
    muted = {("c1", "bob"): NOW + timedelta(hours=8), ("c2", "bob"): NOW - timedelta(hours=1)}
    result = plan(
        [
            message(1, recipients=("bob", "dave", "erin")),
            message(5, conversation="c2", recipients=("bob",)),
        ],
        devices={"bob": ["b1", "b2"], "dave": ["d1"], "erin": ["e1"]},
        streaming={},
        muted_until=muted,
        quiet=quiet,
        now=NOW,
        collapse_seconds=1,
    )
    by_device = {j.device_id: j.keys for j in result.jobs}
    # Bob muted c1 (not c2, whose mute ended); Dave is in quiet hours.
    assert by_device == {"b1": ("c2:5",), "b2": ("c2:5",), "e1": ("c1:1",)}
    assert result.suppressed == {Suppressed.MUTED: 2, Suppressed.DND: 1}


def test_policy_is_judged_at_the_messages_arrival() -> None:
    # A replay long after: the mute that covered the message still counts,
    # the quiet hours that started since do not.
    arrived = NOW - timedelta(minutes=10)
    result = plan(
        [message(1, at=arrived, recipients=("bob", "dave"))],
        devices={"bob": ["b1"], "dave": ["d1"]},
        streaming={},
        muted_until={("c1", "bob"): NOW - timedelta(minutes=5)},
        quiet={"dave": dnd((11, 55), (13, 0))},
        now=NOW,
        collapse_seconds=1,
    )
    assert [j.device_id for j in result.jobs] == ["d1"]
    assert result.jobs[0].due_at == arrived + timedelta(seconds=1)


def test_messages_too_old_are_not_pushed() -> None:
    result = plan(
        [message(1, at=NOW - MAX_PUSH_AGE - timedelta(seconds=1)), message(2)],
        devices={"bob": ["b1"]},
        streaming={},
        muted_until={},
        quiet={},
        now=NOW,
        collapse_seconds=1,
    )
    assert result.jobs[0].keys == ("c1:2",)
    assert result.suppressed == {Suppressed.STALE: 1}


def test_recipients_without_tokens_cost_nothing() -> None:
    result = plan(
        [message(1, recipients=tuple(f"m{i}" for i in range(1023)))],
        devices={},
        streaming={},
        muted_until={},
        quiet={},
        now=NOW,
        collapse_seconds=1,
    )
    assert result.jobs == []
    assert not result.suppressed


# -- retries ------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(60.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_seconds(attempt, base=0.5, cap=60.0, rng=rng) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in delays), attempt
        # Spread over the whole range, not bunched at the cap.
        assert min(delays) < ceiling * 0.1
        assert max(delays) > ceiling * 0.9


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = [backoff_seconds(a, base=1, cap=300, rng=random.Random(3)) for a in range(1, 9)]
    again = [backoff_seconds(a, base=1, cap=300, rng=random.Random(3)) for a in range(1, 9)]
    assert first == again


def test_retry_after_is_a_floor() -> None:
    rng = random.Random(1)
    delays = [backoff_seconds(1, base=1, cap=10, rng=rng, retry_after=30) for _ in range(50)]
    assert all(d == 30 for d in delays)
    # Below the jittered value it changes nothing; absurd values are bounded.
    assert backoff_seconds(20, base=1, cap=10, rng=random.Random(2), retry_after=0.0) <= 10
    huge = backoff_seconds(1, base=1, cap=10, rng=rng, retry_after=10**9)
    assert huge == MAX_RETRY_AFTER_SECONDS


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert 0 <= backoff_seconds(10_000, base=1, cap=300, rng=random.Random(0)) <= 300


@pytest.mark.parametrize(
    ("result", "attempt", "expected"),
    [
        (PushResult(PushOutcome.DELIVERED), 1, Next.DELIVERED),
        (PushResult(PushOutcome.RETRY), 1, Next.RETRY),
        (PushResult(PushOutcome.RETRY), 4, Next.RETRY),
        (PushResult(PushOutcome.RETRY), 5, Next.DEAD),
        (PushResult(PushOutcome.RETRY), 6, Next.DEAD),
        (PushResult(PushOutcome.REJECTED, detail="bad token"), 1, Next.DEAD),
        (PushResult(PushOutcome.REJECTED, token_gone=True), 1, Next.DEAD),
    ],
)
def test_dead_letter_rule(result: PushResult, attempt: int, expected: str) -> None:
    decision = decide(result, attempt, max_attempts=5, base=1, cap=60, rng=random.Random(0))
    assert decision.next == expected
    assert decision.forget_token == result.token_gone
    if expected == Next.RETRY:
        assert 0 <= decision.delay <= min(60, 2 ** (attempt - 1))


def test_retry_honours_the_providers_retry_after() -> None:
    decision = decide(
        PushResult(PushOutcome.RETRY, retry_after_seconds=42),
        1,
        max_attempts=5,
        base=1,
        cap=60,
        rng=random.Random(0),
    )
    assert (decision.next, decision.delay) == (Next.RETRY, 42)


def test_a_notification_is_read_already_only_when_every_message_is() -> None:
    keys = ["c1:4", "c1:5", "c2:9"]
    assert read_already(keys, {"c1": 5, "c2": 9})
    assert read_already(keys, {"c1": 7, "c2": 12})
    assert not read_already(keys, {"c1": 5, "c2": 8})
    assert not read_already(keys, {"c1": 4, "c2": 9})
    # No watermark in a conversation: nothing there is read.
    assert not read_already(keys, {"c1": 5})
    assert not read_already(["c:1"], {})
