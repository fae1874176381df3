"""InboxSettings (domain/inbox_settings.py) over an in-memory store with the
storage's compare-and-set and pin-slot rules: two regions' worth of
settings, merged. The real store's behaviour is tests/integration/
test_inbox.py's; the merge laws are test_crdt_laws.py's."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from parley_core.hlc import HybridClock
from svc_message.domain.inbox_settings import InboxSettings
from svc_message.model.inbox import Pin, SettingsRecord, SettingsWrite, WriteOutcome
from svc_message.model.member_replica import MemberReplica

ACCOUNT = "acct"
CAP = 2
T0 = 1_900_000_000_000


class MemoryStore:
    """Documents by conversation id: (record, pinned, archived)."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[SettingsRecord, bool, bool]] = {}
        self.writes = 0

    async def record(self, conversation_id: str, account_id: str) -> SettingsRecord:
        held = self.docs.get(conversation_id)
        return held[0] if held else SettingsRecord(MemberReplica(conversation_id, account_id))

    async def records(self, account_id: str, ids: Iterable[str]) -> dict[str, SettingsRecord]:
        return {c: self.docs[c][0] for c in ids if c in self.docs}

    async def pinned(self, account_id: str) -> list[SettingsRecord]:
        return [r for r, pinned, _ in self.docs.values() if pinned]

    async def archived(self, account_id: str) -> list[SettingsRecord]:
        return [r for r, _, archived in self.docs.values() if archived]

    async def write(self, change: SettingsWrite) -> WriteOutcome:
        conversation_id = change.state.conversation_id
        current = self.docs.get(conversation_id)
        if (current[0].version if current else 0) != change.record.version:
            return WriteOutcome.CONFLICT
        slots = {
            r.pin_slot
            for c, (r, _, _) in self.docs.items()
            if c != conversation_id and r.pin_slot is not None
        }
        if change.pin_slot is not None and change.pin_slot in slots:
            return WriteOutcome.SLOT_TAKEN
        requests = change.record.requests
        if change.request_id is not None:
            requests = (*requests, change.request_id)
        record = SettingsRecord(change.state, change.record.version + 1, change.pin_slot, requests)
        self.docs[conversation_id] = (record, change.pinned, change.shown.archived)
        self.writes += 1
        return WriteOutcome.WRITTEN


class Region:
    def __init__(self, name: str, skew_ms: int = 0) -> None:
        self.store = MemoryStore()
        self.now = T0 + skew_ms
        self.settings = InboxSettings(
            cast(Any, self.store),
            clock=HybridClock(name),
            physical_ms=lambda: self.now,
            max_pinned=CAP,
        )

    async def receive_all(self, other: Region) -> int:
        """Merges every state ``other`` holds; how many changed this one."""
        changed = 0
        for record, _, _ in list(other.store.docs.values()):
            changed += await self.settings.merge(record.state)
        return changed


async def test_a_merge_writes_only_what_it_changes() -> None:
    eu, us = Region("eu"), Region("us")
    assert await eu.settings.pin("c1", ACCOUNT, request_id="r1") is Pin.PINNED
    assert await us.receive_all(eu) == 1
    writes = us.store.writes
    # Received again, or sent back: nothing to write on either side.
    assert await us.receive_all(eu) == 0
    assert await eu.receive_all(us) == 0
    assert us.store.writes == writes
    assert [s.conversation_id for s in await us.settings.pinned(ACCOUNT)] == ["c1"]


async def test_pins_merged_past_the_cap_show_the_highest_and_the_next_pin_releases_the_rest() -> (
    None
):
    eu, us = Region("eu"), Region("us")
    for c in ("a", "b"):
        assert await eu.settings.pin(c, ACCOUNT, request_id=f"eu-{c}") is Pin.PINNED
        us.now += 1
    for c in ("x", "y"):
        us.now += 10
        assert await us.settings.pin(c, ACCOUNT, request_id=f"us-{c}") is Pin.PINNED
    await eu.receive_all(us)
    await us.receive_all(eu)
    shown = [[s.conversation_id for s in await r.settings.pinned(ACCOUNT)] for r in (eu, us)]
    assert shown[0] == shown[1] and len(shown[0]) == CAP
    overflow = {"a", "b", "x", "y"} - set(shown[0])
    # The overflow shows unpinned wherever it is read.
    listed = await eu.settings.of_account(ACCOUNT, ["a", "b", "x", "y"])
    assert {c for c, s in listed.items() if s.pinned} == set(shown[0])
    # The account's next unpin, here, acts on what it shows: the overflow goes too.
    assert await eu.settings.unpin(shown[0][0], ACCOUNT, request_id="u")
    assert {r.state.conversation_id for r in await eu.store.pinned(ACCOUNT)} == {shown[0][1]}
    assert overflow.isdisjoint(s.conversation_id for s in await eu.settings.pinned(ACCOUNT))


async def test_a_write_after_a_merge_wins_over_a_clock_far_ahead() -> None:
    fast, slow = Region("fast", skew_ms=3_600_000), Region("slow")
    assert await fast.settings.set_archived(
        "c", ACCOUNT, archived=True, archived_seq=3, request_id="a"
    )
    await slow.receive_all(fast)
    assert await slow.settings.set_archived(
        "c", ACCOUNT, archived=False, archived_seq=0, request_id="b"
    )
    await fast.receive_all(slow)
    for region in (fast, slow):
        stored = await region.settings.one("c", ACCOUNT)
        assert stored is not None and not stored.archived


async def test_a_request_applies_once_and_an_unchanged_clear_writes_nothing() -> None:
    eu = Region("eu")
    assert await eu.settings.mark_unread("c", ACCOUNT, read_seq=4, request_id="m")
    assert not await eu.settings.mark_unread("c", ACCOUNT, read_seq=9, request_id="m")
    stored = await eu.settings.one("c", ACCOUNT)
    assert stored is not None and stored.unread_mark_seq == 4
    await eu.settings.clear_unread_mark("c", ACCOUNT)
    writes = eu.store.writes
    await eu.settings.clear_unread_mark("c", ACCOUNT)
    assert eu.store.writes == writes
    record = eu.store.docs["c"][0]
    assert record.state.unread_mark.value is None
    assert record.version == 2
