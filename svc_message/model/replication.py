"""Region replication records: a feed change read from the owner's change
stream, a replica's high-water marks, what an apply did, and the errors the
replicator reacts to (docs/ARCHITECTURE.md, "Regions: replication")."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ReplicatedKind(enum.StrEnum):
    """What a replicated document is: a document of the collection named by
    the value, or (``MEMBER_REMOVAL``) which ``members`` documents of a
    conversation the replica must delete (an account erasure's)."""

    MESSAGE = "messages"
    CONVERSATION = "conversations"
    MEMBER = "members"
    MEMBER_REMOVAL = "member_removals"
    # A member's inbox settings (a CRDT state): replicated by whichever
    # region wrote them, to every region holding the conversation.
    SETTINGS = "inbox_settings"


@dataclass(frozen=True, slots=True)
class ReplicatedDoc:
    """One stored document to apply at a replica, as the owner holds it:
    its BSON encoding, opaque to everything but storage."""

    kind: ReplicatedKind
    conversation_id: str
    document: bytes


@dataclass(frozen=True, slots=True)
class FeedChange:
    """A change-stream event of the owner's feed collections: the document
    after the change (None when it was deleted), the stream position just
    after it, and when the owner's database committed it (Unix seconds).
    ``encoded`` is the document's BSON, what a replica receives."""

    kind: ReplicatedKind
    conversation_id: str
    document: Mapping[str, Any] | None
    encoded: bytes
    token: Mapping[str, Any]
    committed_at: float


@dataclass(frozen=True, slots=True)
class HighWater:
    """What a replica holds of one conversation: its newest seq and the
    highest version (feed or state version) of its messages."""

    last_seq: int = 0
    max_version: int = 0


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    applied: int = 0
    already_present: int = 0
    # Accounts whose streams must look for a conversation they do not follow
    # yet: members whose membership documents were written, and the two of a
    # direct conversation the replica had not held before.
    wake_accounts: frozenset[str] = frozenset()

    def __add__(self, other: ApplyOutcome) -> ApplyOutcome:
        return ApplyOutcome(
            self.applied + other.applied,
            self.already_present + other.already_present,
            self.wake_accounts | other.wake_accounts,
        )


@dataclass(frozen=True, slots=True)
class ReplicationCursor:
    """Where the replicator to one peer resumes: the stream position after the
    last batch the peer acknowledged."""

    peer: str
    resume_token: Mapping[str, Any] | None
    # When the peer last acknowledged everything before ``resume_token``
    # (an applied batch, a snapshot, or an idle stream with nothing to send).
    updated_at: float
    lag_seconds: float = 0.0


class ResumePointLost(Exception):
    """The database refused the persisted resume token (the oplog no longer
    holds it, or it is not a token): only a snapshot can catch the peer up."""


class PeerUnavailable(Exception):
    """The peer region did not acknowledge a call; the batch is sent again."""
