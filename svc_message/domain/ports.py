"""What the domain needs from the outside, as protocols.

The composition root passes the real adapters (storage, doorbell, svc_keys,
the wire codec); unit tests of pure policy can pass simple stand-ins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from svc_message.model import (
    Change,
    Conversation,
    Envelope,
    Message,
    Notification,
    PushResult,
    Watermarks,
)


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

    def typing(
        self, conversation_id: str, account_id: str, typing: bool, expires_seconds: float
    ) -> Envelope:
        """A typing indicator from ``account_id``, shown for ``expires_seconds``."""
        ...

    def encode(self, envelope: Envelope) -> bytes: ...

    def decode(self, payload: bytes) -> Envelope | None: ...


class LeaseTouched(Protocol):
    @property
    def expiry_ms(self) -> int: ...


class DeviceLeases(Protocol):
    """Delivery-stream leases that keep devices online
    (parley_core.storage.liveness.Liveness); raise when Redis does not answer."""

    async def touch_many(
        self, devices: Sequence[tuple[str, str]], *, stream: bool, now_ms: int
    ) -> Sequence[LeaseTouched]: ...

    async def drop(
        self,
        account_id: str,
        device_id: str,
        *,
        stream: bool,
        now_ms: int,
        if_expiry_ms: int | None = None,
    ) -> None: ...


class PushProvider(Protocol):
    """One push service (webhook, APNs, FCM). ``send`` never raises for a
    delivery failure: it says whether to retry, and when."""

    async def send(self, notification: Notification) -> PushResult: ...

    async def close(self) -> None: ...
