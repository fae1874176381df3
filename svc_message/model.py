"""Plain data shared by the layers of svc_message."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

DIRECT = 1  # parley.message.v1.ConversationType.CONVERSATION_TYPE_DIRECT


@dataclass(frozen=True, slots=True)
class MessageSummary:
    message_id: str
    seq: int
    sender_account_id: str
    type: int
    created_at: datetime


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


@dataclass(frozen=True, slots=True)
class Message:
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

    def summary(self) -> MessageSummary:
        return MessageSummary(
            message_id=self.message_id,
            seq=self.seq,
            sender_account_id=self.sender_account_id,
            type=self.type,
            created_at=self.created_at,
        )


@dataclass(frozen=True, slots=True)
class Watermarks:
    conversation_id: str
    account_id: str
    delivered_seq: int = 0
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class InboxEntry:
    conversation: Conversation
    watermarks: tuple[Watermarks, ...]
    unread_count: int


class EventKind:
    MESSAGE = 1
    RECEIPT = 2
    CONVERSATION = 3
    CONTROL = 4


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


@dataclass(frozen=True, slots=True)
class Page:
    """A page of history: decoded messages from the log, or, from the recent
    cache, the messages as the transport sends them. ``next_start`` is where
    the next page starts, None at the end."""

    messages: list[Message]
    wire: list[bytes]
    next_start: int | None


@dataclass(frozen=True, slots=True)
class Sent:
    """A stored message with its stream event, built once per message and
    reused for the doorbell, the recent cache and the sender's ack."""

    message: Message
    envelope: Envelope
