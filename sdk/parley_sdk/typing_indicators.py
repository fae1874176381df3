"""Typing indicators without I/O: who is typing (recipient side), when to say so (sender side).

Both take ``now`` as seconds on a monotonic clock (``time.monotonic()``, the
default), so expiry survives wall-clock jumps and tests can pass their own.
"""

from __future__ import annotations

import time
from datetime import timedelta

from parley_sdk.models import MessageEvent, StreamEvent, TypingIndicatorEvent

__all__ = ["DEFAULT_TYPING_EXPIRY", "TYPING_RENEW_INTERVAL", "TypingThrottle", "TypingTracker"]

DEFAULT_TYPING_EXPIRY = timedelta(seconds=6)
"""How long an indicator that names no ``expires_in`` is shown."""

# Recipients drop an indicator after expires_in (6 s by default) and the server
# drops a second start within 2 s, so renew comfortably between the two.
TYPING_RENEW_INTERVAL = 3.0
"""Seconds between two typing starts a :class:`TypingThrottle` lets through."""


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now


class TypingTracker:
    """Who is typing in which conversation, from the events of a delivery stream.

    Feed it every event (:meth:`observe`); ask :meth:`typing` when drawing.
    An indicator counts until its ``expires_in`` runs out unless renewed, until
    the typist says they stopped, or until a message from them arrives in that
    conversation (the message is what they were typing). Expiry happens here,
    on the recipient side: a typist whose app died never says they stopped.

    >>> tracker = TypingTracker(ignore_account_id=client.account_id)
    >>> async for event in stream:
    ...     if tracker.observe(event):
    ...         redraw(tracker.typing(conversation_id))
    """

    def __init__(self, *, ignore_account_id: str | None = None) -> None:
        # conversation -> account -> deadline; dicts keep who started first first.
        self._deadlines: dict[str, dict[str, float]] = {}
        self._ignored = ignore_account_id

    def observe(self, event: StreamEvent, now: float | None = None) -> bool:
        """Takes in any stream event; True when who is typing in its conversation
        changed (a new typist, or one who stopped or sent a message)."""
        now = _now(now)
        if isinstance(event, TypingIndicatorEvent):
            if event.account_id == self._ignored:
                return False
            if event.typing:
                expires_in = event.expires_in
                if expires_in <= timedelta(0):
                    expires_in = DEFAULT_TYPING_EXPIRY
                return self._start(
                    event.conversation_id, event.account_id, now + expires_in.total_seconds(), now
                )
            return self._stop(event.conversation_id, event.account_id, now)
        if isinstance(event, MessageEvent):
            message = event.message
            return self._stop(message.conversation_id, message.sender_account_id, now)
        return False

    def typing(self, conversation_id: str, now: float | None = None) -> list[str]:
        """Account ids typing in the conversation now, in the order they started."""
        now = _now(now)
        self._expire(conversation_id, now)
        return list(self._deadlines.get(conversation_id, ()))

    def next_expiry(self, now: float | None = None) -> float | None:
        """Seconds until the next indicator runs out (redraw then); None when
        nobody is typing anywhere."""
        now = _now(now)
        deadlines = [d for typists in self._deadlines.values() for d in typists.values()]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def clear(self, conversation_id: str | None = None) -> None:
        """Forgets one conversation's typists, or all (after the stream reconnected:
        indicators are not replayed, and stops may have been missed)."""
        if conversation_id is None:
            self._deadlines.clear()
        else:
            self._deadlines.pop(conversation_id, None)

    def _start(self, conversation_id: str, account_id: str, deadline: float, now: float) -> bool:
        self._expire(conversation_id, now)
        typists = self._deadlines.setdefault(conversation_id, {})
        new = account_id not in typists
        # A renewal only moves the deadline, and a late renewal (reordered or
        # delayed) never shortens it.
        typists[account_id] = max(deadline, typists.get(account_id, deadline))
        return new

    def _stop(self, conversation_id: str, account_id: str, now: float) -> bool:
        self._expire(conversation_id, now)
        typists = self._deadlines.get(conversation_id)
        if typists is None or account_id not in typists:
            return False
        del typists[account_id]
        if not typists:
            del self._deadlines[conversation_id]
        return True

    def _expire(self, conversation_id: str, now: float) -> None:
        typists = self._deadlines.get(conversation_id)
        if typists is None:
            return
        for account_id in [a for a, deadline in typists.items() if deadline <= now]:
            del typists[account_id]
        if not typists:
            del self._deadlines[conversation_id]


class TypingThrottle:
    """Which typing calls of the sender are worth sending.

    Apps report typing on every keystroke; recipients only need a start, a
    renewal before it expires, and a stop. So a start goes out when none went
    out for the conversation in the last ``renew_after`` seconds, and a stop
    only after a start (and it re-arms the next start).
    """

    def __init__(self, renew_after: float = TYPING_RENEW_INTERVAL) -> None:
        if renew_after < 0:
            raise ValueError("renew_after must be >= 0")
        self._renew_after = renew_after
        self._started: dict[str, float] = {}

    def should_send(self, conversation_id: str, typing: bool, now: float | None = None) -> bool:
        """Whether to send this call; records it as sent when True."""
        now = _now(now)
        if not typing:
            return self._started.pop(conversation_id, None) is not None
        last = self._started.get(conversation_id)
        if last is not None and now - last < self._renew_after:
            return False
        self._started[conversation_id] = now
        return True

    def unsent(self, conversation_id: str) -> None:
        """The last call :meth:`should_send` allowed could not be sent: forget it."""
        self._started.pop(conversation_id, None)
