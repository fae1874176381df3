"""The history scenario's pure parts: the dataset is fixed by its seed, and
every page start keeps a page of 50 inside its tier."""

from __future__ import annotations

from parley_dev.bench.history_tiers import (
    BODY_BYTES,
    NEWEST_AGE_DAYS,
    PAGE,
    SPAN_DAYS,
    Dataset,
    page_starts,
)


def test_the_dataset_is_the_same_for_a_seed_and_differs_across_seeds() -> None:
    one, again, other = Dataset(2, 300, 17), Dataset(2, 300, 17), Dataset(2, 300, 18)
    assert one.bodies(0) == again.bodies(0) and one.ages_days(1, 300) == again.ages_days(1, 300)
    assert one.bodies(0) != other.bodies(0) and one.bodies(0) != one.bodies(1)
    bodies = one.bodies(0)
    assert len(bodies) == 300
    assert all(BODY_BYTES[0] <= len(b) <= BODY_BYTES[1] for b in bodies)
    ages = one.ages_days(0, 300)
    assert ages == sorted(ages, reverse=True), "oldest first, as the log's versions"
    assert ages[-1] >= NEWEST_AGE_DAYS and ages[0] <= NEWEST_AGE_DAYS + SPAN_DAYS


def test_page_starts_keep_the_whole_page_inside_the_tier() -> None:
    forward = page_starts(101, 200, forward=True)
    assert (forward[0], forward[-1]) == (101, 151)
    backward = page_starts(101, 200, forward=False)
    assert (backward[0], backward[-1]) == (150, 200)
    for start in (forward[0], forward[-1]):
        assert start >= 101 and start + PAGE - 1 <= 200
    for start in (backward[0], backward[-1]):
        assert start - PAGE + 1 >= 101 and start <= 200
    assert len(page_starts(1, PAGE, forward=True)) == 1
    assert len(page_starts(1, PAGE - 1, forward=False)) == 0, "a tier smaller than a page"
