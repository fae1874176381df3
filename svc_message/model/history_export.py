"""Records of history exports ("download my history") as the domain and
storage exchange them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

# The format of the export object's records (docs/ARCHITECTURE.md, History export).
EXPORT_FORMAT = "parley.history_export.v1"


class ExportState(enum.IntEnum):
    """Values of HistoryExport.State."""

    QUEUED = 1
    RESTORING = 2
    RUNNING = 3
    READY = 4
    EXPIRED = 5
    CANCELLED = 6
    FAILED = 7


ACTIVE_STATES = (ExportState.QUEUED, ExportState.RESTORING, ExportState.RUNNING)


@dataclass(frozen=True, slots=True)
class ExportJob:
    export_id: str
    account_id: str
    device_id: str
    request_id: str
    # Empty: every conversation the account is or was a member of.
    conversation_id: str
    state: ExportState
    created_at: datetime
    updated_at: datetime
    objects_done: int = 0
    objects_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    # When the worker started reading (RUNNING), for the ETA.
    running_at: datetime | None = None
    expire_at: datetime | None = None
    object_key: str = ""
    message_count: int = 0
    failure: str = ""
    # The next part to write (parts below it are written).
    next_part: int = 0
    # READY and the device told (its stream notice was published).
    notified: bool = False
    # The glacier objects the plan found (restored before RUNNING).
    glacier_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExportPart:
    """One unit of an export's plan: a conversation's seq range [seq_lo,
    seq_hi] the account may read."""

    index: int
    conversation_id: str
    seq_lo: int
    seq_hi: int
    rows: int


@dataclass(frozen=True, slots=True)
class ExportPage:
    jobs: list[ExportJob]
    next_offset: int | None
