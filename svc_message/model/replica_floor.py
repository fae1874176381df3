"""What a replica region no longer holds of a conversation owned elsewhere.

A replica trims its copy of another region's conversation below the hot
window (the owner archives that part into its own store; residency keeps
archive objects there). The floor says what is gone, so a read reaching
below it is asked of the owner instead of answering short.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley_core.errors import FailedPrecondition, NotFound, Reason


@dataclass(frozen=True, slots=True)
class ReplicaFloor:
    """Every log entry of the conversation at or below ``version`` and every
    history item at or below ``seq`` was trimmed here (0: none)."""

    version: int = 0
    seq: int = 0


class HistoryAtOwner(NotFound):
    """A read of history this replica trimmed or never received. NOT_FOUND
    so that the region routing asks the owner, as for any read a replica
    cannot answer yet (servicer/region_routing.py)."""


def history_at_owner(conversation_id: str, held_from_seq: int) -> HistoryAtOwner:
    return HistoryAtOwner(
        "this part of the conversation's history is held by its owner region",
        reason=Reason.MESSAGE_NOT_FOUND,
        metadata={"conversation_id": conversation_id, "held_from_seq": str(held_from_seq)},
    )


def stream_below_floor(
    conversation_id: str, after_version: int, floor: ReplicaFloor
) -> FailedPrecondition:
    """A feed replay from a position this replica trimmed: the same answer as
    a replay into the glacier tier, so a device resumes from ``version_hi``
    and pages what it missed with ListMessages (which the owner serves)."""
    return FailedPrecondition(
        "this part of the conversation's feed is held by its owner region only; resume the "
        "stream from version_hi and read the history with ListMessages",
        reason=Reason.HISTORY_ARCHIVED,
        metadata={
            "conversation_id": conversation_id,
            "week": "",
            "seq_lo": "1",
            "seq_hi": str(floor.seq),
            "version_lo": str(after_version + 1),
            "version_hi": str(floor.version),
        },
    )
