"""What the erasure job of svc_keys needs from elsewhere, as the domain sees it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol


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
