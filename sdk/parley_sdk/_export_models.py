"""Typed values of history exports ("download my history")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Self

from parley.message.v1 import messages_pb2
from parley_sdk._wire import WireEnum, aware_time

__all__ = ["ExportNoticeEvent", "ExportNoticeKind", "ExportState", "HistoryExport"]


class ExportState(WireEnum):
    """Values equal ``parley.message.v1.HistoryExport.State``."""

    UNSPECIFIED = 0
    QUEUED = 1
    RESTORING = 2
    """Archived (glacier) history is being restored first."""
    RUNNING = 3
    READY = 4
    """``download_url`` works until ``expire_time``."""
    EXPIRED = 5
    CANCELLED = 6
    FAILED = 7


@dataclass(frozen=True, slots=True)
class HistoryExport:
    """An export of the account's history ("download my history").

    Progress is in parts of the history (``objects_*``) and bytes; both only
    rise and reach their totals exactly when the export is READY.
    """

    export_id: str
    state: ExportState
    conversation_id: str | None
    """None: every conversation."""
    objects_done: int
    objects_total: int
    bytes_done: int
    bytes_total: int
    eta: timedelta | None
    download_url: str
    """READY: a presigned GET, valid a short while (get the export again for a fresh one)."""
    expire_time: datetime | None
    create_time: datetime | None
    update_time: datetime | None
    message_count: int
    failure: str

    @property
    def progress(self) -> float:
        """0.0 to 1.0 (bytes): 1.0 exactly from READY on (an empty export too)."""
        if self.state in (ExportState.READY, ExportState.EXPIRED):
            return 1.0
        return self.bytes_done / self.bytes_total if self.bytes_total else 0.0

    @classmethod
    def from_proto(cls, proto: messages_pb2.HistoryExport) -> Self:
        return cls(
            export_id=proto.export_id,
            state=ExportState(proto.state),
            conversation_id=proto.conversation_id or None,
            objects_done=proto.objects_done,
            objects_total=proto.objects_total,
            bytes_done=proto.bytes_done,
            bytes_total=proto.bytes_total,
            eta=proto.eta.ToTimedelta() if proto.HasField("eta") else None,
            download_url=proto.download_url,
            expire_time=aware_time(proto.expire_time, present=proto.HasField("expire_time")),
            create_time=aware_time(proto.create_time, present=proto.HasField("create_time")),
            update_time=aware_time(proto.update_time, present=proto.HasField("update_time")),
            message_count=proto.message_count,
            failure=proto.failure,
        )


class ExportNoticeKind(WireEnum):
    """Values equal ``parley.message.v1.ExportNotice.Kind``."""

    UNSPECIFIED = 0
    EXPORT_READY = 1
    """A history export this device requested is ready: download it until ``expire_time``."""


@dataclass(frozen=True, slots=True)
class ExportNoticeEvent:
    """About a history export this device asked for (never part of the feed,
    not replayed: a device that was offline polls the export instead)."""

    kind: ExportNoticeKind
    export_id: str
    expire_time: datetime | None

    @classmethod
    def from_proto(cls, notice: messages_pb2.ExportNotice) -> Self:
        return cls(
            kind=ExportNoticeKind(notice.kind),
            export_id=notice.export_id,
            expire_time=aware_time(notice.expire_time, present=notice.HasField("expire_time")),
        )
