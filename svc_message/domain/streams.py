"""Live delivery streams in this process: per-device sessions and the hub that
routes doorbell events to them.

A session remembers, per conversation, the newest feed version it sent, so
it can drop what it already sent and notice gaps (filled from the log by
``delivery``). The hub subscribes to the doorbell channels its sessions
need: each account's own channel and one channel per conversation.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import structlog

from parley_core.errors import ParleyError, Reason, ResourceExhausted, Unauthenticated
from parley_core.histogram import SIZE_BOUNDS, Histogram
from svc_message.domain.typing_limits import TypingLimiter
from svc_message.model import CHANNEL, Envelope, EventKind, Watermarks
from svc_message.model.broadcast import Broadcast
from svc_message.ports import EventCodec, Subscriptions

log = structlog.get_logger(__name__)

MAX_EVENTS_PER_WRITE = 512
# Notices that may be for one device of the account only (Envelope.device_id).
_DEVICE_NOTICES = frozenset({EventKind.KEY_NOTICE, EventKind.MEDIA_NOTICE, EventKind.EXPORT_NOTICE})
# Receipt replay looks back a little further than the token, to cover writers
# whose clocks trail ours.
SYNC_TOKEN_SLACK = timedelta(seconds=2)


# Sync tokens are Unix milliseconds; a larger one would be past the last
# datetime Python can represent.
MAX_SYNC_TOKEN_MS = int(datetime(9999, 12, 31, tzinfo=UTC).timestamp()) * 1000


def encode_sync_token(at: datetime) -> str:
    return str(int(at.timestamp() * 1000))


def decode_sync_token(token: str) -> datetime | None:
    if not token:
        return None
    return datetime.fromtimestamp(int(token) / 1000, UTC) - SYNC_TOKEN_SLACK


def valid_sync_token(token: str) -> bool:
    """Empty, or ASCII digits naming a representable instant. (``str.isdigit``
    alone also accepts digits such as "²" that ``int`` refuses.)"""
    if token == "":
        return True
    return (
        token.isascii() and token.isdigit() and len(token) <= 15 and int(token) <= MAX_SYNC_TOKEN_MS
    )


@dataclass(slots=True)
class ReceiptWatch:
    seq: int
    delivered: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)


class StreamSession:
    """One device's live stream: a bounded queue of routed events."""

    def __init__(
        self,
        *,
        account_id: str,
        device_id: str,
        expires_at: float,
        queue_limit: int,
        queue_bytes: int = 1 << 62,
    ) -> None:
        self.account_id = account_id
        self.device_id = device_id
        self.expires_at = expires_at
        self._limit = queue_limit
        self._byte_budget = queue_bytes
        self._queued_bytes = 0
        self._queue: deque[Envelope] = deque()
        self._wake = asyncio.Event()
        # Wakes the wait in next_batch when the access token expires: one timer
        # per session, not one per wait (a big group wakes every member's
        # stream for each message).
        self._expiry: asyncio.TimerHandle | None = None
        self._closed = asyncio.Event()
        self._error: ParleyError | None = None
        # The client half-closed: it will send nothing more, not even acks.
        self._client_done = False
        self.resync_wanted = False
        # Per conversation the session follows: the newest version sent.
        self.sent: dict[str, int] = {}
        # The conversations' types, for what acks and receipts mean there.
        self.types: dict[str, int] = {}
        # Newest seq sent that another account wrote: what acks can raise the
        # delivered watermark to (the account's own messages count as
        # delivered to it already).
        self.received: dict[str, int] = {}
        # Group receipts: per conversation, the account's newest message and
        # which members are known to have received and read it.
        self.receipts: dict[str, ReceiptWatch] = {}
        # Conversations the account left while streaming, with the version it
        # left at: late copies of what came before are not a reason to rejoin.
        self.departed: dict[str, int] = {}
        # Group members joined late: changes to messages before this seq
        # are not theirs to see.
        self.floors: dict[str, int] = {}
        # The device's typing rate limit, made on its first typing event.
        self.typing: TypingLimiter | None = None

    def follow(
        self, conversation_id: str, *, kind: int, position: int, own_last: int, floor_seq: int = 0
    ) -> None:
        self.sent[conversation_id] = position
        self.types[conversation_id] = kind
        if floor_seq:
            self.floors[conversation_id] = floor_seq
        if own_last:
            self.receipts[conversation_id] = ReceiptWatch(own_last)

    def unfollow(self, conversation_id: str) -> None:
        if conversation_id in self.sent:
            self.departed[conversation_id] = self.sent[conversation_id]
        self.sent.pop(conversation_id, None)
        self.types.pop(conversation_id, None)
        self.floors.pop(conversation_id, None)
        self.received.pop(conversation_id, None)
        self.receipts.pop(conversation_id, None)

    def sees(self, envelope: Envelope) -> bool:
        """Whether the device is shown this feed event (its version counts either way)."""
        if envelope.only_for and envelope.only_for != self.account_id:
            return False
        return not (
            envelope.kind == EventKind.CHANGE
            and envelope.seq < self.floors.get(envelope.conversation_id, 0)
        )

    def shows_typing(self, envelope: Envelope) -> bool:
        """Whether to show a typing indicator: someone else's, in a
        conversation the stream follows (so the account is still in it)."""
        kind = self.types.get(envelope.conversation_id)
        return (
            kind is not None and kind != CHANNEL and envelope.sender_account_id != self.account_id
        )

    def note_sent(self, envelope: Envelope) -> None:
        conversation_id = envelope.conversation_id
        self.sent[conversation_id] = envelope.version
        if envelope.kind != EventKind.MESSAGE:
            return
        if envelope.sender_account_id != self.account_id:
            self.received[conversation_id] = envelope.seq
        else:
            watch = self.receipts.get(conversation_id)
            if watch is None or watch.seq < envelope.seq:
                self.receipts[conversation_id] = ReceiptWatch(envelope.seq)

    def filter_receipts(
        self, conversation_id: str, watermarks: Iterable[Watermarks]
    ) -> list[Watermarks]:
        """The group receipts worth telling this device: members reaching the
        account's newest message, delivered or read, each once."""
        shown: list[Watermarks] = []
        if conversation_id not in self.receipts:
            # Most streams of a big group belong to members with nothing of
            # their own to tick: no need to look at a thousand watermarks.
            return shown
        for w in watermarks:
            watch = self.receipts.get(w.conversation_id)
            if watch is None or w.account_id == self.account_id:
                continue
            delivered = w.delivered_seq >= watch.seq and w.account_id not in watch.delivered
            read = w.read_seq >= watch.seq and w.account_id not in watch.read
            if delivered or read:
                if w.delivered_seq >= watch.seq:
                    watch.delivered.add(w.account_id)
                if w.read_seq >= watch.seq:
                    watch.read.add(w.account_id)
                shown.append(w)
        return shown

    def offer(self, envelope: Envelope) -> None:
        if self._error is not None:
            return
        if (
            envelope.kind in _DEVICE_NOTICES
            and envelope.device_id
            and envelope.device_id != self.device_id
        ):
            return  # for another device of the account
        if (
            len(self._queue) >= self._limit
            or self._queued_bytes + envelope.size > self._byte_budget
        ):
            # Memory stays bounded: the device resumes from its watermarks.
            self.close(
                ResourceExhausted(
                    "the stream fell too far behind; reconnect and resume",
                    reason=Reason.SLOW_CONSUMER,
                )
            )
            return
        self._queue.append(envelope)
        self._queued_bytes += envelope.size
        self._wake.set()

    def close(self, error: ParleyError) -> None:
        if self._error is None:
            self._error = error
            self._queue.clear()
            self._queued_bytes = 0
            self._closed.set()
        self._wake.set()

    def finish(self) -> None:
        """The client is done writing: end the stream once what is queued was
        handed out, so the device goes offline now, not when it cancels."""
        self._client_done = True
        self._wake.set()

    @property
    def finished(self) -> bool:
        """Half-closed by the client, with nothing left to hand out; never while
        closed with an error, which the stream must end with instead."""
        return (
            self._error is None and self._client_done and not self._queue and not self.resync_wanted
        )

    @property
    def error(self) -> ParleyError | None:
        """What the session was closed with; None while it is open."""
        return self._error

    async def wait_closed(self) -> ParleyError:
        """Wait until the session is closed; the error it was closed with."""
        await self._closed.wait()
        assert self._error is not None
        return self._error

    def request_resync(self) -> None:
        self.resync_wanted = True
        self._wake.set()

    async def next_batch(self, *, clock: Callable[[], float]) -> list[Envelope]:
        """Wait for events; raises when the stream must end, and returns an
        empty batch once it is ``finished``."""
        while True:
            if self._error is not None:
                raise self._error
            if self._queue or self.resync_wanted:
                count = min(len(self._queue), MAX_EVENTS_PER_WRITE)
                batch = [self._queue.popleft() for _ in range(count)]
                self._queued_bytes -= sum(e.size for e in batch)
                return batch
            if self._client_done:
                return []
            remaining = self.expires_at - clock()
            if remaining <= 0:
                raise Unauthenticated(
                    "access token expired; refresh it and reconnect",
                    reason=Reason.TOKEN_EXPIRED,
                )
            if self._expiry is None:
                self._expiry = asyncio.get_running_loop().call_later(remaining, self._expired)
            self._wake.clear()
            await self._wake.wait()

    def _expired(self) -> None:
        # The loop may run a timer a little early (its clock resolution), and
        # the expiry is checked on the wall clock: forget the fired timer so a
        # wake that finds the token not quite expired arms a new one instead
        # of waiting for an event that may never come.
        self._expiry = None
        self._wake.set()

    def stop_waiting(self) -> None:
        """The stream ended: drop the expiry timer."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None


class Hub:
    """The streams of this process; fed by the doorbell."""

    def __init__(self, subscriptions: Subscriptions, codec: EventCodec) -> None:
        self._subscriptions = subscriptions
        self._codec = codec
        self._sessions: dict[str, set[StreamSession]] = {}
        self._topics: dict[str, set[StreamSession]] = {}
        # Streams each doorbell event was handed to on this process.
        self.fanout = Histogram(SIZE_BOUNDS)

    @property
    def stream_count(self) -> int:
        return sum(len(s) for s in self._sessions.values())

    async def attach(self, session: StreamSession, conversation_ids: Iterable[str]) -> None:
        """Route the account's events and those of the conversations to the
        session; before the replay, so nothing committed after it is missed."""
        sessions = self._sessions.setdefault(session.account_id, set())
        sessions.add(session)
        accounts = [session.account_id] if len(sessions) == 1 else []
        conversations = []
        for conversation_id in conversation_ids:
            members = self._topics.setdefault(conversation_id, set())
            members.add(session)
            if len(members) == 1:
                conversations.append(conversation_id)
        await self._subscriptions.subscribe(conversations=conversations, accounts=accounts)

    async def join(self, session: StreamSession, conversation_id: str) -> None:
        members = self._topics.setdefault(conversation_id, set())
        if session not in members:
            members.add(session)
            if len(members) == 1:
                await self._subscriptions.subscribe(conversations=[conversation_id])

    async def leave(self, session: StreamSession, conversation_id: str) -> None:
        members = self._topics.get(conversation_id)
        if members is None or session not in members:
            return
        members.discard(session)
        if not members:
            del self._topics[conversation_id]
            await self._subscriptions.unsubscribe(conversations=[conversation_id])

    async def detach(self, session: StreamSession) -> None:
        sessions = self._sessions.get(session.account_id)
        if sessions is None or session not in sessions:
            return
        sessions.discard(session)
        accounts = []
        if not sessions:
            del self._sessions[session.account_id]
            accounts.append(session.account_id)
        conversations = []
        for conversation_id in list(session.sent):
            members = self._topics.get(conversation_id)
            if members is not None and session in members:
                members.discard(session)
                if not members:
                    del self._topics[conversation_id]
                    conversations.append(conversation_id)
        await self._subscriptions.unsubscribe(conversations=conversations, accounts=accounts)

    def dispatch(self, broadcast: Broadcast) -> None:
        sessions: set[StreamSession] = set()
        for conversation_id in broadcast.conversations:
            sessions.update(self._topics.get(conversation_id, ()))
        for account_id in broadcast.accounts:
            sessions.update(self._sessions.get(account_id, ()))
        if not sessions:
            return
        envelope = self._codec.decode(broadcast.payload)
        if envelope is None:
            log.warning("doorbell_payload_unreadable", size=len(broadcast.payload))
            return
        if broadcast.trace:
            envelope = replace(envelope, trace=broadcast.trace)
        self.fanout.observe(len(sessions))
        for session in sessions:
            session.offer(envelope)

    def resync_conversation(self, conversation_id: str) -> None:
        """Streams following the conversation read their log again."""
        for session in self._topics.get(conversation_id, ()):
            session.request_resync()

    def resync_account(self, account_id: str) -> None:
        """The account's streams read their log again (a conversation they
        follow no topic of yet may have arrived)."""
        for session in self._sessions.get(account_id, ()):
            session.request_resync()

    def resync_all(self) -> None:
        for sessions in self._sessions.values():
            for session in sessions:
                session.request_resync()

    def close_all(self, error: ParleyError) -> None:
        """End every stream of this process (shutdown: devices resume elsewhere)."""
        for sessions in self._sessions.values():
            for session in sessions:
                session.close(error)

    def device_revoked(self, device_id: str) -> None:
        for sessions in self._sessions.values():
            for session in sessions:
                if session.device_id == device_id:
                    session.close(
                        Unauthenticated("this device was signed out", reason=Reason.TOKEN_REVOKED)
                    )
