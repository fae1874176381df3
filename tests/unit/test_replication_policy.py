"""The pure decisions of region replication: which peers a conversation goes
to (ownership, member homes, replicateTo, homeOnlyData), batching bounds,
routing a batch, lag, and the default member merge."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from svc_message.domain.replication import (
    ReplicationPolicy,
    conversations_to_look_up,
    lag_seconds,
    merge_member_document,
    route,
)
from svc_message.model.replication import FeedChange, ReplicatedKind


def policy(
    *,
    region: str = "eu",
    replicate_to: Collection[str] = ("us", "ap"),
    pinned: Mapping[str, Collection[str]] | None = None,
) -> ReplicationPolicy:
    homes_only = dict(pinned or {})
    return ReplicationPolicy(
        region=region,
        replicate_to=frozenset(replicate_to),
        owner_region=lambda c: c.split("-", 1)[0],
        home_region=lambda a: a.split(":", 1)[0],
        home_only_data=lambda r: tuple(homes_only.get(r, ())),
    )


def change(
    kind: ReplicatedKind, conversation_id: str, doc: dict[str, object] | None, at: float = 0.0
) -> FeedChange:
    return FeedChange(kind, conversation_id, doc, b"x" if doc is not None else b"", {}, at)


def test_goes_to_member_homes_other_than_this_region() -> None:
    p = policy()
    assert p.peers_for("eu-1", ["eu:a", "us:b", "ap:c", "us:d"]) == {"us", "ap"}
    assert p.peers_for("eu-1", ["eu:a", "eu:b"]) == frozenset()


def test_only_conversations_owned_here_leave() -> None:
    assert policy().peers_for("us-1", ["eu:a", "us:b", "ap:c"]) == frozenset()


def test_replicate_to_bounds_the_peers() -> None:
    p = policy(replicate_to=("us",))
    assert p.peers_for("eu-1", ["eu:a", "us:b", "ap:c"]) == {"us"}
    assert policy(replicate_to=()).peers_for("eu-1", ["us:b"]) == frozenset()


def test_a_conversation_of_pinned_homes_stays_in_them() -> None:
    p = policy(pinned={"eu": ("messages",), "us": ("messages", "media")})
    # All members homed in pinned regions: only those regions.
    assert p.peers_for("eu-1", ["eu:a", "eu:b"]) == frozenset()
    assert p.peers_for("eu-1", ["eu:a", "us:b"]) == {"us"}
    # Pinned for media only: not a messages pin.
    media_only = policy(pinned={"eu": ("media",)})
    assert media_only.peers_for("eu-1", ["eu:a", "ap:b"]) == {"ap"}
    assert p.sends_to("us", "eu-1", ["eu:a", "us:b"])
    assert not p.sends_to("ap", "eu-1", ["eu:a", "us:b"])


def test_route_keeps_stream_order_and_uses_the_head_own_members() -> None:
    p = policy()
    changes = [
        change(ReplicatedKind.MESSAGE, "eu-1", {"_id": "m1"}),
        change(ReplicatedKind.MESSAGE, "eu-2", {"_id": "m2"}),
        change(ReplicatedKind.CONVERSATION, "eu-2", {"_id": "eu-2", "member_ids": ["us:b"]}),
        change(ReplicatedKind.MEMBER, "eu-1", {"_id": "eu-1:us:b"}),
        change(ReplicatedKind.MESSAGE, "eu-1", None),  # deleted: never replicated
        change(ReplicatedKind.MESSAGE, "us-9", {"_id": "m9"}),  # not owned here
    ]
    members = {"eu-1": ("eu:a", "us:b"), "eu-2": ("eu:a",), "us-9": ("us:b",)}
    routed = route(changes, peer="us", policy=p, members=members)
    assert [c.document for c in routed] == [
        {"_id": "m1"},
        {"_id": "eu-2", "member_ids": ["us:b"]},
        {"_id": "eu-1:us:b"},
    ]
    assert route(changes, peer="ap", policy=p, members=members) == []
    assert conversations_to_look_up(changes) == {"eu-1", "eu-2", "us-9"}


def test_lag_is_the_age_of_the_oldest_unacknowledged_change() -> None:
    assert lag_seconds(None, now=10.0) == 0.0
    assert lag_seconds(7.5, now=10.0) == 2.5
    assert lag_seconds(11.0, now=10.0) == 0.0  # clocks apart: never negative


def test_member_merge_raises_watermarks_and_keeps_the_later_membership() -> None:
    held = {"_id": "c:a", "delivered_seq": 9, "read_seq": 4, "active": False, "left_version": 20}
    incoming = {
        "_id": "c:a",
        "delivered_seq": 7,
        "read_seq": 6,
        "active": True,
        "joined_version": 10,
    }
    merged = merge_member_document(held, incoming)
    assert merged["delivered_seq"] == 9 and merged["read_seq"] == 6
    assert merged["active"] is False and merged["left_version"] == 20
    rejoined = {**incoming, "joined_version": 30}
    assert merge_member_document(held, rejoined)["active"] is True
    assert merge_member_document(None, incoming) == incoming
    # Idempotent: merging the same document again changes nothing.
    assert merge_member_document(merged, incoming) == merged


def test_settings_go_to_every_region_holding_the_conversation_whoever_owns_it() -> None:
    p = policy()
    # Written here for a conversation owned by us: back to the owner and to
    # the other homes.
    assert p.settings_peers_for("us-1", ["eu:a", "us:b", "ap:c"]) == {"us", "ap"}
    # The owner holds it even with no member homed there.
    assert p.settings_peers_for("ap-1", ["eu:a", "us:b"]) == {"us", "ap"}
    assert p.settings_peers_for("eu-1", ["eu:a"]) == frozenset()
    assert policy(replicate_to=("us",)).settings_peers_for("ap-1", ["eu:a", "us:b"]) == {"us"}
    pinned = policy(pinned={"eu": ("messages",)})
    assert pinned.settings_peers_for("eu-1", ["eu:a", "eu:b"]) == frozenset()


def test_a_settings_change_is_routed_by_the_settings_rule() -> None:
    changes = [
        change(ReplicatedKind.SETTINGS, "us-1", {"crdt": {}}),
        change(ReplicatedKind.MEMBER, "us-1", {"account_id": "eu:a"}),
    ]
    routed = route(changes, peer="us", policy=policy(), members={"us-1": ("eu:a", "us:b")})
    # Only the settings: the member document of a conversation owned elsewhere stays.
    assert [c.kind for c in routed] == [ReplicatedKind.SETTINGS]
