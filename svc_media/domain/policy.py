"""The pure rules of media: sizes and parts, quotas, garbage-collection backoff,
and the errors clients see. Every function takes what it needs (``now``
included) and touches no storage."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from parley_core.config import MediaServiceSettings
from parley_core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
)
from svc_media.model import ContentClass

# S3 allows at most this many parts in one multipart upload.
MAX_PARTS = 10_000
# Shortest wait between two garbage-collection checks of referenced media.
MIN_BACKOFF_SECONDS = 60.0
# How long a CompleteUpload may hold its session: a fixed margin for the
# store's calls plus reading the object back at a pessimistic rate.
COMPLETE_LEASE_SECONDS = 120.0
VERIFY_BYTES_PER_SECOND = 8 << 20


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    max_object_bytes: int
    max_thumbnail_bytes: int
    multipart_threshold: int
    min_part: int
    max_part: int
    default_part: int
    session_seconds: float
    put_url_seconds: int
    get_url_seconds: int
    max_pending: int
    grace_seconds: float
    max_backoff_seconds: float
    daily_upload_bytes: int
    stored_bytes: int

    @classmethod
    def from_settings(cls, config: MediaServiceSettings) -> MediaPolicy:
        return cls(
            max_object_bytes=config.max_object_bytes,
            max_thumbnail_bytes=config.max_thumbnail_bytes,
            multipart_threshold=config.multipart_threshold_bytes,
            min_part=config.min_part_bytes,
            max_part=config.max_part_bytes,
            default_part=config.default_part_bytes,
            session_seconds=float(config.upload_session_seconds),
            put_url_seconds=config.put_url_seconds,
            get_url_seconds=config.get_url_seconds,
            max_pending=config.max_pending_uploads_per_account,
            grace_seconds=float(config.gc_grace_seconds),
            max_backoff_seconds=float(config.gc_max_backoff_seconds),
            daily_upload_bytes=config.quotas.daily_upload_bytes,
            stored_bytes=config.quotas.stored_bytes,
        )

    def check_size(self, size: int, content_class: ContentClass) -> None:
        limit = (
            self.max_thumbnail_bytes
            if content_class == ContentClass.THUMBNAIL
            else self.max_object_bytes
        )
        if size > limit:
            raise InvalidArgument.field("size", f"at most {limit} bytes for this content class")

    def part_size_for(self, size: int, part_size: int, part_count: int) -> int:
        """The part size of an upload, or 0 for a single PUT; INVALID_ARGUMENT
        naming the field when the client's parts do not fit the rules."""
        if size <= self.multipart_threshold:
            if part_size or part_count:
                raise InvalidArgument.field(
                    "part_size",
                    f"only for uploads above {self.multipart_threshold} bytes; leave part_size "
                    "and part_sha256s empty",
                )
            return 0
        chosen = part_size or self.default_part
        if not self.min_part <= chosen <= self.max_part:
            raise InvalidArgument.field(
                "part_size", f"must be {self.min_part} to {self.max_part} bytes (0: default)"
            )
        expected = math.ceil(size / chosen)
        if expected > MAX_PARTS:
            raise InvalidArgument.field(
                "part_size", f"makes {expected} parts; at most {MAX_PARTS}: choose larger parts"
            )
        if part_count != expected:
            raise InvalidArgument.field(
                "part_sha256s",
                f"needs one SHA-256 per part: {expected} parts of {chosen} bytes, got {part_count}",
            )
        return chosen

    def next_backoff(self, previous: float) -> float:
        """Wait before checking still-referenced media again: doubling, capped,
        so nothing unreferenced is kept longer than the cap."""
        return min(
            self.max_backoff_seconds,
            max(previous * 2, self.grace_seconds, MIN_BACKOFF_SECONDS),
        )

    def complete_lease(self, size: int) -> float:
        return COMPLETE_LEASE_SECONDS + size / VERIFY_BYTES_PER_SECOND


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def quota_exceeded(quota: str, *, limit: int, used: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"media quota {quota} reached: {used} of {limit} bytes used",
        reason=Reason.QUOTA_EXCEEDED,
        metadata={"quota": quota, "limit_bytes": str(limit), "used_bytes": str(used)},
    )


def upload_not_found() -> NotFound:
    return NotFound(
        "no pending upload with this id: it expired, was aborted, or is another account's",
        reason=Reason.UPLOAD_NOT_FOUND,
    )


def access_denied() -> PermissionDenied:
    # The same answer for media that does not exist: ids cannot be probed.
    return PermissionDenied(
        "this media does not exist or you may not read it", reason=Reason.MEDIA_ACCESS_DENIED
    )


def quarantined() -> FailedPrecondition:
    return FailedPrecondition(
        "this media was quarantined by the operators", reason=Reason.MEDIA_QUARANTINED
    )


def archived() -> FailedPrecondition:
    return FailedPrecondition(
        "this media is archived: call RestoreMedia, then download it when the restore is ready",
        reason=Reason.MEDIA_ARCHIVED,
    )


def media_not_found(media_id: str) -> NotFound:
    return NotFound(
        f"media {media_id} is not a completed upload the sender may use",
        reason=Reason.MEDIA_NOT_FOUND,
        metadata={"media_id": media_id},
    )


def too_many_uploads(cap: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"at most {cap} uploads may be pending at once: complete or abort one first",
        reason=Reason.TOO_MANY_UPLOADS,
        metadata={"limit": str(cap)},
    )
