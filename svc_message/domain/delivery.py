"""The delivery stream: replay of the change feed from the device's positions,
then live events.

The database is the log; the doorbell only says "look". A stream therefore
never trusts the doorbell for completeness: it remembers the newest version
it sent per conversation, drops what it already sent, and fills any gap from
the log before sending a later change. After a doorbell reconnect, every
stream catches up from the log, since publishes may have been lost meanwhile.

Membership moves while a stream is open: a conversation the account joins is
announced on the account's own channel (the stream then follows it and
replays it from where the account joined); a conversation it leaves ends
with the system message that says so, after which the stream stops
following it.

Key notices ride along without being part of the feed: those of the key
directory arrive on the account's channel for one device or all of them; a
device low on one-time prekeys is told again after SyncComplete at every
stream start; and a group's remaining members are told to re-key right after
each system message that records a departure (derived here, live and on
replay alike, so nothing more is stored or published for it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from parley_core.errors import NotFound
from parley_core.histogram import LATENCY_BOUNDS, Histogram
from svc_message.domain.conversations import ConversationsHandler, Membership
from svc_message.domain.leases import StreamLeases
from svc_message.domain.streams import (
    MAX_EVENTS_PER_WRITE,
    Hub,
    StreamSession,
    decode_sync_token,
    encode_sync_token,
)
from svc_message.model import (
    CHANNEL,
    DIRECT,
    FEED_KINDS,
    GROUP,
    Change,
    ChangeKind,
    Conversation,
    Envelope,
    EventKind,
    Watermarks,
)
from svc_message.ports import EventCodec, PreKeyCounts
from svc_message.storage.conversations import ConversationStore
from svc_message.storage.messages import MessageStore

log = structlog.get_logger(__name__)

# A gap fill reads at most this many entries at once.
GAP_FILL_LIMIT = 10_000
# Join positions at or above this are placeholders of a join being recorded.
PENDING_VERSION = 2**61


def start_position(conversation: Conversation, account_id: str, asked: int | None) -> int:
    """Where a device starts in a conversation's feed. A group member never
    replays what came before they joined; a device new to a channel starts
    at its present (channels are read by paging history, not replayed)."""
    if conversation.type == CHANNEL:
        return conversation.last_version if asked is None else asked
    floor = max(conversation.joined_at(account_id)[1] - 1, 0)
    return max(asked or 0, floor)


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
        leases: StreamLeases | None = None,
        pre_keys: PreKeyCounts | None = None,
    ) -> None:
        self._hub = hub
        self._conversations = conversations
        # Conversations with their current last_version, which may be ahead
        # of the stored metadata while the projector writes it behind.
        self._members = members
        self._messages = messages
        self._codec = codec
        self._queue_limit = queue_limit
        self._queue_bytes = queue_bytes
        self._page = replay_page_size
        self._clock = clock
        # Keeps the devices of live streams online (presence); never awaited.
        self._leases = leases
        self._pre_keys = pre_keys
        # From a message's commit to its write on a stream, live events only
        # (a replay to a device that was offline says nothing about the system).
        self.lag = Histogram(LATENCY_BOUNDS)

    def open(self, *, account_id: str, device_id: str, expires_at: float) -> StreamSession:
        return StreamSession(
            account_id=account_id,
            device_id=device_id,
            expires_at=expires_at,
            queue_limit=self._queue_limit,
            queue_bytes=self._queue_bytes,
        )

    def _visible(self, session: StreamSession, envelope: Envelope) -> bool:
        return session.sees(envelope)

    async def _replay(
        self,
        session: StreamSession,
        conversation_id: str,
        *,
        until: int | None = None,
    ) -> AsyncIterator[list[Envelope]]:
        """The feed past what the session sent, oldest first, up to ``until``."""
        after = session.sent.get(conversation_id, 0)
        while until is None or after < until:
            page = await self._messages.changes(
                conversation_id, after_version=after, until_version=until, limit=self._page
            )
            if not page:
                break
            page = await self._without_deleted_edits(conversation_id, page)
            envelopes = [self._codec.change(change) for change in page]
            for envelope in envelopes:
                session.note_sent(envelope)
            shown = [e for e in envelopes if self._visible(session, e)]
            if shown:
                yield shown
            after = page[-1].version
            if len(page) < self._page:
                break

    async def _without_deleted_edits(
        self, conversation_id: str, page: list[Change]
    ) -> list[Change]:
        """An edit replayed after its message was deleted for everyone carries
        no body: the feed keeps the edit's ciphertext, a device catching up
        must not receive what was deleted."""
        edited = [c.target_id for c in page if c.kind == ChangeKind.EDIT and c.body]
        if not edited:
            return page
        deleted = await self._messages.deleted_for_everyone(conversation_id, edited)
        if not deleted:
            return page
        return [
            replace(c, body=b"") if c.kind == ChangeKind.EDIT and c.target_id in deleted else c
            for c in page
        ]

    async def _catch_up(
        self, session: StreamSession, conversations: Iterable[Conversation]
    ) -> AsyncIterator[list[Envelope]]:
        for conversation in conversations:
            conversation_id = conversation.conversation_id
            if conversation_id not in session.sent:
                continue
            # last_version is written after the log, so it may trail the log
            # by a batch that is still being recorded, never lead it.
            if conversation.last_version <= session.sent[conversation_id]:
                continue
            async for batch in self._replay(session, conversation_id):
                yield batch

    def _follow(
        self, session: StreamSession, conversation: Conversation, asked: int | None
    ) -> None:
        own = dict(conversation.sent).get(session.account_id, 0)
        joined_seq = conversation.joined_at(session.account_id)[0]
        session.follow(
            conversation.conversation_id,
            kind=conversation.type,
            position=start_position(conversation, session.account_id, asked),
            own_last=own if conversation.type != DIRECT else 0,
            floor_seq=joined_seq if conversation.type == GROUP else 0,
        )

    async def _departed(
        self, session: StreamSession, wanted: dict[str, int], active: set[str]
    ) -> AsyncIterator[list[Envelope]]:
        """Conversations the device knows but the account left meanwhile: the
        rest of their feed up to the departure, so the device learns of it."""
        for conversation_id, position in wanted.items():
            if conversation_id in active:
                continue
            try:
                membership = await self._members.membership(conversation_id, session.account_id)
            except NotFound:
                continue  # a position for a conversation that does not exist
            if membership is None or membership.active or membership.left_version <= position:
                continue
            if membership.conversation.type == CHANNEL and position < membership.joined_version:
                continue  # a channel's posts are read by paging history, not replayed
            kind = membership.conversation.type
            session.follow(
                conversation_id,
                kind=kind,
                position=position,
                own_last=0,
                floor_seq=membership.joined_seq if kind == GROUP else 0,
            )
            async for batch in self._replay(
                session, conversation_id, until=membership.left_version
            ):
                yield batch
            session.unfollow(conversation_id)

    async def stream(
        self,
        session: StreamSession,
        *,
        positions: dict[str, int],
        sync_token: str,
    ) -> AsyncGenerator[list[Envelope]]:
        """Replay, then SyncComplete, then live batches, until the session ends."""
        events = self._events(session, positions=positions, sync_token=sync_token)
        async with contextlib.aclosing(events):
            async for batch in events:
                out = self._with_rekeys(session, batch)
                yield out
                # Resumed: the transport wrote the batch.
                self._written(out)

    def _written(self, batch: list[Envelope]) -> None:
        now_ms = -1.0
        for envelope in batch:
            if envelope.committed_ms:
                if now_ms < 0:
                    now_ms = self._clock() * 1000
                self.lag.observe(max(now_ms - envelope.committed_ms, 0.0) / 1000)

    def _with_rekeys(self, session: StreamSession, batch: list[Envelope]) -> list[Envelope]:
        """The batch with a re-key notice after each departure from a group,
        except on the streams of those who left (nothing follows their
        departure). Every envelope sent passes here, replayed or live."""
        if not any(envelope.leaving for envelope in batch):
            return batch
        out: list[Envelope] = []
        for envelope in batch:
            out.append(envelope)
            if (
                envelope.leaving
                and session.account_id not in envelope.leaving
                # Still followed when sent; a stream that itself left the
                # group later in the same batch has nothing to re-key.
                and session.types.get(envelope.conversation_id) == GROUP
            ):
                out.append(self._codec.group_rekey(envelope.conversation_id, envelope.leaving))
        return out

    async def _low_on_pre_keys(self, session: StreamSession) -> list[Envelope]:
        """A notice for a device still low on one-time prekeys: the live
        notice may have been missed while it was offline."""
        if self._pre_keys is None:
            return []
        try:
            count = await self._pre_keys.low_count(session.device_id)
        except Exception as exc:
            # A hint: the stream is worth more than it.
            log.warning("pre_key_count_unreadable", device=session.device_id, error=str(exc))
            return []
        return [] if count is None else [self._codec.pre_keys_low(session.device_id, count)]

    async def _events(
        self,
        session: StreamSession,
        *,
        positions: dict[str, int],
        sync_token: str,
    ) -> AsyncGenerator[list[Envelope]]:
        conversations = await self._members.of_member(session.account_id)
        await self._hub.attach(session, (c.conversation_id for c in conversations))
        try:
            if self._leases is not None:
                self._leases.opened(session)
            started = datetime.fromtimestamp(self._clock(), UTC)
            # Read again once subscribed: a conversation created or a change
            # committed meanwhile is then either replayed or arrives live
            # (and is dropped if both).
            known = {c.conversation_id for c in conversations}
            conversations = await self._members.of_member(session.account_id)
            for conversation in conversations:
                if conversation.conversation_id not in known:
                    await self._hub.join(session, conversation.conversation_id)
            cursors = await self._conversations.device_cursors(session.device_id)
            new_to_device: list[Envelope] = []
            for conversation in conversations:
                conversation_id = conversation.conversation_id
                asked = positions.get(conversation_id, cursors.get(conversation_id))
                self._follow(session, conversation, asked)
                if not asked:
                    new_to_device.append(self._codec.conversation(conversation))
            if new_to_device:
                yield new_to_device
            async for batch in self._catch_up(session, conversations):
                yield batch
            active = {c.conversation_id for c in conversations}
            async for batch in self._departed(session, {**cursors, **positions}, active):
                yield batch
            async for batch in self._receipts(session, conversations, sync_token):
                yield batch
            yield [self._codec.sync_complete(encode_sync_token(started))]
            notice = await self._low_on_pre_keys(session)
            if notice:
                yield notice
            # Ends normally (an OK status) after a client's half-close.
            while not session.finished:
                batch = await session.next_batch(clock=self._clock)
                if session.resync_wanted:
                    session.resync_wanted = False
                    latest = await self._members.of_member(session.account_id)
                    # Conversations that arrived without an event (another
                    # region's, by replication) are joined like created ones.
                    for conversation in latest:
                        conversation_id = conversation.conversation_id
                        if conversation_id in session.sent or conversation_id in session.departed:
                            continue
                        if await self._join(session, conversation_id) is not None:
                            yield [self._codec.conversation(conversation)]
                            async for replay in self._replay(session, conversation_id):
                                yield replay
                    async for replay in self._catch_up(session, latest):
                        yield replay
                out = await self._in_order(session, batch)
                if out:
                    yield out
        finally:
            session.stop_waiting()
            self._end(session)
            await self._hub.detach(session)

    def _end(self, session: StreamSession) -> None:
        if self._leases is not None:
            self._leases.closed(session)

    async def _receipts(
        self, session: StreamSession, conversations: list[Conversation], sync_token: str
    ) -> AsyncIterator[list[Envelope]]:
        """Receipt changes since the sync token: 1:1 one by one; in groups only
        those about the account's own newest message there, batched. A device
        without a token gets no group receipts: reading a thousand members'
        watermarks per group at every first connect would cost more than the
        ticks are worth (ListMessageReceipts answers them on demand)."""
        account_id = session.account_id
        ids = [
            c.conversation_id
            for c in conversations
            if c.type == DIRECT or (c.type == GROUP and sync_token and dict(c.sent).get(account_id))
        ]
        if not ids:
            return
        kinds = {c.conversation_id: c.type for c in conversations}
        changed = await self._conversations.watermarks_changed_since(
            ids, decode_sync_token(sync_token)
        )
        receipts: list[Envelope] = []
        grouped: dict[str, list[Watermarks]] = {}
        for w in changed:
            if kinds.get(w.conversation_id) == DIRECT:
                receipts.append(self._codec.receipt(w))
            else:
                grouped.setdefault(w.conversation_id, []).append(w)
        for conversation_id, marks in grouped.items():
            shown = session.filter_receipts(conversation_id, marks)
            if shown:
                receipts.append(self._codec.receipts(conversation_id, shown))
        for i in range(0, len(receipts), MAX_EVENTS_PER_WRITE):
            yield receipts[i : i + MAX_EVENTS_PER_WRITE]

    async def _join(
        self,
        session: StreamSession,
        conversation_id: str,
        *,
        hint: int | None = None,
        hint_seq: int = 0,
    ) -> Membership | None:
        """Follow a conversation the account was just added to (or subscribed).

        ``hint`` is the version before the feed event that announced it (the
        membership documents may still be catching up with that event); None
        for a conversation event, which only channels send to rejoin."""
        departed = session.departed.get(conversation_id)
        if departed is not None and hint is not None and hint < departed:
            return None  # a late copy of something from before leaving
        self._members.forget(conversation_id)
        membership = await self._members.membership(conversation_id, session.account_id)
        if membership is None or not membership.active:
            return None
        if departed is not None and hint is None and membership.conversation.type != CHANNEL:
            return None
        (conversation,) = await self._members.fresh([membership.conversation])
        if conversation.type == CHANNEL:
            asked: int | None = membership.joined_version
        floor = 0
        if conversation.type == CHANNEL:
            pass
        elif 0 < membership.joined_version < PENDING_VERSION:
            asked = membership.joined_version - 1
            floor = membership.joined_seq
        else:
            asked, floor = hint, hint_seq
        asked = max(asked or 0, session.departed.get(conversation_id, 0))
        session.follow(
            conversation_id,
            kind=conversation.type,
            position=asked,
            own_last=dict(conversation.sent).get(session.account_id, 0),
            floor_seq=floor if conversation.type == GROUP else 0,
        )
        await self._hub.join(session, conversation_id)
        return membership

    async def _stop_following(self, session: StreamSession, conversation_id: str) -> None:
        session.unfollow(conversation_id)
        await self._hub.leave(session, conversation_id)

    async def _in_order(self, session: StreamSession, batch: list[Envelope]) -> list[Envelope]:
        out: list[Envelope] = []
        for envelope in batch:
            conversation_id = envelope.conversation_id
            if envelope.kind == EventKind.RECEIPTS:
                shown = session.filter_receipts(conversation_id, envelope.watermarks)
                if shown:
                    out.append(self._codec.receipts(conversation_id, shown))
                continue
            if envelope.kind == EventKind.CONVERSATION:
                # Joined or left without a feed entry (channels), or created.
                if conversation_id not in session.sent:
                    if await self._join(session, conversation_id) is not None:
                        out.append(envelope)
                        async for replay in self._replay(session, conversation_id):
                            out.extend(replay)
                else:
                    membership = await self._members.membership(conversation_id, session.account_id)
                    if membership is None or not membership.active:
                        await self._stop_following(session, conversation_id)
                    out.append(envelope)
                continue
            if envelope.kind == EventKind.TYPING:
                # Ephemeral: no version, so it never touches the feed
                # bookkeeping below (duplicates, gap fills, acks).
                if session.shows_typing(envelope):
                    out.append(envelope)
                continue
            if envelope.kind not in FEED_KINDS:
                out.append(envelope)
                continue
            if conversation_id not in session.sent:
                hint = max(envelope.version - 1, 0)
                if (
                    await self._join(session, conversation_id, hint=hint, hint_seq=envelope.seq)
                    is None
                ):
                    continue
            sent = session.sent[conversation_id]
            if envelope.version <= sent:
                continue  # already sent by replay or an earlier gap fill
            if envelope.version > sent + 1:
                # A publish was lost or overtaken: the log has what is missing.
                missing = await self._messages.changes(
                    conversation_id,
                    after_version=sent,
                    until_version=envelope.version - 1,
                    limit=GAP_FILL_LIMIT,
                )
                for change in missing:
                    filled = self._codec.change(change)
                    session.note_sent(filled)
                    if self._visible(session, filled):
                        out.append(filled)
                    if session.account_id in filled.leaving:
                        await self._stop_following(session, conversation_id)
                        break
                if conversation_id not in session.sent:
                    continue
            session.note_sent(envelope)
            if self._visible(session, envelope):
                out.append(envelope)
            if session.account_id in envelope.leaving:
                await self._stop_following(session, conversation_id)
        return out

    async def release(self, session: StreamSession) -> None:
        """Stop routing events to a session whose stream could not end itself
        (its transport was stuck); ``stream`` does the same when it ends."""
        self._end(session)
        await self._hub.detach(session)

    def ackable(
        self, session: StreamSession, conversation_id: str, *, seq: int, version: int
    ) -> tuple[int, int, int]:
        """What an ack may record: (the device's position, the account's
        delivered watermark, the conversation type); 0 for nothing. A device
        can only acknowledge what this stream sent it, only others' messages
        raise delivery, and channels keep no delivery receipts."""
        sent = session.sent.get(conversation_id, 0)
        if not 0 < version <= sent:
            return 0, 0, 0
        kind = session.types.get(conversation_id, DIRECT)
        delivered = (
            0 if kind == CHANNEL else min(max(seq, 0), session.received.get(conversation_id, 0))
        )
        return version, delivered, kind
