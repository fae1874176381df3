"""What a replica trims of another region's conversation, and the floor it records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from parley_core.errors import Code
from svc_message.domain.replica_trim import floor_after, trimmable_prefix
from svc_message.model import ChangeKind
from svc_message.model.replica_floor import HistoryAtOwner, ReplicaFloor, history_at_owner

CUTOFF = datetime(2026, 11, 1, tzinfo=UTC)


def _entry(version: int, days_before_cutoff: float, *, seq: int = 0, kind: str = "") -> dict:
    doc: dict = {
        "version": version,
        "created_at": CUTOFF - timedelta(days=days_before_cutoff),
    }
    if seq:
        doc["seq"] = seq
    if kind:
        doc["kind"] = kind
    return doc


def test_the_prefix_stops_at_the_first_entry_inside_the_window() -> None:
    docs = [_entry(1, 9, seq=1), _entry(2, 5, seq=2), _entry(3, -1, seq=3), _entry(4, 3, seq=4)]
    assert [d["version"] for d in trimmable_prefix(docs, cutoff=CUTOFF, newest_version=9)] == [
        1,
        2,
    ]


def test_the_newest_entry_always_stays() -> None:
    docs = [_entry(1, 9, seq=1), _entry(2, 8, seq=2)]
    assert [d["version"] for d in trimmable_prefix(docs, cutoff=CUTOFF, newest_version=2)] == [1]


def test_the_floor_rises_by_the_trimmed_versions_and_history_seqs() -> None:
    trimmed = [
        _entry(5, 9, seq=3),
        _entry(6, 9, kind=ChangeKind.REACTION),
        _entry(7, 9, seq=4),
        _entry(8, 9, kind=ChangeKind.REACTION),
    ]
    assert floor_after(ReplicaFloor(version=4, seq=2), trimmed) == ReplicaFloor(version=8, seq=4)
    assert floor_after(ReplicaFloor(version=9, seq=6), trimmed) == ReplicaFloor(version=9, seq=6)


def test_a_read_below_the_floor_is_not_found_so_the_owner_is_asked() -> None:
    error = history_at_owner("c1", 17)
    assert isinstance(error, HistoryAtOwner)
    assert error.code is Code.NOT_FOUND
