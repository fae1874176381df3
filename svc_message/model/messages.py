"""Message log and recent-cache records as the domain and storage exchange them."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class Conflict(enum.Enum):
    POSITION_TAKEN = "position_taken"
    DUPLICATE_REQUEST = "duplicate_request"


@dataclass(frozen=True, slots=True)
class InsertOutcome:
    """How far an ordered batch insert got: ``inserted`` documents from the
    start are committed; when ``conflict`` is set, the document at index
    ``inserted`` hit it and nothing after it was attempted."""

    inserted: int
    conflict: Conflict | None = None


@dataclass(frozen=True, slots=True)
class Heads:
    """What one commit batch changes in a conversation: new history items as
    (seq, state version, wire form), per sender the highest seq it sent, the
    newest version, the new state of changed messages, and the accounts that
    deleted a message for themselves."""

    items: Sequence[tuple[int, int, bytes]]
    sent: Mapping[str, int]
    last_version: int = 0
    updated: Sequence[tuple[int, int, bytes]] = ()
    hiders: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class HeadState:
    last_seq: int
    last_version: int
    sent: dict[str, int]
