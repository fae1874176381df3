"""Which region an account is homed in, owns a conversation, registers a handle.

Pure functions of the topology and the ids (docs/design/regions.md): a tagged
id names the region that minted it; an untagged one belongs to the legacy
region. Without a topology there is one region and everything is local.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from parley_core.errors import FailedPrecondition, Reason, Unavailable
from parley_core.ids import region_number_of
from parley_core.topology import Topology

# Set on a request one region forwards to another: the receiver never
# forwards it again (hop limit 1), so a topology disagreement is an error,
# never a loop.
REGION_FORWARDED = "x-parley-region-forwarded"


def region_forwarded(metadata: object) -> bool:
    """Whether a call's invocation metadata carries the region-forwarded mark."""
    return any(key == REGION_FORWARDED for key, _ in metadata or ())  # type: ignore[attr-defined]


# How long a caller waits before retrying a region that did not answer.
RETRY_AFTER_SECONDS = 2.0


def region_unavailable(region: str, why: str) -> Unavailable:
    """The region holding what a request needs cannot be reached now."""
    return Unavailable(
        f"region {region!r} cannot be reached ({why}); retry with the same request_id",
        reason=Reason.REGION_UNAVAILABLE,
        retry_after_seconds=RETRY_AFTER_SECONDS,
        metadata={"region": region},
    )


def forwarded_twice(what: str, region: str) -> FailedPrecondition:
    """A forwarded request reached a region that does not hold what it names:
    the regions disagree on the topology. Never forwarded again."""
    return FailedPrecondition(
        f"{what} is served by region {region!r}, not this one (forwarded once already)",
        reason=Reason.REGION_UNKNOWN,
        metadata={"region": region},
    )


class UnknownRegion(LookupError):
    """An id names a region number the topology does not know."""


@dataclass(frozen=True)
class RegionMap:
    """The topology's answer to "where does this live?"."""

    self_region: str
    # None: a single-region deployment, which mints untagged ids.
    self_number: int | None
    names_by_number: Mapping[int, str]
    legacy_region: str
    handle_registrars: tuple[str, ...]

    @classmethod
    def single(cls, name: str = "local") -> RegionMap:
        return cls(
            self_region=name,
            self_number=None,
            names_by_number=MappingProxyType({}),
            legacy_region=name,
            handle_registrars=(name,),
        )

    @classmethod
    def from_topology(cls, topology: Topology | None, *, region: str = "local") -> RegionMap:
        if topology is None or len(topology.regions) < 2:
            return cls.single(topology.region if topology is not None else region)
        numbers = {r.number: name for name, r in topology.regions.items() if r.number is not None}
        return cls(
            self_region=topology.region,
            self_number=topology.self_region.number,
            names_by_number=MappingProxyType(numbers),
            legacy_region=topology.legacy_region or topology.region,
            handle_registrars=topology.handle_registrars,
        )

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.names_by_number.values()) | {self.self_region}))

    def region_of(self, tagged_id: str) -> str:
        """The region that minted ``tagged_id``: an account's birth region, a
        conversation's owner. Untagged ids belong to the legacy region."""
        if self.self_number is None:
            return self.self_region
        number = region_number_of(tagged_id)
        if number is None:
            return self.legacy_region
        name = self.names_by_number.get(number)
        if name is None:
            raise UnknownRegion(f"no region has number {number}")
        return name

    def region_or_self(self, tagged_id: str) -> str:
        """``region_of``, or this region for an id no region of the topology
        minted (handled here, where it is simply not found)."""
        try:
            return self.region_of(tagged_id)
        except UnknownRegion:
            return self.self_region

    def is_local(self, tagged_id: str) -> bool:
        return self.region_of(tagged_id) == self.self_region

    def handle_registrar(self, handle_key: str) -> str:
        """The one region that registers ``handle_key``: rendezvous hashing, so
        a registrar added or removed moves only the handles it wins or held."""
        return max(
            self.handle_registrars,
            key=lambda region: hashlib.sha256(f"{handle_key}\x00{region}".encode()).digest(),
        )

    def knows(self, region: str) -> bool:
        return region in self.regions


class RegionBreaker:
    """Which peer regions failed a moment ago: a request for one is refused
    at once for ``down_seconds`` instead of waiting for its own timeout, and
    the next one after that tries the region again."""

    def __init__(self, *, down_seconds: float, clock: Callable[[], float]) -> None:
        self._down_seconds = down_seconds
        self._clock = clock
        self._down_until: dict[str, float] = {}

    def is_down(self, region: str) -> bool:
        return self._down_until.get(region, 0.0) > self._clock()

    def failed(self, region: str) -> None:
        self._down_until[region] = self._clock() + self._down_seconds

    def answered(self, region: str) -> None:
        self._down_until.pop(region, None)


class RegionForwards:
    """A region's forwards of requests to its peers: hop limit 1, the fast
    refusal of a peer that failed a moment ago, the call's deadline bounded by
    ``forward_timeout_seconds``, and per peer counts of what was forwarded and
    refused (for the metrics)."""

    def __init__(
        self,
        *,
        forward_timeout_seconds: float,
        down_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._forward_timeout = forward_timeout_seconds
        self._breaker = RegionBreaker(down_seconds=down_seconds, clock=clock)
        self.forwarded: dict[str, int] = {}
        self.refused: dict[str, int] = {}

    async def forward(
        self,
        region: str,
        send: Callable[[float], Awaitable[bytes]],
        *,
        what: str,
        timeout: float | None,
        forwarded: bool,
        unreachable: type[Exception],
    ) -> bytes:
        """``send(timeout)``'s answer. ``what`` names the thing the request is
        about (for the refusal of a second hop); ``unreachable`` is the error
        ``send`` raises when the call did not reach the region, anything else
        (the region's own refusals) propagates as it came."""
        if forwarded:
            raise forwarded_twice(what, region)
        if self._breaker.is_down(region):
            self._refuse(region)
            raise region_unavailable(region, "it did not answer a moment ago")
        call_timeout = (
            self._forward_timeout if timeout is None else min(self._forward_timeout, timeout)
        )
        try:
            answer = await send(max(0.01, call_timeout))
        except unreachable:
            self._breaker.failed(region)
            self._refuse(region)
            raise region_unavailable(region, "the forward did not reach it") from None
        self._breaker.answered(region)
        self.forwarded[region] = self.forwarded.get(region, 0) + 1
        return answer

    def _refuse(self, region: str) -> None:
        self.refused[region] = self.refused.get(region, 0) + 1
