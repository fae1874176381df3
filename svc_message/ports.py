"""What the domain needs from the outside, as protocols.

They sit below the domain, beside the model, so the adapters that implement
them (storage, peers) import the same declaration the domain does. The
composition root passes the real adapters (storage, doorbell, svc_keys, the
wire codec); unit tests of pure policy can pass simple stand-ins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from svc_message.model import (
    Change,
    Conversation,
    Envelope,
    MemberSettings,
    Message,
    Notification,
    PushResult,
    Watermarks,
)
from svc_message.model.broadcast import Broadcast
from svc_message.model.media import MediaNotice


class Accounts(Protocol):
    async def exists(self, account_id: str, *, bearer_token: str) -> bool: ...


class Publisher(Protocol):
    async def publish(self, broadcasts: Iterable[Broadcast]) -> bool:
        """Tell every process, in one round trip; False when it was not taken."""
        ...


class MembershipChanges(Protocol):
    async def membership_changed(self, conversation_id: str) -> None:
        """Tell every process to drop what it cached of the membership."""
        ...


class Subscriptions(Protocol):
    """This process's interest in broadcasts (reference counted)."""

    async def subscribe(
        self, *, conversations: Iterable[str] = (), accounts: Iterable[str] = ()
    ) -> None: ...

    async def unsubscribe(
        self, *, conversations: Iterable[str] = (), accounts: Iterable[str] = ()
    ) -> None: ...


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

    def pre_keys_low(self, device_id: str, count: int) -> Envelope:
        """Tells one device that it holds only ``count`` one-time prekeys."""
        ...

    def group_rekey(self, conversation_id: str, account_ids: Iterable[str]) -> Envelope:
        """Tells a group's remaining members that these accounts left it."""
        ...

    def media_notice(self, device_id: str, notice: MediaNotice) -> Envelope:
        """Tells one device about media it asked for (a restore is ready)."""
        ...

    def export_notice(self, device_id: str, export_id: str, expire_at: datetime) -> Envelope:
        """Tells one device that the history export it asked for is ready."""
        ...

    def encode(self, envelope: Envelope) -> bytes: ...

    def decode(self, payload: bytes) -> Envelope | None: ...


class MediaReferences(Protocol):
    """svc_media's reference bookkeeping (MediaReferenceService). Its refusals
    are the ParleyErrors it answered (code, reason, fields); UNAVAILABLE when
    it cannot be reached."""

    async def reserve(
        self,
        *,
        account_id: str,
        conversation_id: str,
        media_ids: Sequence[str],
        readable_media_ids: Sequence[str],
    ) -> None:
        """Before a send naming ``media_ids`` commits: every id must be
        usable by the sender; each one's garbage collection is put off."""
        ...

    async def release(self, media_ids: Sequence[str]) -> None:
        """Messages naming these ids were deleted for everyone."""
        ...


class PreKeyCounts(Protocol):
    """The key directory's record of devices low on one-time prekeys
    (parley_core.storage.key_notices.PreKeyLows)."""

    async def low_count(self, device_id: str) -> int | None:
        """The device's count while below the low-water mark, else None."""
        ...


class IdentityChangeRecord(Protocol):
    @property
    def change_id(self) -> str: ...

    @property
    def account_id(self) -> str: ...

    @property
    def device_id(self) -> str: ...


class IdentityChangeOutbox(Protocol):
    """Devices whose identity key changed, written by the key directory
    (parley_core.storage.key_notices.IdentityChanges)."""

    async def claim(
        self, *, worker_id: str, now: datetime, lease: timedelta
    ) -> IdentityChangeRecord | None:
        """The oldest change nobody holds, now held for ``lease``."""
        ...

    async def done(self, change_id: str) -> None: ...


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


class StreamingDevices(Protocol):
    async def streaming_devices(
        self, account_ids: Iterable[str], *, now_ms: int
    ) -> dict[str, set[str]]: ...


class ReadMarks(Protocol):
    async def watermarks_of(self, members: Iterable[tuple[str, str]]) -> list[Watermarks]: ...


class SettingsListener(Protocol):
    """Told after a member's settings changed, e.g. to tell their other devices."""

    async def settings_changed(self, account_id: str, settings: MemberSettings) -> None: ...


class OwnerLink(Protocol):
    async def forward(
        self, address: str, method: str, request: bytes, *, bearer_token: str, timeout: float
    ) -> bytes:
        """Call ``method`` of the process at ``address`` with the serialized
        request, as the caller (its own token), marked as forwarded; the
        serialized answer. Raises ``OwnerUnreachable`` when the request did
        not reach it and ``OwnerRefused`` with the status it answered."""
        ...


class RegionLink(Protocol):
    async def forward_to_region(
        self, region: str, method: str, request: bytes, *, bearer_token: str, timeout: float
    ) -> bytes:
        """Call ``method`` of svc_message in ``region`` with the serialized
        request, as the caller (its own token), marked as region-forwarded;
        the serialized answer. Raises ``OwnerUnreachable`` when the request
        did not reach that region and ``OwnerRefused`` with the status it
        answered."""
        ...
