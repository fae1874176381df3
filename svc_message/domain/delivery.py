"""The delivery stream: replay from watermarks, then live events.

The database is the log; the doorbell only says "look". A stream therefore
never trusts the doorbell for completeness: it remembers the highest seq it
sent per conversation, drops what it already sent, and fills any gap from the
log before sending a later message. After a doorbell reconnect, every stream
catches up from the log, since publishes may have been lost meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog

from parley_core.errors import ParleyError, Reason, ResourceExhausted, Unauthenticated
from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.ports import EventCodec, Publisher, Subscriptions
from svc_message.model import Conversation, Envelope, EventKind
from svc_message.storage.conversations import ConversationStore
from svc_message.storage.messages import MessageStore

log = structlog.get_logger(__name__)

MAX_EVENTS_PER_WRITE = 512
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
        self._closed = asyncio.Event()
        self._error: ParleyError | None = None
        self.resync_wanted = False
        # Highest seq sent to the device, per conversation.
        self.sent: dict[str, int] = {}
        # Highest seq sent to the device that another account wrote: what its
        # acks can raise the delivered watermark to (the account's own
        # messages count as delivered to it already).
        self.received: dict[str, int] = {}

    def note_sent(self, envelope: Envelope) -> None:
        self.sent[envelope.conversation_id] = envelope.seq
        if envelope.sender_account_id != self.account_id:
            self.received[envelope.conversation_id] = envelope.seq

    def offer(self, envelope: Envelope) -> None:
        if self._error is not None:
            return
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

    async def wait_closed(self) -> ParleyError:
        """Wait until the session is closed; the error it was closed with."""
        await self._closed.wait()
        assert self._error is not None
        return self._error

    def request_resync(self) -> None:
        self.resync_wanted = True
        self._wake.set()

    async def next_batch(self, *, clock: Callable[[], float]) -> list[Envelope]:
        """Wait for events; raises when the stream must end."""
        while True:
            if self._error is not None:
                raise self._error
            if self._queue or self.resync_wanted:
                count = min(len(self._queue), MAX_EVENTS_PER_WRITE)
                batch = [self._queue.popleft() for _ in range(count)]
                self._queued_bytes -= sum(e.size for e in batch)
                return batch
            remaining = self.expires_at - clock()
            if remaining <= 0:
                raise Unauthenticated(
                    "access token expired; refresh it and reconnect",
                    reason=Reason.TOKEN_EXPIRED,
                )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=remaining)


class Hub:
    """The streams of this process, by account; fed by the doorbell."""

    def __init__(self, subscriptions: Subscriptions, codec: EventCodec) -> None:
        self._subscriptions = subscriptions
        self._codec = codec
        self._sessions: dict[str, set[StreamSession]] = {}

    @property
    def stream_count(self) -> int:
        return sum(len(s) for s in self._sessions.values())

    async def attach(self, session: StreamSession) -> None:
        sessions = self._sessions.setdefault(session.account_id, set())
        sessions.add(session)
        if len(sessions) == 1:
            await self._subscriptions.subscribe(session.account_id)

    async def detach(self, session: StreamSession) -> None:
        sessions = self._sessions.get(session.account_id)
        if sessions is None or session not in sessions:
            return
        sessions.discard(session)
        if not sessions:
            del self._sessions[session.account_id]
            await self._subscriptions.unsubscribe(session.account_id)

    def dispatch(self, account_id: str, payload: bytes) -> None:
        sessions = self._sessions.get(account_id)
        if not sessions:
            return
        envelope = self._codec.decode(payload)
        if envelope is None:
            log.warning("doorbell_payload_unreadable", size=len(payload))
            return
        for session in sessions:
            session.offer(envelope)

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


class DeliveryService:
    def __init__(
        self,
        hub: Hub,
        conversations: ConversationStore,
        members: ConversationsHandler,
        messages: MessageStore,
        codec: EventCodec,
        *,
        queue_limit: int,
        queue_bytes: int,
        replay_page_size: int,
        clock: Callable[[], float],
    ) -> None:
        self._hub = hub
        self._conversations = conversations
        # Conversations with their current last_seq, which may be ahead of the
        # stored metadata while the projector writes it behind.
        self._members = members
        self._messages = messages
        self._codec = codec
        self._queue_limit = queue_limit
        self._queue_bytes = queue_bytes
        self._page = replay_page_size
        self._clock = clock

    def open(self, *, account_id: str, device_id: str, expires_at: float) -> StreamSession:
        return StreamSession(
            account_id=account_id,
            device_id=device_id,
            expires_at=expires_at,
            queue_limit=self._queue_limit,
            queue_bytes=self._queue_bytes,
        )

    async def _catch_up(
        self, session: StreamSession, conversations: list[Conversation]
    ) -> AsyncIterator[list[Envelope]]:
        """Everything in the log past what the session sent, oldest first."""
        for conversation in conversations:
            conversation_id = conversation.conversation_id
            after = session.sent.get(conversation_id, 0)
            # last_seq is written after the messages, so it may trail the log
            # by a batch that is still being recorded, never lead it.
            if conversation.last_seq <= after:
                continue
            while True:
                page = await self._messages.range(
                    conversation_id, after_seq=after, until_seq=None, limit=self._page
                )
                if not page:
                    break
                envelopes = [self._codec.message(m) for m in page]
                yield envelopes
                for envelope in envelopes:
                    session.note_sent(envelope)
                after = page[-1].seq
                if len(page) < self._page:
                    break

    async def stream(
        self,
        session: StreamSession,
        *,
        positions: dict[str, int],
        sync_token: str,
    ) -> AsyncIterator[list[Envelope]]:
        """Replay, then SyncComplete, then live batches, until the session ends."""
        await self._hub.attach(session)
        try:
            started = datetime.fromtimestamp(self._clock(), UTC)
            conversations = await self._members.of_member(session.account_id)
            cursors = await self._conversations.device_cursors(session.device_id)
            new_to_device: list[Envelope] = []
            for conversation in conversations:
                conversation_id = conversation.conversation_id
                start = positions.get(conversation_id, cursors.get(conversation_id, 0))
                session.sent[conversation_id] = start
                if start == 0:
                    new_to_device.append(self._codec.conversation(conversation))
            if new_to_device:
                yield new_to_device
            async for batch in self._catch_up(session, conversations):
                yield batch
            ids = [c.conversation_id for c in conversations]
            if ids:
                changed = await self._conversations.watermarks_changed_since(
                    ids, decode_sync_token(sync_token)
                )
                receipts = [self._codec.receipt(w) for w in changed]
                for i in range(0, len(receipts), MAX_EVENTS_PER_WRITE):
                    yield receipts[i : i + MAX_EVENTS_PER_WRITE]
            yield [self._codec.sync_complete(encode_sync_token(started))]
            while True:
                batch = await session.next_batch(clock=self._clock)
                if session.resync_wanted:
                    session.resync_wanted = False
                    latest = await self._members.of_member(session.account_id)
                    async for replay in self._catch_up(session, latest):
                        yield replay
                out = await self._in_order(session, batch)
                if out:
                    yield out
        finally:
            await self._hub.detach(session)

    async def _in_order(self, session: StreamSession, batch: list[Envelope]) -> list[Envelope]:
        out: list[Envelope] = []
        for envelope in batch:
            if envelope.kind != EventKind.MESSAGE:
                out.append(envelope)
                continue
            conversation_id = envelope.conversation_id
            sent = session.sent.get(conversation_id, 0)
            if envelope.seq <= sent:
                continue  # already sent by replay or an earlier gap fill
            if envelope.seq > sent + 1:
                # A publish was lost or overtaken: the log has what is missing.
                missing = await self._messages.range(
                    conversation_id, after_seq=sent, until_seq=envelope.seq - 1, limit=10_000
                )
                for message in missing:
                    filled = self._codec.message(message)
                    out.append(filled)
                    session.note_sent(filled)
            out.append(envelope)
            session.note_sent(envelope)
        return out

    async def release(self, session: StreamSession) -> None:
        """Stop routing events to a session whose stream could not end itself
        (its transport was stuck); ``stream`` does the same when it ends."""
        await self._hub.detach(session)

    def ackable(self, session: StreamSession, conversation_id: str, seq: int) -> tuple[int, int]:
        """What an ack may record: (the device's position, the account's
        delivered watermark); 0 for nothing. A device can only acknowledge what
        this stream sent it, and only others' messages raise delivery."""
        if not 0 < seq <= session.sent.get(conversation_id, 0):
            return 0, 0
        return seq, min(seq, session.received.get(conversation_id, 0))


class AckBatcher:
    """Coalesces stream acks into few writes.

    Every online device acks every delivery. Raising watermarks with $max is
    idempotent, so only the highest ack per (conversation, account) is written,
    once per ``flush_seconds``, and its receipt goes out then. Device positions
    only serve a device that resumes without saying where it is, so they are
    written every ``cursor_flush_seconds``: after a crash such a device gets a
    few messages again, and drops them by seq.
    """

    def __init__(
        self,
        store: ConversationStore,
        conversations: ConversationsHandler,
        publisher: Publisher,
        codec: EventCodec,
        *,
        flush_seconds: float,
        cursor_flush_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._conversations = conversations
        self._publisher = publisher
        self._codec = codec
        self._flush_seconds = flush_seconds
        self._cursor_flush_seconds = cursor_flush_seconds
        self._clock = clock
        self._members: dict[tuple[str, str], int] = {}
        self._devices: dict[tuple[str, str], int] = {}

    def ack(
        self,
        *,
        account_id: str,
        device_id: str,
        conversation_id: str,
        position: int,
        delivered: int,
    ) -> None:
        if delivered:
            key = (conversation_id, account_id)
            self._members[key] = max(self._members.get(key, 0), delivered)
        device_key = (device_id, conversation_id)
        self._devices[device_key] = max(self._devices.get(device_key, 0), position)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._every(self._flush_seconds, self.flush_watermarks))
            tasks.create_task(self._every(self._cursor_flush_seconds, self.flush_cursors))

    @staticmethod
    async def _every(seconds: float, flush: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            await flush()

    async def flush(self) -> None:
        await asyncio.gather(self.flush_watermarks(), self.flush_cursors())

    async def flush_device(self, device_id: str) -> None:
        """Write one device's positions now: its stream ended, and it may come
        back at once without saying where it is."""
        mine = {key: seq for key, seq in self._devices.items() if key[0] == device_id}
        for key in mine:
            del self._devices[key]
        await self._write_cursors(mine)

    async def flush_cursors(self) -> None:
        devices, self._devices = self._devices, {}
        await self._write_cursors(devices)

    async def _write_cursors(self, devices: dict[tuple[str, str], int]) -> None:
        if not devices:
            return
        try:
            await self._store.raise_device_cursors((d, c, seq) for (d, c), seq in devices.items())
        except Exception as exc:
            log.warning("cursor_flush_failed", error=str(exc))

    async def flush_watermarks(self) -> None:
        members, self._members = self._members, {}
        if not members:
            return
        now = datetime.fromtimestamp(self._clock(), UTC)
        try:
            await self._store.raise_watermarks(
                ((c, a, seq, 0) for (c, a), seq in members.items()), now=now
            )
            # Receipts carry the member's whole watermarks, read included.
            current = await self._store.watermarks_of(members)
            deliveries = []
            for watermarks in current:
                conversation = await self._conversations.require_member(
                    watermarks.conversation_id, watermarks.account_id
                )
                envelope = self._codec.receipt(watermarks)
                deliveries.append((conversation.member_ids, self._codec.encode(envelope)))
        except Exception as exc:
            # Acks are hints: the device acks again on its next delivery or resume.
            log.warning("ack_flush_failed", error=str(exc))
            return
        await self._publisher.publish(deliveries)
