"""Retry policy: UNAVAILABLE and ABORTED are retried, with bounded exponential backoff;
RATE_LIMITED is retried after the delay the server asks for, within a bound.

UNAVAILABLE means the server could not do it now (restarting, a dependency
down, a conversation between owners); ABORTED means a concurrent change got in
the way (AIP-194: retry the whole call). RESOURCE_EXHAUSTED with reason
RATE_LIMITED and a RetryInfo means the caller's budget is spent for that long:
the call is repeated once the delay has passed, as long as the waits of one
call stay within ``rate_limit_max_wait``; a longer wait is the application's
to decide on, so the ``RateLimitedError`` is raised at once. Every other
failure is either the caller's fault or a server decision that a blind retry
would not change.
Retrying a mutating call is safe because the SDK reuses the request's AIP-155
``request_id`` on every attempt, so the server answers a replay with the
original result.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from parley_sdk.errors import AbortedError, ParleyError, RateLimitedError, UnavailableError

__all__ = ["RetryPolicy", "call_with_retry", "new_request_id"]

T = TypeVar("T")


def new_request_id() -> str:
    """A fresh AIP-155 request id: a random UUID in lower-case canonical form."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently to retry UNAVAILABLE, ABORTED and RATE_LIMITED.

    ``max_attempts`` counts the first try, so 1 disables retries.
    ``rate_limit_max_wait`` bounds the seconds one call spends waiting out
    rate limits (the sum of the RetryInfo delays it waited); 0 raises every
    ``RateLimitedError`` at once.
    """

    # About 6 s in all by default: enough to ride out a quick restart behind
    # the same address, short enough that a down server fails a call promptly.
    max_attempts: int = 6
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    # Each delay is scaled by a random factor in [1 - jitter, 1 + jitter] so that
    # clients failed by the same outage do not come back in lock step.
    jitter: float = 0.2
    # Enough to ride out a burst of sends against a per-device limit (a token
    # every half second by default), short enough that an app whose user is
    # really flooding is told so promptly.
    rate_limit_max_wait: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        if self.rate_limit_max_wait < 0:
            raise ValueError("rate_limit_max_wait must be >= 0")

    def should_retry(self, error: BaseException, *, attempt: int) -> bool:
        """Whether a failure of try number ``attempt`` (from 1) earns another try."""
        return isinstance(error, UnavailableError | AbortedError) and attempt < self.max_attempts

    def rate_limit_delay(
        self,
        error: BaseException,
        *,
        attempt: int,
        waited: float = 0.0,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait before repeating a call refused by a rate limit on
        try number ``attempt`` (from 1), having already waited ``waited``
        seconds on rate limits; None when it should be raised instead (not a
        rate limit, no RetryInfo, out of attempts, or past the bound)."""
        if not isinstance(error, RateLimitedError) or error.retry_after is None:
            return None
        if attempt >= self.max_attempts:
            return None
        # Never sooner than asked: a retry before the token is there is refused again.
        delay = error.retry_after * (1 + self.jitter * rand() / 4)
        if waited + error.retry_after > self.rate_limit_max_wait:
            return None
        return min(delay, self.rate_limit_max_wait - waited)

    def backoff(
        self,
        attempt: int,
        *,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait after the failure of try number ``attempt`` (from 1).

        A server's RetryInfo hint is a floor, not a ceiling: it knows best when it
        will be back, but jitter still spreads the herd.
        """
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** max(0, attempt - 1))
        delay = base * (1 - self.jitter + 2 * self.jitter * rand())
        delay = min(delay, self.max_backoff)
        if retry_after is not None and retry_after > delay:
            # Cap the hint too: a bogus hour-long hint must not hang a caller.
            delay = min(retry_after, self.max_backoff * 4)
        return max(0.0, delay)


async def call_with_retry(
    attempt_fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Runs ``attempt_fn`` until it succeeds or fails in a way the policy won't retry.

    ``attempt_fn`` must raise ``ParleyError`` (already mapped) and must resend the
    *same* request each time; building the request, and its request_id, is the
    caller's job, once per logical call.
    """
    attempt = 1
    waited = 0.0
    while True:
        try:
            return await attempt_fn()
        except ParleyError as error:
            if isinstance(error, RateLimitedError):
                delay = policy.rate_limit_delay(error, attempt=attempt, waited=waited, rand=rand)
                if delay is None:
                    raise
                waited += delay
            elif policy.should_retry(error, attempt=attempt):
                delay = policy.backoff(attempt, retry_after=error.retry_after, rand=rand)
            else:
                raise
            await sleep(delay)
            attempt += 1
