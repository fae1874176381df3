"""Inbox settings as the domain and storage exchange them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from svc_message.model.member_replica import MemberReplica

# Muted forever: the far end of what a protobuf Timestamp can carry.
FOREVER = datetime(9999, 12, 31, tzinfo=UTC)


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


@dataclass(frozen=True, slots=True)
class SettingsRecord:
    """One member's settings document: the replicated CRDT state and what is
    local to this region (the document's version, the pin-cap slot it holds
    here, the request ids it applied). ``version`` 0: not stored yet."""

    state: MemberReplica
    version: int = 0
    pin_slot: int | None = None
    requests: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SettingsWrite:
    """A new state to store in place of ``record`` (compare-and-set on its
    version), with the fields the inbox's queries index, derived from it:
    ``pinned`` (pinned as far as the conversation alone says; the cap is the
    inbox's display rule), and ``shown`` (the rest, as the inbox policy reads
    them)."""

    record: SettingsRecord
    state: MemberReplica
    pinned: bool
    pin_slot: int | None
    shown: StoredSettings
    request_id: str | None = None


class WriteOutcome(enum.Enum):
    WRITTEN = "written"
    # The document changed since it was read: read again.
    CONFLICT = "conflict"
    # Another pin of the account holds that slot here: read again.
    SLOT_TAKEN = "slot_taken"
