"""How a replica applies copies naming an account it erased
(svc_message/storage/erased.py): as the owner's erasure (storage/erasure.py)
leaves them, flagged so the erased copy wins."""

from __future__ import annotations

from svc_message.model import DIRECT, ERASED, ChangeKind
from svc_message.storage.erased import ERASED_FLAG, accounts_named, scrub_head, scrub_message

GONE = frozenset({"acc-erin"})


def test_a_message_of_an_erased_sender_arrives_as_a_tombstone() -> None:
    doc = {
        "_id": "m1",
        "kind": ChangeKind.MESSAGE,
        "sender_id": "acc-erin",
        "sender_device_id": "dev-1",
        "body": b"secret",
        "media": ["media-1"],
        "request_id": "r1",
        "reactions": {"f09f918d": ["acc-erin", "acc-ulla"]},
        "hidden_for": ["acc-erin"],
    }
    out = scrub_message(doc, GONE)
    assert out["sender_id"] == ERASED and bytes(out["body"]) == b"" and out["deleted"] is True
    assert out["deleted_by"] == ERASED and out["request_id"] == "m1" and out[ERASED_FLAG]
    assert "media" not in out and "sender_device_id" not in out
    assert out["reactions"] == {"f09f918d": ["acc-ulla"]} and out["hidden_for"] == []
    assert "acc-erin" not in repr(out)


def test_others_entries_name_the_marker_and_unnamed_ones_are_unchanged() -> None:
    system = {
        "_id": "s1",
        "kind": ChangeKind.SYSTEM,
        "sender_id": "acc-ulla",
        "system": {"action": 1, "actor": "acc-erin", "targets": ["acc-erin", "acc-eve"]},
    }
    out = scrub_message(system, GONE)
    assert out["system"]["actor"] == ERASED and out["system"]["targets"] == [ERASED, "acc-eve"]
    assert out["sender_id"] == "acc-ulla" and out[ERASED_FLAG]
    plain = {"_id": "m2", "sender_id": "acc-ulla", "body": b"kept"}
    assert scrub_message(plain, GONE) == plain
    assert scrub_message(system, frozenset()) == system
    assert accounts_named("messages", system) == {"acc-ulla", "acc-erin", "acc-eve"}


def test_a_head_forgets_the_erased_member() -> None:
    head = {
        "_id": "c1",
        "type": DIRECT,
        "member_ids": ["acc-erin", "acc-ulla"],
        "sent": {"acc-erin": 3, "acc-ulla": 4},
        "roles": {"acc-erin": 2},
        "joined": {"acc-erin": 1, "acc-ulla": 1},
        "last_message": {"sender": "acc-erin", "seq": 3},
    }
    out = scrub_head(head, GONE)
    assert out["member_ids"] == [ERASED, "acc-ulla"]
    assert out["sent"] == {"acc-ulla": 4} and out["roles"] == {}
    assert out["joined"] == {"acc-ulla": 1, ERASED: 1}
    assert out["last_message"]["sender"] == ERASED
    assert "acc-erin" not in repr(out)
    assert accounts_named("conversations", head) == {"acc-erin", "acc-ulla"}
