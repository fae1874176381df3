"""Retry policy: UNAVAILABLE and ABORTED are retried, with bounded exponential backoff.

UNAVAILABLE means the server could not do it now (restarting, a dependency
down, a conversation between owners); ABORTED means a concurrent change got in
the way (AIP-194: retry the whole call). Every other failure is either the
caller's fault or a server decision that a blind retry would not change.
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

from parley_sdk.errors import AbortedError, ParleyError, UnavailableError

__all__ = ["RetryPolicy", "call_with_retry", "new_request_id"]

T = TypeVar("T")


def new_request_id() -> str:
    """A fresh AIP-155 request id: a random UUID in lower-case canonical form."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently to retry UNAVAILABLE and ABORTED.

    ``max_attempts`` counts the first try, so 1 disables retries.
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

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def should_retry(self, error: BaseException, *, attempt: int) -> bool:
        """Whether a failure of try number ``attempt`` (from 1) earns another try."""
        return isinstance(error, UnavailableError | AbortedError) and attempt < self.max_attempts

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
    while True:
        try:
            return await attempt_fn()
        except ParleyError as error:
            if not policy.should_retry(error, attempt=attempt):
                raise
            await sleep(policy.backoff(attempt, retry_after=error.retry_after, rand=rand))
            attempt += 1
