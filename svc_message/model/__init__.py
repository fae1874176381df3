"""Plain data shared by the layers of svc_message.

The records the domain and storage exchange live in the feature modules
beside this one (conversations, messages, inbox, push, broadcast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# parley.message.v1.ConversationType
DIRECT, GROUP, CHANNEL = 1, 2, 3
# parley.message.v1.Role
OWNER, ADMIN, MEMBER, SUBSCRIBER = 1, 2, 3, 4
# parley.message.v1.MessageType.MESSAGE_TYPE_SYSTEM
SYSTEM = 9
# Stands in for an erased account wherever others' history keeps its place
# (sender of its tombstones, actor of system messages, a direct peer). Not
# a valid account id, so it can never name a live account.
ERASED = "erased"
GROUP_MEMBER_CAP = 1024
MAX_PINNED = 5


@dataclass(frozen=True, slots=True)
class MemberSettings:
    """A member's inbox settings as the inbox shows them now (see domain.inbox)."""

    conversation_id: str
    muted_until: datetime | None = None
    pinned: bool = False
    pin_rank: int = 0
    archived: bool = False
    marked_unread: bool = False


@dataclass(frozen=True, slots=True)
class MessageSummary:
    message_id: str
    seq: int
    sender_account_id: str
    type: int
    created_at: datetime


# A member added but not yet announced sees nothing until the system message
# that adds them is recorded as where their history starts: its (seq, version)
# in Conversation.joined until then.
PENDING_JOIN = (2**62, 2**62)


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str
    type: int
    member_ids: tuple[str, ...]
    created_at: datetime
    last_seq: int = 0
    last_activity_at: datetime | None = None
    last_message: MessageSummary | None = None
    # (account, highest seq that member sent); a sender has read what it sent.
    sent: tuple[tuple[str, int], ...] = ()
    title: str = ""
    avatar_ref: str = ""
    public: bool = False
    member_count: int = 0
    # Groups and channels: owners and admins (everyone else is a member or,
    # in channels, a subscriber).
    roles: tuple[tuple[str, int], ...] = ()
    # Groups: per member, (seq, version) of the system message that added them.
    joined: tuple[tuple[str, tuple[int, int]], ...] = ()
    last_version: int = 0
    # Whether members index it on svc_search (MessageService.SetServerSearch).
    server_search: bool = False
    # Lookups by member, built once: per-message work over a 1,024-member group
    # (push planning, change fan-out) asks for every member.
    _roles_by_member: dict[str, int] = field(init=False, repr=False, compare=False)
    _joined_by_member: dict[str, tuple[int, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_roles_by_member", dict(self.roles))
        object.__setattr__(self, "_joined_by_member", dict(self.joined))

    @property
    def has_pending_joins(self) -> bool:
        """A member is being added right now: its join is about to be recorded."""
        return any(position == PENDING_JOIN for position in self._joined_by_member.values())

    def role_of(self, account_id: str) -> int:
        role = self._roles_by_member.get(account_id)
        if role is not None:
            return role
        return SUBSCRIBER if self.type == CHANNEL else MEMBER

    def joined_at(self, account_id: str) -> tuple[int, int]:
        return self._joined_by_member.get(account_id, (0, 0))


@dataclass(frozen=True, slots=True)
class SystemEvent:
    """A membership or info change, kept in history as a system message."""

    action: int
    actor_account_id: str
    target_account_ids: tuple[str, ...] = ()
    role: int = 0
    title: str = ""
    avatar_ref: str = ""
    # IDENTITY_CHANGED: the actor's device whose identity key changed.
    device_id: str = ""
    # SEARCH_CHANGED: the setting after the change.
    server_search: bool = False


class SystemAction:
    """parley.message.v1.SystemEvent.Action"""

    CREATED = 1
    MEMBERS_ADDED = 2
    MEMBER_REMOVED = 3
    MEMBER_LEFT = 4
    ROLE_CHANGED = 5
    INFO_CHANGED = 6
    SUBSCRIBED = 7
    IDENTITY_CHANGED = 8
    SEARCH_CHANGED = 9


@dataclass(frozen=True, slots=True)
class Message:
    """A history item (a message or a system message) in its current state."""

    message_id: str
    conversation_id: str
    seq: int
    sender_account_id: str
    sender_device_id: str
    type: int
    body: bytes
    reply_to_message_id: str
    created_at: datetime
    request_id: str = field(default="", compare=False)
    version: int = 0
    forwarded: bool = False
    edited_at: datetime | None = None
    deleted: bool = False
    # (emoji, account ids), emoji in first-reaction order; empty sets dropped.
    reactions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    system: SystemEvent | None = None
    # Version of the newest change applied to it (its own version if none):
    # caches compare it to never put back an older state.
    state_version: int = 0
    # Accounts that deleted it for themselves; never sent to clients.
    hidden_for: tuple[str, ...] = field(default=(), compare=False)
    # Media its encrypted attachment pointers refer to, as sent (distinct, in
    # order); cleared when it is deleted for everyone.
    media_ids: tuple[str, ...] = ()

    def summary(self) -> MessageSummary:
        return MessageSummary(
            message_id=self.message_id,
            seq=self.seq,
            sender_account_id=self.sender_account_id,
            type=self.type,
            created_at=self.created_at,
        )


class ChangeKind:
    """What a change-feed entry does; history items are MESSAGE and SYSTEM."""

    MESSAGE = "message"
    SYSTEM = "system"
    EDIT = "edit"
    DELETE = "delete"
    HIDE = "hide"
    REACTION = "reaction"


HISTORY_KINDS = frozenset({ChangeKind.MESSAGE, ChangeKind.SYSTEM})


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a conversation's change feed.

    For MESSAGE and SYSTEM, ``message`` is the new history item. For the
    others, ``target_id``/``target_seq`` name the message changed, and
    ``only_for`` (HIDE) is the one account that sees the change."""

    kind: str
    conversation_id: str
    version: int
    change_id: str
    account_id: str
    created_at: datetime
    message: Message | None = None
    target_id: str = ""
    target_seq: int = 0
    body: bytes = b""
    emoji: str = ""
    removed: bool = False
    for_everyone: bool = False
    only_for: str = ""
    request_id: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Watermarks:
    conversation_id: str
    account_id: str
    delivered_seq: int = 0
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A conversation as one member sees it."""

    conversation: Conversation
    watermarks: tuple[Watermarks, ...]
    unread_count: int
    role: int = MEMBER
    active: bool = True
    joined_seq: int = 0
    # 0 while a member; the seq of the leave/removal otherwise.
    visible_until_seq: int = 0
    settings: MemberSettings | None = None


class EventKind:
    MESSAGE = 1
    RECEIPT = 2
    CONVERSATION = 3
    CONTROL = 4
    # A feed change that is not a new history item (edit, delete, reaction).
    CHANGE = 5
    # Group receipts, filtered per stream.
    RECEIPTS = 6
    SETTINGS = 7
    # Someone is typing: ephemeral, not part of the feed (no version).
    TYPING = 8
    # From the key directory to one device or all of an account's: never
    # stored, not part of the feed, not acked.
    KEY_NOTICE = 9
    # From svc_media to one device (a restore it asked for is ready): like
    # key notices, never stored, not part of the feed, not acked.
    MEDIA_NOTICE = 10
    # A history export the device asked for is ready: like media notices.
    EXPORT_NOTICE = 11


FEED_KINDS = frozenset({EventKind.MESSAGE, EventKind.CHANGE})


@dataclass(frozen=True, slots=True)
class Envelope:
    """A delivery-stream event as the domain routes it.

    ``wire`` is the encoded event the transport sends as is; the domain only
    reads the routing fields, so an event decoded once from the doorbell is
    shared by every stream of the process.
    """

    kind: int
    conversation_id: str
    seq: int
    wire: object
    # For messages, who sent it: a device's acks of its own account's messages
    # need no delivered-watermark write.
    sender_account_id: str = ""
    # Encoded size, for the byte budget of a stream's queue.
    size: int = 0
    # Feed events: the conversation's version of the change.
    version: int = 0
    # A change only this account sees (delete for me); others skip its version.
    only_for: str = ""
    # Accounts that stop being members with this event (removed, left).
    leaving: tuple[str, ...] = ()
    # RECEIPTS: the members' watermarks.
    watermarks: tuple[Watermarks, ...] = ()
    # KEY_NOTICE: the one device it is for, empty for every device of the
    # account; MEDIA_NOTICE, EXPORT_NOTICE: always the one device it is for.
    device_id: str = ""
    # Messages that came live through the doorbell: when they were committed
    # (Unix ms), for the delivery lag; 0 for everything replayed from the log.
    committed_ms: int = 0
    # The sender's span context (parley_core.telemetry) when the send was
    # traced: the delivery span continues its trace.
    trace: bytes = b""
    # The event already framed as an element of the transport's batch (empty
    # when not known): a live event is framed once per process and written
    # as is to every stream that shows it.
    framed: bytes = b""


# A start beyond any seq: "from the newest".
NEWEST = 2**62


@dataclass(frozen=True, slots=True)
class Page:
    """A page of history, its messages as the transport sends them (from the
    recent cache as stored, from the log encoded once). ``next_start`` is
    where the next page starts, None at the end."""

    wire: list[bytes]
    next_start: int | None


# parley.message.v1.PushProvider
WEBHOOK, APNS, FCM = 1, 2, 3


@dataclass(frozen=True, slots=True)
class PushToken:
    account_id: str
    device_id: str
    provider: int
    token: str
    locale: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DoNotDisturb:
    """Daily quiet hours in the user's time zone (end before start: past midnight)."""

    enabled: bool = False
    start_minute: int = 0
    end_minute: int = 0
    time_zone: str = ""


@dataclass(frozen=True, slots=True)
class Notification:
    """One push to one device: what the providers send. Never a message body."""

    # The outbox job id; also the idempotency key at the provider.
    job_id: str
    account_id: str
    device_id: str
    provider: int
    token: str
    locale: str
    # Messages it stands for (collapsed), newest last, as (conversation, seq).
    messages: tuple[tuple[str, int], ...]
    # Who sent the newest of them, and its id.
    sender_account_id: str
    message_id: str
    # How many messages it stands for.
    count: int
    # Attempt number, from 1.
    attempt: int = 1

    @property
    def conversation_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for c, _ in self.messages))


class PushOutcome:
    DELIVERED = "delivered"
    # Try again later (network error, 429, 5xx); ``retry_after`` if the
    # provider said when.
    RETRY = "retry"
    # Will never work (bad request, unknown token): dead-letter it.
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class PushResult:
    outcome: str
    detail: str = ""
    retry_after_seconds: float | None = None
    # The provider says the token no longer exists: forget it.
    token_gone: bool = False
