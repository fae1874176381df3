"""The inbox settings a member writes, kept as a replicated CRDT state.

Every setting lives in a ``MemberReplica`` (docs/design/crdt.md) stored with
the fields the inbox's queries use (``storage.inbox``). A local write reads
the document, stamps the change with the region's hybrid logical clock
(``write_stamp``: above every stamp the document holds), applies the
operation and writes the result back if the document is still at the
version read (compare-and-set), else reads again. A state replicated from
another region is merged the same way, after its stamps are observed, and
written only if the merge changed something, so two regions never echo a
state back and forth.

What the inbox reads is what ``InboxHandler`` read before the state was a
CRDT: ``StoredSettings``, with the pin cap applied as a display rule (of the
pinned states, the ``cap`` highest ranks show pinned; a merge of two
partitioned regions' pins can bring more, and the overflow shows unpinned
until the account's next pin or unpin releases it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime

from parley_core.errors import Aborted
from parley_core.hlc import HybridClock, Timestamp
from svc_message.domain import member_replica as mr
from svc_message.model import MAX_PINNED
from svc_message.model.inbox import (
    Pin,
    SettingsRecord,
    SettingsWrite,
    StoredSettings,
    WriteOutcome,
)
from svc_message.model.member_replica import ArchiveMark, MemberReplica, to_dict
from svc_message.storage.inbox import InboxSettingsStore

# Compare-and-set rounds before a write gives up (ABORTED: the client
# retries). Each lost round means another write of the same document, or of
# a pin slot, landed; more than this is a storm of one account's writes.
WRITE_ATTEMPTS = 2 * MAX_PINNED + 2

Change = Callable[[MemberReplica, Timestamp], MemberReplica]


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


class InboxSettings:
    """A member's settings: reads as ``StoredSettings``, writes as CRDT
    operations under compare-and-set, and merges of replicated states."""

    def __init__(
        self,
        store: InboxSettingsStore,
        *,
        clock: HybridClock,
        physical_ms: Callable[[], int],
        max_pinned: int = MAX_PINNED,
    ) -> None:
        self._store = store
        self._clock = clock
        # The physical time the clock reads: injected, so a region's clock
        # can be set off by the composition root (tests run one skewed).
        self._physical_ms = physical_ms
        self._cap = max_pinned

    # -- reads -----------------------------------------------------------------

    async def _layout(self, account_id: str) -> mr.PinLayout:
        pins = await self._store.pinned(account_id)
        return mr.pin_layout([r.state for r in pins], self._cap)

    async def _shown(
        self, account_id: str, records: Iterable[SettingsRecord]
    ) -> dict[str, StoredSettings]:
        records = list(records)
        shown: tuple[str, ...] = ()
        if any(mr.is_pinned(r.state) for r in records):
            shown = (await self._layout(account_id)).shown
        return {
            r.state.conversation_id: mr.to_stored(
                r.state,
                pin_slot=shown.index(r.state.conversation_id)
                if r.state.conversation_id in shown
                else None,
            )
            for r in records
        }

    async def of_account(
        self, account_id: str, conversation_ids: Iterable[str]
    ) -> dict[str, StoredSettings]:
        records = await self._store.records(account_id, conversation_ids)
        return await self._shown(account_id, records.values())

    async def one(self, conversation_id: str, account_id: str) -> StoredSettings | None:
        record = await self._store.record(conversation_id, account_id)
        if record.version == 0:
            return None
        return (await self._shown(account_id, [record]))[conversation_id]

    async def pinned(self, account_id: str) -> list[StoredSettings]:
        """The pins shown, newest pin first (at most the cap)."""
        pins = {r.state.conversation_id: r.state for r in await self._store.pinned(account_id)}
        layout = mr.pin_layout(pins.values(), self._cap)
        return [mr.to_stored(pins[c], pin_slot=i) for i, c in enumerate(layout.shown)]

    async def archived(self, account_id: str) -> list[StoredSettings]:
        records = await self._store.archived(account_id)
        return list((await self._shown(account_id, records)).values())

    # -- writes ----------------------------------------------------------------

    def _write(
        self,
        record: SettingsRecord,
        state: MemberReplica,
        *,
        request_id: str | None,
        pin_slot: int | None = None,
    ) -> SettingsWrite:
        pinned = mr.is_pinned(state)
        slot = pin_slot if pin_slot is not None else record.pin_slot
        return SettingsWrite(
            record=record,
            state=state,
            pinned=pinned,
            pin_slot=slot if pinned else None,
            shown=mr.to_stored(state, pin_slot=0 if pinned else None),
            request_id=request_id,
        )

    async def _update(
        self, conversation_id: str, account_id: str, change: Change, *, request_id: str | None
    ) -> bool:
        """Apply ``change`` once per request id (None: whenever it changes the
        state); False if it was applied before or changed nothing."""
        for _ in range(WRITE_ATTEMPTS):
            record = await self._store.record(conversation_id, account_id)
            if request_id is not None and request_id in record.requests:
                return False
            stamp = mr.write_stamp(self._clock, record.state, self._physical_ms())
            state = change(record.state, stamp)
            if request_id is None and to_dict(state) == to_dict(record.state):
                return False
            write = self._write(record, state, request_id=request_id)
            if await self._store.write(write) is WriteOutcome.WRITTEN:
                return True
        raise Aborted("the settings changed concurrently; retry")

    async def set_muted(
        self,
        conversation_id: str,
        account_id: str,
        *,
        until: datetime | None,
        request_id: str,
        archive: tuple[bool, int] | None = None,
    ) -> bool:
        """Mute until ``until`` (None: unmute; ``domain.inbox.mute_until``
        turned a time already past into None, and forever into ``FOREVER``).
        ``archive``, if given, is the (archived, archived_seq) to write with it."""
        mark = None if archive is None else ArchiveMark(*archive)

        def change(state: MemberReplica, stamp: Timestamp) -> MemberReplica:
            # Already in the future when given: the write's time cannot unmute it.
            return mr.set_muted(state, _ms(until), stamp=stamp, now_ms=0, archive=mark)

        return await self._update(conversation_id, account_id, change, request_id=request_id)

    async def set_archived(
        self,
        conversation_id: str,
        account_id: str,
        *,
        archived: bool,
        archived_seq: int,
        request_id: str,
    ) -> bool:
        """Archive (as of ``archived_seq``) or unarchive; archiving unpins."""

        def change(state: MemberReplica, stamp: Timestamp) -> MemberReplica:
            return mr.set_archived(state, archived, archived_seq=archived_seq, stamp=stamp)

        return await self._update(conversation_id, account_id, change, request_id=request_id)

    async def mark_unread(
        self, conversation_id: str, account_id: str, *, read_seq: int, request_id: str
    ) -> bool:
        """Marked unread at the member's read watermark ``read_seq``."""

        def change(state: MemberReplica, stamp: Timestamp) -> MemberReplica:
            caught_up = replace(state, read_seq=state.read_seq.raised(read_seq))
            return mr.mark_unread(caught_up, stamp=stamp)

        return await self._update(conversation_id, account_id, change, request_id=request_id)

    async def clear_unread_mark(self, conversation_id: str, account_id: str) -> None:
        """Drop the unread mark, if any (a write only when there is one)."""

        def change(state: MemberReplica, stamp: Timestamp) -> MemberReplica:
            if state.unread_mark.value is None:
                return state
            return replace(state, unread_mark=state.unread_mark.assign(None, stamp))

        await self._update(conversation_id, account_id, change, request_id=None)

    async def unpin(self, conversation_id: str, account_id: str, *, request_id: str) -> bool:
        await self._release_overflow(account_id, conversation_id)

        def change(state: MemberReplica, stamp: Timestamp) -> MemberReplica:
            return mr.unpin(state, stamp=stamp)

        return await self._update(conversation_id, account_id, change, request_id=request_id)

    async def unpin_many(self, account_id: str, conversation_ids: Iterable[str]) -> None:
        """Release the pins of conversations the account can no longer see."""
        for conversation_id in conversation_ids:
            await self._update(
                conversation_id,
                account_id,
                lambda state, stamp: mr.unpin(state, stamp=stamp),
                request_id=None,
            )

    async def _release_overflow(self, account_id: str, conversation_id: str) -> None:
        """Unpin the pins a merge brought past the cap (they show unpinned):
        the member's pin or unpin acts on the list as shown."""
        layout = await self._layout(account_id)
        for released in layout.overflow:
            if released != conversation_id:
                await self.unpin_many(account_id, [released])

    async def pin(
        self,
        conversation_id: str,
        account_id: str,
        *,
        request_id: str,
        now_ms: int | None = None,
        cap: int | None = None,
    ) -> Pin:
        """Pin on top of the pinned list; pinning unarchives. FULL when the
        account shows ``cap`` pins (by a fresh read). The rank is the write's
        clock time (``now_ms`` is the caller's, unused: the HLC's is above
        every rank it has seen), above every pin shown."""
        cap = self._cap if cap is None else cap
        await self._release_overflow(account_id, conversation_id)
        for _ in range(WRITE_ATTEMPTS):
            record = await self._store.record(conversation_id, account_id)
            if request_id in record.requests:
                return Pin.UNCHANGED
            pins = await self._store.pinned(account_id)
            states = [r.state for r in pins]
            layout = mr.pin_layout(states, cap)
            check = mr.pin_check(layout, conversation_id, cap)
            if check is mr.PinCheck.UNCHANGED:
                return Pin.UNCHANGED
            if check is mr.PinCheck.FULL:
                return Pin.FULL
            taken = {
                r.pin_slot
                for r in pins
                if r.pin_slot is not None and r.state.conversation_id != conversation_id
            }
            free = sorted(set(range(cap)) - taken)
            if not free:
                return Pin.FULL
            stamp = mr.write_stamp(self._clock, record.state, self._physical_ms())
            rank = mr.next_pin_rank(states, stamp)
            state = mr.pin(record.state, stamp=stamp, rank=rank)
            write = self._write(record, state, request_id=request_id, pin_slot=free[0])
            if await self._store.write(write) is WriteOutcome.WRITTEN:
                return Pin.PINNED
        raise Aborted("pins changed concurrently; retry")

    # -- replication -------------------------------------------------------------

    async def merge(self, incoming: MemberReplica) -> bool:
        """Merge a state replicated from another region; True if it changed
        this region's. Its stamps are observed first, so a write made here
        after it lands above it whatever this region's clock says."""
        self._clock.observe(incoming.latest_stamp(), self._physical_ms())
        for _ in range(WRITE_ATTEMPTS):
            record = await self._store.record(incoming.conversation_id, incoming.account_id)
            merged = mr.merge(record.state, incoming)
            if to_dict(merged) == to_dict(record.state):
                return False
            if await self._store.write(self._write(record, merged, request_id=None)) is (
                WriteOutcome.WRITTEN
            ):
                return True
        raise Aborted("the settings changed concurrently; retry")
