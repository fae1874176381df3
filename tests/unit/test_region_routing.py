"""svc_message's region routing: the owner region of a conversation and of a
creation, the one-hop limit, and the fast refusal of a region that is down."""

from __future__ import annotations

import json

import pytest

from parley_core.errors import FailedPrecondition, Reason, Unavailable
from parley_core.ids import new_id, random_id
from parley_core.regions import RegionMap
from parley_core.topology import parse_topology
from svc_message.domain.region_routing import RegionRouter
from svc_message.model.ownership import OwnerUnreachable


def _map(region: str) -> RegionMap:
    document = {
        "format": 1,
        "generation": 1,
        "region": region,
        "regions": {
            name: {"self": name == region, "peerEndpoint": None, "number": number}
            for name, number in (("eu", 1), ("us", 2))
        },
        "residency": {"homeOnlyData": [], "replicateTo": []},
        "routing": {"conversationShards": 4, "shardHash": "sha256-first8-mod", "services": {}},
    }
    return RegionMap.from_topology(parse_topology(json.dumps(document)))


class Link:
    def __init__(self) -> None:
        self.up = True
        self.calls: list[tuple[str, str]] = []

    async def forward_to_region(
        self, region: str, method: str, request: bytes, *, bearer_token: str, timeout: float
    ) -> bytes:
        self.calls.append((region, method))
        if not self.up:
            raise OwnerUnreachable("down")
        return b"answer"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _router(link: Link, clock: Clock) -> RegionRouter:
    return RegionRouter(
        lambda: _map("eu"), link, forward_timeout_seconds=5, down_seconds=2, clock=clock
    )


def test_owners_follow_the_ids() -> None:
    router = _router(Link(), Clock())
    assert router.owner_of(random_id(region_number=2)) == "us"
    assert router.is_local(router.owner_of(random_id(region_number=1)))
    # Ids from before regions belong to the legacy (here: self) region.
    assert router.owner_of(random_id()) == "eu"
    assert router.creator_home(new_id(region_number=2)) == "us"


def test_a_direct_conversation_is_owned_by_the_lesser_accounts_home() -> None:
    router = _router(Link(), Clock())
    a, b = new_id(region_number=1), new_id(region_number=2)
    expected = "eu" if min(a, b) == a else "us"
    assert router.direct_owner(a, b) == router.direct_owner(b, a) == expected


async def test_a_forwarded_request_is_never_forwarded_again() -> None:
    link = Link()
    with pytest.raises(FailedPrecondition) as refused:
        await _router(link, Clock()).forward(
            "us", "SendMessage", b"", bearer_token="t", timeout=1, forwarded=True
        )
    assert refused.value.reason is Reason.REGION_UNKNOWN and link.calls == []


async def test_a_region_that_did_not_answer_is_refused_fast_until_it_may_be_back() -> None:
    link, clock = Link(), Clock()
    router = _router(link, clock)
    link.up = False
    for _ in range(3):
        with pytest.raises(Unavailable) as refused:
            await router.forward(
                "us", "SendMessage", b"", bearer_token="t", timeout=1, forwarded=False
            )
        assert refused.value.reason is Reason.REGION_UNAVAILABLE
        assert refused.value.metadata == {"region": "us"}
    # One attempt reached for the link; the others were refused locally.
    assert len(link.calls) == 1
    link.up = True
    clock.now += 2.5
    answer = await router.forward(
        "us", "SendMessage", b"", bearer_token="t", timeout=1, forwarded=False
    )
    assert answer == b"answer" and router.forwarded == {"us": 1}
