"""svc_media across regions: region-tagged media ids, which region holds
what an id names, the forward's hop limit and breaker, and svc_message's
answers gathered from every region."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import pytest

from parley_core.errors import FailedPrecondition, Reason, Unavailable
from parley_core.ids import random_id
from parley_core.regions import RegionMap
from svc_media.domain.message_regions import RegionalMessages, RegionalNotices
from svc_media.domain.region_routing import MediaRegionRouter
from svc_media.model import (
    Requester,
    is_media_id,
    media_id_of,
    region_number_of_media,
    sha256_of_media_id,
)
from svc_media.ports import MessagePeer, RegionUnreachable

SHA = hashlib.sha256(b"ciphertext").digest()
EU_US = RegionMap(
    self_region="eu",
    self_number=1,
    names_by_number=MappingProxyType({1: "eu", 2: "us"}),
    legacy_region="eu",
    handle_registrars=("eu", "us"),
)


def test_a_media_id_names_the_region_holding_its_object() -> None:
    bare, tagged = media_id_of(SHA), media_id_of(SHA, 2)
    assert bare == SHA.hex() and tagged == f"{SHA.hex()}-02"
    assert is_media_id(bare) and is_media_id(tagged)
    assert sha256_of_media_id(tagged) == sha256_of_media_id(bare) == SHA
    assert region_number_of_media(bare) is None
    assert region_number_of_media(tagged) == 2
    assert region_number_of_media(media_id_of(SHA, 255)) == 255
    for bad in (f"{SHA.hex()}-2", f"{SHA.hex()}-002", f"{SHA.hex()}-zz", f"{SHA.hex()}02"):
        assert not is_media_id(bad), bad


class Link:
    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, str, str | None]] = []

    async def forward(
        self,
        region: str,
        method: str,
        request: bytes,
        *,
        bearer_token: str | None,
        timeout: float | None,
    ) -> bytes:
        self.calls.append((region, method, bearer_token))
        if self.fail:
            raise RegionUnreachable("cut")
        return b"answer:" + request


def test_the_holder_of_an_id_is_the_region_it_names() -> None:
    router = MediaRegionRouter(lambda: EU_US, Link())
    assert router.holder_of_media(media_id_of(SHA, 2)) == "us"
    assert router.holder_of_media(media_id_of(SHA, 1)) == "eu"
    # Bare ids are the legacy region's; an unknown number is handled here.
    assert router.holder_of_media(media_id_of(SHA)) == "eu"
    assert router.holder_of_media(media_id_of(SHA, 9)) == "eu"
    assert router.holder_of_upload(random_id(region_number=2)) == "us"
    assert router.home_of(random_id(region_number=2)) == "us"
    assert router.region_number() == 1
    single = MediaRegionRouter(lambda: RegionMap.single("solo"), Link())
    assert single.holder_of_media(media_id_of(SHA, 2)) == "solo"
    assert single.region_number() is None


async def test_a_forward_carries_the_token_once_and_a_silent_region_is_refused_fast() -> None:
    now = [0.0]
    link = Link()
    router = MediaRegionRouter(lambda: EU_US, link, down_seconds=2.0, clock=lambda: now[0])
    assert await router.forward(
        "us", "/m", b"x", bearer_token="t", timeout=None, forwarded=False
    ) == (b"answer:x")
    assert link.calls == [("us", "/m", "t")]
    with pytest.raises(FailedPrecondition) as twice:
        await router.forward("us", "/m", b"x", bearer_token="t", timeout=None, forwarded=True)
    assert twice.value.reason == Reason.REGION_UNKNOWN
    link.fail = True
    with pytest.raises(Unavailable) as cut:
        await router.forward("us", "/m", b"x", bearer_token=None, timeout=1.0, forwarded=False)
    assert cut.value.reason == Reason.REGION_UNAVAILABLE
    calls = len(link.calls)
    with pytest.raises(Unavailable):
        await router.forward("us", "/m", b"x", bearer_token=None, timeout=1.0, forwarded=False)
    assert len(link.calls) == calls, "refused by the breaker without a call"
    now[0] = 3.0
    link.fail = False
    assert await router.forward(
        "us", "/m", b"y", bearer_token=None, timeout=None, forwarded=False
    ) == (b"answer:y")
    assert router.refused == {"us": 2} and router.forwarded == {"us": 2}


class Messages:
    def __init__(
        self, readable: set[str] | None = None, counts: Mapping[str, int] | None = None
    ) -> None:
        self._readable = readable or set()
        self._counts = dict(counts or {})
        self.down = False
        self.asked: list[list[str]] = []

    async def readable(self, account_id: str, media_ids: Sequence[str]) -> set[str]:
        self.asked.append(list(media_ids))
        if self.down:
            raise Unavailable("down", reason=Reason.DEPENDENCY_UNAVAILABLE)
        return self._readable & set(media_ids)

    async def references(self, media_ids: Sequence[str]) -> Mapping[str, int]:
        if self.down:
            raise Unavailable("down", reason=Reason.DEPENDENCY_UNAVAILABLE)
        return {m: self._counts.get(m, 0) for m in media_ids}


async def test_access_is_asked_of_other_regions_only_for_what_this_one_refuses() -> None:
    local, us, ap = Messages({"a"}), Messages({"b"}), Messages()
    peers: dict[str, MessagePeer] = {"us": us, "ap": ap}
    messages = RegionalMessages(local, lambda: peers)
    assert await messages.readable("acct", ["a"]) == {"a"}
    assert us.asked == [], "found here: no region is asked"
    assert await messages.readable("acct", ["a", "b", "c"]) == {"a", "b"}
    assert us.asked == [["b", "c"]] and ap.asked == [["b", "c"]]
    # A region that does not answer: what another region let in stands, but
    # an id nobody let in is UNAVAILABLE (retry), never a wrong refusal.
    ap.down = True
    assert await messages.readable("acct", ["a", "b"]) == {"a", "b"}
    with pytest.raises(Unavailable):
        await messages.readable("acct", ["c"])


async def test_references_are_counted_in_every_region_or_not_at_all() -> None:
    local, us = Messages(counts={"a": 1}), Messages(counts={"a": 2, "b": 1})
    messages = RegionalMessages(local, lambda: {"us": us})
    assert await messages.references(["a", "b", "c"]) == {"a": 3, "b": 1, "c": 0}
    us.down = True
    with pytest.raises(Unavailable):
        await messages.references(["c"])


class Notices:
    def __init__(self) -> None:
        self.told: list[tuple[str, str]] = []

    async def restore_ready(
        self, requester: Requester, *, media_id: str, expires_at: float
    ) -> None:
        self.told.append((requester.device_id, media_id))


async def test_a_restore_notice_reaches_the_requesters_home_region_too() -> None:
    local, us = Notices(), Notices()
    homes = {"eu-account": "eu", "us-account": "us"}
    notices = RegionalNotices(local, lambda: {"us": us}, homes.__getitem__)
    await notices.restore_ready(Requester("eu-account", "d1"), media_id="m", expires_at=1.0)
    await notices.restore_ready(Requester("us-account", "d2"), media_id="m", expires_at=1.0)
    assert local.told == [("d1", "m"), ("d2", "m")]
    assert us.told == [("d2", "m")]
