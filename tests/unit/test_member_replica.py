"""A member's replicated metadata (svc_message.model/domain.member_replica):
the merge laws on states reached by real writes in several regions, the
convergence of three regions after random partitions, causality under
±10 minutes of clock skew, and the rules for unmute, unpin, the pin cap and
the pin/archive conflict."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley_core.hlc import HybridClock, Timestamp
from svc_message.domain import member_replica as mr
from svc_message.domain.inbox import effective_settings
from svc_message.model.member_replica import MemberReplica, from_dict, merge, to_dict
from tests.member_regions import CAP, MINUTE, OPS, T0, Region, regions

CONVERSATIONS = ("c1", "c2", "c3")

# -- states reached by writes in three regions -------------------------------------

steps = st.lists(
    st.one_of(
        # (region, op, conversation, arg) or ("sync", from, to, conversation)
        st.tuples(
            st.integers(0, 2),
            st.sampled_from(OPS),
            st.sampled_from(CONVERSATIONS[:1]),
            st.integers(0, 30),
        ),
        st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2), st.just("c1")),
    ),
    min_size=1,
    max_size=14,
)


@st.composite
def snapshots(draw: st.DrawFn) -> list[MemberReplica]:
    """Every state conversation c1 went through in three skewed regions."""
    skews = draw(st.lists(st.integers(-10 * MINUTE, 10 * MINUTE), min_size=3, max_size=3))
    places = regions(*skews)
    seen = [MemberReplica("c1", "acct")]
    true_ms = T0
    for step in draw(steps):
        true_ms += draw(st.integers(0, 3 * MINUTE))
        if step[0] == "sync":
            _, source, target, conversation = step
            places[int(target)].receive(places[int(source)].state(str(conversation)), true_ms)
        else:
            index, op, conversation, arg = step
            places[int(index)].apply(str(op), str(conversation), int(arg), true_ms)
        seen.extend(p.state("c1") for p in places)
    return seen


@st.composite
def three_states(draw: st.DrawFn) -> tuple[MemberReplica, MemberReplica, MemberReplica]:
    seen = draw(snapshots())
    pick = st.sampled_from(seen)
    return draw(pick), draw(pick), draw(pick)


LAWS = settings(max_examples=100, deadline=None)


@LAWS
@given(three_states())
def test_member_merge_is_commutative_associative_idempotent_and_grows(
    abc: tuple[MemberReplica, MemberReplica, MemberReplica],
) -> None:
    a, b, c = abc
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    ab = merge(a, b)
    assert merge(ab, a) == ab
    assert merge(ab, b) == ab


@LAWS
@given(three_states(), st.sampled_from(OPS), st.integers(0, 30), st.integers(-MINUTE, MINUTE))
def test_every_local_write_only_grows_the_state(
    abc: tuple[MemberReplica, MemberReplica, MemberReplica], op: str, arg: int, skew: int
) -> None:
    start = merge(abc[0], abc[1])
    region = Region("w", skew)
    region.receive(start, T0)
    region.apply(op, "c1", arg, T0 + MINUTE)
    after = region.state("c1")
    assert merge(start, after) == after


@LAWS
@given(three_states())
def test_the_plain_encoding_round_trips_through_json(
    abc: tuple[MemberReplica, MemberReplica, MemberReplica],
) -> None:
    state = merge(merge(abc[0], abc[1]), abc[2])
    assert from_dict(json.loads(json.dumps(to_dict(state)))) == state


def test_merging_two_members_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        merge(MemberReplica("c1", "a"), MemberReplica("c1", "b"))
    with pytest.raises(ValueError, match="format"):
        from_dict({**to_dict(MemberReplica("c1", "a")), "format": 99})


# -- three regions, random partitions, then healing ------------------------------------


def simulate(seed: int, ops: int) -> list[Region]:
    """Random writes in three regions with clocks up to 10 minutes apart;
    states travel as messages that are delayed, reordered, and dropped while
    the link is cut; links are cut and healed at random. Then every link
    heals and each region sends every state to every other one."""
    rng = random.Random(seed)
    places = regions(*(rng.randint(-10 * MINUTE, 10 * MINUTE) for _ in range(3)))
    cut: set[tuple[int, int]] = set()
    in_flight: list[tuple[int, int, MemberReplica]] = []
    true_ms = T0
    for _ in range(ops):
        true_ms += rng.randint(0, 2 * MINUTE)
        roll = rng.random()
        if roll < 0.5:
            region = rng.randrange(3)
            places[region].apply(
                rng.choice(OPS), rng.choice(CONVERSATIONS), rng.randint(0, 40), true_ms
            )
        elif roll < 0.75:
            source, target = rng.sample(range(3), 2)
            state = places[source].state(rng.choice(CONVERSATIONS))
            in_flight.append((source, target, state))
        elif roll < 0.9 and in_flight:
            source, target, state = in_flight.pop(rng.randrange(len(in_flight)))
            if (source, target) not in cut:
                places[target].receive(state, true_ms)
        else:
            link = tuple(rng.sample(range(3), 2))
            cut.symmetric_difference_update({(link[0], link[1])})
    # Heal: what is still in flight arrives, then one full exchange.
    for _source, target, state in in_flight:
        places[target].receive(state, true_ms)
    snapshot = [{c: p.state(c) for c in CONVERSATIONS} for p in places]
    for source in range(3):
        for target in range(3):
            if source != target:
                for conversation in CONVERSATIONS:
                    places[target].receive(snapshot[source][conversation], true_ms)
    return places


@pytest.mark.parametrize("seed", range(40))
def test_three_regions_converge_after_random_partitions_heal(seed: int) -> None:
    places = simulate(seed, ops=120)
    first = places[0]
    now_ms = T0 + 400 * MINUTE
    for other in places[1:]:
        for conversation in CONVERSATIONS:
            assert other.state(conversation) == first.state(conversation)
            assert mr.view(other.state(conversation), last_seq=50, now_ms=now_ms) == mr.view(
                first.state(conversation), last_seq=50, now_ms=now_ms
            )
        assert mr.pin_layout(other.states.values(), CAP) == mr.pin_layout(
            first.states.values(), CAP
        )
    for conversation in CONVERSATIONS:
        state = first.state(conversation)
        # Never shown pinned and archived at once, whatever the interleaving.
        assert not (mr.is_pinned(state) and mr.is_archived(state))


def test_the_simulation_can_see_divergence_before_healing() -> None:
    """The convergence test is not vacuous: without the final exchange some
    seeds leave regions with different states."""
    equal = []
    for seed in range(10):
        rng = random.Random(seed)
        places = regions(0, 0, 0)
        for step in range(30):
            places[rng.randrange(3)].apply(
                rng.choice(OPS), rng.choice(CONVERSATIONS), step, T0 + step * MINUTE
            )
        equal.append(places[0].states == places[1].states == places[2].states)
    assert not all(equal)


# -- causality under clock skew ----------------------------------------------------------

Write = Callable[[Region, int], None]


def later_write_wins(skew_ms: int, first: Write, then: Write) -> tuple[Region, Region]:
    """Region a writes; b (its clock ``skew_ms`` off a's) receives that and
    writes after; both then exchange states. Returns (a, b)."""
    a, b = Region("a"), Region("b", skew_ms)
    first(a, T0)
    b.receive(a.state("c1"), T0 + 1_000)
    then(b, T0 + 2_000)
    a.receive(b.state("c1"), T0 + 3_000)
    b.receive(a.state("c1"), T0 + 3_000)
    assert a.state("c1") == b.state("c1")
    return a, b


SKEWS = pytest.mark.parametrize("skew_ms", [-10 * MINUTE, 10 * MINUTE])


@SKEWS
@pytest.mark.parametrize("order", ["a_first", "b_first"])
def test_a_causally_later_unarchive_wins_whatever_the_skew(skew_ms: int, order: str) -> None:
    def archive(r: Region, t: int) -> None:
        r.apply("archive", "c1", 7, t)

    def unarchive(r: Region, t: int) -> None:
        r.apply("unarchive", "c1", 0, t)

    # The writer that comes second is the one whose clock is skewed (b), or
    # the reference clock (a) writing after observing the skewed one.
    if order == "a_first":
        a, _ = later_write_wins(skew_ms, archive, unarchive)
    else:
        a, _ = later_write_wins(-skew_ms, unarchive, archive)
    assert mr.is_archived(a.state("c1")) == (order == "b_first")


@SKEWS
def test_a_causally_later_unmute_and_unpin_and_read_win_whatever_the_skew(
    skew_ms: int,
) -> None:
    def mute_pin_mark(r: Region, t: int) -> None:
        r.apply("mute_forever", "c1", 0, t)
        r.apply("pin", "c1", 0, t)
        r.apply("mark_unread", "c1", 0, t)

    def undo(r: Region, t: int) -> None:
        r.apply("unmute", "c1", 0, t)
        r.apply("unpin", "c1", 0, t)
        r.apply("mark_read", "c1", 0, t)

    a, _ = later_write_wins(skew_ms, mute_pin_mark, undo)
    state = a.state("c1")
    assert mr.muted_until_ms(state, T0 + 5_000) is None
    assert not mr.is_pinned(state)
    assert not mr.marked_unread(state)


def test_without_observing_a_slow_clock_loses_which_is_why_replicas_observe() -> None:
    """The control: b's clock is 10 minutes slow and b has NOT seen a's
    archive, so b's unarchive (later in real time) is concurrent and loses.
    The skew tests pass only because receive() observes stamps."""
    a, b = Region("a"), Region("b", -10 * MINUTE)
    a.apply("archive", "c1", 7, T0)
    b.apply("unarchive", "c1", 0, T0 + 2_000)
    assert mr.is_archived(merge(a.state("c1"), b.state("c1")))


def test_a_restarted_writer_with_a_slow_clock_still_writes_above_the_stored_state() -> None:
    a = Region("a")
    a.apply("archive", "c1", 7, T0)
    restarted = HybridClock("a")  # same node, clock state lost, 10 minutes slow
    stored = a.state("c1")
    stamp_ = mr.write_stamp(restarted, stored, T0 - 10 * MINUTE)
    assert stamp_ > stored.latest_stamp()
    assert not mr.is_archived(mr.set_archived(stored, False, archived_seq=0, stamp=stamp_))


# -- the rules --------------------------------------------------------------------------


def stamp(ms: int, node: str) -> Timestamp:
    return Timestamp(T0 + ms, 0, node)


def test_concurrent_mutes_keep_the_longest() -> None:
    base = MemberReplica("c1", "acct")
    one_hour = mr.set_muted(base, T0 + 60 * MINUTE, stamp=stamp(0, "a"), now_ms=T0)
    one_day = mr.set_muted(base, T0 + 1440 * MINUTE, stamp=stamp(0, "b"), now_ms=T0)
    assert merge(one_hour, one_day).mute.value == T0 + 1440 * MINUTE


def test_an_unmute_beats_a_concurrent_extension_and_a_shorter_mute_applies() -> None:
    muted = mr.set_muted(
        MemberReplica("c1", "acct"), T0 + 60 * MINUTE, stamp=stamp(0, "a"), now_ms=T0
    )
    extended = mr.set_muted(muted, T0 + 600 * MINUTE, stamp=stamp(5, "a"), now_ms=T0 + 5)
    unmuted = mr.set_muted(muted, None, stamp=stamp(1, "b"), now_ms=T0 + 1)
    merged = merge(extended, unmuted)
    assert merged == merge(unmuted, extended)
    assert mr.muted_until_ms(merged, T0 + 2) is None
    shorter = mr.set_muted(muted, T0 + 10 * MINUTE, stamp=stamp(2, "b"), now_ms=T0 + 2)
    assert mr.muted_until_ms(shorter, T0 + 3) == T0 + 10 * MINUTE
    # A mute after the unmute was seen is a raise in the new epoch.
    again = mr.set_muted(merged, T0 + 30 * MINUTE, stamp=stamp(9, "a"), now_ms=T0 + 9)
    assert mr.muted_until_ms(merge(again, unmuted), T0 + 10) == T0 + 30 * MINUTE


def test_a_concurrent_pin_survives_an_unpin() -> None:
    pinned = mr.pin(MemberReplica("c1", "acct"), stamp=stamp(0, "a"))
    unpinned = mr.unpin(pinned, stamp=stamp(5, "b"))
    repinned = mr.pin(pinned, stamp=stamp(3, "a"))
    assert not mr.is_pinned(unpinned)
    assert mr.is_pinned(merge(unpinned, repinned))
    assert mr.is_pinned(merge(repinned, unpinned))


def test_a_pin_concurrent_with_an_archive_shows_the_later_of_the_two() -> None:
    base = MemberReplica("c1", "acct")
    pinned = mr.pin(base, stamp=stamp(10, "a"))
    archived = mr.set_archived(base, True, archived_seq=4, stamp=stamp(20, "b"))
    merged = merge(pinned, archived)
    assert (mr.is_pinned(merged), mr.is_archived(merged)) == (False, True)
    pinned_later = mr.pin(base, stamp=stamp(30, "a"))
    merged = merge(pinned_later, archived)
    assert (mr.is_pinned(merged), mr.is_archived(merged)) == (True, False)


def test_a_merge_over_the_pin_cap_shows_the_highest_ranks_and_the_next_pin_releases_the_rest() -> (
    None
):
    a, b = Region("a"), Region("b")
    # Partitioned, each region pins up to the cap: four pins once merged.
    a.apply("pin", "c1", 0, T0)
    a.apply("pin", "c2", 0, T0 + 1_000)
    b.apply("pin", "c3", 0, T0 + 500)
    b.apply("pin", "c4", 0, T0 + 1_500)
    for conversation in ("c1", "c2"):
        b.receive(a.state(conversation), T0 + 2_000)
    for conversation in ("c3", "c4"):
        a.receive(b.state(conversation), T0 + 2_000)
    layout = mr.pin_layout(a.states.values(), CAP)
    assert layout == mr.pin_layout(b.states.values(), CAP)
    assert layout.shown == ("c4", "c2")
    assert layout.overflow == ("c3", "c1")
    assert mr.pin_check(layout, "c5", CAP) is mr.PinCheck.FULL
    assert mr.pin_check(layout, "c2", CAP) is mr.PinCheck.UNCHANGED
    # The unpin acts on the list as shown: the overflow goes with it.
    a.apply("unpin", "c2", 0, T0 + 3_000)
    a.apply("pin", "c5", 0, T0 + 4_000)
    after = mr.pin_layout(a.states.values(), CAP)
    assert after.shown == ("c5", "c4")
    assert after.overflow == ()


def test_the_unread_count_is_derived_from_the_merged_watermark() -> None:
    base = MemberReplica("c1", "acct")
    here = mr.mark_read(base, 12, stamp=stamp(0, "a"))
    there = mr.mark_delivered(mr.mark_read(base, 9, stamp=stamp(0, "b")), 20)
    merged = merge(here, there)
    assert mr.unread_count(merged, last_seq=30) == 18
    assert mr.unread_count(merged, last_seq=30, joined_seq=25) == 5
    assert mr.unread_count(merged, last_seq=10) == 0
    view = mr.view(merged, last_seq=30, now_ms=T0)
    assert (view.read_seq, view.delivered_seq, view.unread_count) == (12, 20, 18)


def test_an_unread_mark_holds_until_the_watermark_passes_it() -> None:
    base = mr.mark_read(MemberReplica("c1", "acct"), 5, stamp=stamp(0, "a"))
    marked = mr.mark_unread(base, stamp=stamp(1, "a"))
    assert mr.marked_unread(marked)
    # Another region reads further, concurrently: reading wins.
    read_there = mr.mark_read(base, 8, stamp=stamp(1, "b"))
    assert not mr.marked_unread(merge(marked, read_there))
    # MarkRead clears the mark even when nothing new was read.
    assert not mr.marked_unread(mr.mark_read(marked, 5, stamp=stamp(2, "a")))


def test_the_stored_settings_feed_the_inbox_policy() -> None:
    base = MemberReplica("c1", "acct")
    state = mr.set_muted(base, T0 + 60 * MINUTE, stamp=stamp(0, "a"), now_ms=T0)
    state = mr.set_archived(state, True, archived_seq=4, stamp=stamp(1, "a"))
    stored = mr.to_stored(state, pin_slot=None)
    assert stored.muted_until == datetime.fromtimestamp((T0 + 60 * MINUTE) / 1000, UTC)
    settings_now = effective_settings(
        stored,
        conversation_id="c1",
        last_seq=6,
        read_seq=0,
        now=datetime.fromtimestamp((T0 + MINUTE) / 1000, UTC),
    )
    # Muted, so news do not bring it back from the archive.
    assert settings_now.archived
    assert settings_now.muted_until is not None
    pinned = mr.to_stored(mr.pin(base, stamp=stamp(2, "a"), rank=77), pin_slot=0)
    assert (pinned.pinned, pinned.pin_rank, pinned.archived) == (True, 77, False)
