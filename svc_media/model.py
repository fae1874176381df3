"""Plain data shared by the layers of svc_media.

Nothing here holds a key, a key hash or a plaintext hash: the server only ever
knows the ciphertext's SHA-256, its size and a coarse content class.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field

# A media id is the lower-case hex SHA-256 of the ciphertext: one media per
# ciphertext, so a forward names the same id and no byte is uploaded again.
# In a multi-region deployment it ends with "-" and the two hex digits of the
# number of the region whose store holds the object (docs/design/regions.md,
# "Residency"): any region routes a download by the id alone. Ids minted
# before the deployment had regions stay bare (the legacy region's).
MEDIA_ID = re.compile(r"^[0-9a-f]{64}(-[0-9a-f]{2})?$")
SHA256_BYTES = 32
_HASH_CHARS = 2 * SHA256_BYTES


def media_id_of(sha256: bytes, region_number: int | None = None) -> str:
    if region_number is None:
        return sha256.hex()
    return f"{sha256.hex()}-{region_number:02x}"


def sha256_of_media_id(media_id: str) -> bytes:
    return bytes.fromhex(media_id[:_HASH_CHARS])


def region_number_of_media(media_id: str) -> int | None:
    """The number of the region holding the object; None for a bare id."""
    if not is_media_id(media_id) or len(media_id) == _HASH_CHARS:
        return None
    return int(media_id[_HASH_CHARS + 1 :], 16)


def is_media_id(value: str) -> bool:
    return MEDIA_ID.match(value) is not None


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class ContentClass(enum.IntEnum):
    """The numbers of parley.media.v1.ContentClass."""

    IMAGE = 1
    VIDEO = 2
    AUDIO = 3
    DOCUMENT = 4
    THUMBNAIL = 5
    STICKER = 6


class Tier(enum.IntEnum):
    """The numbers of parley.media.v1.StorageTier."""

    STANDARD = 1
    INFREQUENT = 2
    ARCHIVE = 3


class UploadState(enum.StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    ABORTED = "aborted"
    # Found expired by a sweeper, which removed (or kept, if completed
    # meanwhile) what it stored.
    EXPIRED = "expired"


class RestoreState(enum.StrEnum):
    """Where the restore of an archived object stands (a record's state, or
    NOT_ARCHIVED when there is nothing to restore)."""

    NOT_ARCHIVED = "not_archived"
    # Recorded; S3 has not taken the RestoreObject yet (the store did not
    # answer): the poller starts it.
    QUEUED = "queued"
    RESTORING = "restoring"
    # A restored copy is readable until the record's expires_at.
    READY = "ready"
    EXPIRED = "expired"


# Record states the poller still has work for.
ACTIVE_RESTORES = (RestoreState.QUEUED, RestoreState.RESTORING, RestoreState.READY)


class RestoreStart(enum.Enum):
    """What the store answered to a RestoreObject."""

    STARTED = "started"
    IN_PROGRESS = "in_progress"
    # A restored copy exists already; its expiry was moved to the new days.
    ALREADY_RESTORED = "already_restored"
    NOT_ARCHIVED = "not_archived"
    MISSING = "missing"


class MediaState(enum.StrEnum):
    READY = "ready"
    # Garbage collection decided nobody references it: the object and the
    # document are being removed; new references are refused.
    COLLECTING = "collecting"


class StoreRefused(Exception):
    """The object store refused a request for a reason of the request (not an
    outage): a part too small, an upload that no longer exists."""

    def __init__(self, code: str, status: int) -> None:
        super().__init__(f"{code} ({status})")
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class Presigned:
    """A presigned request a client sends as is (its headers are signed)."""

    method: str
    url: str
    headers: dict[str, str]
    expires_at: float


@dataclass(frozen=True, slots=True)
class PartPlan:
    number: int
    size: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class StoredPart:
    number: int
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class UploadSession:
    upload_id: str
    account_id: str
    request_id: str
    media_id: str
    sha256: bytes
    size: int
    content_class: ContentClass
    object_key: str
    created_at: float
    expires_at: float
    state: UploadState
    # Multipart only: the store's upload id, the part size and each part's SHA-256.
    multipart_id: str | None = None
    part_size: int = 0
    part_sha256s: tuple[bytes, ...] = ()
    # A CompleteUpload in progress holds the session until then (Unix seconds).
    lease_until: float = 0.0

    @property
    def multipart(self) -> bool:
        return self.multipart_id is not None

    def parts(self) -> list[PartPlan]:
        plans: list[PartPlan] = []
        for index, sha in enumerate(self.part_sha256s):
            start = index * self.part_size
            plans.append(PartPlan(index + 1, min(self.part_size, self.size - start), sha))
        return plans

    def same_request(
        self,
        *,
        size: int,
        sha256: bytes,
        content_class: ContentClass,
        part_size: int,
        part_sha256s: tuple[bytes, ...],
    ) -> bool:
        return (
            self.size == size
            and self.sha256 == sha256
            and self.content_class == content_class
            and self.part_sha256s == part_sha256s
            and (not self.multipart or self.part_size == part_size)
        )


@dataclass(frozen=True, slots=True)
class MediaRecord:
    media_id: str
    sha256: bytes
    size: int
    content_class: ContentClass
    object_key: str
    created_at: float
    state: MediaState
    uploaders: tuple[str, ...]
    # Bumped by every reference: garbage collection removes the media only if
    # it did not change between its reference count and its removal.
    touch: int
    next_check_at: float
    check_backoff_seconds: float
    tier: Tier = Tier.STANDARD
    reserves: int = 0


@dataclass(frozen=True, slots=True)
class Grant:
    """What a download hands out."""

    media: MediaRecord
    get: Presigned


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    sha256: bytes | None
    storage_class: str
    # From x-amz-restore (archived objects): a restore is running, or a
    # restored copy is readable until this time (Unix seconds).
    restoring: bool = False
    restored_until: float | None = None


@dataclass(frozen=True, slots=True)
class LifecyclePlan:
    """The bucket's lifecycle rules svc_media owns (0 days: that transition off)."""

    infrequent_after_days: int
    archive_after_days: int
    # Incomplete multipart uploads older than this are aborted by the store
    # itself: the safety net behind the sweeper, past any upload session.
    abort_incomplete_after_days: int
    # Objects of at most this many bytes keep their storage class.
    min_object_bytes: int = 128 * 1024

    @property
    def transitions(self) -> bool:
        return bool(self.infrequent_after_days or self.archive_after_days)

    def without_transitions(self) -> LifecyclePlan:
        return LifecyclePlan(0, 0, self.abort_incomplete_after_days, self.min_object_bytes)


class TransitionsUnsupported(Exception):
    """The object store refused lifecycle transitions (SeaweedFS answers 501)."""


@dataclass(frozen=True, slots=True)
class Requester:
    account_id: str
    device_id: str


@dataclass(frozen=True, slots=True)
class RestoreRecord:
    """One restore of an archived object (one record per media at a time)."""

    media_id: str
    object_key: str
    state: RestoreState
    days: int
    requested_at: float
    # Unix seconds; 0 until known.
    ready_at: float
    expires_at: float
    # When a poller looks at it next (claimed by moving it forward).
    next_poll_at: float
    requesters: tuple[Requester, ...]
    # Requesters whose device svc_message took the ready notice for.
    notified: tuple[Requester, ...] = ()

    def unnotified(self) -> list[Requester]:
        return [r for r in self.requesters if r not in self.notified]


@dataclass(frozen=True, slots=True)
class RestoreView:
    """What RestoreMedia and GetRestore answer."""

    media_id: str
    state: RestoreState
    requested_at: float = 0.0
    ready_at: float = 0.0
    expires_at: float = 0.0


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    uploaded_today: int
    daily_limit: int
    stored: int
    stored_limit: int


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    sha256: bytes
    reason: str
    operator: str
    created_at: float


class AuditAction(enum.IntEnum):
    """The numbers of parley.media.v1.AuditEvent.Action."""

    QUARANTINE = 1
    LIFT_QUARANTINE = 2


@dataclass(frozen=True, slots=True)
class AuditEvent:
    event_id: str
    action: AuditAction
    sha256: bytes
    reason: str
    operator: str
    at: float


@dataclass(frozen=True, slots=True)
class UploadOutcome:
    """CreateUpload's answer: media the caller may already read, or a session."""

    stored: MediaRecord | None = None
    session: UploadSession | None = None
    put: Presigned | None = None
    parts: list[tuple[PartPlan, Presigned | None]] = field(default_factory=list)


@dataclass
class MediaStats:
    """Counters the metrics collector reads at scrape time."""

    uploads_started: int = 0
    uploads_completed: int = 0
    bytes_uploaded: int = 0
    dedup_completions: int = 0
    already_stored: int = 0
    downloads_granted: int = 0
    bytes_granted: int = 0
    reserves: int = 0
    reserved_ids: int = 0
    releases: int = 0
    orphans_collected: int = 0
    bytes_collected: int = 0
    sessions_expired: int = 0
    quota_refusals: dict[str, int] = field(default_factory=dict)
    verification_failures: int = 0
    store_errors: int = 0
    sweeps: int = 0
    sweep_failures: int = 0
    restores_started: int = 0
    restores_ready: int = 0
    restore_notices: int = 0
    restore_refusals: int = 0
    # Restores queued or running, counted by the poller after each pass.
    restore_queue: int = 0
