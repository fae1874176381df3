"""Token buckets: the arithmetic, the in-process buckets, and what a store of
shared buckets must do.

A bucket holds up to ``burst`` tokens and gains ``per_minute`` of them a
minute; a take spends one token, or is refused with the time until one will be
there. The arithmetic here is the same as the Redis script's
(``parley_core/storage/ratelimit.py``), so a bucket behaves alike wherever it
lives. Times are Unix milliseconds handed in by the caller: nothing here reads
a clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Rate:
    burst: int
    per_minute: float

    @property
    def per_ms(self) -> float:
        return self.per_minute / 60_000


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket to take a token from: its storage key and its rate."""

    key: str
    rate: Rate


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a take was refused: the group and the bucket within it that will
    be last to hold a token again, and in how many seconds."""

    group: int
    bucket: int
    seconds: float


def wait_ms(tokens: float, rate: Rate) -> int:
    """Milliseconds until a bucket holding ``tokens`` (< 1) holds one."""
    return math.ceil((1 - tokens) / rate.per_ms)


class BucketStore(Protocol):
    """Where buckets live. ``take`` takes one token from every bucket of every
    group, or from none: a group is taken atomically (its buckets share a
    hash tag, so one script call covers them on Redis Cluster too); groups on
    different tags are taken side by side and given back when another group
    was refused."""

    async def take(
        self, groups: Sequence[Sequence[Bucket]], *, now_ms: int
    ) -> Shortfall | None: ...

    @property
    def degraded(self) -> bool:
        """True while takes use this process's own buckets (the shared store
        did not answer)."""
        ...


@dataclass(slots=True)
class _State:
    tokens: float
    at_ms: float
    rate: Rate

    def full_at_ms(self) -> float:
        return self.at_ms + (self.rate.burst - self.tokens) / self.rate.per_ms


class LocalBuckets:
    """Buckets in this process's memory: the fallback while Redis does not
    answer, and the arithmetic the unit tests check. Bounded: past
    ``max_buckets`` the full ones (which carry no state worth keeping) are
    dropped first."""

    def __init__(self, *, max_buckets: int = 100_000) -> None:
        self._max = max_buckets
        self._buckets: dict[str, _State] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def wait(self, bucket: Bucket, *, now_ms: float) -> float | None:
        """Refills the bucket; None when it holds a token, else seconds until it will."""
        rate = bucket.rate
        state = self._buckets.get(bucket.key)
        if state is None:
            if len(self._buckets) >= self._max:
                self._forget_full(now_ms)
            state = self._buckets[bucket.key] = _State(float(rate.burst), now_ms, rate)
        state.rate = rate
        if now_ms > state.at_ms:
            state.tokens = min(rate.burst, state.tokens + (now_ms - state.at_ms) * rate.per_ms)
            state.at_ms = now_ms
        if state.tokens >= 1:
            return None
        return wait_ms(state.tokens, rate) / 1000

    def take(self, groups: Sequence[Sequence[Bucket]], *, now_ms: float) -> Shortfall | None:
        """One token from every bucket, or none; the longest wait when refused."""
        worst: Shortfall | None = None
        for g, group in enumerate(groups):
            for b, bucket in enumerate(group):
                seconds = self.wait(bucket, now_ms=now_ms)
                if seconds is not None and (worst is None or seconds > worst.seconds):
                    worst = Shortfall(g, b, seconds)
        if worst is not None:
            return worst
        for group in groups:
            for bucket in group:
                self._buckets[bucket.key].tokens -= 1
        return None

    def _forget_full(self, now_ms: float) -> None:
        stale = [k for k, s in self._buckets.items() if s.full_at_ms() <= now_ms]
        for key in stale:
            del self._buckets[key]
        if len(self._buckets) >= self._max:
            self._buckets.clear()


class InProcessBuckets:
    """A ``BucketStore`` of this process's own buckets only: for one-process
    tools and unit tests (with a fake ``now``)."""

    def __init__(self, local: LocalBuckets | None = None) -> None:
        self.local = local or LocalBuckets()

    @property
    def degraded(self) -> bool:
        return False

    async def take(self, groups: Sequence[Sequence[Bucket]], *, now_ms: int) -> Shortfall | None:
        return self.local.take(groups, now_ms=now_ms)
