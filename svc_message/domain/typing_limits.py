"""The per-device typing rate limit: pure, its state kept in the device's
``StreamSession``, so the stream and the relay share it without importing
each other."""

from __future__ import annotations

from dataclasses import dataclass

REPEAT = "repeat"  # a start inside the minimum interval of the last one
RATE_LIMITED = "rate_limited"  # the device's token bucket is empty
NOT_STARTED = "not_started"  # a stop with no forwarded start still showing
# Starts remembered per device before expired ones are pruned.
PRUNE_AT = 64


@dataclass(frozen=True, slots=True)
class TypingLimits:
    # How long recipients show an indicator unless renewed.
    expires_seconds: float
    # At most one forwarded start per (device, conversation) this often.
    min_interval_seconds: float
    # Per device over all its conversations: a token bucket of this size,
    # refilled at this rate; each forwarded start takes a token.
    burst: int
    per_second: float


class TypingLimiter:
    """One device's typing rate limit (pure; ``now`` is a monotonic time).

    Stops take no token: only a forwarded start that is still showing can be
    stopped, so there are never more stops than starts."""

    __slots__ = ("_limits", "_prune_at", "_refilled_at", "_started", "_tokens")

    def __init__(self, limits: TypingLimits, *, now: float) -> None:
        self._limits = limits
        self._tokens = float(limits.burst)
        self._refilled_at = now
        # Conversation -> when its showing start was forwarded.
        self._started: dict[str, float] = {}
        self._prune_at = PRUNE_AT

    def admit(self, conversation_id: str, typing: bool, *, now: float) -> str | None:
        """None to forward the event, else the reason to drop it."""
        limits = self._limits
        if not typing:
            started = self._started.pop(conversation_id, None)
            if started is None or now - started >= limits.expires_seconds:
                # Recipients show nothing to stop (never forwarded, already
                # stopped, or expired on their side).
                return NOT_STARTED
            return None
        started = self._started.get(conversation_id)
        if started is not None and now - started < limits.min_interval_seconds:
            return REPEAT
        elapsed = max(now - self._refilled_at, 0.0)
        self._tokens = min(float(limits.burst), self._tokens + elapsed * limits.per_second)
        self._refilled_at = now
        if self._tokens < 1.0:
            return RATE_LIMITED
        self._tokens -= 1.0
        self._started[conversation_id] = now
        if len(self._started) > self._prune_at:
            self._prune(now)
        return None

    def _prune(self, now: float) -> None:
        # The bucket bounds how many starts can be showing at once, so this
        # keeps the map small; the threshold grows with what is left so a
        # busy device does not prune on every start.
        expires = self._limits.expires_seconds
        self._started = {c: at for c, at in self._started.items() if now - at < expires}
        self._prune_at = max(PRUNE_AT, 2 * len(self._started))
