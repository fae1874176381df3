"""The history tier gauges: the hot tier is reported as the archiver's last
pass measured it, and left out (not reported as 0) before any pass has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from svc_message.archive_metrics import ArchiveMetrics
from svc_message.domain.archiver import Archiver
from svc_message.model.archive import ArchiveState, ArchiveStatus


@dataclass
class SampledArchiver:
    """What the collector reads of an Archiver."""

    sampled: ArchiveStatus | None
    moved_total: int = 0
    trimmed_total: int = 0
    objects_total: int = 0
    bytes_total: int = 0
    to_glacier_total: int = 0
    failures: int = 0

    def lag_seconds(self, now: float) -> float:
        return 0.0


def tiers(status: ArchiveStatus) -> dict[str, dict[str, float]]:
    collector = ArchiveMetrics(cast(Archiver, SampledArchiver(status)), clock=lambda: 0.0)
    found: dict[str, dict[str, float]] = {}
    for family in collector.collect():
        if family.name in ("parley_history_entries", "parley_history_bytes"):
            found[family.name] = {s.labels["tier"]: s.value for s in family.samples}
    return found


def status(state: ArchiveState, hot_entries: int | None, hot_bytes: int | None) -> ArchiveStatus:
    return ArchiveStatus(
        state=state,
        hot_entries=hot_entries,
        hot_bytes=hot_bytes,
        cold_rows=5,
        cold_objects=1,
        cold_bytes=700,
    )


def test_the_hot_tier_is_what_the_last_pass_measured() -> None:
    state = ArchiveState(last_pass_at=1.0, hot_entries=12, hot_bytes=3400)
    found = tiers(status(state, state.hot_entries, state.hot_bytes))
    assert found["parley_history_entries"] == {"hot": 12, "cold": 5, "glacier": 0}
    assert found["parley_history_bytes"] == {"hot": 3400, "cold": 700, "glacier": 0}


def test_no_hot_tier_before_any_pass_measured_it() -> None:
    found = tiers(status(ArchiveState(), None, None))
    assert found["parley_history_entries"] == {"cold": 5, "glacier": 0}
    assert found["parley_history_bytes"] == {"cold": 700, "glacier": 0}
