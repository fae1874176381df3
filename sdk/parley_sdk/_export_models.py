"""Typed values of history exports ("download my history")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Self

from parley.message.v1 import messages_pb2
from parley_sdk._wire import WireEnum, aware_time

__all__ = ["ExportNoticeEvent", "ExportNoticeKind"]


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
