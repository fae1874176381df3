"""svc_media's settings: quotas and storage tiers (with what real S3 allows)."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from parley_core.config._section import Section
from parley_core.config.infra import ServerSettings

MIB = 1 << 20
GIB = 1 << 30


class MediaQuotaSettings(Section):
    """Per-account media quotas, in ciphertext bytes. A forward (a message naming media someone
    else uploaded) uploads nothing and is charged to no quota of the forwarder."""

    daily_upload_bytes: int = Field(default=4 * GIB, ge=1)
    """Bytes one account may start uploading per UTC day (counted when an upload starts and
    checked again when it completes)."""
    stored_bytes: int = Field(default=20 * GIB, ge=1)
    """Bytes of the objects one account uploaded that may be stored at once (media it uploaded
    that is still kept)."""


# What real S3 allows or bills (docs/ARCHITECTURE.md, Media: tiers): no
# transition to STANDARD_IA before day 30, and 30 days there before a further
# transition; Glacier bills 90 days at least, so archiving sooner costs more.
MIN_INFREQUENT_DAYS = 30
MIN_ARCHIVE_DAYS = 90
MIN_DAYS_IN_INFREQUENT = 30


class MediaTierSettings(Section):
    """Storage tiers of the media bucket: svc_media sets them as the bucket's lifecycle rules
    when it starts (objects of 128 KiB or less never move). A store without lifecycle
    transitions (SeaweedFS) keeps everything in STANDARD; svc_media logs it once and carries
    on. Archived objects must be restored (RestoreMedia) before they download."""

    infrequent_after_days: int = Field(default=30, ge=0, le=36_500)
    """Days after upload an object moves to STANDARD_IA; 0 never. At least 30 (S3 refuses
    earlier)."""
    archive_after_days: int = Field(default=0, ge=0, le=36_500)
    """Days after upload an object moves to GLACIER (downloads then need RestoreMedia); 0 never.
    At least 90 (Glacier bills 90 days at least), and at least infrequent_after_days + 30 when
    both are on (S3 keeps objects 30 days in STANDARD_IA before a further transition)."""
    min_object_bytes: int = Field(default=128 * 1024, ge=0, le=5 * 1024 * GIB)
    """Objects of at most this many bytes never move (S3 transitions nothing under 128 KiB by
    default, and a thumbnail in Glacier would need a restore for a few kilobytes)."""
    restore_tier: Literal["Expedited", "Standard", "Bulk"] = "Standard"
    """S3 retrieval tier of the restores RestoreMedia starts: Expedited (minutes, dearest),
    Standard (3-5 hours) or Bulk (5-12 hours, cheapest)."""
    restore_poll_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Seconds between each process's passes over restores: it starts queued ones, HEADs running
    ones (one request per object), tells the requesting devices of ready ones and marks expired
    ones."""
    restore_batch: int = Field(default=100, ge=1, le=1000)
    """Restores one pass handles at most."""
    max_active_restores_per_account: int = Field(default=20, ge=1, le=10_000)
    """Restores one account may have queued or running at once (asking for one already running
    for someone else counts too); one more is RESOURCE_EXHAUSTED (QUOTA_EXCEEDED) until one is
    ready. Each is a paid retrieval from the archive."""

    @model_validator(mode="after")
    def _schedule_s3_can_run(self) -> MediaTierSettings:
        infrequent, archive = self.infrequent_after_days, self.archive_after_days
        if infrequent and infrequent < MIN_INFREQUENT_DAYS:
            raise ValueError(
                f"infrequent_after_days must be 0 (off) or at least {MIN_INFREQUENT_DAYS}: "
                "S3 moves nothing to STANDARD_IA sooner"
            )
        if archive and archive < MIN_ARCHIVE_DAYS:
            raise ValueError(
                f"archive_after_days must be 0 (off) or at least {MIN_ARCHIVE_DAYS}: Glacier "
                f"bills {MIN_ARCHIVE_DAYS} days at least"
            )
        if infrequent and archive and archive < infrequent + MIN_DAYS_IN_INFREQUENT:
            raise ValueError(
                f"archive_after_days must be at least infrequent_after_days + "
                f"{MIN_DAYS_IN_INFREQUENT} ({infrequent + MIN_DAYS_IN_INFREQUENT}): S3 keeps "
                f"objects {MIN_DAYS_IN_INFREQUENT} days in STANDARD_IA before archiving them"
            )
        return self


class MediaServiceSettings(Section):
    server: ServerSettings = ServerSettings(port=7104)
    """gRPC server of svc_media."""
    message_target: str = "127.0.0.1:7102"
    """host:port where svc_media reaches svc_message's internal service (access checks, reference
    counts, device notices)."""
    max_object_bytes: int = Field(default=2 * GIB, ge=1, le=5 * 1024 * GIB)
    """Largest ciphertext one upload may carry, in bytes."""
    max_thumbnail_bytes: int = Field(default=64 << 10, ge=1, le=16 * MIB)
    """Largest upload of content class THUMBNAIL, in bytes."""
    multipart_threshold_bytes: int = Field(default=8 * MIB, ge=MIB, le=5 * GIB)
    """Uploads larger than this use multipart (one presigned URL per part, resumable); smaller
    ones one presigned PUT."""
    min_part_bytes: int = Field(default=5 * MIB, ge=5 * MIB, le=5 * GIB)
    """Smallest part size a client may choose (S3 refuses smaller parts but the last)."""
    max_part_bytes: int = Field(default=64 * MIB, ge=5 * MIB, le=5 * GIB)
    """Largest part size a client may choose."""
    default_part_bytes: int = Field(default=8 * MIB, ge=5 * MIB, le=5 * GIB)
    """Part size used when the client leaves part_size at 0."""
    upload_session_seconds: int = Field(default=24 * 3600, ge=5, le=7 * 86400)
    """Seconds an upload session lasts; then an unfinished one is aborted and its parts removed,
    and a completed media nothing references yet gets its first garbage-collection check."""
    put_url_seconds: int = Field(default=900, ge=5, le=3600)
    """Seconds a presigned PUT (or part) URL stays valid; GetUpload hands out fresh ones."""
    get_url_seconds: int = Field(default=300, ge=5, le=300)
    """Seconds a presigned GET URL stays valid (at most 5 minutes)."""
    max_pending_uploads_per_account: int = Field(default=16, ge=1, le=10_000)
    """Upload sessions one account may have open (created, not completed or aborted) at once."""
    gc_grace_seconds: int = Field(default=24 * 3600, ge=0, le=30 * 86400)
    """Seconds media stays after it was last referenced or released before garbage collection
    checks whether any message still names it."""
    gc_max_backoff_seconds: int = Field(default=30 * 86400, ge=60, le=30 * 86400)
    """Longest wait between two garbage-collection checks of media still referenced (the wait
    doubles from gc_grace_seconds), so nothing unreferenced is kept for longer than this."""
    sweep_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    """Seconds between each process's sweeps for expired upload sessions and media due for a
    garbage-collection check."""
    sweep_batch: int = Field(default=100, ge=1, le=1000)
    """Sessions or media one sweep handles at most before the next pass."""
    s3_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """Seconds one call to the object store may take before the RPC answers UNAVAILABLE."""
    quotas: MediaQuotaSettings = MediaQuotaSettings()
    """Per-account upload and storage quotas."""
    tiers: MediaTierSettings = MediaTierSettings()
    """Storage tiers (bucket lifecycle rules) and restores of archived media."""

    @model_validator(mode="after")
    def _part_bounds(self) -> MediaServiceSettings:
        if not self.min_part_bytes <= self.default_part_bytes <= self.max_part_bytes:
            raise ValueError("need min_part_bytes <= default_part_bytes <= max_part_bytes")
        return self
