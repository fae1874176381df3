"""Local writes on a member's replicated metadata, and what the inbox shows of it.

Each operation takes the HLC stamp of the write (``write_stamp``: the
region's clock after observing the state being changed, so the write lands
above everything it was made on) and returns a new state no smaller than
the old one in the merge order, so a write applied here and later merged
elsewhere converges with whatever happened there meanwhile. Nothing here
does I/O; the state type and its encoding are
``svc_message.model.member_replica``.

The rules, and why (docs/design/crdt.md):

- mute: a longer mute raises the max register of the current epoch; an
  unmute or a shorter mute opens a new epoch (the newest epoch wins);
- pin: add-wins; pinning adds a fresh tag, sets the rank and unarchives;
  unpinning tombstones the tags seen; archiving unpins;
- pinned and archived both set (a pin concurrent with an archive): the later
  stamp of the two decides which one shows;
- the pin cap holds at write time (``pin_check``); a merged state over the cap
  shows the ``cap`` highest ranks pinned and the rest unpinned, until the
  account's next pin or unpin releases them (``release_overflow``);
- watermarks only rise; the unread count is derived from them, never merged.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from parley_core.hlc import HybridClock, Timestamp
from svc_message.model.inbox import FOREVER, StoredSettings
from svc_message.model.member_replica import ArchiveMark, MemberReplica, merge

__all__ = [
    "FOREVER_MS",
    "MemberView",
    "PinCheck",
    "PinLayout",
    "is_archived",
    "is_pinned",
    "mark_delivered",
    "mark_read",
    "mark_unread",
    "marked_unread",
    "merge",
    "muted_until_ms",
    "next_pin_rank",
    "pin",
    "pin_check",
    "pin_layout",
    "release_overflow",
    "set_archived",
    "set_muted",
    "to_stored",
    "unpin",
    "unread_count",
    "view",
    "write_stamp",
]

FOREVER_MS = int(FOREVER.timestamp() * 1000)


# -- local writes ------------------------------------------------------------------


def write_stamp(clock: HybridClock, state: MemberReplica, physical_ms: int) -> Timestamp:
    """The stamp of a local write on ``state``: above every stamp in it, so
    the write wins over everything it was made on top of, whichever process
    or region wrote that and however its clock was set. (Replication observes
    the stamps it merges too; this also covers a process that restarted or
    shares the region with other writers.) Observing is itself an event of
    the clock, above its last stamp too, so its stamp is the write's."""
    return clock.observe(state.latest_stamp(), physical_ms)


def set_muted(
    state: MemberReplica,
    until_ms: int | None,
    *,
    forever: bool = False,
    stamp: Timestamp,
    now_ms: int,
    archive: ArchiveMark | None = None,
) -> MemberReplica:
    """Mute until ``until_ms`` (or forever); None or a time already past unmutes.

    A mute at least as long as the stored one (expired or not) raises the
    current epoch's max register, so concurrent mutes keep the longest. A
    shorter one, or an unmute, cannot be a max: it opens a new epoch at
    ``stamp``, which wins over raises made in the old epoch, concurrent ones
    included. ``archive``, if given, is written with it (the inbox keeps what
    it shows when the mute changes; see ``InboxHandler.set_muted``).
    """
    if forever:
        target = FOREVER_MS
    elif until_ms is None or until_ms <= now_ms:
        target = 0
    else:
        target = min(until_ms, FOREVER_MS)
    current = state.mute.value
    mute = state.mute.raised(target) if target >= current else state.mute.reset(target, stamp)
    changed = replace(state, mute=mute)
    if archive is not None:
        changed = replace(changed, archive=state.archive.assign(archive, stamp))
    return changed


def pin(state: MemberReplica, *, stamp: Timestamp, rank: int | None = None) -> MemberReplica:
    """Pin with a fresh add tag (pinning what is pinned still adds one: it
    must survive a concurrent unpin). ``rank`` places it in the pinned list
    (``next_pin_rank``; default the stamp's wall time). Pinning unarchives."""
    return replace(
        state,
        pin=state.pin.add(state.conversation_id, stamp),
        pin_rank=state.pin_rank.assign(stamp.wall_ms if rank is None else rank, stamp),
        archive=state.archive.assign(ArchiveMark(), stamp),
    )


def unpin(state: MemberReplica, *, stamp: Timestamp) -> MemberReplica:
    """Tombstone the pin tags this replica has seen; a concurrent pin's tag
    is not among them and keeps the conversation pinned (add wins)."""
    return replace(state, pin=state.pin.remove(state.conversation_id, stamp))


def set_archived(
    state: MemberReplica, archived: bool, *, archived_seq: int, stamp: Timestamp
) -> MemberReplica:
    """Archive as of the conversation's ``archived_seq``, or unarchive.
    Archiving unpins."""
    mark = ArchiveMark(archived, archived_seq if archived else 0)
    changed = replace(state, archive=state.archive.assign(mark, stamp))
    if archived:
        changed = unpin(changed, stamp=stamp)
    return changed


def mark_unread(state: MemberReplica, *, stamp: Timestamp) -> MemberReplica:
    """Mark unread at the current read watermark: it holds until the
    watermark passes it (or a later MarkRead clears it)."""
    return replace(state, unread_mark=state.unread_mark.assign(state.read_seq.value, stamp))


def mark_read(state: MemberReplica, seq: int, *, stamp: Timestamp) -> MemberReplica:
    """Raise the read watermark (delivered follows: read implies delivered)
    and clear an unread mark, even when the watermark could not rise."""
    changed = replace(
        state,
        read_seq=state.read_seq.raised(seq),
        delivered_seq=state.delivered_seq.raised(seq),
    )
    if state.unread_mark.value is not None:
        changed = replace(changed, unread_mark=state.unread_mark.assign(None, stamp))
    return changed


def mark_delivered(state: MemberReplica, seq: int) -> MemberReplica:
    return replace(state, delivered_seq=state.delivered_seq.raised(seq))


# -- views -------------------------------------------------------------------------


def _pin_present(state: MemberReplica) -> bool:
    return state.conversation_id in state.pin


def _archive_set(state: MemberReplica) -> bool:
    return state.archive.value.archived


def is_pinned(state: MemberReplica) -> bool:
    """Pinned, as far as this conversation alone says (the cap is applied
    across the account by ``pin_layout``). A pin and an archive both in the
    merged state were concurrent (each one's writer had not seen the other,
    or it would have cleared it): the later stamp shows."""
    if not _pin_present(state):
        return False
    return not (_archive_set(state) and state.pin_rank.stamp < state.archive.stamp)


def is_archived(state: MemberReplica) -> bool:
    """Archived as stored (before news bring it back, which
    ``domain.inbox.effectively_archived`` decides from ``to_stored``)."""
    if not _archive_set(state):
        return False
    return not (_pin_present(state) and state.archive.stamp < state.pin_rank.stamp)


def muted_until_ms(state: MemberReplica, now_ms: int) -> int | None:
    """The mute in force at ``now_ms``, if any."""
    until = state.mute.value
    return until if until > now_ms else None


def marked_unread(state: MemberReplica) -> bool:
    mark = state.unread_mark.value
    return mark is not None and state.read_seq.value <= mark


def unread_count(state: MemberReplica, *, last_seq: int, joined_seq: int = 0) -> int:
    """Items after the read watermark (or the join), from the conversation's
    ``last_seq`` as this region knows it: derived on read, never stored or
    merged, so it converges as soon as the watermark and last_seq do."""
    return max(0, last_seq - max(state.read_seq.value, joined_seq))


@dataclass(frozen=True, slots=True)
class MemberView:
    """What one member's metadata shows, given the conversation's last seq."""

    pinned: bool
    pin_rank: int
    archived: bool
    archived_seq: int
    muted_until_ms: int | None
    marked_unread: bool
    read_seq: int
    delivered_seq: int
    unread_count: int


def view(state: MemberReplica, *, last_seq: int, now_ms: int, joined_seq: int = 0) -> MemberView:
    archived = is_archived(state)
    pinned = is_pinned(state)
    return MemberView(
        pinned=pinned,
        pin_rank=state.pin_rank.value if pinned else 0,
        archived=archived,
        archived_seq=state.archive.value.archived_seq if archived else 0,
        muted_until_ms=muted_until_ms(state, now_ms),
        marked_unread=marked_unread(state),
        read_seq=state.read_seq.value,
        delivered_seq=max(state.delivered_seq.value, state.read_seq.value),
        unread_count=unread_count(state, last_seq=last_seq, joined_seq=joined_seq),
    )


def to_stored(state: MemberReplica, *, pin_slot: int | None) -> StoredSettings:
    """The ``StoredSettings`` the inbox's pure policy (``domain.inbox``)
    reads. ``pin_slot`` is the place in ``pin_layout(...).shown``, None when
    not shown pinned (an overflowing pin shows unpinned)."""
    archived = is_archived(state)
    until = state.mute.value
    return StoredSettings(
        conversation_id=state.conversation_id,
        account_id=state.account_id,
        muted_until=datetime.fromtimestamp(until / 1000, UTC) if until else None,
        pin_rank=state.pin_rank.value if pin_slot is not None else 0,
        pin_slot=pin_slot,
        archived=archived,
        archived_seq=state.archive.value.archived_seq if archived else 0,
        unread_mark_seq=state.unread_mark.value,
    )


# -- the pin cap across an account ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PinLayout:
    """The account's pinned list: ``shown`` in inbox order (highest rank
    first, conversation id breaking ties), at most ``cap`` of them;
    ``overflow``, pins a merge brought past the cap, show unpinned."""

    shown: tuple[str, ...]
    overflow: tuple[str, ...]


def pin_layout(states: Iterable[MemberReplica], cap: int) -> PinLayout:
    """Deterministic from the merged states alone, so every region that holds
    the same states shows the same list."""
    ranked = sorted(
        ((s.pin_rank.value, s.conversation_id) for s in states if is_pinned(s)),
        reverse=True,
    )
    ids = tuple(conversation_id for _, conversation_id in ranked)
    return PinLayout(shown=ids[:cap], overflow=ids[cap:])


def next_pin_rank(states: Iterable[MemberReplica], stamp: Timestamp) -> int:
    """A rank above every current pin (a new pin goes on top)."""
    return max([stamp.wall_ms, *(s.pin_rank.value + 1 for s in states if is_pinned(s))])


class PinCheck(enum.Enum):
    ALLOWED = "allowed"
    # Already shown pinned: nothing to write.
    UNCHANGED = "unchanged"
    # ``cap`` pins are shown: unpin one first.
    FULL = "full"


def pin_check(layout: PinLayout, conversation_id: str, cap: int) -> PinCheck:
    """The cap at write time, against the pins this region shows. Overflow
    does not count: it is released (``release_overflow``) with the write."""
    if conversation_id in layout.shown:
        return PinCheck.UNCHANGED
    if len(layout.shown) >= cap:
        return PinCheck.FULL
    return PinCheck.ALLOWED


def release_overflow(
    states: Iterable[MemberReplica], layout: PinLayout, *, stamp: Timestamp
) -> list[MemberReplica]:
    """Unpin the overflowing pins (they already show unpinned); the states to
    write back. Run with every local pin and unpin, computed before it: the
    member acts on the list as shown, so an unpin must not promote a pin
    they could not see, and overflow never outlives the account's next pin
    write."""
    overflow = set(layout.overflow)
    return [unpin(s, stamp=stamp) for s in states if s.conversation_id in overflow]
