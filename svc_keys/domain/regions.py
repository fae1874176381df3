"""svc_keys across regions: where an account is homed, which region registers
a handle (docs/design/regions.md, part 1).

Without regions (no topology) nothing here touches the database or the
network: the accounts collection's unique handle index is the whole check.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from parley_core.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Reason,
)
from parley_core.regions import RegionMap, UnknownRegion, forwarded_twice, region_unavailable
from svc_keys.domain.handles import handle_key
from svc_keys.model import Reservation
from svc_keys.ports import HandleReservations, RegionPeers
from svc_keys.storage.erasures import ErasureStore


def handle_taken(handle: str) -> AlreadyExists:
    return AlreadyExists(f"the handle {handle!r} is taken", reason=Reason.HANDLE_TAKEN)


def home_for_sign_up(regions: RegionMap, requested: str) -> str:
    """The region a new account is homed in: the one asked for, else here."""
    if not requested:
        return regions.self_region
    if not regions.knows(requested):
        raise InvalidArgument.field(
            "home_region",
            f"no region {requested!r} in this deployment (regions: {', '.join(regions.regions)})",
            reason=Reason.REGION_UNKNOWN,
        )
    return requested


def home_of(regions: RegionMap, account_id: str) -> str:
    """The home region of an account: the region its id was minted in (moves
    are a documented procedure that re-mints nothing; see the design)."""
    try:
        return regions.region_of(account_id)
    except UnknownRegion:
        return ""


class HandleRegistry:
    """Reserves handles at their registrar region, here or at a peer."""

    def __init__(
        self,
        regions: Callable[[], RegionMap],
        reservations: HandleReservations,
        peers: RegionPeers | None,
        *,
        erasures: ErasureStore | None = None,
    ) -> None:
        self._regions = regions
        self._reservations = reservations
        self._peers = peers
        self._erasures = erasures

    async def reserve(
        self, *, handle: str, account_id: str, home_region: str, request_id: str, now: float
    ) -> Reservation:
        """The reservation the new account must use (its id may be an earlier
        attempt's); AlreadyExists (HANDLE_TAKEN) when another holds it."""
        regions = self._regions()
        if regions.self_number is None:
            return Reservation(
                account_id=account_id, home_region=home_region, request_id=request_id
            )
        registrar = regions.handle_registrar(handle_key(handle))
        if registrar == regions.self_region or self._peers is None:
            return await self.reserve_here(
                handle=handle,
                account_id=account_id,
                home_region=home_region,
                request_id=request_id,
                now=now,
            )
        return await self._peers.reserve_handle(
            registrar,
            handle=handle,
            account_id=account_id,
            home_region=home_region,
            request_id=request_id,
        )

    def remote_registrar(self, handle_key: str) -> str | None:
        """The handle's registrar when it is a peer region (its release then
        crosses the network); None when it is this region or there are none."""
        regions = self._regions()
        if regions.self_number is None or self._peers is None:
            return None
        registrar = regions.handle_registrar(handle_key)
        return None if registrar == regions.self_region else registrar

    async def release_at(
        self, registrar: str, handle_key: str, *, account_id: str, until: datetime
    ) -> None:
        """ReleaseHandle at the peer ``registrar`` (remote_registrar's answer);
        Unavailable while it cannot be reached."""
        if self._peers is None:
            raise region_unavailable(registrar, "no peer regions are configured")
        await self._peers.release_handle(registrar, handle_key, account_id=account_id, until=until)

    async def release(self, handle_key: str, *, account_id: str, until: datetime) -> None:
        """An erased account's handle is free at ``until``, at its registrar."""
        regions = self._regions()
        if regions.self_number is None:
            return
        registrar = regions.handle_registrar(handle_key)
        if registrar == regions.self_region or self._peers is None:
            await self._reservations.release(handle_key, account_id=account_id, until=until)
        else:
            await self._peers.release_handle(
                registrar, handle_key, account_id=account_id, until=until
            )

    async def release_here(self, handle: str, *, account_id: str, until: datetime) -> None:
        """ReleaseHandle as the registrar serves it."""
        regions = self._regions()
        key = handle_key(handle)
        registrar = regions.handle_registrar(key)
        if registrar != regions.self_region:
            raise forwarded_twice(f"the handle {handle!r}", registrar)
        await self._reservations.release(key, account_id=account_id, until=until)

    async def holder(self, handle: str) -> str | None:
        """The account id a handle is reserved for, asked of its registrar;
        None without regions (the accounts collection is the directory)."""
        regions = self._regions()
        if regions.self_number is None:
            return None
        registrar = regions.handle_registrar(handle_key(handle))
        if registrar == regions.self_region or self._peers is None:
            found = await self.holder_here(handle)
        else:
            found = await self._peers.lookup_handle(registrar, handle)
        if found is None:
            raise NotFound("account not found", reason=Reason.ACCOUNT_NOT_FOUND)
        return found.account_id

    async def holder_here(self, handle: str) -> Reservation | None:
        """LookupHandle as the registrar serves it."""
        regions = self._regions()
        key = handle_key(handle)
        registrar = regions.handle_registrar(key)
        if registrar != regions.self_region:
            raise forwarded_twice(f"the handle {handle!r}", registrar)
        return await self._reservations.find(key)

    async def reserve_here(
        self, *, handle: str, account_id: str, home_region: str, request_id: str, now: float
    ) -> Reservation:
        """ReserveHandle as the registrar serves it."""
        regions = self._regions()
        key = handle_key(handle)
        registrar = regions.handle_registrar(key)
        if registrar != regions.self_region:
            raise forwarded_twice(f"the handle {handle!r}", registrar)
        at = datetime.fromtimestamp(now, UTC)
        if self._erasures is not None and await self._erasures.handle_held(key, now=at):
            raise handle_taken(handle)
        reservation = await self._reservations.reserve(
            key, account_id=account_id, home_region=home_region, request_id=request_id, now=at
        )
        if reservation.request_id != request_id:
            raise handle_taken(handle)
        return reservation
