"""What the domain of svc_keys needs from elsewhere: other services, other regions, storage."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from parley_core.auth.revocations import Revocation
from svc_keys.model import Account, DeviceSession, Reservation, SignUpForward


class AccountEraser(Protocol):
    """Another service's part of an account erasure."""

    @property
    def step(self) -> str:
        """The job step it is (its name in the erasure record)."""
        ...

    async def erase(self, *, account_id: str, device_ids: Sequence[str], erasure_id: str) -> bool:
        """Do some of it; True once nothing remains. Idempotent. Raises
        Unavailable when the service cannot be reached."""
        ...


class ColdErasure(Protocol):
    """Archived history: the messages of an erased account must leave cold
    objects by ``deadline`` (a rewrite). The archive keeps its own record of
    what to rewrite; this only hands the account over."""

    async def schedule(self, *, account_id: str, erasure_id: str, deadline: datetime) -> None: ...


class RateBuckets(Protocol):
    """The shared rate-limit buckets (Redis)."""

    async def forget(self, ids: Sequence[str]) -> int:
        """Delete every bucket naming one of the ids; how many."""
        ...


class HandleReservations(Protocol):
    """The handles this region registers (storage)."""

    async def reserve(
        self, handle_key: str, *, account_id: str, home_region: str, request_id: str, now: datetime
    ) -> Reservation:
        """Reserve ``handle_key`` for the account unless it is reserved: the
        reservation now in force (this one, or the earlier holder's)."""
        ...

    async def find(self, handle_key: str) -> Reservation | None: ...

    async def release(self, handle_key: str, *, account_id: str, until: datetime) -> None:
        """The account's reservation ends at ``until`` (another account's is kept)."""
        ...


class RegionPeers(Protocol):
    """The svc_keys of the deployment's other regions."""

    async def sign_up(self, region: str, forward: SignUpForward) -> DeviceSession:
        """The sign-up as ``region`` answers it; its refusals are raised as
        they came, Unavailable (REGION_UNAVAILABLE) when it cannot be reached."""
        ...

    async def reserve_handle(
        self, region: str, *, handle: str, account_id: str, home_region: str, request_id: str
    ) -> Reservation:
        """ReserveHandle at the handle's registrar ``region``."""
        ...

    async def lookup_handle(self, region: str, handle: str) -> Reservation | None:
        """LookupHandle at the handle's registrar ``region``."""
        ...

    async def get_account(self, region: str, account_id: str, *, bearer_token: str) -> Account:
        """GetAccount at the account's home ``region``, as the caller."""
        ...

    async def release_handle(
        self, region: str, handle_key: str, *, account_id: str, until: datetime
    ) -> None:
        """ReleaseHandle at the handle's registrar ``region``."""
        ...

    async def forward_call(
        self, region: str, method: str, request: bytes, *, bearer_token: str | None
    ) -> bytes:
        """A call (``/package.Service/Method``, serialized) at ``region``, as the
        caller (no token: an unauthenticated call); its answer."""
        ...


class Revocations(Protocol):
    """Where a device's revocation is recorded so every region refuses its tokens."""

    async def revoke_device(self, device_id: str, *, now: float) -> None: ...

    async def unacknowledged(self, peer: str, device_ids: Sequence[str]) -> int:
        """How many of these devices' revocations made here ``peer`` has not
        acknowledged yet."""
        ...


class RevocationOutbox(Protocol):
    """The region's revocations (storage) and its outbox of those owed to peers."""

    async def revoke_device(self, device_id: str, *, now: float, peers: Sequence[str]) -> None:
        """Record and announce a revocation made here, owed to ``peers``."""
        ...

    async def apply_from_peer(
        self, revocations: Sequence[Revocation], *, source: str, now: float
    ) -> None:
        """Record and announce revocations the ``source`` region made."""
        ...

    async def unsent(self, peer: str, *, limit: int) -> list[Revocation]: ...

    async def mark_sent(self, peer: str, revocations: Sequence[Revocation]) -> None: ...

    async def backlog(self, peer: str) -> int:
        """How many revocations ``peer`` has not acknowledged."""
        ...

    async def unacknowledged(self, peer: str, device_ids: Sequence[str]) -> int:
        """How many of these devices' revocations ``peer`` has not acknowledged."""
        ...

    async def add_peer(self, peer: str, *, now: float) -> bool:
        """Owe a peer seen for the first time every live revocation made here."""
        ...


class RevocationReceivers(Protocol):
    """The svc_keys of the peer regions, as receivers of revocations."""

    async def apply_revocations(self, region: str, revocations: Sequence[Revocation]) -> None:
        """ApplyRevocations at ``region``; Unavailable (REGION_UNAVAILABLE)
        when it cannot be reached, its refusal as it came otherwise."""
        ...
