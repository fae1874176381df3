"""The history archive's settings: hot and cold windows, the archiver, exports."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from parley_core.config._section import Section
from parley_core.config.media import MIN_ARCHIVE_DAYS


class ArchiveSettings(Section):
    """svc_message's history archive: the log's old weeks as Parquet objects in the `s3`
    section's bucket, read through transparently (docs/ARCHITECTURE.md, History tiers)."""

    enabled: bool = True
    """Run the archiver (one svc_message process at a time holds its lease). Reads of archived
    history work either way."""
    hot_window_days: float = Field(default=30.0, gt=0, le=3650)
    """Entries stay in MongoDB at least this long; a conversation's older ISO weeks move to the
    archive (never the week of its newest entry). Fractions are allowed (tests use seconds)."""
    prefix: str = Field(default="history/", min_length=1, max_length=200, pattern=r"^[^/].*/$")
    """Key prefix of archive objects in the bucket, ending in '/'."""
    target_object_bytes: int = Field(default=1 << 20, ge=1024, le=1 << 30)
    """Objects bundle the weeks of quiet conversations until they reach this size (the last
    of a pass may be smaller)."""
    messages_per_second: float = Field(default=2000.0, ge=0, le=1_000_000)
    """Rate limit of the archiver, in log entries moved per second; 0: unlimited."""
    interval_seconds: float = Field(default=60.0, gt=0, le=86400)
    """Seconds between two passes of the archiver."""
    lease_seconds: float = Field(default=300.0, gt=0, le=86400)
    """The archiver's lease: another process takes over this long after the holder stops."""
    conversations_per_pass: int = Field(default=1000, ge=1, le=1_000_000)
    """Conversations one pass considers at most (the oldest first); the rest wait for the
    next pass and count as lag."""
    entries_per_conversation: int = Field(default=20_000, ge=10, le=1_000_000)
    """Log entries of one conversation one pass reads at most."""
    replica_margin_days: float = Field(default=7.0, ge=0, le=3650)
    """With regions: copies of conversations owned by another region are deleted from this
    region's log once older than hot_window_days plus this (the owner archives them; reads of
    them are asked of the owner). The margin keeps reads of history just past the window local
    and leaves the owner's archiver, which may run late, time to move them first."""
    s3_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """Seconds one call to the object store may take."""
    request_ids_days: float = Field(default=90.0, gt=0, le=3650)
    """Archived entries' request ids (hashed) are kept this long after they move, so a retry of
    a send older than the hot window gets its first attempt's message instead of a second
    one; later than the hot window plus this, a retry is a new message."""
    cold_window_days: float = Field(default=365.0, ge=0, le=36_500)
    """Archive objects whose newest week ended longer ago than this go to the glacier class
    (reads of them answer HISTORY_ARCHIVED; a history export restores them first); 0 never. At
    least hot_window_days + 90 when on (Glacier bills 90 days at least)."""
    glacier_transition: Literal["lifecycle", "copy"] = "lifecycle"
    """How objects reach the glacier class: `lifecycle`, a bucket lifecycle rule svc_message puts
    beside the others (the store moves them; cold_window_days - hot_window_days after an
    object is written) and the archiver records the class the store reports; `copy`, the
    archiver copies each due object onto itself with the class (stores without lifecycle
    transitions, tests)."""
    glacier_storage_class: Literal["GLACIER", "DEEP_ARCHIVE"] = "GLACIER"
    """The S3 storage class of the glacier tier."""
    restore_tier: Literal["Expedited", "Standard", "Bulk"] = "Standard"
    """S3 retrieval tier of the restores of glacier objects (history exports, rewrites)."""
    restore_days: int = Field(default=2, ge=1, le=30)
    """Days a restored copy of a glacier object stays readable."""
    export_worker: bool = True
    """Run the history export worker (RequestHistoryExport; one svc_message process at a time
    holds its lease). Requests are taken either way and wait for a worker."""
    export_prefix: str = Field(
        default="exports/", min_length=1, max_length=200, pattern=r"^[^/].*/$"
    )
    """Key prefix of history exports (and their parts while running) in the bucket."""
    export_ttl_seconds: float = Field(default=604_800.0, ge=1, le=30 * 86400)
    """Seconds a READY export stays downloadable; then it is EXPIRED and its object removed."""
    export_url_seconds: int = Field(default=3600, ge=60, le=604_800)
    """Seconds a download URL handed out stays valid (never past the export's expiry)."""
    export_poll_seconds: float = Field(default=2.0, gt=0, le=3600)
    """Seconds between the export worker's looks for work (restores, queued jobs, expiries)."""
    export_messages_per_second: float = Field(default=5000.0, ge=0, le=1_000_000)
    """Rate limit of the export worker, in messages written per second (it reads the same
    databases as live traffic); 0: unlimited."""
    export_part_messages: int = Field(default=1000, ge=1, le=100_000)
    """Seqs of one conversation the export worker reads and writes as one part (the unit of
    progress, and of what a restart redoes)."""
    export_lease_seconds: float = Field(default=60.0, ge=5, le=86400)
    """The export worker's lease: another process takes over this long after the holder stops
    (the holder renews it after every part it writes)."""

    @property
    def hot_window_seconds(self) -> float:
        return self.hot_window_days * 86400

    @property
    def replica_margin_seconds(self) -> float:
        return self.replica_margin_days * 86400

    @property
    def request_ids_seconds(self) -> float:
        return self.request_ids_days * 86400

    @property
    def cold_window_seconds(self) -> float:
        return self.cold_window_days * 86400

    @model_validator(mode="after")
    def _glacier_after_hot(self) -> ArchiveSettings:
        cold, hot = self.cold_window_days, self.hot_window_days
        if cold and cold < hot + MIN_ARCHIVE_DAYS:
            raise ValueError(
                f"cold_window_days must be 0 (off) or at least hot_window_days + "
                f"{MIN_ARCHIVE_DAYS}: Glacier bills {MIN_ARCHIVE_DAYS} days at least"
            )
        return self
