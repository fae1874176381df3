"""svc_keys across regions: the home of a sign-up and the handle registrar's rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from parley_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Reason
from parley_core.ids import new_id
from parley_core.regions import RegionMap
from parley_core.topology import parse_topology
from svc_keys.domain.handles import handle_key
from svc_keys.domain.regions import HandleRegistry, home_for_sign_up, home_of
from svc_keys.model import DeviceSession, Reservation, SignUpForward

NOW = 1_800_000_000.0


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


class MemoryReservations:
    """The registrar's collection: first insert per key wins."""

    def __init__(self) -> None:
        self.held: dict[str, Reservation] = {}

        self.released: dict[str, datetime] = {}

    async def reserve(
        self, handle_key: str, *, account_id: str, home_region: str, request_id: str, now: datetime
    ) -> Reservation:
        until = self.released.get(handle_key)
        if until is not None and until <= now:
            del self.held[handle_key], self.released[handle_key]
        return self.held.setdefault(handle_key, Reservation(account_id, home_region, request_id))

    async def find(self, handle_key: str) -> Reservation | None:
        return self.held.get(handle_key)

    async def release(self, handle_key: str, *, account_id: str, until: datetime) -> None:
        held = self.held.get(handle_key)
        if held is not None and held.account_id == account_id:
            self.released[handle_key] = until


class RecordingPeers:
    def __init__(self, registrar: HandleRegistry | None = None) -> None:
        self.registrar = registrar
        self.calls: list[tuple[str, str]] = []

    async def release_handle(
        self, region: str, handle_key: str, *, account_id: str, until: datetime
    ) -> None:
        self.calls.append((region, handle_key))
        assert self.registrar is not None
        await self.registrar.release_here(handle_key, account_id=account_id, until=until)

    async def sign_up(self, region: str, forward: SignUpForward) -> DeviceSession:
        raise AssertionError("not used here")

    async def reserve_handle(
        self, region: str, *, handle: str, account_id: str, home_region: str, request_id: str
    ) -> Reservation:
        self.calls.append((region, handle))
        assert self.registrar is not None
        return await self.registrar.reserve_here(
            handle=handle,
            account_id=account_id,
            home_region=home_region,
            request_id=request_id,
            now=NOW,
        )


def _registries() -> tuple[HandleRegistry, HandleRegistry, RecordingPeers, RecordingPeers]:
    """eu and us, each reserving at the other through a recording peer link."""
    eu_peers, us_peers = RecordingPeers(), RecordingPeers()
    eu = HandleRegistry(lambda: _map("eu"), MemoryReservations(), eu_peers)
    us = HandleRegistry(lambda: _map("us"), MemoryReservations(), us_peers)
    eu_peers.registrar, us_peers.registrar = us, eu
    return eu, us, eu_peers, us_peers


def _handle_registered_by(region: str) -> str:
    return next(
        h for h in (f"user{i}" for i in range(100)) if _map("eu").handle_registrar(h) == region
    )


def test_a_sign_up_is_homed_where_it_arrived_unless_it_names_a_region() -> None:
    assert home_for_sign_up(_map("eu"), "") == "eu"
    assert home_for_sign_up(_map("eu"), "us") == "us"
    with pytest.raises(InvalidArgument) as refused:
        home_for_sign_up(_map("eu"), "mars")
    assert refused.value.reason is Reason.REGION_UNKNOWN
    assert refused.value.violations[0].field == "home_region"


def test_an_accounts_home_is_the_region_its_id_names() -> None:
    assert home_of(_map("eu"), new_id(region_number=2)) == "us"
    assert home_of(RegionMap.single("local"), new_id()) == "local"


async def test_without_regions_nothing_is_reserved() -> None:
    reservations = MemoryReservations()
    registry = HandleRegistry(RegionMap.single, reservations, None)
    got = await registry.reserve(
        handle="alice", account_id="a", home_region="local", request_id="r", now=NOW
    )
    assert got == Reservation("a", "local", "r") and reservations.held == {}


@pytest.mark.parametrize("registrar", ["eu", "us"])
async def test_a_handle_is_reserved_once_across_regions(registrar: str) -> None:
    eu, us, eu_peers, us_peers = _registries()
    handle = _handle_registered_by(registrar)
    first = await eu.reserve(
        handle=handle, account_id="eu-account", home_region="eu", request_id="r1", now=NOW
    )
    assert first.account_id == "eu-account"
    # The same handle, any case, from the other region: taken.
    with pytest.raises(AlreadyExists) as taken:
        await us.reserve(
            handle=handle.upper(),
            account_id="us-account",
            home_region="us",
            request_id="r2",
            now=NOW,
        )
    assert taken.value.reason is Reason.HANDLE_TAKEN
    # Only the non-registrar region called out.
    outbound = eu_peers.calls + us_peers.calls
    assert all(region == registrar for region, _ in outbound)


async def test_a_retried_reservation_answers_the_first_attempts_account() -> None:
    eu, _us, _eu_peers, _us_peers = _registries()
    handle = _handle_registered_by("us")
    first = await eu.reserve(
        handle=handle, account_id="first", home_region="eu", request_id="r1", now=NOW
    )
    again = await eu.reserve(
        handle=handle, account_id="second", home_region="eu", request_id="r1", now=NOW
    )
    assert first.account_id == again.account_id == "first"


async def test_a_region_that_is_not_the_registrar_refuses_to_reserve() -> None:
    eu, _us, _eu_peers, _us_peers = _registries()
    with pytest.raises(FailedPrecondition) as refused:
        await eu.reserve_here(
            handle=_handle_registered_by("us"),
            account_id="x",
            home_region="eu",
            request_id="r",
            now=NOW,
        )
    assert refused.value.reason is Reason.REGION_UNKNOWN
    assert refused.value.metadata == {"region": "us"}


async def test_a_handle_cooling_off_after_an_erasure_is_taken_at_the_registrar() -> None:
    class Holding:
        async def handle_held(self, key: str, *, now: datetime) -> bool:
            return key == handle_key("Erased1")

    registry = HandleRegistry(
        lambda: _map(_map("eu").handle_registrar(handle_key("Erased1"))),
        MemoryReservations(),
        None,
        erasures=Holding(),  # type: ignore[arg-type]
    )
    with pytest.raises(AlreadyExists):
        await registry.reserve_here(
            handle="Erased1", account_id="x", home_region="eu", request_id="r", now=NOW
        )


async def test_an_erased_accounts_handle_is_free_at_its_registrar_after_cooling_off() -> None:
    eu, us, eu_peers, _us_peers = _registries()
    handle = _handle_registered_by("us")
    await eu.reserve(handle=handle, account_id="gone", home_region="eu", request_id="r1", now=NOW)
    until = datetime.fromtimestamp(NOW + 3600, UTC)
    # Released by the erasure in eu, at the registrar (us).
    await eu.release(handle_key(handle), account_id="gone", until=until)
    assert eu_peers.calls[-1] == ("us", handle_key(handle))
    with pytest.raises(AlreadyExists):
        await us.reserve(
            handle=handle, account_id="new", home_region="us", request_id="r2", now=NOW + 60
        )
    again = await us.reserve(
        handle=handle, account_id="new", home_region="us", request_id="r3", now=NOW + 3601
    )
    assert again.account_id == "new"
