"""svc_presence's domain with in-memory fakes and an injected clock: the
subscription hub (fan-out by privacy, coalescing, settings refresh, outage),
the sweeper (transitions and durable last seen) and the handler's validation."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pytest

from parley_core.errors import (
    InvalidArgument,
    ParleyError,
    Reason,
    ResourceExhausted,
    Unavailable,
)
from parley_core.limits import InProcessBuckets, Limiter
from svc_presence.domain.presence import PRESENCE_DOWN, PresenceHandler
from svc_presence.domain.rules import RuleLoader
from svc_presence.domain.subscriptions import Hub, Session, parse_state, stream
from svc_presence.domain.sweeper import SeenBuffer, Sweeper
from svc_presence.model import (
    DEFAULT_SETTINGS,
    Availability,
    Contact,
    LiveState,
    OverCap,
    PresenceSettings,
    PresenceStats,
    PresenceStoreDown,
    PresenceView,
    SeenRecord,
    Visibility,
)

E, C, N = Visibility.EVERYONE, Visibility.CONTACTS, Visibility.NOBODY
ONLINE, OFFLINE, UNKNOWN = Availability.ONLINE, Availability.OFFLINE, Availability.UNKNOWN

UNLIMITED = Limiter(InProcessBuckets(), {}, names=(), enabled=False)
NOW = 1_900_000_000.0


# -- fakes --------------------------------------------------------------------------


@dataclass
class FakeWorld:
    """Settings, contact lists, Redis state and durable last seen, in memory."""

    settings: dict[str, PresenceSettings] = field(default_factory=dict)
    lists: set[tuple[str, str]] = field(default_factory=set)
    live: dict[str, LiveState] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    redis_down: bool = False
    reads: Counter[str] = field(default_factory=Counter)
    published: list[str] = field(default_factory=list)

    # settings
    async def get(self, account_id: str) -> PresenceSettings:
        return self.settings.get(account_id, DEFAULT_SETTINGS)

    async def get_many(self, account_ids: Sequence[str]) -> dict[str, PresenceSettings]:
        self.reads["settings"] += 1
        return {a: self.settings.get(a, DEFAULT_SETTINGS) for a in account_ids}

    async def replace(
        self, account_id: str, settings: PresenceSettings, *, now: datetime
    ) -> PresenceSettings | None:
        stored = PresenceSettings(
            settings.online, settings.last_seen, settings.invisible, now, settings.version + 1
        )
        self.settings[account_id] = stored
        return stored

    # contacts
    async def listed(self, owners: Sequence[str], contacts: Sequence[str]) -> set[tuple[str, str]]:
        self.reads["listed"] += 1
        return {(o, c) for o in owners for c in contacts if (o, c) in self.lists}

    async def add(self, owner: str, contacts: Sequence[str], *, cap: int, now: datetime) -> int:
        fresh = [c for c in contacts if (owner, c) not in self.lists]
        current = sum(1 for o, _ in self.lists if o == owner)
        if current + len(fresh) > cap:
            raise OverCap(current, len(fresh))
        self.lists.update((owner, c) for c in fresh)
        return len(fresh)

    async def remove(self, owner: str, contacts: Sequence[str]) -> int:
        gone = {(owner, c) for c in contacts} & self.lists
        self.lists -= gone
        return len(gone)

    async def page(
        self, owner: str, *, after: tuple[datetime, str] | None, limit: int
    ) -> list[Contact]:
        return []

    # Redis
    @property
    def ttl_ms(self) -> int:
        return 30_000

    def _check(self) -> None:
        if self.redis_down:
            raise PresenceStoreDown("down")

    async def states(self, account_ids: Sequence[str]) -> dict[str, LiveState]:
        self._check()
        return {a: self.live.get(a, LiveState(False, None)) for a in account_ids}

    async def touch_heartbeat(self, account_id: str, device_id: str, *, now_ms: int) -> object:
        self._check()

        @dataclass
        class Touched:
            came_online: bool

        came = not self.live.get(account_id, LiveState(False, None)).online
        self.live[account_id] = LiveState(True, now_ms)
        return Touched(came)

    async def drop_heartbeat(self, account_id: str, device_id: str, *, now_ms: int) -> None:
        self._check()

    async def settings_changed(self, account_id: str) -> bool:
        if self.redis_down:
            return False
        self.published.append(account_id)
        return True

    # MongoDB last seen
    async def get_many_seen(self, account_ids: Sequence[str]) -> dict[str, int]:
        return {a: self.stored[a] for a in account_ids if a in self.stored}

    async def write(self, records: Iterable[SeenRecord]) -> int:
        records = list(records)
        for r in records:
            self.stored[r.account_id] = max(self.stored.get(r.account_id, 0), r.seen_ms)
        return len(records)


class LastSeen:
    def __init__(self, world: FakeWorld) -> None:
        self.world = world

    async def get_many(self, account_ids: Sequence[str]) -> dict[str, int]:
        return await self.world.get_many_seen(account_ids)

    async def write(self, records: Iterable[SeenRecord]) -> int:
        return await self.world.write(records)


class FakeChannels:
    def __init__(self) -> None:
        self.refs: Counter[str] = Counter()
        self.connected = True

    async def subscribe(self, account_ids: Iterable[str]) -> None:
        if not self.connected:
            raise PresenceStoreDown("down")
        self.refs.update(account_ids)

    def unsubscribe(self, account_ids: Iterable[str]) -> None:
        self.refs.subtract(account_ids)
        self.refs = +self.refs


def make_hub(world: FakeWorld, *, max_sessions: int = 100) -> tuple[Hub, FakeChannels]:
    channels = FakeChannels()
    hub = Hub(
        channels,
        world,
        RuleLoader(world, world),
        LastSeen(world),
        PresenceStats(),
        max_sessions=max_sessions,
        refresh_retry_seconds=0.01,
    )
    return hub, channels


class Reader:
    """Collects a session's change batches in the background."""

    def __init__(self, hub: Hub, session: Session, snapshot: list[PresenceView]) -> None:
        self.snapshot = snapshot
        self.batches: list[list[PresenceView]] = []
        self.error: ParleyError | None = None
        self._stream = stream(hub, session, first=snapshot)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for batch in self._stream:
                if not batch.snapshot:
                    self.batches.append(batch.views)
        except ParleyError as exc:
            self.error = exc

    def seen(self) -> list[tuple[str, Availability, int | None]]:
        return [(v.account_id, v.availability, v.last_seen_ms) for b in self.batches for v in b]

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def mutual(world: FakeWorld, a: str, b: str) -> None:
    world.lists.update({(a, b), (b, a)})


# -- the hub ------------------------------------------------------------------------


async def test_a_change_reaches_exactly_the_viewers_allowed_to_see_it() -> None:
    world = FakeWorld()
    hub, channels = make_hub(world)
    allowed = [f"ok{i}" for i in range(8)]
    strangers = [f"no{i}" for i in range(6)]
    one_sided = [f"half{i}" for i in range(6)]
    for viewer in allowed:
        mutual(world, "t", viewer)
    for viewer in one_sided:
        world.lists.add(("t", viewer))  # the target lists them, not they the target
    readers = {}
    for viewer in allowed + strangers + one_sided:
        session, snapshot = await hub.open(viewer, ["t"])
        readers[viewer] = Reader(hub, session, snapshot)
        assert snapshot == [PresenceView("t", OFFLINE if viewer in allowed else UNKNOWN, None)]
    assert channels.refs["t"] == 20

    hub.on_message("t", b"1:1000")
    await settle()
    hub.on_message("t", b"0:1500")
    await settle()
    for viewer, reader in readers.items():
        if viewer in allowed:
            assert reader.seen() == [("t", ONLINE, 1000), ("t", OFFLINE, 1500)], viewer
        else:
            assert reader.seen() == [], viewer
    for reader in readers.values():
        await reader.stop()
    assert hub.session_count == 0
    assert +channels.refs == Counter()


async def test_changes_are_coalesced_and_unchanged_views_not_sent() -> None:
    world = FakeWorld(settings={"t": PresenceSettings(E, N, False)})
    world.settings["v"] = PresenceSettings(E, E, False)
    hub, _ = make_hub(world)
    session, snapshot = await hub.open("v", ["t"])
    reader = Reader(hub, session, snapshot)
    # Online then offline before the session runs: the viewer sees no
    # change at all (it sees online state only, and it ends where it began).
    hub.on_message("t", b"1:1000")
    hub.on_message("t", b"0:1000")
    await settle()
    assert reader.batches == []
    hub.on_message("t", b"1:2000")
    await settle()
    # Last seen is hidden, so a new online time alone is no change either.
    hub.on_message("t", b"1:3000")
    await settle()
    assert reader.seen() == [("t", ONLINE, None)]
    await reader.stop()


async def test_snapshot_keeps_a_change_heard_after_subscribing() -> None:
    """A transition published between the subscription and the snapshot read
    must win over the older state the read returns."""
    world = FakeWorld(live={"t": LiveState(True, 1000)})
    mutual(world, "t", "v")
    hub, _ = make_hub(world)
    original = world.states

    async def slow_states(account_ids: Sequence[str]) -> dict[str, LiveState]:
        result = await original(account_ids)
        hub.on_message("t", b"0:1200")  # arrives while the read is in flight
        return result

    world.states = slow_states  # type: ignore[method-assign]
    session, snapshot = await hub.open("v", ["t"])
    assert snapshot == [PresenceView("t", OFFLINE, 1200)]
    hub.close(session)


async def test_durable_last_seen_fills_what_redis_forgot() -> None:
    world = FakeWorld(stored={"t": 777})
    mutual(world, "t", "v")
    hub, _ = make_hub(world)
    session, snapshot = await hub.open("v", ["t", "t"])
    assert snapshot == [PresenceView("t", OFFLINE, 777)]
    hub.close(session)


async def test_settings_change_of_the_target_reveals_and_hides() -> None:
    world = FakeWorld(live={"t": LiveState(True, 1000)})
    world.settings["t"] = PresenceSettings(E, E, False)
    world.lists.add(("v", "t"))  # the viewer's contacts-only setting admits t
    hub, _ = make_hub(world)
    session, snapshot = await hub.open("v", ["t"])
    reader = Reader(hub, session, snapshot)
    runner = asyncio.create_task(hub.run())
    assert snapshot == [PresenceView("t", ONLINE, 1000)]
    world.settings["t"] = PresenceSettings(N, N, False)
    hub.on_message("t", b"s")
    await asyncio.sleep(0.05)
    world.settings["t"] = PresenceSettings(E, N, False)
    hub.on_message("t", b"s")
    await asyncio.sleep(0.05)
    assert reader.seen() == [("t", UNKNOWN, None), ("t", ONLINE, None)]
    runner.cancel()
    await reader.stop()


async def test_settings_change_of_the_viewer_applies_reciprocity() -> None:
    world = FakeWorld(live={"t": LiveState(False, 900)})
    mutual(world, "t", "v")
    hub, channels = make_hub(world)
    session, snapshot = await hub.open("v", ["t"])
    assert channels.refs == Counter({"t": 1, "v": 1})  # the viewer's own channel too
    reader = Reader(hub, session, snapshot)
    runner = asyncio.create_task(hub.run())
    world.settings["v"] = PresenceSettings(C, C, True)
    hub.on_message("v", b"s")
    await asyncio.sleep(0.05)
    world.lists.discard(("v", "t"))
    world.settings["v"] = DEFAULT_SETTINGS
    hub.on_message("v", b"s")
    await asyncio.sleep(0.05)
    world.lists.add(("v", "t"))
    hub.on_message("v", b"s")
    await asyncio.sleep(0.05)
    assert reader.seen() == [("t", UNKNOWN, None), ("t", OFFLINE, 900)]
    runner.cancel()
    await reader.stop()


async def test_refresh_reads_are_batched_across_viewers() -> None:
    world = FakeWorld()
    hub, _ = make_hub(world)
    readers = []
    for i in range(30):
        mutual(world, "t", f"v{i}")
        session, snapshot = await hub.open(f"v{i}", ["t"])
        readers.append(Reader(hub, session, snapshot))
    runner = asyncio.create_task(hub.run())
    world.reads.clear()
    world.settings["t"] = PresenceSettings(N, N, False)
    hub.on_message("t", b"s")
    await asyncio.sleep(0.05)
    # One read of settings and nothing else: nobody can see a "nobody" user.
    assert world.reads == Counter({"settings": 1})
    assert all(r.seen() == [("t", UNKNOWN, None)] for r in readers)
    runner.cancel()
    for reader in readers:
        await reader.stop()


async def test_losing_redis_ends_every_session_with_unavailable() -> None:
    world = FakeWorld()
    hub, channels = make_hub(world)
    session, snapshot = await hub.open("v", ["a", "b"])
    reader = Reader(hub, session, snapshot)
    hub.on_disconnect()
    await settle()
    assert isinstance(reader.error, Unavailable)
    assert reader.error.message == PRESENCE_DOWN
    assert reader.error.reason == Reason.DEPENDENCY_UNAVAILABLE
    assert hub.session_count == 0
    assert +channels.refs == Counter()
    channels.connected = False
    with pytest.raises(Unavailable, match="Redis"):
        await hub.open("v", ["a"])
    channels.connected = True
    world.redis_down = True
    with pytest.raises(Unavailable):
        await hub.open("v", ["a"])
    assert hub.session_count == 0 and +channels.refs == Counter()


async def test_subscriptions_are_capped_per_process() -> None:
    world = FakeWorld()
    hub, _ = make_hub(world, max_sessions=2)
    first, _ = await hub.open("v", ["a"])
    await hub.open("w", ["a"])
    with pytest.raises(ResourceExhausted):
        await hub.open("x", ["a"])
    hub.close(first)
    hub.close(first)  # idempotent
    await hub.open("x", ["a"])
    assert hub.session_count == 2


async def test_one_account_cannot_take_every_subscription() -> None:
    hub, _ = make_hub(FakeWorld(), max_sessions=100)
    for _ in range(32):
        await hub.open("greedy", ["a"])
    with pytest.raises(ResourceExhausted, match="at most 32"):
        await hub.open("greedy", ["a"])
    await hub.open("other", ["a"])


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"1:1700000000123", LiveState(True, 1700000000123)),
        (b"0:5", LiveState(False, 5)),
        (b"s", None),
        (b"2:5", None),
        (b"1:x", None),
        (b"", None),
    ],
)
def test_parse_state(payload: bytes, expected: LiveState | None) -> None:
    assert parse_state(payload) == expected


# -- the sweeper --------------------------------------------------------------------


@dataclass
class Went:
    account_id: str
    seen_ms: int


@dataclass
class Batch:
    went_offline: list[Went]
    scanned: int


class FakeLeases:
    """Leases with expiries, swept at the injected clock's now."""

    def __init__(self) -> None:
        self.expiry: dict[str, int] = {}
        self.online: set[str] = set()
        self.saves: list[SeenRecord] = []
        self.down = False
        self.sweeps: list[int] = []

    async def sweep(self, *, now_ms: int, limit: int) -> Batch:
        if self.down:
            raise PresenceStoreDown("down")
        self.sweeps.append(now_ms)
        due = [a for a, t in sorted(self.expiry.items()) if t <= now_ms][:limit]
        went = []
        for account in due:
            del self.expiry[account]
            if account in self.online:
                self.online.discard(account)
                went.append(Went(account, self.expiry.get(account, now_ms)))
        return Batch(went, len(due))

    async def drain_seen(self, *, now_ms: int, limit: int) -> list[SeenRecord]:
        out, self.saves = self.saves[:limit], self.saves[limit:]
        return out


async def test_sweeper_records_offline_transitions_at_the_injected_now() -> None:
    now = [100.0]
    leases = FakeLeases()
    world = FakeWorld()
    stats = PresenceStats()
    buffer = SeenBuffer(LastSeen(world), stats)
    sweeper = Sweeper(leases, buffer, stats, interval_seconds=0.5, clock=lambda: now[0])
    leases.expiry = {"a": 101_000, "b": 102_000}
    leases.online = {"a", "b"}
    assert await sweeper.tick() == 0
    now[0] = 101.0
    assert await sweeper.tick() == 1
    now[0] = 105.0
    assert await sweeper.tick() == 1
    assert leases.sweeps == [100_000, 101_000, 105_000]
    assert world.stored == {}
    assert await buffer.flush() == 2
    assert world.stored == {"a": 101_000, "b": 105_000}
    assert stats.went_offline == 2


async def test_sweeper_takes_every_due_account_in_one_tick() -> None:
    leases = FakeLeases()
    leases.expiry = {f"u{i:04d}": 1 for i in range(1200)}
    leases.online = set(leases.expiry)
    stats = PresenceStats()
    buffer = SeenBuffer(LastSeen(FakeWorld()), stats)
    sweeper = Sweeper(leases, buffer, stats, interval_seconds=0.5, clock=lambda: 10.0)
    assert await sweeper.tick() == 1200
    assert len(leases.sweeps) == 3  # 500 + 500 + 200
    assert len(buffer) == 1200


async def test_sweeper_drains_online_last_seen_and_keeps_the_latest() -> None:
    leases = FakeLeases()
    leases.saves = [SeenRecord("a", 10), SeenRecord("a", 30), SeenRecord("b", 5)]
    world = FakeWorld(stored={"a": 20, "b": 50})
    stats = PresenceStats()
    buffer = SeenBuffer(LastSeen(world), stats)
    await Sweeper(leases, buffer, stats, interval_seconds=1, clock=lambda: 1.0).tick()
    await buffer.flush()
    assert world.stored == {"a": 30, "b": 50}  # never moves backwards


async def test_a_failed_flush_keeps_its_records_and_redis_outage_is_survived() -> None:
    leases = FakeLeases()
    world = FakeWorld()
    stats = PresenceStats()

    class Failing(LastSeen):
        fail = True

        async def write(self, records: Iterable[SeenRecord]) -> int:
            if self.fail:
                raise ConnectionError("mongo down")
            return await super().write(records)

    store = Failing(world)
    buffer = SeenBuffer(store, stats)
    buffer.add("a", 10)
    with pytest.raises(ConnectionError):
        await buffer.flush()
    buffer.add("a", 5)
    assert len(buffer) == 1 and stats.last_seen_write_failures == 1
    store.fail = False
    await buffer.flush()
    assert world.stored == {"a": 10}
    leases.down = True
    sweeper = Sweeper(leases, buffer, stats, interval_seconds=1, clock=lambda: 1.0)
    assert await sweeper.tick() == 0
    leases.down = False
    assert await sweeper.tick() == 0
    assert stats.sweeps == 2


async def test_go_offline_wakes_the_sweeper_at_once() -> None:
    leases = FakeLeases()
    world = FakeWorld()
    stats = PresenceStats()
    sweeper = Sweeper(
        leases, SeenBuffer(LastSeen(world), stats), stats, interval_seconds=60, clock=lambda: 1.0
    )
    presence = PresenceHandler(
        world,
        world,
        world,
        LastSeen(world),
        RuleLoader(world, world),
        stats,
        limits=UNLIMITED,
        max_contacts=3,
        after_drop=sweeper.poke,
    )
    running = asyncio.create_task(sweeper.run())
    await settle()
    assert len(leases.sweeps) == 1
    await presence.go_offline(account_id="a", device_id="d", now=1.0)
    await settle()
    assert len(leases.sweeps) == 2  # not 60 s later
    running.cancel()


# -- the handler --------------------------------------------------------------------


def handler(world: FakeWorld, *, max_contacts: int = 3) -> PresenceHandler:
    return PresenceHandler(
        world,
        world,
        world,
        LastSeen(world),
        RuleLoader(world, world),
        PresenceStats(),
        limits=UNLIMITED,
        max_contacts=max_contacts,
    )


async def test_get_presence_is_ordered_deduplicated_and_private() -> None:
    world = FakeWorld(live={"a": LiveState(True, 50), "b": LiveState(False, 40)})
    world.settings["a"] = PresenceSettings(E, E, False)
    mutual(world, "b", "v")
    views = await handler(world).get_presence(
        viewer="v", account_ids=["b", "a", "x", "b", "v"], now=NOW
    )
    assert views == [
        PresenceView("b", OFFLINE, 40),
        PresenceView("a", UNKNOWN, None),  # reciprocity: v shows only its contacts
        PresenceView("x", UNKNOWN, None),
        PresenceView("v", OFFLINE, None),
    ]
    world.redis_down = True
    with pytest.raises(Unavailable, match="messaging is not affected"):
        await handler(world).get_presence(viewer="v", account_ids=["a"], now=NOW)


async def test_settings_and_contacts_work_without_redis_and_publish_when_they_can() -> None:
    world = FakeWorld()
    presence = handler(world)
    await presence.update_settings(account_id="v", online=E, last_seen=None, invisible=None, now=1)
    assert world.published == ["v"]
    world.redis_down = True
    got = await presence.update_settings(
        account_id="v", online=None, last_seen=E, invisible=True, now=2
    )
    assert (got.online, got.last_seen, got.invisible) == (E, E, True)
    assert await presence.add_contacts(owner="v", account_ids=["a", "b", "a"], now=3) == 2
    assert await presence.add_contacts(owner="v", account_ids=["a"], now=3) == 0
    assert world.published == ["v"]
    with pytest.raises(ResourceExhausted) as over:
        await presence.add_contacts(owner="v", account_ids=["c", "d"], now=4)
    assert over.value.reason == Reason.TOO_MANY_CONTACTS
    assert await presence.remove_contacts(owner="v", account_ids=["a", "z"]) == 1
    with pytest.raises(InvalidArgument):
        await presence.update_settings(
            account_id="v", online=C, last_seen=None, invisible=None, now=5
        )
