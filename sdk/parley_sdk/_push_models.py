"""Typed push notification values: providers, registrations, do-not-disturb."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from typing import Self

from parley.message.v1 import messages_pb2
from parley_sdk._wire import WireEnum, aware_time

__all__ = ["DoNotDisturb", "PushProvider", "PushRegistration", "PushSettings"]

_MINUTES_PER_DAY = 24 * 60


class PushProvider(WireEnum):
    """Where a device's notifications go. Values equal ``parley.message.v1.PushProvider``."""

    UNSPECIFIED = 0
    WEBHOOK = 1
    """An HTTPS POST to the operator's endpoint, signed with HMAC-SHA256; the
    token is whatever address the operator's receiver understands."""
    APNS = 2
    """Apple Push Notification service; the token is the APNs device token in hex."""
    FCM = 3
    """Firebase Cloud Messaging; the token is the FCM registration token."""


def _minute_of(moment: time, name: str) -> int:
    if moment.tzinfo is not None:
        raise ValueError(f"{name} must be a naive time; the zone goes in time_zone")
    if moment.second or moment.microsecond:
        raise ValueError(f"{name} must be a whole minute, not {moment.isoformat()}")
    return moment.hour * 60 + moment.minute


def _time_of(minute: int) -> time:
    minute %= _MINUTES_PER_DAY
    return time(minute // 60, minute % 60)


@dataclass(frozen=True, slots=True)
class DoNotDisturb:
    """Quiet hours, every day, in the account's time zone.

    Notifications for messages arriving inside the window are not sent (the
    messages still arrive). A window whose ``end`` is before its ``start`` runs
    past midnight: ``DoNotDisturb(start=time(22), end=time(7),
    time_zone="Europe/Berlin")``. ``time_zone`` is an IANA name; empty means
    UTC. Times are whole minutes. :meth:`off` turns quiet hours off.
    """

    start: time = time(0, 0)
    end: time = time(0, 0)
    time_zone: str = ""
    enabled: bool = True

    def __post_init__(self) -> None:
        _minute_of(self.start, "start")
        _minute_of(self.end, "end")

    @classmethod
    def off(cls) -> Self:
        """No quiet hours."""
        return cls(enabled=False)

    def to_proto(self) -> messages_pb2.DoNotDisturb:
        return messages_pb2.DoNotDisturb(
            enabled=self.enabled,
            start_minute=_minute_of(self.start, "start"),
            end_minute=_minute_of(self.end, "end"),
            time_zone=self.time_zone,
        )

    @classmethod
    def from_proto(cls, proto: messages_pb2.DoNotDisturb) -> Self:
        return cls(
            start=_time_of(proto.start_minute),
            end=_time_of(proto.end_minute),
            time_zone=proto.time_zone,
            enabled=proto.enabled,
        )


@dataclass(frozen=True, slots=True)
class PushSettings:
    """The account's notification settings (shared by all of its devices)."""

    do_not_disturb: DoNotDisturb
    updated_at: datetime | None = None

    @classmethod
    def from_proto(cls, proto: messages_pb2.PushSettings) -> Self:
        return cls(
            do_not_disturb=DoNotDisturb.from_proto(proto.do_not_disturb),
            updated_at=aware_time(proto.update_time, present=proto.HasField("update_time")),
        )


@dataclass(frozen=True, slots=True)
class PushRegistration:
    """This device's push token registration (the token itself is not echoed)."""

    device_id: str
    provider: PushProvider
    locale: str
    updated_at: datetime | None = None

    @classmethod
    def from_proto(cls, proto: messages_pb2.PushRegistration) -> Self:
        return cls(
            device_id=proto.device_id,
            provider=PushProvider(proto.provider),
            locale=proto.locale,
            updated_at=aware_time(proto.update_time, present=proto.HasField("update_time")),
        )
