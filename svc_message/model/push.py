"""Push settings and outbox records as the domain and storage exchange them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from svc_message.model import DoNotDisturb


@dataclass(frozen=True, slots=True)
class StoredPushSettings:
    do_not_disturb: DoNotDisturb
    # None: never set (the defaults apply).
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewMessages:
    """Messages to add to a device's pending notification (or to start one with)."""

    account_id: str
    device_id: str
    keys: tuple[str, ...]
    newest: str
    due_at: datetime


@dataclass(frozen=True, slots=True)
class OutboxJob:
    job_id: str
    # The batch claim that holds it (see the module doc).
    claim: str
    account_id: str
    device_id: str
    keys: tuple[str, ...]
    newest: str
    attempts: int
    due_at: datetime

    @property
    def message_id(self) -> str:
        return self.newest.partition("|")[0]

    @property
    def sender_account_id(self) -> str:
        return self.newest.partition("|")[2]
