"""What every typed model module shares: enum mirrors and timestamp conversion."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

__all__ = ["WireEnum", "aware_time"]


class WireEnum(enum.IntEnum):
    """An enum mirroring a proto enum: values equal the wire numbers."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        # A newer server may send values this SDK predates; keep the number
        # rather than fail the caller's whole read over a label.
        if isinstance(value, int) and not isinstance(value, bool):
            member = int.__new__(cls, value)
            member._name_ = f"UNKNOWN_{value}"
            member._value_ = value
            return member
        return None


def aware_time(stamp: timestamp_pb2.Timestamp, *, present: bool = True) -> datetime | None:
    """A proto timestamp as an aware UTC datetime; None when unset."""
    if not present or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    return stamp.ToDatetime(tzinfo=UTC)
