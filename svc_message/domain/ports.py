"""What the domain needs from the outside, as protocols.

The composition root passes the real adapters (storage, doorbell, svc_keys,
the wire codec); unit tests of pure policy can pass simple stand-ins.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from svc_message.model import Change, Conversation, Envelope, Message, Watermarks


class Accounts(Protocol):
    async def exists(self, account_id: str, *, bearer_token: str) -> bool: ...


class Publisher(Protocol):
    async def publish(self, deliveries: Iterable[tuple[Iterable[str], bytes]]) -> bool: ...


class Subscriptions(Protocol):
    async def subscribe(self, channels: Iterable[str]) -> None: ...

    async def unsubscribe(self, channels: Iterable[str]) -> None: ...


class EventCodec(Protocol):
    """Builds wire events and moves them through the doorbell as bytes."""

    def message(self, message: Message) -> Envelope: ...

    def change(self, change: Change) -> Envelope:
        """Any feed entry: a history item, an edit, a delete, a reaction."""
        ...

    def receipts(self, conversation_id: str, watermarks: Iterable[Watermarks]) -> Envelope: ...

    def history_entry(self, envelope: Envelope) -> bytes:
        """A message event as one entry of a history page, for the recent cache."""
        ...

    def receipt(self, watermarks: Watermarks) -> Envelope: ...

    def conversation(self, conversation: Conversation) -> Envelope: ...

    def sync_complete(self, sync_token: str) -> Envelope: ...

    def pong(self, nonce: int) -> Envelope: ...

    def encode(self, envelope: Envelope) -> bytes: ...

    def decode(self, payload: bytes) -> Envelope | None: ...
