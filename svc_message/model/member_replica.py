"""A member's per-conversation metadata as a replicated, mergeable state.

Written in several regions and replicated asynchronously, it merges without
coordination: every field is a CRDT from ``parley_core.crdt`` and ``merge`` is
their field-wise join (docs/design/crdt.md gives each field's type and why).
The operations and the views the inbox reads live in
``svc_message.domain.member_replica``; the type and its plain-dict encoding
live here so that storage and replication can import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from parley_core.crdt import (
    AddWinsSet,
    EpochMaxRegister,
    LWWRegister,
    MaxRegister,
)
from parley_core.hlc import ZERO, Timestamp

# The encoding's version, stored with it: a reader refuses what it does not know.
FORMAT = 1


@dataclass(frozen=True, slots=True)
class ArchiveMark:
    """What the member asked: archived (as of the conversation's ``archived_seq``) or not."""

    archived: bool = False
    archived_seq: int = 0


def _no_mute() -> EpochMaxRegister[int]:
    return EpochMaxRegister(ZERO, 0)


def _no_pins() -> AddWinsSet[str]:
    return AddWinsSet()


def _rank() -> LWWRegister[int]:
    return LWWRegister(0)


def _archive() -> LWWRegister[ArchiveMark]:
    return LWWRegister(ArchiveMark())


def _unread_mark() -> LWWRegister[int | None]:
    return LWWRegister(None)


def _zero() -> MaxRegister[int]:
    return MaxRegister(0)


@dataclass(frozen=True, slots=True)
class MemberReplica:
    """One (conversation, account) pair's metadata, as one replica holds it.

    - ``mute``: muted until this many ms since the epoch (0: never muted);
      within an epoch a max register, an unmute or a shortening opens a new
      epoch.
    - ``pin``: this conversation's part of the account's add-wins pin set
      (its element is the conversation id; the set's state is per element,
      so the account's set is exactly the union of its members' parts).
    - ``pin_rank``: the pin's place in the pinned list (higher first), LWW.
    - ``archive``: LWW of (archived, archived_seq).
    - ``unread_mark``: LWW of the read seq at which it was marked unread
      (None: no mark).
    - ``read_seq``, ``delivered_seq``: watermarks, max registers.
    """

    conversation_id: str
    account_id: str
    mute: EpochMaxRegister[int] = field(default_factory=_no_mute)
    pin: AddWinsSet[str] = field(default_factory=_no_pins)
    pin_rank: LWWRegister[int] = field(default_factory=_rank)
    archive: LWWRegister[ArchiveMark] = field(default_factory=_archive)
    unread_mark: LWWRegister[int | None] = field(default_factory=_unread_mark)
    read_seq: MaxRegister[int] = field(default_factory=_zero)
    delivered_seq: MaxRegister[int] = field(default_factory=_zero)

    def latest_stamp(self) -> Timestamp:
        """The greatest HLC stamp in the state: a replica that merges this in
        observes it with its clock, so its next write is stamped above every
        write it has now seen (what makes a causally later write win)."""
        stamps = [
            self.mute.epoch,
            self.pin_rank.stamp,
            self.archive.stamp,
            self.unread_mark.stamp,
            *(tag for _, tag in self.pin.adds),
            *self.pin.removed.keys(),
            *self.pin.removed.values(),
        ]
        return max(stamps)


def merge(a: MemberReplica, b: MemberReplica) -> MemberReplica:
    """The join of two replicas of the same member's metadata."""
    if (a.conversation_id, a.account_id) != (b.conversation_id, b.account_id):
        raise ValueError(
            f"cannot merge {a.conversation_id}:{a.account_id}"
            f" with {b.conversation_id}:{b.account_id}"
        )
    return MemberReplica(
        conversation_id=a.conversation_id,
        account_id=a.account_id,
        mute=a.mute.merge(b.mute),
        pin=a.pin.merge(b.pin),
        pin_rank=a.pin_rank.merge(b.pin_rank),
        archive=a.archive.merge(b.archive),
        unread_mark=a.unread_mark.merge(b.unread_mark),
        read_seq=a.read_seq.merge(b.read_seq),
        delivered_seq=a.delivered_seq.merge(b.delivered_seq),
    )


# -- plain-dict encoding (BSON and JSON friendly) ------------------------------------


def _encode_archive(mark: ArchiveMark) -> dict[str, Any]:
    return {"archived": mark.archived, "seq": mark.archived_seq}


def _decode_archive(data: Mapping[str, Any]) -> ArchiveMark:
    return ArchiveMark(bool(data["archived"]), int(data["seq"]))


def to_dict(state: MemberReplica) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "conversation_id": state.conversation_id,
        "account_id": state.account_id,
        "mute": state.mute.to_dict(),
        "pin": state.pin.to_dict(),
        "pin_rank": state.pin_rank.to_dict(),
        "archive": state.archive.to_dict(_encode_archive),
        "unread_mark": state.unread_mark.to_dict(),
        "read_seq": state.read_seq.to_dict(),
        "delivered_seq": state.delivered_seq.to_dict(),
    }


def from_dict(data: Mapping[str, Any]) -> MemberReplica:
    if data.get("format") != FORMAT:
        raise ValueError(f"unknown member replica format: {data.get('format')!r}")
    return MemberReplica(
        conversation_id=data["conversation_id"],
        account_id=data["account_id"],
        mute=EpochMaxRegister.from_dict(data["mute"], int),
        pin=AddWinsSet.from_dict(data["pin"], str),
        pin_rank=LWWRegister.from_dict(data["pin_rank"], int),
        archive=LWWRegister.from_dict(data["archive"], _decode_archive),
        unread_mark=LWWRegister.from_dict(data["unread_mark"], _optional_int),
        read_seq=MaxRegister.from_dict(data["read_seq"], int),
        delivered_seq=MaxRegister.from_dict(data["delivered_seq"], int),
    )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
