"""Records of the history archive as the domain and storage exchange them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from parley_core.errors import FailedPrecondition, Reason, Unavailable


class Tier(enum.StrEnum):
    """Where an archive object's bytes are: readable (cold), or in the
    glacier class (a restore first)."""

    COLD = "cold"
    GLACIER = "glacier"


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """Where one archived (conversation, week) chunk lives: its object, row
    group, and the ranges of seq (0, 0 when it holds no history item) and
    version it covers. ``sha256`` is the whole object's, checked when read."""

    chunk_id: str
    conversation_id: str
    week: str
    object_key: str
    row_group: int
    rows: int
    seq_lo: int
    seq_hi: int
    version_lo: int
    version_hi: int
    id_lo: str
    id_hi: str
    sha256: str
    media_ids: tuple[str, ...] = ()
    tier: Tier = Tier.COLD


@dataclass(frozen=True, slots=True)
class ColdHead:
    """Per conversation, everything at or below these is in the archive (and
    the hot log no longer serves it)."""

    version: int = 0
    seq: int = 0


@dataclass(frozen=True, slots=True)
class ArchiveState:
    """The archiver's shared switch and its last pass, across processes.

    ``hot_entries`` and ``hot_bytes`` are the log's size as the last pass
    measured it (None before any pass has): every process reports them from
    here rather than measuring the log itself (see ``Archiver.sample``)."""

    paused: bool = False
    last_pass_at: float = 0.0
    lag_seconds: float = 0.0
    moved_total: int = 0
    hot_entries: int | None = None
    hot_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ArchiveStatus:
    """The archive's tiers: ``hot_*`` None when not measured (see ArchiveState)."""

    state: ArchiveState
    hot_entries: int | None
    hot_bytes: int | None
    cold_rows: int
    cold_objects: int
    cold_bytes: int
    glacier_rows: int = 0
    glacier_objects: int = 0
    glacier_bytes: int = 0


def history_archived(*entries: ManifestEntry) -> FailedPrecondition:
    """A read reached chunks in the glacier tier (a run of them, in the order
    the read met them): which conversation, weeks, seq and version range, so
    a client can tell the user what needs a restore, and a device resuming
    its stream can resume past it."""
    first = entries[0]
    return FailedPrecondition(
        "this part of the conversation's history is in the glacier tier and needs a "
        "restore before it can be read",
        reason=Reason.HISTORY_ARCHIVED,
        metadata={
            "conversation_id": first.conversation_id,
            "week": min(e.week for e in entries),
            "seq_lo": str(min(e.seq_lo for e in entries)),
            "seq_hi": str(max(e.seq_hi for e in entries)),
            "version_lo": str(min(e.version_lo for e in entries)),
            "version_hi": str(max(e.version_hi for e in entries)),
        },
    )


def restore_pending(count: int) -> Unavailable:
    """A rewrite needs glacier objects the store is still restoring."""
    return Unavailable(
        f"{count} archived history object(s) in the glacier tier are being restored for this "
        "rewrite; try again later",
        reason=Reason.DEPENDENCY_UNAVAILABLE,
        retry_after_seconds=600.0,
    )
