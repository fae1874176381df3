"""Conversation records as the domain and storage exchange them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from svc_message.model import MessageSummary


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A member's own record: when they joined and, once gone, when they left."""

    conversation_id: str
    account_id: str
    active: bool
    joined_seq: int = 0
    joined_version: int = 0
    left_seq: int = 0
    left_version: int = 0
    joined_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    """What one commit batch changed in a conversation."""

    conversation_id: str
    # The newest history item, if the batch added any.
    newest: MessageSummary | None
    # Per sender, the highest seq they sent: sending means having read it.
    sent: dict[str, int]
    last_version: int = 0
