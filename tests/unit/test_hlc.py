"""The hybrid logical clock: monotone, above everything observed, close to
physical time, and an encoding whose string order is the stamp order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley_core.hlc import (
    MAX_LOGICAL,
    ZERO,
    ClockDriftError,
    HybridClock,
    Timestamp,
    receive,
    tick,
)

T0 = 1_900_000_000_000  # ms, 2030
MINUTE = 60_000

nodes = st.sampled_from(["a", "b", "eu", "eu2", "us-1", "z"])
stamps = st.builds(
    Timestamp,
    wall_ms=st.integers(min_value=0, max_value=T0 * 2),
    logical=st.integers(min_value=0, max_value=MAX_LOGICAL),
    node=nodes,
)


def test_now_is_monotone_even_when_physical_time_goes_back() -> None:
    clock = HybridClock("a")
    first = clock.now(T0)
    second = clock.now(T0 - 5_000)  # NTP stepped the clock back
    third = clock.now(T0 - 5_000)
    assert first < second < third
    assert second.wall_ms == T0
    assert (second.logical, third.logical) == (1, 2)
    # Physical time catching up resets the counter.
    fourth = clock.now(T0 + 1)
    assert fourth == Timestamp(T0 + 1, 0, "a")


def test_observe_puts_the_next_local_stamp_above_the_remote_one() -> None:
    behind = HybridClock("b")
    remote = Timestamp(T0 + 10 * MINUTE, 7, "a")
    seen = behind.observe(remote, T0)
    assert seen > remote
    assert behind.now(T0 + 1) > remote
    # Its wall time stays with the fastest clock it heard of, not its own.
    assert behind.last.wall_ms == T0 + 10 * MINUTE


def test_observing_an_older_stamp_keeps_local_time() -> None:
    clock = HybridClock("a")
    clock.now(T0)
    assert clock.observe(Timestamp(T0 - MINUTE, 3, "b"), T0 + 5) == Timestamp(T0 + 5, 0, "a")


def test_a_full_counter_borrows_the_next_millisecond() -> None:
    last = Timestamp(T0, MAX_LOGICAL, "a")
    assert tick(last, "a", T0) == Timestamp(T0 + 1, 0, "a")
    assert receive(last, Timestamp(T0, MAX_LOGICAL, "b"), "a", T0) == Timestamp(T0 + 1, 0, "a")


def test_drift_refusal_is_optional_and_changes_nothing() -> None:
    clock = HybridClock("a", max_drift_ms=MINUTE)
    clock.now(T0)
    before = clock.last
    with pytest.raises(ClockDriftError, match="ahead"):
        clock.observe(Timestamp(T0 + 2 * MINUTE, 0, "b"), T0)
    assert clock.last == before
    # Within the bound, or once local time has caught up, it is taken in.
    assert clock.observe(Timestamp(T0 + 2 * MINUTE, 0, "b"), T0 + MINUTE) > before
    unbounded = HybridClock("c")
    assert unbounded.observe(Timestamp(T0 + 100 * MINUTE, 0, "b"), T0).wall_ms == T0 + 100 * MINUTE


def test_invalid_stamps_and_encodings_are_refused() -> None:
    with pytest.raises(ValueError, match="node"):
        HybridClock("")
    with pytest.raises(ValueError, match="node"):
        Timestamp(1, 0, "a b")
    with pytest.raises(ValueError, match="logical"):
        Timestamp(1, MAX_LOGICAL + 1, "a")
    with pytest.raises(ValueError, match="encoded"):
        Timestamp.decode("12.3.a")
    assert Timestamp.decode(ZERO.encode()) == ZERO


@settings(max_examples=200, deadline=None)
@given(a=stamps, b=stamps)
def test_the_encoding_sorts_as_the_stamps_and_round_trips(a: Timestamp, b: Timestamp) -> None:
    assert Timestamp.decode(a.encode()) == a
    assert (a.encode() < b.encode()) == (a < b)
    assert (a.encode() == b.encode()) == (a == b)
    if a.packed() < b.packed():
        assert a < b


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["now", "observe"]),
            st.integers(min_value=-MINUTE, max_value=MINUTE),
            stamps,
        ),
        max_size=40,
    )
)
def test_every_stamp_is_above_the_last_one_and_what_was_observed(
    events: list[tuple[str, int, Timestamp]],
) -> None:
    clock = HybridClock("n")
    physical = T0
    for kind, step, remote in events:
        physical += step
        before = clock.last
        if kind == "now":
            stamp = clock.now(physical)
        else:
            stamp = clock.observe(remote, physical)
            assert stamp > remote
        assert stamp > before
        assert stamp.wall_ms >= physical
