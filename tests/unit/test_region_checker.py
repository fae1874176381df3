"""The history checker's logic on hand-made histories and region snapshots
(tests/region_checker.py): a consistent world passes, and each kind of
violation is reported, readably, for the conversation and region it is in."""

from __future__ import annotations

from dataclasses import replace

from tests.region_checker import (
    DELETE,
    EDIT,
    SEND,
    Attempt,
    Entry,
    History,
    RegionSnapshot,
    body_hash,
    check,
    edit_bodies_of_deleted,
)

EU, US, AP = "eu", "us", "ap"
CID = "c-shared"
PINNED = "c-pinned"
ANN, BOB = "ann", "bob"


def _send(n: int, *, acknowledged: bool = True, via: str = US) -> Attempt:
    return Attempt(
        SEND,
        CID,
        f"r{n}",
        ANN,
        via,
        acknowledged,
        message_id=f"m{n}" if acknowledged else "",
        seq=n + 1 if acknowledged else 0,
        body_hash=body_hash(f"body {n}".encode()),
    )


def _item(n: int, *, body: bytes | None = None, deleted: bool = False, state: int = 0) -> Entry:
    text = f"body {n}".encode() if body is None else body
    return Entry(
        id=f"m{n}",
        conversation_id=CID,
        kind="message",
        version=n + 1,
        state_version=state or n + 1,
        sender_id=ANN,
        request_id=f"r{n}",
        seq=n + 1,
        body_hash=body_hash(text) if text else None,
        deleted=deleted,
    )


def _created(cid: str = CID) -> Entry:
    return Entry(
        id=f"{cid}-created",
        conversation_id=cid,
        kind="system",
        version=1,
        state_version=1,
        sender_id=ANN,
        request_id="create",
        seq=1,
    )


def _world() -> tuple[History, dict[str, RegionSnapshot]]:
    """Two sends and an edit of the first, the second deleted for everyone,
    one send that timed out but committed; replicated to us; a pinned
    conversation only in eu."""
    history = History()
    history.plan(CID, owner=EU, homes={EU, US})
    history.plan(PINNED, owner=EU, homes={EU})
    for n in (1, 2):
        history.record(_send(n), f"body {n}".encode())
    edit = Attempt(EDIT, CID, "r-edit", ANN, EU, True, message_id="m1", body_hash=body_hash(b"e"))
    history.record(edit, b"e")
    history.record(Attempt(DELETE, CID, "r-del", ANN, US, True, message_id="m2"))
    history.record(_send(3, acknowledged=False), b"body 3")
    entries = [
        _created(),
        replace(_item(1, body=b"e"), state_version=5),
        replace(_item(2, body=b"", deleted=True), state_version=6),
        _item(3),
        Entry("e1", CID, "edit", 5, 5, ANN, "r-edit", body_hash=body_hash(b"e"), target="m1"),
        Entry("d2", CID, "delete", 6, 6, ANN, "r-del", target="m2"),
    ]
    pinned = [_created(PINNED)]
    eu = RegionSnapshot(EU, {CID: entries, PINNED: pinned}, {CID, PINNED}, {CID: 2, PINNED: 1})
    us = RegionSnapshot(US, {CID: list(entries)}, {CID}, {CID: 2})
    return history, {EU: eu, US: us}


def test_a_consistent_history_passes() -> None:
    history, snapshots = _world()
    assert check(history, snapshots) == []


def test_an_acknowledged_send_missing_at_the_owner_is_lost() -> None:
    history, snapshots = _world()
    history.record(_send(4), b"body 4")
    problems = check(history, snapshots)
    assert problems == [f"[lost] {CID}: acknowledged send r4 via us missing at eu"]


def test_an_uncertain_write_may_be_missing() -> None:
    history, snapshots = _world()
    history.record(_send(4, acknowledged=False), b"body 4")
    history.record(Attempt(EDIT, CID, "r-e2", ANN, US, False, message_id="m1", body_hash="x"))
    assert check(history, snapshots) == []


def test_a_send_stored_with_another_seq_is_reported() -> None:
    history, snapshots = _world()
    history.attempts[0] = replace(history.attempts[0], seq=7)
    problems = check(history, snapshots)
    assert len(problems) == 1 and problems[0].startswith(f"[lost] {CID}: acknowledged send r1")
    assert "seq 7" in problems[0] and "holds m1 seq 2" in problems[0]


def test_an_entry_no_client_wrote_is_unexplained() -> None:
    history, snapshots = _world()
    history.attempts = [a for a in history.attempts if a.request_id != "r3"]
    problems = check(history, snapshots)
    assert problems == [
        f"[unexplained] {CID}: eu holds message m3 (request 'r3') that no client attempted"
    ]


def test_a_body_no_write_explains_is_a_wrong_final_state() -> None:
    history, snapshots = _world()
    for region in (EU, US):
        held = snapshots[region].entries[CID]
        held[1] = replace(held[1], body_hash=body_hash(b"body 1"))
    problems = check(history, snapshots)
    assert len(problems) == 1
    assert problems[0].startswith(f"[final state] {CID}: message m1 at eu is body ")
    # An uncertain later edit with that body would explain it.
    history.record(
        Attempt(EDIT, CID, "r-e3", ANN, US, False, message_id="m1", body_hash=body_hash(b"body 1"))
    )
    assert check(history, snapshots) == []


def test_an_acknowledged_delete_must_leave_a_tombstone() -> None:
    history, snapshots = _world()
    for region in (EU, US):
        held = snapshots[region].entries[CID]
        held[2] = replace(held[2], deleted=False, body_hash=body_hash(b"body 2"))
    problems = check(history, snapshots)
    assert problems == [
        f"[final state] {CID}: message m2 at eu is body {body_hash(b'body 2')[:12]}, "
        "expected one of ['deleted, no body']"
    ]


def test_a_tombstone_with_a_body_is_a_resurrection_in_that_region() -> None:
    history, snapshots = _world()
    held = snapshots[US].entries[CID]
    held[2] = replace(held[2], body_hash=body_hash(b"body 2"))
    problems = check(history, snapshots)
    assert problems[0] == (
        f"[resurrection] {CID} in us: message m2 is deleted for everyone but holds a body "
        f"{body_hash(b'body 2')[:12]}"
    )
    assert problems[1].startswith(f"[convergence] {CID} in us differs from owner eu")
    # A replica that never applied the delete holds the message as it was.
    held[2] = replace(held[2], deleted=False, state_version=3)
    problems = check(history, snapshots)
    assert problems[0] == (
        f"[resurrection] {CID} in us: message m2 is deleted for everyone but holds its "
        f"body, not deleted {body_hash(b'body 2')[:12]}"
    )


def test_gaps_in_seqs_and_versions_are_reported_per_region() -> None:
    history, snapshots = _world()
    for region in (EU, US):
        held = snapshots[region].entries[CID]
        held[3] = replace(held[3], seq=5)
        held[5] = replace(held[5], version=8)
    problems = check(history, snapshots)
    assert problems == [
        f"[gap] {CID} in eu: seqs 1..3, 5",
        f"[gap] {CID} in eu: versions 1..5, 8",
        f"[gap] {CID} in us: seqs 1..3, 5",
        f"[gap] {CID} in us: versions 1..5, 8",
    ]


def test_a_replica_behind_or_ahead_does_not_converge() -> None:
    history, snapshots = _world()
    snapshots[US].entries[CID] = snapshots[US].entries[CID][:3]
    problems = check(history, snapshots)
    assert problems == [
        (
            f"[convergence] {CID} in us differs from owner eu (6 entries there, 3 here): "
            "d2 missing; e1 missing; m3 missing"
        )
    ]
    history, snapshots = _world()
    stale = snapshots[US].entries[CID]
    stale[1] = replace(stale[1], state_version=2, body_hash=body_hash(b"body 1"))
    snapshots[US].heads.clear()
    problems = check(history, snapshots)
    assert len(problems) == 2
    assert problems[0].endswith(
        f"m1: state_version 2 (owner 5), body {body_hash(b'body 1')[:12]} "
        f"(owner {body_hash(b'e')[:12]})"
    )
    assert problems[1] == f"[convergence] {CID} in us: no conversation head"


def test_a_pinned_conversation_found_elsewhere_breaks_residency() -> None:
    history, snapshots = _world()
    snapshots[US].member_docs[PINNED] = 1
    snapshots[US].found[PINNED] = {"redis:rl:send:c-pinned", "mongo:idempotency"}
    problems = check(history, snapshots)
    assert problems == [
        f"[residency] {PINNED} (owner eu, homes ['eu']) found in us: "
        "1 member documents, mongo:idempotency, redis:rl:send:c-pinned"
    ]


def test_a_third_region_must_hold_nothing_of_a_two_region_conversation() -> None:
    history, snapshots = _world()
    snapshots[AP] = RegionSnapshot(AP, heads={CID})
    problems = check(history, snapshots)
    assert problems == [f"[residency] {CID} (owner eu, homes ['eu', 'us']) found in ap: its head"]


def test_residency_needles_name_ids_and_ciphertexts_of_foreign_conversations() -> None:
    history, _ = _world()
    history.record(
        Attempt(SEND, PINNED, "p1", ANN, EU, True, message_id="p", seq=2, body_hash="h"),
        b"secret",
    )
    assert history.needles(US) == {PINNED.encode(): PINNED, b"secret": PINNED}
    assert history.needles(EU) == {}


def test_a_retry_committed_twice_is_a_duplicate() -> None:
    history, snapshots = _world()
    twice = replace(snapshots[EU].entries[CID][3], id="m3b", seq=5, version=7)
    for region in (EU, US):
        snapshots[region].entries[CID].append(twice)
    problems = check(history, snapshots)
    assert problems == [f"[duplicate] {CID}: eu holds request 'r3' of ann 2 times"]


def test_edit_bodies_of_deleted_messages_are_listed_apart() -> None:
    history, snapshots = _world()
    assert edit_bodies_of_deleted(history, snapshots) == []
    for region in (EU, US):
        snapshots[region].entries[CID].append(
            Entry("e2", CID, "edit", 7, 7, ANN, "r-e2", body_hash="ab" * 32, target="m2")
        )
    assert edit_bodies_of_deleted(history, snapshots) == [
        f"[deleted edit body] {CID} in {region}: edit e2 of deleted message m2 holds a body"
        for region in (EU, US)
    ]
