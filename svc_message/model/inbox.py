"""Inbox settings as the domain and storage exchange them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class StoredSettings:
    """A member's settings as stored, before the inbox applies time and news."""

    conversation_id: str
    account_id: str
    muted_until: datetime | None = None
    pin_rank: int = 0
    pin_slot: int | None = None
    archived: bool = False
    archived_seq: int = 0
    unread_mark_seq: int | None = None

    @property
    def pinned(self) -> bool:
        return self.pin_slot is not None


class Pin(enum.Enum):
    PINNED = "pinned"
    # Already pinned, or this request was applied before: nothing changed.
    UNCHANGED = "unchanged"
    # Every slot is taken.
    FULL = "full"
