"""Typing indicators: ephemeral events a device sends on its delivery stream.

A typing event is never stored and has no feed version: it is checked
against what the typist's own stream follows and the membership cache, rate
limited per device (``TypingLimiter``, pure, state in the ``StreamSession``),
then published once on the conversation's doorbell channel. Every process's
hub hands it to the streams following that conversation, and each stream
drops it for the typist's own account (``DeliveryService``). Recipients show
it for ``expires_seconds`` unless renewed, so a typist who vanishes without
saying it stopped is covered, and repeats inside the minimum interval can be
dropped without anyone noticing.

A stale or forbidden typing event is dropped and counted, never an error:
the typist's stream must not end because a conversation changed under it.
Publishing happens off the typist's read loop, batched, from one task per
process: a slow or absent Redis costs typing indicators, nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable

import structlog

from parley_core.errors import ParleyError
from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.streams import StreamSession
from svc_message.domain.typing_limits import (
    NOT_STARTED,
    RATE_LIMITED,
    REPEAT,
    TypingLimiter,
    TypingLimits,
)
from svc_message.model import CHANNEL
from svc_message.model.broadcast import Broadcast
from svc_message.ports import EventCodec, Publisher

log = structlog.get_logger(__name__)

# Why a typing event was not forwarded (the metric's reason label).
INVALID = "invalid"  # malformed conversation id
NOT_MEMBER = "not_member"  # the stream does not follow it, or the account left
CHANNEL_SUPPRESSED = "channel"
OVERLOAD = "overload"  # this process's publish queue is full
UNAVAILABLE = "unavailable"  # Redis did not take the publish
ERROR = "error"  # the membership check failed (database slow or down)
REASONS = (
    INVALID,
    NOT_MEMBER,
    CHANNEL_SUPPRESSED,
    REPEAT,
    RATE_LIMITED,
    NOT_STARTED,
    OVERLOAD,
    UNAVAILABLE,
    ERROR,
)

# Forwarded events waiting for their publish, per process; beyond this they
# are dropped (Redis is not keeping up, and they would be stale anyway).
OUTBOX_LIMIT = 10_000
PUBLISH_BATCH = 512
PUBLISH_TIMEOUT_SECONDS = 2.0
# A membership check that has to read the database may not hold the typist's
# read loop (its acks) longer than this.
MEMBERSHIP_TIMEOUT_SECONDS = 1.0


class TypingRelay:
    """Checks, rate-limits and publishes the typing events of this process's streams."""

    def __init__(
        self,
        members: ConversationsHandler,
        publisher: Publisher,
        codec: EventCodec,
        *,
        limits: TypingLimits,
        monotonic: Callable[[], float] = time.monotonic,
        outbox_limit: int = OUTBOX_LIMIT,
    ) -> None:
        self._members = members
        self._publisher = publisher
        self._codec = codec
        self._limits = limits
        self._monotonic = monotonic
        self._outbox: deque[Broadcast] = deque()
        self._outbox_limit = outbox_limit
        self._wake = asyncio.Event()
        self.received = 0
        self.forwarded = 0
        self.dropped: Counter[str] = Counter()

    def malformed(self) -> None:
        """A typing event whose wire shape is wrong: ignored, like an ack for
        an unknown conversation, and counted."""
        self.received += 1
        self.dropped[INVALID] += 1

    async def handle(
        self, session: StreamSession, conversation_id: str, typing: bool
    ) -> str | None:
        """Handle one typing event of ``session``'s device; None when it was
        queued for publishing, else why it was dropped."""
        self.received += 1
        reason = await self._check(session, conversation_id)
        if reason is None:
            limiter = session.typing
            now = self._monotonic()
            if limiter is None:
                limiter = session.typing = TypingLimiter(self._limits, now=now)
            reason = limiter.admit(conversation_id, typing, now=now)
        if reason is None and len(self._outbox) >= self._outbox_limit:
            reason = OVERLOAD
        if reason is not None:
            self.dropped[reason] += 1
            log.debug(
                "typing_dropped",
                reason=reason,
                account=session.account_id,
                device=session.device_id,
            )
            return reason
        envelope = self._codec.typing(
            conversation_id, session.account_id, typing, self._limits.expires_seconds
        )
        self._outbox.append(
            Broadcast(self._codec.encode(envelope), conversations=(conversation_id,))
        )
        self._wake.set()
        return None

    async def _check(self, session: StreamSession, conversation_id: str) -> str | None:
        # The stream itself knows what the account follows: a conversation it
        # never joined (or a made-up id) costs no lookup at all.
        kind = session.types.get(conversation_id)
        if kind is None:
            return NOT_MEMBER
        if kind == CHANNEL:
            return CHANNEL_SUPPRESSED
        # The stream learns of a removal only when its event arrives; the
        # membership cache is dropped on every process as soon as it happens.
        try:
            async with asyncio.timeout(MEMBERSHIP_TIMEOUT_SECONDS):
                membership = await self._members.membership(conversation_id, session.account_id)
        except ParleyError:
            return NOT_MEMBER
        except Exception as exc:
            log.debug("typing_membership_check_failed", error=repr(exc))
            return ERROR
        if membership is None or not membership.active:
            return NOT_MEMBER
        if membership.conversation.type == CHANNEL:
            return CHANNEL_SUPPRESSED
        return None

    @property
    def queued(self) -> int:
        return len(self._outbox)

    async def run(self) -> None:
        """Publish queued events, many per Redis round trip, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                count = min(len(self._outbox), PUBLISH_BATCH)
                batch = [self._outbox.popleft() for _ in range(count)]
                published = False
                try:
                    async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                        published = await self._publisher.publish(batch)
                except Exception as exc:
                    log.debug("typing_publish_failed", error=repr(exc))
                if published:
                    self.forwarded += count
                else:
                    # Ephemeral: never retried (it would be stale by then).
                    self.dropped[UNAVAILABLE] += count
