"""Resources, enums, stream positions and stream events of the public API.

Resources (accounts, conversations, messages, members, watermarks...) are the
generated protobuf messages themselves; wrapping them would only copy fields.
Enums get Python mirrors so callers need not spell ``ROLE_ADMIN``; a value a
newer server sends that this SDK does not know becomes an ``UNKNOWN_<n>``
member instead of an error. Stream events are small dataclasses around the
protos, one class per kind, so consumers dispatch with ``isinstance``/``match``.
Presence and push values (:class:`Presence`, :class:`PresenceSettings`,
:class:`DoNotDisturb`, ...) are frozen dataclasses with ``datetime`` and
``time`` fields; they are defined beside their methods and listed here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Self

from parley.keys.v1 import accounts_pb2
from parley.message.v1 import messages_pb2
from parley_sdk._e2ee_models import DecryptedMessage, KeyNoticeEvent, KeyNoticeKind
from parley_sdk._enums import (
    ArchiveFilter,
    ConversationType,
    DeleteScope,
    Direction,
    MembershipState,
    MessageType,
    Platform,
    Role,
    SystemAction,
)
from parley_sdk._export_models import (
    ExportNoticeEvent,
    ExportNoticeKind,
    ExportState,
    HistoryExport,
)
from parley_sdk._media_models import (
    Attachment,
    ContentClass,
    MediaNoticeEvent,
    MediaNoticeKind,
    MediaQuota,
    PendingUpload,
    Restore,
    RestoreState,
    SentFile,
    Thumbnail,
)
from parley_sdk._presence_models import (
    Availability,
    Contact,
    Presence,
    PresenceSettings,
    PresenceUpdate,
    Visibility,
)
from parley_sdk._push_models import DoNotDisturb, PushProvider, PushRegistration, PushSettings
from parley_sdk.credentials import Credentials

__all__ = [
    "Account",
    "ArchiveFilter",
    "Attachment",
    "Availability",
    "Contact",
    "ContentClass",
    "Conversation",
    "ConversationEvent",
    "ConversationType",
    "ConversationView",
    "DecryptedMessage",
    "DeleteScope",
    "Device",
    "Direction",
    "DoNotDisturb",
    "ExportNoticeEvent",
    "ExportNoticeKind",
    "ExportState",
    "GroupReceiptsEvent",
    "HistoryExport",
    "InboxSettings",
    "KeyNoticeEvent",
    "KeyNoticeKind",
    "MediaNoticeEvent",
    "MediaNoticeKind",
    "MediaQuota",
    "Member",
    "MembershipState",
    "Message",
    "MessageDeleted",
    "MessageDeletedEvent",
    "MessageEdited",
    "MessageEditedEvent",
    "MessageEvent",
    "MessageReceipt",
    "MessageSummary",
    "MessageType",
    "PendingUpload",
    "Platform",
    "PongEvent",
    "Presence",
    "PresenceSettings",
    "PresenceUpdate",
    "PushProvider",
    "PushRegistration",
    "PushSettings",
    "Reaction",
    "ReactionChanged",
    "ReactionChangedEvent",
    "ReactionCount",
    "ReactionResult",
    "ReceiptEvent",
    "RegisteredDevice",
    "Restore",
    "RestoreState",
    "Role",
    "SentFile",
    "SettingsEvent",
    "StreamEvent",
    "StreamPosition",
    "SyncCompleteEvent",
    "SystemAction",
    "SystemEvent",
    "SystemMessageEvent",
    "Thumbnail",
    "TypingIndicatorEvent",
    "Visibility",
    "Watermarks",
    "muted_forever",
    "muted_until",
]

Account = accounts_pb2.Account
Device = accounts_pb2.Device
Conversation = messages_pb2.Conversation
ConversationView = messages_pb2.ConversationView
Message = messages_pb2.Message
MessageSummary = messages_pb2.MessageSummary
Watermarks = messages_pb2.Watermarks
Member = messages_pb2.Member
Reaction = messages_pb2.Reaction
ReactionCount = messages_pb2.ReactionCount
MessageReceipt = messages_pb2.MessageReceipt
InboxSettings = messages_pb2.InboxSettings
SystemEvent = messages_pb2.SystemEvent
MessageEdited = messages_pb2.MessageEdited
MessageDeleted = messages_pb2.MessageDeleted
ReactionChanged = messages_pb2.ReactionChanged


# -- inbox settings -------------------------------------------------------------------

# The server writes "forever" as a timestamp in year 9999.
_FOREVER_YEAR = 9999


def muted_until(settings: InboxSettings) -> datetime | None:
    """When the mute ends (UTC), or None when not muted. Forever is year 9999."""
    if not settings.HasField("muted_until"):
        return None
    return settings.muted_until.ToDatetime(tzinfo=UTC)


def muted_forever(settings: InboxSettings) -> bool:
    until = muted_until(settings)
    return until is not None and until.year >= _FOREVER_YEAR


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    """A newly linked device and the credentials to hand over to it."""

    device: Device
    credentials: Credentials


@dataclass(frozen=True, slots=True)
class ReactionResult:
    """A message's reaction counts after a reaction call."""

    reactions: tuple[ReactionCount, ...]
    changed: bool
    """False when the reaction already was as asked (nothing changed)."""

    @property
    def counts(self) -> dict[str, int]:
        """Emoji to count, in the server's order."""
        return {r.emoji: r.count for r in self.reactions}


# -- stream positions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a device is in one conversation.

    ``version`` is the newest change-feed version held: a stream resumes after
    it. ``seq`` is the newest history item (message or system message) held:
    acking it raises the delivered watermark, which senders see as receipts.
    Persist both per conversation (``DeliveryStream.positions``).
    """

    seq: int = 0
    version: int = 0

    def __post_init__(self) -> None:
        if self.seq < 0 or self.version < 0:
            raise ValueError("seq and version must be >= 0")

    def merged(self, other: StreamPosition) -> StreamPosition:
        """The newer of each field: positions only move forward."""
        if other.seq <= self.seq and other.version <= self.version:
            return self
        return StreamPosition(max(self.seq, other.seq), max(self.version, other.version))

    def to_proto(self, conversation_id: str) -> messages_pb2.ConversationPosition:
        return messages_pb2.ConversationPosition(
            conversation_id=conversation_id, seq=self.seq, version=self.version
        )

    @classmethod
    def from_proto(cls, proto: messages_pb2.ConversationPosition) -> Self:
        return cls(seq=proto.seq, version=proto.version)


def positions_proto(
    positions: Mapping[str, StreamPosition],
) -> list[messages_pb2.ConversationPosition]:
    """Positions as the wire wants them, in a stable order."""
    out = []
    for conversation_id, position in sorted(positions.items()):
        if not isinstance(position, StreamPosition):
            raise TypeError(
                "positions map conversation ids to StreamPosition(seq=..., version=...), "
                f"not {type(position).__name__}"
            )
        out.append(position.to_proto(conversation_id))
    return out


# -- stream events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A new message (not a system message: see :class:`SystemMessageEvent`).

    From a client with a store, ``text`` is the decrypted text, or None with
    ``decryption_error`` saying why it could not be read. Without a store
    both stay None. A message carrying a file has its ``attachment`` (and
    its caption as ``text``).
    """

    message: Message
    text: str | None = None
    decryption_error: str | None = None
    attachment: Attachment | None = None

    @property
    def conversation_id(self) -> str:
        return self.message.conversation_id

    @property
    def version(self) -> int:
        return self.message.version


@dataclass(frozen=True, slots=True)
class SystemMessageEvent:
    """A membership or info change, recorded in history as a system message."""

    message: Message

    @property
    def conversation_id(self) -> str:
        return self.message.conversation_id

    @property
    def version(self) -> int:
        return self.message.version

    @property
    def seq(self) -> int:
        return self.message.seq

    @property
    def action(self) -> SystemAction:
        return SystemAction(self.message.system.action)

    @property
    def actor_account_id(self) -> str:
        return self.message.system.actor_account_id

    @property
    def target_account_ids(self) -> tuple[str, ...]:
        return tuple(self.message.system.target_account_ids)

    @property
    def role(self) -> Role:
        """ROLE_CHANGED: the new role."""
        return Role(self.message.system.role)

    @property
    def title(self) -> str:
        """CREATED / INFO_CHANGED: the title after the change."""
        return self.message.system.title

    @property
    def avatar_ref(self) -> str:
        return self.message.system.avatar_ref

    @property
    def device_id(self) -> str:
        """IDENTITY_CHANGED: the actor's device whose identity key changed."""
        return self.message.system.device_id

    @property
    def server_search(self) -> bool:
        """SEARCH_CHANGED: whether server search is on after the change."""
        return self.message.system.server_search


@dataclass(frozen=True, slots=True)
class MessageEditedEvent:
    """A message's body was replaced by its sender.

    From a client with a store, ``text`` is the new text decrypted, or None
    with ``decryption_error`` saying why.
    """

    edit: MessageEdited
    text: str | None = None
    decryption_error: str | None = None

    @property
    def conversation_id(self) -> str:
        return self.edit.conversation_id

    @property
    def version(self) -> int:
        return self.edit.version


@dataclass(frozen=True, slots=True)
class MessageDeletedEvent:
    """A message was deleted for everyone, or for this account (``scope``)."""

    deletion: MessageDeleted

    @property
    def conversation_id(self) -> str:
        return self.deletion.conversation_id

    @property
    def version(self) -> int:
        return self.deletion.version

    @property
    def scope(self) -> DeleteScope:
        return DeleteScope(self.deletion.scope)


@dataclass(frozen=True, slots=True)
class ReactionChangedEvent:
    """A member added or removed one emoji reaction."""

    reaction: ReactionChanged

    @property
    def conversation_id(self) -> str:
        return self.reaction.conversation_id

    @property
    def version(self) -> int:
        return self.reaction.version


@dataclass(frozen=True, slots=True)
class ReceiptEvent:
    """A member's watermarks moved (direct conversations): delivered and read ticks."""

    watermarks: Watermarks


@dataclass(frozen=True, slots=True)
class GroupReceiptsEvent:
    """Group receipts, batched: members whose watermarks newly cover this account's
    newest message."""

    conversation_id: str
    watermarks: tuple[Watermarks, ...]


@dataclass(frozen=True, slots=True)
class ConversationEvent:
    """A conversation the account belongs to was created or changed."""

    conversation: Conversation


@dataclass(frozen=True, slots=True)
class SettingsEvent:
    """This account's inbox settings changed (from another of its devices)."""

    settings: InboxSettings


@dataclass(frozen=True, slots=True)
class SyncCompleteEvent:
    """The replay is done; what follows is live. Persist ``sync_token``."""

    sync_token: str


@dataclass(frozen=True, slots=True)
class TypingIndicatorEvent:
    """Another member is typing (``typing``) or stopped, in a conversation.

    Ephemeral: never replayed after a reconnect and not part of any position.
    Show it for at most ``expires_in`` unless another indicator renews it: the
    typist may vanish without saying they stopped. A message from the typist
    ends it too. :class:`parley_sdk.TypingTracker` does this bookkeeping.
    """

    conversation_id: str
    account_id: str
    typing: bool
    expires_in: timedelta


@dataclass(frozen=True, slots=True)
class PongEvent:
    nonce: int


StreamEvent = (
    MessageEvent
    | SystemMessageEvent
    | MessageEditedEvent
    | MessageDeletedEvent
    | ReactionChangedEvent
    | ReceiptEvent
    | GroupReceiptsEvent
    | ConversationEvent
    | SettingsEvent
    | SyncCompleteEvent
    | TypingIndicatorEvent
    | PongEvent
    | KeyNoticeEvent
    | MediaNoticeEvent
    | ExportNoticeEvent
)

# Events that carry a change-feed version: they move a stream position.
VersionedEvent = (
    MessageEvent
    | SystemMessageEvent
    | MessageEditedEvent
    | MessageDeletedEvent
    | ReactionChangedEvent
)


def position_of(event: StreamEvent) -> tuple[str, StreamPosition] | None:
    """The position a device holds once it stored ``event``; None for unversioned kinds."""
    if isinstance(event, MessageEvent | SystemMessageEvent):
        message = event.message
        return message.conversation_id, StreamPosition(seq=message.seq, version=message.version)
    if isinstance(event, MessageEditedEvent | MessageDeletedEvent | ReactionChangedEvent):
        return event.conversation_id, StreamPosition(version=event.version)
    return None


def event_from_proto(event: messages_pb2.Event) -> StreamEvent | None:
    """None for kinds this SDK version does not know, so newer servers don't break it."""
    kind = event.WhichOneof("kind")
    if kind == "message":
        if event.message.type == messages_pb2.MESSAGE_TYPE_SYSTEM:
            return SystemMessageEvent(event.message)
        return MessageEvent(event.message)
    if kind == "edit":
        return MessageEditedEvent(event.edit)
    if kind == "deletion":
        return MessageDeletedEvent(event.deletion)
    if kind == "reaction":
        return ReactionChangedEvent(event.reaction)
    if kind == "receipt":
        return ReceiptEvent(event.receipt)
    if kind == "receipts":
        return GroupReceiptsEvent(event.receipts.conversation_id, tuple(event.receipts.watermarks))
    if kind == "conversation":
        return ConversationEvent(event.conversation)
    if kind == "settings":
        return SettingsEvent(event.settings)
    if kind == "sync_complete":
        return SyncCompleteEvent(event.sync_complete.sync_token)
    if kind == "key_notice":
        return KeyNoticeEvent.from_proto(event.key_notice)
    if kind == "media_notice":
        return MediaNoticeEvent.from_proto(event.media_notice)
    if kind == "export_notice":
        return ExportNoticeEvent.from_proto(event.export_notice)
    if kind == "pong":
        return PongEvent(event.pong.nonce)
    if kind == "typing":
        typing = event.typing
        return TypingIndicatorEvent(
            conversation_id=typing.conversation_id,
            account_id=typing.account_id,
            typing=typing.typing,
            expires_in=typing.expires_in.ToTimedelta(),
        )
    return None
