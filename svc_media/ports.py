"""What the domain needs from storage and peers, as protocols (fakes in unit tests).

Below the domain, beside the model, so the adapters may import them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

from svc_media.model import (
    AuditEvent,
    LifecyclePlan,
    MediaRecord,
    ObjectInfo,
    PartPlan,
    Presigned,
    QuarantineEntry,
    Requester,
    RestoreRecord,
    RestoreStart,
    StoredPart,
    Tier,
    UploadSession,
)


class Uploads(Protocol):
    async def of_account(self, account_id: str, *, limit: int) -> list[UploadSession]: ...

    async def delete(self, upload_ids: Sequence[str]) -> None: ...

    async def insert(self, session: UploadSession) -> UploadSession:
        """Store a new session; the existing one when (account, request_id) exists."""
        ...

    async def get(self, upload_id: str) -> UploadSession | None: ...

    async def by_request(self, account_id: str, request_id: str) -> UploadSession | None: ...

    async def pending_count(self, account_id: str, *, now: float) -> int: ...

    async def lease(self, upload_id: str, account_id: str, *, now: float, until: float) -> bool:
        """Hold a pending, unexpired, unleased session for a completion."""
        ...

    async def unlease(self, upload_id: str) -> None: ...

    async def finish(self, upload_id: str, state: str, *, now: float) -> bool:
        """Pending -> ``state``; False when it was not pending any more."""
        ...

    async def expired(self, *, now: float, limit: int) -> list[UploadSession]: ...


class MediaDocs(Protocol):
    async def get(self, media_id: str) -> MediaRecord | None: ...

    async def forget_uploader(self, account_id: str, *, check_at: float, backoff: float) -> int: ...

    async def get_many(self, media_ids: Sequence[str]) -> dict[str, MediaRecord]: ...

    async def create(self, record: MediaRecord) -> MediaRecord | None:
        """Insert; None when a media with this id exists."""
        ...

    async def add_uploader(self, media_id: str, account_id: str, *, check_at: float) -> bool:
        """Add an uploader to ready media (checked no earlier than ``check_at``);
        whether the account was new to it. Raises LookupError if it is not ready."""
        ...

    async def reserve(self, media_id: str, *, check_at: float, backoff: float) -> bool:
        """Bump the touch counter of ready media and set its next check;
        False when it is not ready (collecting or gone)."""
        ...

    async def release(
        self, media_ids: Sequence[str], *, check_at: float, backoff: float
    ) -> int: ...

    async def due(self, *, now: float, limit: int) -> list[MediaRecord]: ...

    async def collecting(self, *, limit: int) -> list[MediaRecord]: ...

    async def postpone(
        self, media_id: str, *, touch: int, check_at: float, backoff: float
    ) -> bool: ...

    async def mark_collecting(self, media_id: str, *, touch: int) -> bool: ...

    async def mark_released(self, media_id: str) -> bool:
        """Flag collecting media whose uploaders' quotas were given back (once)."""
        ...

    async def delete(self, media_id: str) -> None: ...

    async def by_object(self, media_id: str, object_key: str) -> MediaRecord | None: ...

    async def totals(self) -> tuple[int, int, int]:
        """(objects, stored bytes, reserves) over all ready media."""
        ...

    async def oldest_overdue(self, *, now: float) -> float | None: ...

    async def set_tier(self, media_id: str, tier: Tier) -> None:
        """Record the storage tier the store reported (lifecycle rules move objects)."""
        ...


class Restores(Protocol):
    """Restores of archived objects, one record per media; every change is
    conditional on the state it starts from, so any number of processes may
    poll at once."""

    async def get(self, media_id: str) -> RestoreRecord | None: ...

    async def open(self, record: RestoreRecord) -> RestoreRecord:
        """Insert ``record`` (queued, one requester) unless a restore of this
        media is queued, running or ready: then add the requester to a queued
        or running one and answer it. An expired record is replaced."""
        ...

    async def asked_by(self, media_id: str, account_id: str) -> bool:
        """Whether the account asked for the media's queued or running restore."""
        ...

    async def active_of(self, account_id: str, *, limit: int) -> int:
        """Queued or running restores the account asked for, counted up to ``limit``."""
        ...

    async def started(self, media_id: str, *, next_poll_at: float) -> bool:
        """queued -> restoring."""
        ...

    async def requeue(self, media_id: str, *, next_poll_at: float) -> bool:
        """restoring -> queued (the store lost the restore)."""
        ...

    async def ready(
        self, media_id: str, *, ready_at: float, expires_at: float, next_poll_at: float
    ) -> RestoreRecord | None:
        """restoring -> ready; the record after the change."""
        ...

    async def expire(self, media_id: str, *, now: float) -> bool:
        """ready -> expired."""
        ...

    async def notified(self, media_id: str, requester: Requester) -> None: ...

    async def settle(self, media_id: str, *, next_poll_at: float) -> None:
        """Set the next look at a ready record (its expiry, or a retry)."""
        ...

    async def drop(self, media_id: str) -> None:
        """Forget the restore (its object is gone or no longer archived)."""
        ...

    async def claim_due(self, *, now: float, limit: int, until: float) -> list[RestoreRecord]:
        """Due records this process now holds: each moved to ``until`` by a
        write conditional on its previous next_poll_at, so one poller wins."""
        ...

    async def queue_length(self) -> int:
        """Restores queued or running."""
        ...


class DeviceNotices(Protocol):
    """svc_message's NotifyDevice; raises Unavailable when it does not answer."""

    async def restore_ready(
        self, requester: Requester, *, media_id: str, expires_at: float
    ) -> None: ...


class Usage(Protocol):
    async def forget(self, account_id: str) -> None: ...

    async def charge_upload(
        self, account_id: str, size: int, *, day: str, daily_limit: int, stored_limit: int
    ) -> str | None:
        """Add ``size`` to today's uploaded bytes if that stays within
        ``daily_limit`` and the stored bytes plus ``size`` within
        ``stored_limit``; otherwise the quota it would pass (``stored_bytes``
        or ``daily_upload_bytes``; the bytes used are then in ``usage``)."""
        ...

    async def refund_upload(self, account_id: str, size: int, *, day: str) -> None:
        """Give back a charge of today's (a retry found its first session)."""
        ...

    async def add_stored(self, account_id: str, size: int) -> None: ...

    async def usage(self, account_id: str, *, day: str) -> tuple[int, int]:
        """(uploaded today, stored)."""
        ...


class Quarantine(Protocol):
    async def get(self, sha256: bytes) -> QuarantineEntry | None: ...

    async def any_of(self, sha256s: Sequence[bytes]) -> set[bytes]: ...

    async def add(self, entry: QuarantineEntry) -> tuple[QuarantineEntry, bool]:
        """The entry in force and whether this call created it."""
        ...

    async def remove(self, sha256: bytes) -> bool: ...


class AuditLog(Protocol):
    async def record(self, event: AuditEvent) -> None: ...

    async def page(self, *, before: tuple[float, str] | None, limit: int) -> list[AuditEvent]: ...


class ObjectStore(Protocol):
    """The region's bucket; every call raises parley_core.errors.Unavailable when
    the store does not answer."""

    def presign_put(
        self, key: str, *, size: int, sha256: bytes, expires_in: int, now: float
    ) -> Presigned: ...

    def presign_part(
        self, key: str, multipart_id: str, part: PartPlan, *, expires_in: int, now: float
    ) -> Presigned: ...

    def presign_get(self, key: str, *, expires_in: int, now: float) -> Presigned: ...

    def ensure_available(self) -> None:
        """Raise Unavailable at once while the store is known to be down."""
        ...

    async def create_multipart(self, key: str) -> str: ...

    async def list_parts(self, key: str, multipart_id: str) -> list[StoredPart] | None:
        """The stored parts; None when the multipart upload no longer exists."""
        ...

    async def complete_multipart(
        self, key: str, multipart_id: str, parts: Sequence[tuple[StoredPart, bytes]]
    ) -> None: ...

    async def abort_multipart(self, key: str, multipart_id: str) -> None: ...

    async def head(self, key: str) -> ObjectInfo | None: ...

    async def restore(self, key: str, *, days: int, tier: str) -> RestoreStart: ...

    async def install_lifecycle(self, plan: LifecyclePlan) -> bool:
        """Set our lifecycle rules (the operator's kept); whether anything changed.
        Raises TransitionsUnsupported when the store refuses transitions."""
        ...

    async def lifecycle_rules(self) -> list[dict[str, Any]]:
        """The bucket's lifecycle rules as the store keeps them (ours and the operator's)."""
        ...

    def stream(self, key: str) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> None: ...


class MessagePeer(Protocol):
    """svc_message's internal service; raises Unavailable when it does not answer."""

    async def readable(self, account_id: str, media_ids: Sequence[str]) -> set[str]: ...

    async def references(self, media_ids: Sequence[str]) -> Mapping[str, int]: ...


class RegionUnreachable(Exception):
    """A call to another region's svc_media did not get an answer."""


class RegionLink(Protocol):
    """Other regions' svc_media, request and answer as bytes. A refusal the
    region answered is raised as the ParleyError it was; a call that got no
    answer raises RegionUnreachable."""

    async def forward(
        self,
        region: str,
        method: str,
        request: bytes,
        *,
        bearer_token: str | None,
        timeout: float | None,
    ) -> bytes:
        """``bearer_token`` None: the deployment's service credential."""
        ...
