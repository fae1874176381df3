"""Storage tiers and restores, the pure parts: the schedule config accepts only
what S3 can run, the lifecycle rules svc_media puts on the bucket, the
operator's rules kept beside them, and the x-amz-restore header read back."""

from __future__ import annotations

from typing import Any

import pytest

from parley_core.config import ConfigError, MediaServiceSettings, settings_from_tree
from parley_core.errors import InvalidArgument, Unavailable
from svc_media.domain.restores import restore_days, view_of
from svc_media.domain.tiers import install_until_done, lifecycle_plan
from svc_media.model import (
    LifecyclePlan,
    Requester,
    RestoreRecord,
    RestoreState,
    StoreRefused,
    TransitionsUnsupported,
)
from svc_media.storage.lifecycle import (
    STALE_UPLOADS_RULE,
    TIERS_RULE,
    merged_rules,
    own_rules,
)
from svc_media.storage.objects import parse_restore


def tiers(**values: int) -> MediaServiceSettings:
    return settings_from_tree({"media": {"tiers": values}}, {}).media


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"infrequent_after_days": 29}, "infrequent_after_days must be 0 (off) or at least 30"),
        ({"infrequent_after_days": 0, "archive_after_days": 89}, "at least 90"),
        # Glacier 30 days after STANDARD_IA at the earliest.
        ({"infrequent_after_days": 70, "archive_after_days": 99}, "infrequent_after_days + 30"),
        ({"infrequent_after_days": -1}, "infrequent_after_days"),
    ],
)
def test_the_schedule_refuses_what_s3_cannot_run(values: dict[str, int], problem: str) -> None:
    with pytest.raises(ConfigError, match="tiers") as refused:
        tiers(**values)
    assert problem in str(refused.value)


@pytest.mark.parametrize(
    "values",
    [
        {"infrequent_after_days": 0, "archive_after_days": 0},
        {"infrequent_after_days": 30, "archive_after_days": 0},
        {"infrequent_after_days": 0, "archive_after_days": 90},
        {"infrequent_after_days": 30, "archive_after_days": 90},
        {"infrequent_after_days": 70, "archive_after_days": 100},
    ],
)
def test_schedules_s3_can_run_are_taken(values: dict[str, int]) -> None:
    config = tiers(**values)
    assert config.tiers.infrequent_after_days == values["infrequent_after_days"]


def test_the_default_moves_to_the_infrequent_tier_after_30_days_and_never_archives() -> None:
    plan = lifecycle_plan(MediaServiceSettings())
    assert (plan.infrequent_after_days, plan.archive_after_days) == (30, 0)
    # A day past the longest session (24 h by default).
    assert plan.abort_incomplete_after_days == 2
    longest = MediaServiceSettings(upload_session_seconds=7 * 86400)
    assert lifecycle_plan(longest).abort_incomplete_after_days == 8


def test_the_rules_move_only_objects_above_128_kib_under_media() -> None:
    rules = own_rules(LifecyclePlan(30, 120, 2))
    assert rules == [
        {
            "ID": TIERS_RULE,
            "Status": "Enabled",
            "Filter": {"And": {"Prefix": "media/", "ObjectSizeGreaterThan": 131072}},
            "Transitions": [
                {"Days": 30, "StorageClass": "STANDARD_IA"},
                {"Days": 120, "StorageClass": "GLACIER"},
            ],
        },
        {
            "ID": STALE_UPLOADS_RULE,
            "Status": "Enabled",
            "Filter": {"Prefix": "media/"},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2},
        },
    ]
    archive_only = own_rules(LifecyclePlan(0, 90, 2))[0]
    assert archive_only["Transitions"] == [{"Days": 90, "StorageClass": "GLACIER"}]
    # Tiers off: the stale-upload rule alone.
    assert [r["ID"] for r in own_rules(LifecyclePlan(0, 0, 2))] == [STALE_UPLOADS_RULE]
    assert not LifecyclePlan(30, 0, 2).without_transitions().transitions


def test_the_operators_rules_are_kept_and_ours_replaced() -> None:
    theirs: dict[str, Any] = {
        "ID": "logs-expire",
        "Status": "Enabled",
        "Filter": {"Prefix": "logs/"},
        "Expiration": {"Days": 7},
    }
    stale = {**own_rules(LifecyclePlan(30, 0, 2))[0], "Transitions": []}
    merged = merged_rules([theirs, stale], LifecyclePlan(60, 0, 3))
    assert merged[0] == theirs
    assert [r["ID"] for r in merged] == ["logs-expire", TIERS_RULE, STALE_UPLOADS_RULE]
    assert merged[1]["Transitions"] == [{"Days": 60, "StorageClass": "STANDARD_IA"}]
    # Applied twice, nothing changes: a restart writes nothing.
    assert merged_rules(merged, LifecyclePlan(60, 0, 3)) == merged


def test_the_restore_header_says_running_or_until_when_the_copy_is_readable() -> None:
    assert parse_restore(None) == (False, None)
    assert parse_restore('ongoing-request="true"') == (True, None)
    done = 'ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"'
    assert parse_restore(done) == (False, 1356048000.0)
    assert parse_restore('ongoing-request="false", expiry-date="not a date"') == (False, None)
    assert parse_restore("garbage") == (False, None)


def test_restore_days_default_to_one_and_stay_within_thirty() -> None:
    assert restore_days(0) == 1 and restore_days(30) == 30
    for bad in (-1, 31):
        with pytest.raises(InvalidArgument) as refused:
            restore_days(bad)
        assert [v.field for v in refused.value.violations] == ["days"]


def test_a_ready_restore_past_its_expiry_reads_expired_before_the_poller_marks_it() -> None:
    record = RestoreRecord(
        media_id="ab" * 32,
        object_key="media/ab/x",
        state=RestoreState.READY,
        days=1,
        requested_at=10.0,
        ready_at=20.0,
        expires_at=100.0,
        next_poll_at=100.0,
        requesters=(Requester("a", "d"),),
    )
    assert view_of(record, now=99.0).state == RestoreState.READY
    assert view_of(record, now=100.0).state == RestoreState.EXPIRED
    assert record.unnotified() == [Requester("a", "d")]


class Store:
    """install_lifecycle answering from a script: an exception or a result each call."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.plans: list[LifecyclePlan] = []

    async def install_lifecycle(self, plan: LifecyclePlan) -> bool:
        self.plans.append(plan)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)


async def test_install_retries_a_store_down_and_falls_back_without_transitions() -> None:
    plan = LifecyclePlan(30, 90, 2)
    store = Store(Unavailable("down"), TransitionsUnsupported("501"), True)
    in_force = await install_until_done(store, plan, retry_seconds=0)  # type: ignore[arg-type]
    assert in_force == LifecyclePlan(0, 0, 2)
    assert store.plans == [plan, plan, LifecyclePlan(0, 0, 2)]
    # A refusal (or anything unexpected) ends it: media works without the rules.
    for answer in (StoreRefused("MalformedXML", 400), ValueError("odd")):
        assert await install_until_done(Store(answer), plan, retry_seconds=0) is None  # type: ignore[arg-type]
