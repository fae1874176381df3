"""The Redis doorbell: tells the processes holding a user's streams that
something happened. Never the only copy: a lost publish is made good by sync
from the database.

Two kinds of channel: one per conversation (``parley:c:<id>``), on which
every change of the conversation is published once, whatever its member
count; and one per account (``parley:u:<id>``) for what concerns the account
itself (added to a conversation, removed, its own settings, and the key
directory's notices, which svc_keys publishes there). Each process
subscribes to the channels of the conversations and accounts that have a
live stream on it, over a single pub/sub connection that reconnects by
itself; after a reconnect the owner is told to resync, since events may have
been missed meanwhile. ``parley:membership`` tells every process that a
conversation's membership changed, so cached memberships are dropped.

On a Redis Cluster every channel is sharded (SPUBLISH/SSUBSCRIBE): a
conversation's events reach only the master of its channel's slot and the
processes subscribed there, instead of every node over the cluster bus. The
subscription then holds a connection per master it needs; losing any of them
counts as a reconnect (the owner resyncs), and after a failover the new
master is found by the next subscription (parley_core.storage.pubsub).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable

import structlog

from parley_core.storage.key_notices import ACCOUNT_CHANNEL_PREFIX, account_channel
from parley_core.storage.redis import REDIS_ERRORS, Redis, Subscription
from parley_core.telemetry import SPAN_CONTEXT_BYTES
from svc_message.model.broadcast import Broadcast

# The account channel is shared with svc_keys, which publishes key notices on it.
ACCOUNT_PREFIX = ACCOUNT_CHANNEL_PREFIX
CONVERSATION_PREFIX = "parley:c:"
MEMBERSHIP_CHANNEL = "parley:membership"
# What another region replicated here: "c:<conversation id>" or "a:<account id>".
# Streams following it read their log again, since no event was published for
# writes that arrived by replication.
REPLICATED_CHANNEL = "parley:replicated"
# Reconnect attempts back off to this: short, so that after a cluster
# failover (seconds) the streams hear their conversations again soon.
BACKOFF_MAX_SECONDS = 0.25
log = structlog.get_logger(__name__)


# A payload is an encoded parley.message.v1.Event or, when the change was
# sent in a traced call, TRACED_MARK, the sender's span context
# (parley_core.telemetry: trace id, span id, flags) and then the Event. No
# protobuf message starts with 0x07 (field 0, wire type 7: both invalid), so
# untraced payloads, svc_keys' key notices among them, read as before.
TRACED_MARK = 0x07
_TRACED_PREFIX = bytes((TRACED_MARK,))
_TRACED_HEADER = 1 + SPAN_CONTEXT_BYTES


def traced(span_context: bytes, payload: bytes) -> bytes:
    """The payload with the sender's span context in front."""
    return b"".join((_TRACED_PREFIX, span_context, payload))


def untraced(payload: bytes) -> tuple[bytes, bytes]:
    """(span context, event bytes) of a payload that starts with TRACED_MARK."""
    return payload[1:_TRACED_HEADER], payload[_TRACED_HEADER:]


def inbox(account_id: str) -> str:
    return account_channel(account_id)


def topic(conversation_id: str) -> str:
    return CONVERSATION_PREFIX + conversation_id


def channels_of(conversations: Iterable[str], accounts: Iterable[str]) -> list[str]:
    return [*(topic(c) for c in conversations), *(inbox(a) for a in accounts)]


def framed(broadcast: Broadcast) -> bytes:
    """The payload as published: behind the span context when traced."""
    if not broadcast.trace:
        return broadcast.payload
    return traced(broadcast.trace, broadcast.payload)


def heard(channel: str, payload: bytes) -> Broadcast | None:
    """What a payload on one of our channels says; None for a foreign channel."""
    trace = b""
    if payload and payload[0] == TRACED_MARK:
        trace, payload = untraced(payload)
    if channel.startswith(CONVERSATION_PREFIX):
        return Broadcast(payload, conversations=(channel[len(CONVERSATION_PREFIX) :],), trace=trace)
    if channel.startswith(ACCOUNT_PREFIX):
        return Broadcast(payload, accounts=(channel[len(ACCOUNT_PREFIX) :],), trace=trace)
    return None


class Doorbell:
    def __init__(
        self,
        redis: Redis,
        *,
        on_event: Callable[[Broadcast], None],
        on_reconnect: Callable[[], None],
        on_membership_change: Callable[[str], None] = lambda conversation_id: None,
        on_replicated: Callable[[str, str], None] = lambda kind, id_: None,
    ) -> None:
        """``on_replicated(kind, id)``: kind "c" (a conversation) or "a" (an account)."""
        self._on_replicated = on_replicated
        self._redis = redis
        self._on_event = on_event
        self._on_reconnect = on_reconnect
        self._on_membership_change = on_membership_change
        self._wanted: Counter[str] = Counter()
        self._subscription: Subscription | None = None
        self._connected = asyncio.Event()
        self.publish_failures = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def publish(self, broadcasts: Iterable[Broadcast]) -> bool:
        """Publish each broadcast on its channels (see ``topic`` and ``inbox``),
        in one round trip; False when Redis did not take it."""
        messages = [
            (name, framed(broadcast))
            for broadcast in broadcasts
            for name in channels_of(broadcast.conversations, broadcast.accounts)
        ]
        # Twice: after Redis restarts, the first use of each pooled connection
        # fails and drops it; a second try goes over a fresh one instead of
        # losing these events' live delivery.
        for attempt in (1, 2):
            try:
                await self._redis.publish_many(messages)
            except REDIS_ERRORS as exc:
                if attempt == 2:
                    self.publish_failures += 1
                    log.warning("doorbell_publish_failed", error=str(exc))
                    return False
            else:
                return True
        return False

    async def replicated(self, conversation_ids: Iterable[str], account_ids: Iterable[str]) -> None:
        """Tell every process of the region what replication just wrote."""
        messages = [(REPLICATED_CHANNEL, f"c:{c}".encode()) for c in conversation_ids] + [
            (REPLICATED_CHANNEL, f"a:{a}".encode()) for a in account_ids
        ]
        if messages:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._redis.publish_many(messages)

    async def membership_changed(self, conversation_id: str) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self._redis.publish(MEMBERSHIP_CHANNEL, conversation_id)

    async def subscribe(
        self, *, conversations: Iterable[str] = (), accounts: Iterable[str] = ()
    ) -> None:
        """Listen to the channels of these conversations and accounts
        (reference counted)."""
        fresh = []
        for name in channels_of(conversations, accounts):
            self._wanted[name] += 1
            if self._wanted[name] == 1:
                fresh.append(name)
        if fresh and self._subscription is not None:
            # A failure breaks the subscription: run() reconnects with them all.
            with contextlib.suppress(*REDIS_ERRORS):
                await self._subscription.subscribe(*fresh)

    async def unsubscribe(
        self, *, conversations: Iterable[str] = (), accounts: Iterable[str] = ()
    ) -> None:
        gone = []
        for name in channels_of(conversations, accounts):
            self._wanted[name] -= 1
            if self._wanted[name] <= 0:
                del self._wanted[name]
                gone.append(name)
        if gone and self._subscription is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._subscription.unsubscribe(*gone)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        backoff = 0.05
        first = True
        while True:
            subscription = self._redis.subscription()
            try:
                # The membership channel keeps the connection in subscribe mode
                # even while no stream is open.
                await subscription.subscribe(MEMBERSHIP_CHANNEL, REPLICATED_CHANNEL, *self._wanted)
                self._subscription = subscription
                self._connected.set()
                backoff = 0.05
                if not first:
                    log.info("doorbell_reconnected")
                    self._on_reconnect()
                first = False
                async for item in subscription.listen():
                    if item.kind != "message":
                        continue
                    if item.channel == MEMBERSHIP_CHANNEL:
                        self._on_membership_change(item.data.decode())
                    elif item.channel == REPLICATED_CHANNEL:
                        kind, _, replicated_id = item.data.decode().partition(":")
                        self._on_replicated(kind, replicated_id)
                    else:
                        broadcast = heard(item.channel, item.data)
                        if broadcast is not None:
                            self._on_event(broadcast)
            except REDIS_ERRORS as exc:
                if self._connected.is_set():
                    log.warning("doorbell_disconnected", error=str(exc))
            finally:
                self._connected.clear()
                self._subscription = None
                with contextlib.suppress(Exception):
                    await subscription.aclose()
            first = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
