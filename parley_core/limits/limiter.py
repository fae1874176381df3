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

A refused bucket is remembered in the process until its next token is due:
takes from it before then are refused without asking the store, which would
refuse them too (a bucket refills at its rate, and the refusal said when the
next token comes). A client that ignores RetryInfo and resends at once then
costs no Redis round trip per refusal.
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
# Refused buckets remembered at most; beyond it the expired ones are dropped,
# then the oldest.
EMPTY_BUCKETS_REMEMBERED = 100_000


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
        # Bucket key -> (its limit, when its next token is due, Unix seconds).
        self._empty_until: dict[str, tuple[LimitName, float]] = {}
        # Refusals answered from that memory, without the store.
        self.remembered_refusals = 0

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
        if self._empty_until:
            remembered = self._remembered(takes, now)
            if remembered is not None:
                self.remembered_refusals += 1
                return remembered
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
        refused = ordered[shortfall.group][shortfall.bucket]
        seconds = max(shortfall.seconds, _LEAST_WAIT_SECONDS)
        self._remember(refused, until=now + seconds, now=now)
        return Refusal(refused.limit, seconds)

    def _remembered(self, takes: Sequence[Take], now: float) -> Refusal | None:
        for take in takes:
            entry = self._empty_until.get(take.bucket_key)
            if entry is None:
                continue
            limit, until = entry
            if until > now:
                return Refusal(limit, max(until - now, _LEAST_WAIT_SECONDS))
            del self._empty_until[take.bucket_key]
        return None

    def _remember(self, take: Take, *, until: float, now: float) -> None:
        memory = self._empty_until
        # Re-inserted, so the dict's order stays oldest first.
        memory.pop(take.bucket_key, None)
        memory[take.bucket_key] = (take.limit, until)
        if len(memory) > EMPTY_BUCKETS_REMEMBERED:
            for key in [k for k, (_, due) in memory.items() if due <= now]:
                del memory[key]
            while len(memory) > EMPTY_BUCKETS_REMEMBERED:
                del memory[next(iter(memory))]

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
