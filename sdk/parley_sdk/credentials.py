"""A device's credentials, in a form applications can persist."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from parley.keys.v1 import accounts_pb2

__all__ = ["Credentials"]


def _parse_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"credentials field {field!r} must be an ISO-8601 string")
    parsed = datetime.fromisoformat(value)
    # Naive times would compare wrongly against aware ones; treat them as UTC.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """What a device presents to the services, plus who it is.

    Refresh tokens are single use: whenever the client refreshes, the previously
    stored value stops working, so persist the new credentials every time
    (``Client.connect(on_credentials_changed=...)`` reports them).
    """

    access_token: str
    access_token_expire_time: datetime
    refresh_token: str
    refresh_token_expire_time: datetime
    account_id: str = ""
    device_id: str = ""

    @classmethod
    def from_proto(
        cls, proto: accounts_pb2.Credentials, *, account_id: str = "", device_id: str = ""
    ) -> Credentials:
        return cls(
            access_token=proto.access_token,
            access_token_expire_time=proto.access_token_expire_time.ToDatetime(tzinfo=UTC),
            refresh_token=proto.refresh_token,
            refresh_token_expire_time=proto.refresh_token_expire_time.ToDatetime(tzinfo=UTC),
            account_id=account_id,
            device_id=device_id,
        )

    def rotated(self, proto: accounts_pb2.Credentials) -> Credentials:
        """These credentials after a refresh: new tokens, same identity."""
        fresh = Credentials.from_proto(proto)
        return replace(fresh, account_id=self.account_id, device_id=self.device_id)

    def needs_refresh(
        self, *, margin: timedelta, now: datetime, received_at: datetime | None = None
    ) -> bool:
        """Whether to refresh before using the access token at ``now``.

        When the token's lifetime is known (``received_at``), the margin shrinks to
        half of it, so a server issuing tokens shorter than the margin does not
        make every call refresh.
        """
        if self.refresh_token_expire_time <= now:
            return False  # Refreshing would fail; let the server say so.
        if received_at is not None:
            margin = min(margin, (self.access_token_expire_time - received_at) / 2)
        return self.access_token_expire_time - now <= margin

    def to_dict(self) -> dict[str, str]:
        data = asdict(self)
        data["access_token_expire_time"] = self.access_token_expire_time.isoformat()
        data["refresh_token_expire_time"] = self.refresh_token_expire_time.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Credentials:
        try:
            return cls(
                access_token=str(data["access_token"]),
                access_token_expire_time=_parse_time(
                    data["access_token_expire_time"], "access_token_expire_time"
                ),
                refresh_token=str(data["refresh_token"]),
                refresh_token_expire_time=_parse_time(
                    data["refresh_token_expire_time"], "refresh_token_expire_time"
                ),
                account_id=str(data.get("account_id", "")),
                device_id=str(data.get("device_id", "")),
            )
        except KeyError as missing:
            raise ValueError(f"credentials lack field {missing}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Credentials:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("credentials JSON must be an object")
        return cls.from_dict(data)

    def __repr__(self) -> str:
        # Tokens are secrets; keep them out of logs and tracebacks.
        return (
            f"Credentials(account_id={self.account_id!r}, device_id={self.device_id!r}, "
            f"access_token_expire_time={self.access_token_expire_time.isoformat()})"
        )
