"""The glacier tier's pure parts: the lifecycle rule svc_message puts on the
bucket beside everyone else's, its transition day, and the config check
that keeps the cold window past the hot window by Glacier's minimum
billing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from parley_core.config import ArchiveSettings
from parley_core.storage.s3 import parse_restore
from svc_message.storage.archive import ObjectClass
from svc_message.storage.archive_lifecycle import (
    GLACIER_RULE,
    glacier_rule,
    merged_rules,
    transition_days,
)

MEDIA_RULE = {"ID": "parley-media-tiers", "Status": "Enabled", "Filter": {"Prefix": "media/"}}
OPERATOR_RULE = {"ID": "expire-tmp", "Status": "Enabled", "Expiration": {"Days": 7}}


def test_the_rule_moves_the_archive_prefix_whatever_the_object_size() -> None:
    rule = glacier_rule(prefix="history/", days=335, storage_class="GLACIER")
    assert rule["ID"] == GLACIER_RULE
    assert rule["Filter"] == {"And": {"Prefix": "history/", "ObjectSizeGreaterThan": 0}}
    assert rule["Transitions"] == [{"Days": 335, "StorageClass": "GLACIER"}]


def test_merging_keeps_every_other_rule_and_replaces_ours() -> None:
    old = glacier_rule(prefix="history/", days=100, storage_class="GLACIER")
    new = glacier_rule(prefix="history/", days=335, storage_class="DEEP_ARCHIVE")
    merged = merged_rules([OPERATOR_RULE, old, MEDIA_RULE], new)
    assert merged == [OPERATOR_RULE, MEDIA_RULE, new]
    # Off: ours goes, the others stay.
    assert merged_rules(merged, None) == [OPERATOR_RULE, MEDIA_RULE]
    # Unchanged input gives equal output (nothing to write).
    assert merged_rules(merged, new) == merged


@pytest.mark.parametrize(
    ("cold", "hot", "days"), [(365, 30, 335), (365, 29.5, 336), (120.2, 30, 91), (31, 30.5, 1)]
)
def test_transition_day_is_the_gap_between_the_windows(cold: float, hot: float, days: int) -> None:
    assert transition_days(cold_window_days=cold, hot_window_days=hot) == days


def test_the_cold_window_is_off_or_far_enough_past_the_hot_window() -> None:
    assert ArchiveSettings().cold_window_days == 365
    assert ArchiveSettings(cold_window_days=0).cold_window_days == 0
    assert ArchiveSettings(hot_window_days=30, cold_window_days=120).cold_window_days == 120
    with pytest.raises(ValidationError, match="cold_window_days"):
        ArchiveSettings(hot_window_days=30, cold_window_days=119)
    with pytest.raises(ValidationError, match="cold_window_days"):
        ArchiveSettings(hot_window_days=300)


def test_an_archived_object_is_readable_only_while_a_restored_copy_lasts() -> None:
    assert ObjectClass("STANDARD").readable(0.0)
    assert not ObjectClass("GLACIER").readable(0.0)
    assert not ObjectClass("DEEP_ARCHIVE", restoring=True).readable(0.0)
    restored = ObjectClass("GLACIER", restored_until=1000.0)
    assert restored.readable(999.0) and not restored.readable(1000.0)
    assert parse_restore('ongoing-request="true"') == (True, None)
