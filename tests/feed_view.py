"""A client-side view of conversations, built only from a device's stream.

``DeviceView`` applies the events a Connect stream delivers, in order, the way
a client app would: a message is inserted (or replaced) by message_id, an edit
replaces the body and marks it edited, a deletion for everyone empties the body
and marks it deleted, a deletion for me hides the message for the account, a
reaction adds or removes the account in that emoji's set, and system messages
are history items like any other. It remembers per conversation the newest seq
and version it holds, so a stream can be resumed from exactly there, and it
records anything a well-behaved server never sends (versions out of order, a
change to a message it does not hold, another account's delete-for-me) in
``problems``.

``Shown`` is one history item as a client shows it; views, models and
ListMessages pages all turn into lists of ``Shown`` so they compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from tests.users import Device, Stream, open_resumed_stream


@dataclass(frozen=True, slots=True)
class Shown:
    """One history item as a client shows it."""

    message_id: str
    seq: int
    sender_account_id: str
    type: int
    body: bytes
    edited: bool
    deleted: bool
    reply_to_message_id: str
    # (emoji, sorted account ids), sorted by emoji; accounts are () when only
    # the counts are known (ListMessages).
    reactions: tuple[tuple[str, tuple[str, ...]], ...]
    reaction_counts: tuple[tuple[str, int], ...]
    system_action: int = 0
    system_targets: tuple[str, ...] = ()

    def counts_only(self) -> Shown:
        """What ListMessages can show: who reacted is not part of a message."""
        return replace(self, reactions=())


def reactions_of(sets: dict[str, set[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted((e, tuple(sorted(a))) for e, a in sets.items() if a))


def counts_of(sets: dict[str, set[str]]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((e, len(a)) for e, a in sets.items() if a))


def shown(
    *,
    message_id: str,
    seq: int,
    sender_account_id: str,
    type: int,
    body: bytes,
    edited: bool,
    deleted: bool,
    reply_to_message_id: str,
    reactions: dict[str, set[str]],
    system_action: int = 0,
    system_targets: tuple[str, ...] = (),
) -> Shown:
    # What happens to the reactions of a message deleted for everyone is not
    # part of the contract: a tombstone shows none.
    live = {} if deleted else reactions
    return Shown(
        message_id=message_id,
        seq=seq,
        sender_account_id=sender_account_id,
        type=type,
        body=b"" if deleted else body,
        edited=edited,
        deleted=deleted,
        reply_to_message_id=reply_to_message_id,
        reactions=reactions_of(live),
        reaction_counts=counts_of(live),
        system_action=system_action,
        system_targets=tuple(sorted(system_targets)),
    )


def shown_from_history(message: mpb.Message) -> Shown:
    """A ListMessages item, reactions as counts only."""
    is_system = message.type == mpb.MESSAGE_TYPE_SYSTEM
    # Stand-in reactors: a message carries only how many reacted.
    counted = {r.emoji: {str(n) for n in range(r.count)} for r in message.reactions}
    return shown(
        message_id=message.message_id,
        seq=message.seq,
        sender_account_id=message.sender_account_id,
        type=message.type,
        body=message.body,
        edited=message.edited,
        deleted=message.deleted,
        reply_to_message_id=message.reply_to_message_id,
        reactions=counted,
        system_action=message.system.action if is_system else 0,
        system_targets=tuple(message.system.target_account_ids) if is_system else (),
    ).counts_only()


@dataclass
class Held:
    """A history item held by a device, mutable as changes arrive."""

    message: mpb.Message
    body: bytes
    edited: bool
    deleted: bool
    reactions: dict[str, set[str]] = field(default_factory=dict)

    def shown(self) -> Shown:
        m = self.message
        is_system = m.type == mpb.MESSAGE_TYPE_SYSTEM
        return shown(
            message_id=m.message_id,
            seq=m.seq,
            sender_account_id=m.sender_account_id,
            type=m.type,
            body=self.body,
            edited=self.edited,
            deleted=self.deleted,
            reply_to_message_id=m.reply_to_message_id,
            reactions=self.reactions,
            system_action=m.system.action if is_system else 0,
            system_targets=tuple(m.system.target_account_ids) if is_system else (),
        )


@dataclass
class ConversationFeed:
    """One conversation as a device holds it."""

    conversation_id: str
    items: dict[str, Held] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)
    # The newest message seq and feed version the device holds.
    seq: int = 0
    version: int = 0

    def shown(self) -> list[Shown]:
        return sorted(
            (h.shown() for i, h in self.items.items() if i not in self.hidden),
            key=lambda s: s.seq,
        )


class DeviceView:
    """What one device shows, from the events of its streams only."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.conversations: dict[str, ConversationFeed] = {}
        self.sync_token = ""
        self.problems: list[str] = []
        self.stream: Stream | None = None
        self._applied = 0
        self._acked: dict[str, tuple[int, int]] = {}
        self._replayed_again: frozenset[str] = frozenset()

    @property
    def account_id(self) -> str:
        return self.device.account_id

    # -- the stream ------------------------------------------------------------

    async def connect(
        self, messages: mgrpc.MessageServiceStub, *, omit: frozenset[str] = frozenset()
    ) -> Stream:
        """Opens a stream resuming from what this view holds. Conversations in
        ``omit`` are left out of the resume, so the server starts them from
        the device's last acked version, which may trail what the device
        holds: what it sends again is then skipped, as a client would."""
        assert self.stream is None, "already connected"
        positions = [p for p in self.positions() if p.conversation_id not in omit]
        resume = mpb.Resume(positions=positions, sync_token=self.sync_token)
        self.stream = open_resumed_stream(messages, self.device, resume)
        self._applied = 0
        self._replayed_again = omit
        return self.stream

    async def disconnect(self) -> None:
        if self.stream is not None:
            self.follow()
            await self.stream.close()
        self.stream = None

    @property
    def synced(self) -> bool:
        return self.stream is not None and "sync_complete" in self.stream.kinds()

    def follow(self) -> None:
        """Applies the events the stream delivered since the last call and
        acks the new positions, as a client does once it stored them."""
        stream = self.stream
        if stream is None:
            return
        new = stream.events[self._applied :]
        self._applied = len(stream.events)
        for event in new:
            self.apply(event)
        acks = []
        for cid, feed in self.conversations.items():
            if self._acked.get(cid) != (feed.seq, feed.version):
                self._acked[cid] = (feed.seq, feed.version)
                acks.append(
                    mpb.ConversationPosition(
                        conversation_id=cid, seq=feed.seq, version=feed.version
                    )
                )
        if acks:
            stream.outgoing.put_nowait(mpb.ClientEvent(ack=mpb.Ack(positions=acks)))

    def positions(self) -> list[mpb.ConversationPosition]:
        return [
            mpb.ConversationPosition(conversation_id=cid, seq=f.seq, version=f.version)
            for cid, f in sorted(self.conversations.items())
        ]

    # -- applying events ---------------------------------------------------------

    def feed(self, conversation_id: str) -> ConversationFeed:
        if conversation_id not in self.conversations:
            self.conversations[conversation_id] = ConversationFeed(conversation_id)
        return self.conversations[conversation_id]

    def _advance(self, feed: ConversationFeed, version: int, what: str) -> bool:
        """Moves the position to ``version``; False (and a problem) when the
        version is not newer than what the device holds."""
        if version <= feed.version:
            if feed.conversation_id in self._replayed_again:
                return False
            self.problems.append(
                f"{what} at version {version} of {feed.conversation_id} arrived after "
                f"version {feed.version}"
            )
            return False
        feed.version = version
        return True

    def apply(self, event: mpb.Event) -> None:
        kind = event.WhichOneof("kind")
        if kind == "message":
            m = event.message
            feed = self.feed(m.conversation_id)
            if not self._advance(feed, m.version, f"message seq {m.seq}"):
                return
            held = feed.items.get(m.message_id)
            reactions = held.reactions if held is not None else {}
            feed.items[m.message_id] = Held(
                message=m, body=m.body, edited=m.edited, deleted=m.deleted, reactions=reactions
            )
            feed.seq = max(feed.seq, m.seq)
        elif kind == "edit":
            e = event.edit
            feed = self.feed(e.conversation_id)
            if not self._advance(feed, e.version, f"edit of seq {e.seq}"):
                return
            target = self._target(feed, e.message_id, "edit")
            if target is not None:
                target.body = e.body
                target.edited = True
        elif kind == "deletion":
            d = event.deletion
            feed = self.feed(d.conversation_id)
            if not self._advance(feed, d.version, f"deletion of seq {d.seq}"):
                return
            if d.scope == mpb.DELETE_SCOPE_FOR_ME:
                if d.account_id != self.account_id:
                    self.problems.append(f"got {d.account_id}'s delete-for-me of seq {d.seq}")
                elif self._target(feed, d.message_id, "delete-for-me") is not None:
                    feed.hidden.add(d.message_id)
            else:
                target = self._target(feed, d.message_id, "delete-for-everyone")
                if target is not None:
                    target.body = b""
                    target.deleted = True
        elif kind == "reaction":
            r = event.reaction
            feed = self.feed(r.conversation_id)
            if not self._advance(feed, r.version, f"reaction on seq {r.seq}"):
                return
            target = self._target(feed, r.message_id, "reaction")
            if target is not None:
                who = target.reactions.setdefault(r.emoji, set())
                if r.removed:
                    who.discard(r.account_id)
                else:
                    who.add(r.account_id)
        elif kind == "sync_complete":
            self.sync_token = event.sync_complete.sync_token

    def _target(self, feed: ConversationFeed, message_id: str, what: str) -> Held | None:
        held = feed.items.get(message_id)
        if held is None:
            self.problems.append(
                f"{what} of message {message_id} in {feed.conversation_id}, "
                "which this device does not hold"
            )
        return held

    # -- what the device shows -------------------------------------------------

    def shown(self, conversation_id: str) -> list[Shown]:
        feed = self.conversations.get(conversation_id)
        return feed.shown() if feed is not None else []

    def snapshot(self) -> dict[str, list[Shown]]:
        """Every conversation with something to show."""
        result = {}
        for cid, feed in self.conversations.items():
            items = feed.shown()
            if items:
                result[cid] = items
        return result
