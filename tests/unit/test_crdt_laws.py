"""The generic CRDTs of parley_core.crdt: merge is a join (commutative,
associative, idempotent), every local write only grows the state, the
plain-dict encoding round-trips through JSON, and add wins over a
concurrent remove."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from parley_core.crdt import AddWinsSet, EpochMaxRegister, LWWRegister, MaxRegister
from parley_core.hlc import HybridClock, Timestamp

LAWS = settings(max_examples=100, deadline=None)

T0 = 1_900_000_000_000
# Few distinct values so that collisions (equal stamps, shared tags) happen.
stamps = st.builds(
    Timestamp,
    wall_ms=st.integers(min_value=T0, max_value=T0 + 3),
    logical=st.integers(min_value=0, max_value=2),
    node=st.sampled_from(["a", "b", "c"]),
)
small = st.integers(min_value=-3, max_value=3)

max_registers = st.builds(MaxRegister, small)
epoch_registers = st.builds(EpochMaxRegister, stamps, small)
# Equal stamps with different values only arise from a shared node id; the
# merge must still be a join then, so the strategy allows it.
lww_registers = st.builds(LWWRegister, st.sampled_from(["x", "y", "z"]), stamps)
add_wins_sets = st.builds(
    AddWinsSet.of,
    st.lists(st.tuples(st.sampled_from(["p", "q", "r"]), stamps), max_size=6),
    st.dictionaries(stamps, stamps, max_size=4),
)


def empty() -> AddWinsSet[str]:
    # Not AddWinsSet[str](): a subscripted call sets __orig_class__, which a
    # frozen slotted dataclass refuses.
    return AddWinsSet()


def check_laws(a: Any, b: Any, c: Any) -> None:
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    # Monotone: the merge is above both inputs in the lattice order
    # (x <= y iff x merged into y changes nothing).
    merged = a.merge(b)
    assert merged.merge(a) == merged
    assert merged.merge(b) == merged


@LAWS
@given(max_registers, max_registers, max_registers)
def test_max_register_merge_is_a_join(a: Any, b: Any, c: Any) -> None:
    check_laws(a, b, c)


@LAWS
@given(epoch_registers, epoch_registers, epoch_registers)
def test_epoch_max_register_merge_is_a_join(a: Any, b: Any, c: Any) -> None:
    check_laws(a, b, c)


@LAWS
@given(lww_registers, lww_registers, lww_registers)
def test_lww_register_merge_is_a_join(a: Any, b: Any, c: Any) -> None:
    check_laws(a, b, c)


@LAWS
@given(add_wins_sets, add_wins_sets, add_wins_sets)
def test_add_wins_set_merge_is_a_join(a: Any, b: Any, c: Any) -> None:
    check_laws(a, b, c)


@LAWS
@given(
    max_registers,
    epoch_registers,
    lww_registers,
    add_wins_sets,
    small,
    stamps,
    st.sampled_from(["p", "q", "s"]),
)
def test_every_local_write_only_grows_the_state(
    m: MaxRegister[int],
    e: EpochMaxRegister[int],
    w: LWWRegister[str],
    s: AddWinsSet[str],
    value: int,
    stamp: Timestamp,
    element: str,
) -> None:
    writes: list[tuple[Any, Any]] = [
        (m, m.raised(value)),
        (e, e.raised(value)),
        (e, e.reset(value, stamp)),
        (w, w.assign("w", stamp)),
        (s, s.add(element, stamp)),
        (s, s.remove(element, stamp)),
    ]
    for before, after in writes:
        assert before.merge(after) == after


@LAWS
@given(max_registers, epoch_registers, lww_registers, add_wins_sets)
def test_the_plain_encoding_round_trips_through_json(
    m: MaxRegister[int],
    e: EpochMaxRegister[int],
    w: LWWRegister[str],
    s: AddWinsSet[str],
) -> None:
    def through_json(data: dict[str, Any]) -> Any:
        return json.loads(json.dumps(data))

    assert MaxRegister.from_dict(through_json(m.to_dict()), int) == m
    assert EpochMaxRegister.from_dict(through_json(e.to_dict()), int) == e
    assert LWWRegister.from_dict(through_json(w.to_dict()), str) == w
    assert AddWinsSet.from_dict(through_json(s.to_dict()), str) == s
    # Equal states encode identically (storage can compare documents).
    assert s.to_dict() == AddWinsSet.of(set(s.adds), dict(s.removed)).to_dict()


def test_a_concurrent_add_and_remove_leave_the_element_present() -> None:
    a, b = HybridClock("a"), HybridClock("b")
    start = empty().add("p", a.now(T0))
    b.observe(a.last, T0)
    # Replica b removes what it saw; replica a, concurrently, adds again.
    removed = start.remove("p", b.now(T0 + 1))
    readded = start.add("p", a.now(T0 + 1))
    assert "p" not in removed
    assert "p" in removed.merge(readded)
    assert "p" in readded.merge(removed)
    # A remove that saw the re-add removes it.
    b.observe(a.last, T0 + 2)
    both = removed.merge(readded)
    assert "p" not in both.remove("p", b.now(T0 + 2))


def test_a_removed_tag_arriving_late_stays_dead() -> None:
    clock = HybridClock("a")
    tag = clock.now(T0)
    added = empty().add("p", tag)
    removed = added.remove("p", clock.now(T0 + 1))
    assert "p" not in removed.merge(added)
    assert "p" not in empty().merge(removed).merge(added)


def test_compaction_forgets_only_tombstones_older_than_the_horizon() -> None:
    clock = HybridClock("a")
    s = empty().add("p", clock.now(T0)).add("q", clock.now(T0 + 1))
    s = s.remove("p", clock.now(T0 + 10)).remove("q", clock.now(T0 + 20))
    compacted = s.compact(Timestamp(T0 + 15, 0, "a"))
    assert len(compacted.removed) == 1
    assert compacted.elements() == frozenset()


def test_lww_register_keeps_the_greatest_stamp_whatever_the_arrival_order() -> None:
    early = LWWRegister("old", Timestamp(T0, 0, "b"))
    late = LWWRegister("new", Timestamp(T0, 1, "a"))
    assert early.merge(late).value == "new"
    assert late.merge(early).value == "new"
    assert late.assign("stale", Timestamp(T0, 0, "z")).value == "new"


def test_an_epoch_reset_goes_back_and_beats_raises_of_the_old_epoch() -> None:
    base = EpochMaxRegister(Timestamp(T0, 0, "a"), 100)
    raised = base.raised(500)
    lowered = base.reset(0, Timestamp(T0 + 1, 0, "b"))
    assert raised.value == 500
    assert lowered.value == 0
    assert raised.merge(lowered) == lowered.merge(raised) == lowered
    # Raises within the new epoch are max again.
    assert lowered.raised(50).merge(lowered.raised(70)).value == 70
