"""Presence across regions, pure parts: which pushed entry wins, how the
regions' entries combine with the local state and expire, what residency
keeps home, the exporter's queues and retries, and the hub's events when a
remote change or an expiry flips what a subscriber sees (fakes only)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from parley_core.ids import new_id
from parley_core.regions import RegionMap
from parley_core.topology import Topology, parse_topology
from svc_presence.domain.export import Exporter, PeerQueue
from svc_presence.domain.region_merge import (
    NO_REMOTE,
    combined,
    exportable,
    parse_remote,
    remote_view,
    takes,
)
from svc_presence.domain.rules import RuleLoader
from svc_presence.domain.subscriptions import Hub
from svc_presence.model import (
    UNSEEN,
    Availability,
    ExportEntry,
    LiveState,
    PeerUnreachable,
    PresenceSettings,
    PresenceStats,
    RegionEntry,
    RegionStats,
    RemoteView,
    Visibility,
)
from svc_presence.storage.export import LocalChange, parse_change
from svc_presence.storage.remote import decode_entry, encode_entry
from tests.unit.test_presence_domain import FakeChannels, FakeWorld, LastSeen

NOW = 1_900_000_000_000


def entry(online: bool, seen: int, expires: int = NOW + 6000) -> RegionEntry:
    return RegionEntry(online=online, seen_ms=seen, expires_ms=expires)


# -- which entry wins ------------------------------------------------------------


def test_a_pushed_entry_replaces_none_an_expired_one_or_an_older_one() -> None:
    held = entry(True, 100)
    assert takes(entry(False, 100), None, now_ms=NOW)
    assert takes(entry(False, 50), entry(True, 100, expires=NOW), now_ms=NOW)  # expired
    assert takes(entry(False, 150), held, now_ms=NOW)
    assert takes(entry(True, 150), held, now_ms=NOW)
    assert not takes(entry(True, 50), held, now_ms=NOW)
    assert not takes(entry(False, 50), held, now_ms=NOW)


def test_at_the_same_instant_offline_wins_and_a_repeat_renews() -> None:
    assert takes(entry(False, 100), entry(True, 100), now_ms=NOW)
    assert not takes(entry(True, 100), entry(False, 100), now_ms=NOW)
    # A digest repeating what is held is taken (it renews the expiry).
    assert takes(entry(True, 100, NOW + 9000), entry(True, 100), now_ms=NOW)


def test_a_late_digest_does_not_undo_an_offline_that_overtook_it() -> None:
    """A digest read before the account went offline, delivered after the
    offline change: the offline stays."""
    offline = entry(False, 200)
    stale_digest = entry(True, 180)
    assert not takes(stale_digest, offline, now_ms=NOW)


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_the_latest_state_wins_in_any_arrival_order(order: tuple[int, ...]) -> None:
    history = [entry(True, 10), entry(False, 20), entry(True, 30), entry(False, 30)]
    held: RegionEntry | None = None
    for index in order:
        if takes(history[index], held, now_ms=NOW):
            held = history[index]
    assert held == history[-1]


def test_entries_round_trip_through_their_stored_form() -> None:
    stored = entry(True, 1_800_000_000_123, NOW + 1)
    assert decode_entry(encode_entry(stored)) == stored
    assert decode_entry(encode_entry(stored).encode()) == stored
    for junk in ("", "2:1:1", "1:x:1", "1:1", "1:1:1:1"):
        assert decode_entry(junk) is None


# -- combining -------------------------------------------------------------------


def test_online_in_any_region_until_its_entry_expires() -> None:
    entries = {"us": entry(True, 100, NOW + 5000), "ap": entry(False, 300, NOW + 60_000)}
    view = remote_view(entries, now_ms=NOW)
    assert view == RemoteView(online=True, seen_ms=300, until_ms=NOW + 5000)
    offline_here = LiveState(online=False, seen_ms=200)
    assert combined(offline_here, view, now_ms=NOW) == LiveState(True, 300)
    # Past the online entry's expiry the account is offline; last seen stays the max.
    assert combined(offline_here, view, now_ms=NOW + 5000) == LiveState(False, 300)
    later = remote_view(entries, now_ms=NOW + 5000)
    assert later == RemoteView(online=False, seen_ms=300, until_ms=0)


def test_expired_entries_say_nothing() -> None:
    assert remote_view({"us": entry(True, 100, NOW)}, now_ms=NOW) == NO_REMOTE
    assert combined(UNSEEN, NO_REMOTE, now_ms=NOW) == LiveState(False, None)


def test_online_here_stays_online_whatever_the_regions_say() -> None:
    local = LiveState(online=True, seen_ms=500)
    assert combined(local, remote_view({"us": entry(False, 900)}, now_ms=NOW), now_ms=NOW) == (
        LiveState(True, 900)
    )
    assert combined(local, None, now_ms=NOW) is local


def test_remote_payloads_parse_and_anything_else_is_ignored() -> None:
    assert parse_remote(b"r1:100:200") == RemoteView(True, 100, 200)
    assert parse_remote(b"r0:0:0") == RemoteView(False, None, 0)
    for junk in (b"1:100", b"r2:1:1", b"r1:x:1", b"s", b"r1:1"):
        assert parse_remote(junk) is None


def test_local_changes_parse() -> None:
    assert parse_change(b"acct|1:1234") == LocalChange("acct", True, 1234)
    assert parse_change("acct|0:99") == LocalChange("acct", False, 99)
    for junk in (b"acct", b"|1:1", b"acct|2:1", b"acct|1:x", b"acct|1"):
        assert parse_change(junk) is None


# -- residency -------------------------------------------------------------------


def topology(region: str = "eu", home_only: Sequence[str] = ()) -> Topology:
    def one(name: str, number: int) -> dict[str, Any]:
        return {
            "self": name == region,
            "publicEndpoint": None,
            "peerEndpoint": f"127.0.0.1:{7000 + number}",
            "number": number,
        }

    return parse_topology(
        json.dumps(
            {
                "format": 1,
                "generation": 1,
                "region": region,
                "regions": {"eu": one("eu", 1), "us": one("us", 2), "ap": one("ap", 3)},
                "residency": {"homeOnlyData": list(home_only), "replicateTo": []},
                "routing": {
                    "conversationShards": 64,
                    "shardHash": "sha256-first8-mod",
                    "services": {},
                },
            }
        )
    )


EU_USER = new_id(region_number=1)
US_USER = new_id(region_number=2)


def test_a_region_keeping_presence_home_never_exports_its_own_accounts() -> None:
    pinned = topology("eu", home_only=["presence", "messages"])
    regions = RegionMap.from_topology(pinned)
    assert not exportable(EU_USER, topology=pinned, regions=regions)
    # A US account connected here goes home (and to the others: its home's call).
    assert exportable(US_USER, topology=pinned, regions=regions)


def test_without_presence_in_home_only_data_everything_is_exported() -> None:
    free = topology("eu", home_only=["media"])
    regions = RegionMap.from_topology(free)
    assert exportable(EU_USER, topology=free, regions=regions)
    assert exportable(US_USER, topology=free, regions=regions)


# -- the exporter ----------------------------------------------------------------


class FakeFeed:
    def __init__(self, online: dict[int, list[tuple[str, int]]]) -> None:
        self.online = online
        self.shards = max(online, default=0) + 1
        self.holder: str | None = None
        self.queue: asyncio.Queue[LocalChange] = asyncio.Queue()

    async def hold_lease(self, holder: str, *, ttl_ms: int) -> bool:
        if self.holder in (None, holder):
            self.holder = holder
            return True
        return False

    async def release_lease(self, holder: str) -> None:
        if self.holder == holder:
            self.holder = None

    async def changes(self) -> AsyncIterator[LocalChange]:
        while True:
            yield await self.queue.get()

    async def online_page(
        self, shard: int, *, now_ms: int, offset: int, limit: int
    ) -> list[tuple[str, int]]:
        return self.online.get(shard, [])[offset : offset + limit]


class FakePeers:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[str, list[ExportEntry], bool]] = []

    async def apply(self, region: str, entries: Sequence[ExportEntry], *, digest: bool) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise PeerUnreachable("cut")
        self.calls.append((region, list(entries), digest))
        return len(entries)


def exporter(feed: FakeFeed, peers: FakePeers, topo: Topology, **kwargs: Any) -> Exporter:
    return Exporter(
        feed,
        peers,
        RegionStats(),
        topology=lambda: topo,
        regions=lambda: RegionMap.from_topology(topo),
        holder="me",
        **kwargs,
    )


async def test_the_digest_lists_every_online_account_residency_allows() -> None:
    pinned = topology("eu", home_only=["presence"])
    feed = FakeFeed({0: [(EU_USER, 5), (US_USER, 6)], 1: [("legacy-x", 7)]})
    entries = await exporter(feed, FakePeers(), pinned).digest_entries(now_ms=NOW)
    # legacy-x is untagged: the legacy region is the self region, so it stays home.
    assert [(e.account_id, e.online, e.seen_ms) for e in entries] == [(US_USER, True, 6)]
    free = topology("eu")
    entries = await exporter(feed, FakePeers(), free).digest_entries(now_ms=NOW)
    assert {e.account_id for e in entries} == {EU_USER, US_USER, "legacy-x"}


async def test_changes_reach_every_peer_batched_and_residency_is_held() -> None:
    pinned = topology("eu", home_only=["presence"])
    feed = FakeFeed({})
    peers = FakePeers()
    running = exporter(feed, peers, pinned, batch_seconds=0.02, digest_seconds=60)
    task = asyncio.create_task(running.run())
    try:
        async with asyncio.timeout(5):
            while not running.leading:
                await asyncio.sleep(0.01)
        for change in (
            LocalChange(US_USER, True, 10),
            LocalChange(EU_USER, True, 11),
            LocalChange(US_USER, False, 12),
        ):
            feed.queue.put_nowait(change)
        async with asyncio.timeout(5):
            while len([c for c in peers.calls if not c[2]]) < 2:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    changes = [c for c in peers.calls if not c[2]]
    assert sorted(region for region, _, _ in changes) == ["ap", "us"]
    for _, entries, _ in changes:
        # Coalesced to the latest state; the EU-homed account never left.
        assert [(e.account_id, e.online, e.seen_ms) for e in entries] == [(US_USER, False, 12)]
    digests = [c for c in peers.calls if c[2]]
    assert digests and all(entries == [] for _, entries, _ in digests)


async def test_a_peer_that_refuses_gets_the_change_when_it_is_back() -> None:
    free = topology("eu")
    feed = FakeFeed({})
    peers = FakePeers(failures=3)
    stats = RegionStats()
    running = Exporter(
        feed,
        peers,
        stats,
        topology=lambda: free,
        regions=lambda: RegionMap.from_topology(free),
        holder="me",
        batch_seconds=0.01,
        digest_seconds=60,
    )
    task = asyncio.create_task(running.run())
    try:
        async with asyncio.timeout(5):
            while not running.leading:
                await asyncio.sleep(0.01)
        feed.queue.put_nowait(LocalChange(US_USER, True, 10))
        async with asyncio.timeout(10):
            while {r for r, e, d in peers.calls if not d and e} != {"us", "ap"}:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sum(stats.failures.values()) == 3
    assert stats.sent["us"] >= 1 and stats.sent["ap"] >= 1


async def test_only_the_lease_holder_exports() -> None:
    free = topology("eu")
    feed = FakeFeed({})
    feed.holder = "someone else"
    peers = FakePeers()
    running = exporter(feed, peers, free, digest_seconds=0.01)
    task = asyncio.create_task(running.run())
    try:
        await asyncio.sleep(0.2)
        assert not running.leading and peers.calls == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_queue_keeps_the_latest_per_account_and_takes_back_only_what_was_not_replaced() -> None:
    queue = PeerQueue("us", RegionStats())
    queue.put(ExportEntry("a", True, 1, 10))
    queue.put(ExportEntry("b", True, 2, 10))
    queue.put(ExportEntry("a", False, 3, 10))
    batch = queue.take(10)
    assert [(e.account_id, e.seen_ms) for e in batch] == [("b", 2), ("a", 3)]
    queue.put(ExportEntry("a", True, 4, 10))
    queue.put_back(batch)
    assert {a: e.seen_ms for a, e in queue.pending.items()} == {"a": 4, "b": 2}


# -- the hub ---------------------------------------------------------------------


class FakeRemote:
    def __init__(self) -> None:
        self.entries_by_account: dict[str, dict[str, RegionEntry]] = {}
        self.reads = 0

    async def apply(self, region: str, entries: Sequence[ExportEntry], *, now_ms: int) -> int:
        raise NotImplementedError

    async def entries(self, account_ids: Sequence[str]) -> dict[str, dict[str, RegionEntry]]:
        self.reads += 1
        return {a: self.entries_by_account[a] for a in account_ids if a in self.entries_by_account}


class Clock:
    def __init__(self) -> None:
        self.now = NOW / 1000

    def __call__(self) -> float:
        return self.now


async def test_a_remote_flip_and_its_expiry_reach_a_subscriber() -> None:
    world = FakeWorld(live={"a": LiveState(False, 50)})
    everyone = PresenceSettings(Visibility.EVERYONE, Visibility.EVERYONE, False)
    world.settings["a"] = everyone
    world.settings["v"] = everyone
    remote = FakeRemote()
    clock = Clock()
    hub = Hub(
        FakeChannels(),
        world,
        RuleLoader(world, world),
        LastSeen(world),
        PresenceStats(),
        max_sessions=10,
        remote=remote,
        has_peers=lambda: True,
        clock=clock,
    )
    expiry = asyncio.create_task(hub.run_remote_expiry())
    try:
        session, snapshot = await hub.open("v", ["a"])
        assert snapshot[0].availability == Availability.OFFLINE
        changes = hub.changes(session)
        until = NOW + 6000
        remote.entries_by_account["a"] = {"us": entry(True, 70, until)}
        hub.on_message("a", f"r1:70:{until}".encode())
        async with asyncio.timeout(2):
            batch = await anext(changes)
        assert [(v.availability, v.last_seen_ms) for v in batch] == [(Availability.ONLINE, 70)]
        # A digest renewed the entry (nothing published): the expiry heard of
        # passes, the hub reads again and the account stays online.
        renewed = until + 6000
        remote.entries_by_account["a"] = {"us": entry(True, 70, renewed)}
        clock.now = until / 1000
        reads = remote.reads
        async with asyncio.timeout(2):
            while remote.reads == reads:
                await asyncio.sleep(0.01)
        assert hub.state("a") == LiveState(True, 70)
        # The region went quiet: past the renewed expiry it is offline everywhere.
        clock.now = renewed / 1000
        async with asyncio.timeout(2):
            batch = await anext(changes)
        assert [(v.availability, v.last_seen_ms) for v in batch] == [(Availability.OFFLINE, 70)]
    finally:
        expiry.cancel()
        await asyncio.gather(expiry, return_exceptions=True)


async def test_a_stopped_exporter_hands_its_lease_back() -> None:
    free = topology("eu")
    feed = FakeFeed({})
    running = exporter(feed, FakePeers(), free, digest_seconds=60)
    task = asyncio.create_task(running.run())
    async with asyncio.timeout(5):
        while not running.leading:
            await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert feed.holder == "me"
    await running.release()
    assert feed.holder is None
