"""Enums and stream events of the public API.

Resources (accounts, conversations, messages, watermarks) are the generated
protobuf messages themselves; wrapping them would only copy fields. Enums get
Python mirrors so callers need not spell ``MESSAGE_TYPE_TEXT``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from parley.keys.v1 import accounts_pb2
from parley.message.v1 import messages_pb2
from parley_sdk.credentials import Credentials

__all__ = [
    "Account",
    "Conversation",
    "ConversationEvent",
    "ConversationView",
    "Device",
    "Direction",
    "Message",
    "MessageEvent",
    "MessageType",
    "Platform",
    "PongEvent",
    "ReceiptEvent",
    "RegisteredDevice",
    "StreamEvent",
    "SyncCompleteEvent",
    "Watermarks",
]

Account = accounts_pb2.Account
Device = accounts_pb2.Device
Conversation = messages_pb2.Conversation
ConversationView = messages_pb2.ConversationView
Message = messages_pb2.Message
Watermarks = messages_pb2.Watermarks


class Platform(enum.IntEnum):
    """Values equal ``parley.common.v1.Platform``."""

    UNSPECIFIED = 0
    ANDROID = 1
    IOS = 2
    WEB = 3
    DESKTOP = 4
    CLI = 5


class MessageType(enum.IntEnum):
    """Values equal ``parley.message.v1.MessageType``."""

    UNSPECIFIED = 0
    TEXT = 1
    IMAGE = 2
    VIDEO = 3
    AUDIO = 4
    DOCUMENT = 5
    STICKER = 6
    LOCATION = 7
    CONTACT = 8


class Direction(enum.IntEnum):
    """Values equal ``parley.message.v1.Direction``."""

    BACKWARD = 1
    """Newest first."""
    FORWARD = 2
    """Oldest first."""


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    """A newly linked device and the credentials to hand over to it."""

    device: Device
    credentials: Credentials


@dataclass(frozen=True, slots=True)
class MessageEvent:
    message: Message


@dataclass(frozen=True, slots=True)
class ReceiptEvent:
    """A member's watermarks moved: delivery and read receipts derive from them."""

    watermarks: Watermarks


@dataclass(frozen=True, slots=True)
class ConversationEvent:
    """A conversation the account belongs to was created or changed."""

    conversation: Conversation


@dataclass(frozen=True, slots=True)
class SyncCompleteEvent:
    """The replay is done; what follows is live. Persist ``sync_token``."""

    sync_token: str


@dataclass(frozen=True, slots=True)
class PongEvent:
    nonce: int


StreamEvent = MessageEvent | ReceiptEvent | ConversationEvent | SyncCompleteEvent | PongEvent


def event_from_proto(event: messages_pb2.Event) -> StreamEvent | None:
    """None for kinds this SDK version does not know, so newer servers don't break it."""
    kind = event.WhichOneof("kind")
    if kind == "message":
        return MessageEvent(event.message)
    if kind == "receipt":
        return ReceiptEvent(event.receipt)
    if kind == "conversation":
        return ConversationEvent(event.conversation)
    if kind == "sync_complete":
        return SyncCompleteEvent(event.sync_complete.sync_token)
    if kind == "pong":
        return PongEvent(event.pong.nonce)
    return None
