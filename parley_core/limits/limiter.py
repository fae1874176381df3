"""The one rate limiter of every service.

A domain handler names what a request spends, as ``Take``s, and calls
``Limiter.take`` after validating and authorizing the request, with the
request's ``now``. Takes that share a ``tag`` are taken atomically in one
script call (the tag is the Redis Cluster hash tag of their keys); takes on
different tags are taken in the same round trip and given back if another was
refused. A refusal raises ``ResourceExhausted`` (reason RATE_LIMITED) with the
seconds until a retry can pass (``RetryInfo``) and the limit's name in the
error's metadata (``{"limit": "<name>"}``).

Bucket keys are ``parley:rl:{<tag>}:<limit>`` and, for a limit finer than its
tag, ``parley:rl:{<tag>}:<limit>:<key>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from parley_core.errors import Reason, ResourceExhausted
from parley_core.limits.buckets import Bucket, BucketStore, Rate
from parley_core.limits.names import LimitName

KEY_PREFIX = "parley:rl:"
# The metadata key of ErrorInfo naming the limit that refused.
LIMIT_METADATA = "limit"


@dataclass(frozen=True, slots=True)
class Take:
    """One token of ``limit`` for the bucket ``(tag, key)``.

    ``tag`` is what the limit is per (an account, a conversation, a client
    address, or a fixed word for a limit over everyone); ``key`` refines it
    (a device of the account) so several limits of one request can share the
    tag and be taken atomically."""

    limit: LimitName
    tag: str
    key: str = ""

    @property
    def bucket_key(self) -> str:
        suffix = f":{self.key}" if self.key else ""
        return f"{KEY_PREFIX}{{{self.tag}}}:{self.limit.value}{suffix}"


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: LimitName
    retry_after_seconds: float

    def error(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"rate limit {self.limit.value} reached; retry in {self.retry_after_seconds:.3g} s",
            reason=Reason.RATE_LIMITED,
            retry_after_seconds=self.retry_after_seconds,
            metadata={LIMIT_METADATA: self.limit.value},
        )


# A refusal always says to wait a little, never "now".
_LEAST_WAIT_SECONDS = 0.001


class Limiter:
    """Takes tokens from the named limits of one service.

    ``names`` are the limits this service applies; taking another is a bug
    (a ValueError), and each name's refusals are counted (``refused``) for
    ``parley_rate_limited_total``. With ``enabled`` off every take passes
    without touching the store."""

    def __init__(
        self,
        store: BucketStore,
        rates: Mapping[LimitName, Rate],
        *,
        names: Iterable[LimitName],
        enabled: bool = True,
    ) -> None:
        self._store = store
        self._names = tuple(names)
        missing = [n.value for n in self._names if n not in rates]
        if missing:
            raise ValueError(f"no rate for the limits {missing}")
        self._rates = {name: rates[name] for name in self._names}
        self.enabled = enabled
        self.refused: dict[LimitName, int] = dict.fromkeys(self._names, 0)

    @property
    def names(self) -> tuple[LimitName, ...]:
        return self._names

    @property
    def degraded(self) -> bool:
        """True while the takes use this process's own buckets."""
        return self._store.degraded

    def rate(self, name: LimitName) -> Rate:
        return self._rates[name]

    async def check(self, *takes: Take, now: float) -> Refusal | None:
        """Takes a token for each of ``takes`` (all or none); the refusal, if
        any, not yet counted: pass it to ``refuse`` unless the caller lets the
        request through after all (a replay of one already applied)."""
        if not self.enabled or not takes:
            return None
        tag = takes[0].tag
        ordered: list[Sequence[Take]]
        if all(take.tag == tag for take in takes):
            ordered = [takes]
        else:
            groups: dict[str, list[Take]] = {}
            for take in takes:
                groups.setdefault(take.tag, []).append(take)
            ordered = list(groups.values())
        rates = self._rates
        try:
            buckets = [[Bucket(t.bucket_key, rates[t.limit]) for t in group] for group in ordered]
        except KeyError as unknown:
            raise ValueError(f"{unknown.args[0]} is not a limit of this service") from None
        shortfall = await self._store.take(buckets, now_ms=int(now * 1000))
        if shortfall is None:
            return None
        limit = ordered[shortfall.group][shortfall.bucket].limit
        return Refusal(limit, max(shortfall.seconds, _LEAST_WAIT_SECONDS))

    def refuse(self, refusal: Refusal) -> ResourceExhausted:
        """Counts the refusal; the error to raise."""
        self.refused[refusal.limit] += 1
        return refusal.error()

    async def take(self, *takes: Take, now: float) -> None:
        """Takes a token for each of ``takes`` (all or none), or raises
        ResourceExhausted (RATE_LIMITED) naming the limit."""
        refusal = await self.check(*takes, now=now)
        if refusal is not None:
            raise self.refuse(refusal)
