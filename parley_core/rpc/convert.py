"""Small conversions between domain values and protobuf well-known types."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime | float) -> Timestamp:
    result = Timestamp()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        result.FromDatetime(value)
    else:
        result.FromNanoseconds(int(value * 1e9))
    return result
