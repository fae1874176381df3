"""The history archive's Parquet format and the archiver's pure rules: rows
turn back into the documents they were, the same rows give the same bytes,
a newer schema is refused, and what moves is whole old weeks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from svc_message.domain.archiver import bundles, chunks_of, id_floor, movable_prefix
from svc_message.storage.archive_format import (
    Chunk,
    UnknownSchema,
    encode,
    iso_week,
    read_row_group,
    row_group_sizes,
)
from svc_message.storage.tiered import apply_overlay

T0 = datetime(2026, 9, 7, 10, 0, tzinfo=UTC)  # a Monday

MESSAGE = {
    "_id": "0190aaaa-0000-7000-8000-000000000001",
    "conversation_id": "c1",
    "version": 1,
    "kind": "message",
    "sender_id": "alice",
    "created_at": T0,
    "request_id": "r1",
    "seq": 1,
    "sender_device_id": "d1",
    "type": 1,
    "body": b"\x00\xffciphertext",
    "reply_to": None,
    "forwarded": False,
    "state_version": 3,
    "edit_version": 2,
    "edited_at": T0 + timedelta(minutes=1),
    "media": ["m1", "m2"],
    "hidden_for": ["bob"],
    "reactions": {"2b31": ["bob", "carol"]},
}
SYSTEM = {
    "_id": "0190aaaa-0000-7000-8000-000000000002",
    "conversation_id": "c1",
    "version": 2,
    "kind": "system",
    "sender_id": "alice",
    "created_at": T0,
    "request_id": "r2",
    "seq": 2,
    "type": 9,
    "body": b"",
    "state_version": 2,
    "edit_version": 0,
    "system": {
        "action": 2,
        "actor": "alice",
        "targets": ["dave"],
        "role": 0,
        "title": "",
        "avatar": "",
    },
}
EDIT = {
    "_id": "0190aaaa-0000-7000-8000-000000000003",
    "conversation_id": "c1",
    "version": 3,
    "kind": "edit",
    "sender_id": "alice",
    "created_at": T0,
    "request_id": "r3",
    "target": MESSAGE["_id"],
    "target_seq": 1,
    "body": b"new",
}


def _without_none(doc: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in doc.items() if v is not None}


def test_rows_turn_back_into_the_documents_they_were() -> None:
    chunk = Chunk("c1", iso_week(T0), [MESSAGE, SYSTEM, EDIT])
    encoded = encode([chunk])
    assert row_group_sizes(encoded.data) == [3]
    assert read_row_group(encoded.data, 0) == [_without_none(d) for d in (MESSAGE, SYSTEM, EDIT)]


def test_the_same_rows_give_the_same_bytes_and_one_row_group_per_chunk() -> None:
    chunks = [Chunk("c1", "2026-W37", [MESSAGE]), Chunk("c2", "2026-W37", [SYSTEM, EDIT])]
    first, second = encode(chunks), encode(chunks)
    assert first.data == second.data and first.sha256 == second.sha256
    assert first.row_groups == ((0, 1), (1, 2))
    assert MESSAGE["body"] in first.data, "bodies are stored plain (erasure scans find them)"


def test_an_unknown_schema_version_is_refused() -> None:
    data = encode([Chunk("c1", "2026-W37", [MESSAGE])]).data
    tampered = data.replace(b"schema_version", b"schema_versiox")
    with pytest.raises(UnknownSchema):
        read_row_group(tampered, 0)


def test_only_whole_weeks_before_the_window_and_the_newest_week_move() -> None:
    docs = [
        {"_id": str(i), "version": i, "created_at": T0 + timedelta(days=3 * i)} for i in range(10)
    ]
    cutoff = T0 + timedelta(days=20)  # in the week of day 21
    moved = movable_prefix(docs, cutoff=cutoff, newest_at=T0 + timedelta(days=40))
    assert [d["version"] for d in moved] == [0, 1, 2, 3, 4]  # days 0..12: weeks before
    # The newest entry's week is never moved, even past the window.
    assert movable_prefix(
        docs, cutoff=T0 + timedelta(days=60), newest_at=T0 + timedelta(days=27)
    ) == [d for d in docs if iso_week(d["created_at"]) < iso_week(T0 + timedelta(days=27))]
    weeks = chunks_of("c1", moved)
    assert [(c.week, len(c.docs)) for c in weeks] == [
        ("2026-W37", 3),
        ("2026-W38", 2),
    ]


def test_bundles_reach_the_target_size_except_the_last() -> None:
    chunk = Chunk("c", "2026-W37", [{"body": b"x" * 800, "version": 1}])
    cut = bundles([chunk] * 5, target_bytes=2000)
    assert [len(b) for b in cut] == [2, 2, 1]


def test_id_floor_sorts_below_every_id_of_that_millisecond() -> None:
    floor = id_floor(1_700_000_000.0)
    assert floor < "018bcfe5-6800-7fff-bfff-ffffffffffff"
    assert floor > "018bcfe5-67ff-7fff-bfff-ffffffffffff"


def test_overlays_apply_as_the_hot_mutations_do_and_twice_is_harmless() -> None:
    doc = dict(MESSAGE, reactions={}, hidden_for=[])
    changes = [
        {"kind": "edit", "version": 5, "sender_id": "alice", "created_at": T0, "body": b"e"},
        {"kind": "reaction", "version": 6, "sender_id": "bob", "created_at": T0, "emoji": "+1"},
        {
            "kind": "reaction",
            "version": 7,
            "sender_id": "bob",
            "created_at": T0,
            "emoji": "+1",
            "removed": True,
        },
        {"kind": "hide", "version": 8, "sender_id": "bob", "created_at": T0, "only_for": "bob"},
        {"kind": "delete", "version": 9, "sender_id": "alice", "created_at": T0},
        {"kind": "edit", "version": 10, "sender_id": "alice", "created_at": T0, "body": b"late"},
    ]
    for change in changes:
        apply_overlay(doc, change)
    once = dict(doc)
    for change in changes:
        apply_overlay(doc, change)
    assert doc == once
    assert (doc["deleted"], doc["body"], "media" in doc) == (True, b"", False)
    assert doc["reactions"] == {"2b31": []} and doc["hidden_for"] == ["bob"]
    assert doc["state_version"] == 9
