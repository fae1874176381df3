"""Inbox settings across two regions (issue 20, part 4; docs/design/crdt.md).

One two-region harness whose clocks disagree: the settings clock of eu runs
10 minutes fast and us's 10 minutes slow (``settings_clock_skew_ms``). An
account homed in eu shares groups, owned by either region, with one homed
in us, so both regions hold them. Settings written through one region are
seen through the other (and heard live by a device connected there);
conflicting writes made on both sides of a cut
link converge once it heals, to the same inbox view in both regions, with
no write echoing back and forth; and a write made in the slow region after
it saw the fast region's still wins everywhere.

The random workload is seeded (printed; PARLEY_SETTINGS_SEED replays it).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.regions import RegionsStack
from tests.helpers import wait_until
from tests.region_users import sign_up_in
from tests.users import Device, Stream, open_stream, rid, synced

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

EU, US = "eu", "us"
SKEW_MS = {EU: 10 * 60_000, US: -10 * 60_000}
CALL_SECONDS = 10.0
CONVERGE_SECONDS = 30.0
OPERATIONS = 30
# Longer than a replication batch's wait and round trip: an echo would show.
QUIET_SECONDS = 2.0
OPS = ("mute", "unmute", "pin", "unpin", "archive", "unarchive", "mark_unread")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def regions(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RegionsStack]:
    harness = RegionsStack(
        root=tmp_path_factory.mktemp("settings_regions"),
        regions=[EU, US],
        region_config={
            name: {"message": {"settings_clock_skew_ms": skew}} for name, skew in SKEW_MS.items()
        },
    )
    async with harness:
        yield harness


class World:
    """Stubs of both regions' svc_message, and the two members."""

    def __init__(self, stubs: dict[str, mgrpc.MessageServiceStub], alice: Device, bob: Device):
        self.stubs = stubs
        self.alice = alice
        self.bob = bob


@pytest_asyncio.fixture(loop_scope="session")
async def world(regions: RegionsStack) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        stubs = {}
        for name in (EU, US):
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(regions.region(name).message_targets[0])
            )
            stubs[name] = mgrpc.MessageServiceStub(channel)
        alice = await _sign_up(regions, EU)
        bob = await _sign_up(regions, US)
        yield World(stubs, alice, bob)


async def _sign_up(regions: RegionsStack, home: str, handle: str | None = None) -> Device:
    return await sign_up_in(regions, home, handle=handle, timeout=CALL_SECONDS)


async def _groups(world: World, count: int) -> list[str]:
    """``count`` groups of alice and bob, owned alternately by eu (created by
    alice) and us (by bob), once both regions list them all for alice."""
    made: list[str] = []
    for i in range(count):
        creator, other, region = (
            (world.alice, world.bob, EU) if i % 2 == 0 else (world.bob, world.alice, US)
        )
        view = await world.stubs[region].CreateGroup(
            mpb.CreateGroupRequest(
                request_id=rid(), title=f"settings {i}", member_account_ids=[other.account_id]
            ),
            metadata=creator.md,
            timeout=CALL_SECONDS,
        )
        made.append(view.conversation.conversation_id)

    async def everywhere() -> bool:
        # At the same last seq in both: an archive records the seq it was
        # made at, and news older than that arriving later would unarchive.
        heads = [await _heads(world, region) for region in (EU, US)]
        return all(set(made) <= set(h) for h in heads) and all(
            heads[0][c] == heads[1][c] for c in made
        )

    await wait_until(everywhere, timeout=CONVERGE_SECONDS, what="groups held by both regions")
    return made


View = tuple[str, int | None, bool, int, bool, bool]


async def _heads(world: World, region: str) -> dict[str, int]:
    """Alice's conversations as ``region`` holds them: their last seqs."""
    page = await world.stubs[region].ListConversations(
        mpb.ListConversationsRequest(page_size=100, archive_filter=mpb.ARCHIVE_FILTER_ALL),
        metadata=world.alice.md,
        timeout=CALL_SECONDS,
    )
    return {v.conversation.conversation_id: v.conversation.last_seq for v in page.conversations}


async def _inbox(world: World, region: str) -> list[View]:
    """Alice's whole inbox (archived included) through ``region``, in order:
    (conversation, muted until (s), pinned, pin rank, archived, marked unread)."""
    views: list[View] = []
    token = ""
    for _ in range(50):
        page = await world.stubs[region].ListConversations(
            mpb.ListConversationsRequest(
                page_size=100, page_token=token, archive_filter=mpb.ARCHIVE_FILTER_ALL
            ),
            metadata=world.alice.md,
            timeout=CALL_SECONDS,
        )
        for v in page.conversations:
            s = v.settings
            views.append(
                (
                    v.conversation.conversation_id,
                    s.muted_until.seconds if s.HasField("muted_until") else None,
                    s.pinned,
                    s.pin_rank,
                    s.archived,
                    s.marked_unread,
                )
            )
        token = page.next_page_token
        if not token:
            return views
    raise AssertionError("the inbox did not end")


def _of(views: list[View], conversation_ids: list[str]) -> list[View]:
    wanted = set(conversation_ids)
    return [v for v in views if v[0] in wanted]


async def _write(world: World, region: str, op: str, conversation_id: str, minutes: int) -> None:
    stub, md = world.stubs[region], world.alice.md
    request_id = rid()
    if op in ("mute", "unmute"):
        request = mpb.SetMutedRequest(request_id=request_id, conversation_id=conversation_id)
        if op == "mute":
            until = Timestamp()
            until.GetCurrentTime()
            until.seconds += minutes * 60
            request.until.CopyFrom(until)
        await stub.SetMuted(request, metadata=md, timeout=CALL_SECONDS)
    elif op in ("pin", "unpin"):
        await stub.SetPinned(
            mpb.SetPinnedRequest(
                request_id=request_id, conversation_id=conversation_id, pinned=op == "pin"
            ),
            metadata=md,
            timeout=CALL_SECONDS,
        )
    elif op in ("archive", "unarchive"):
        await stub.SetArchived(
            mpb.SetArchivedRequest(
                request_id=request_id, conversation_id=conversation_id, archived=op == "archive"
            ),
            metadata=md,
            timeout=CALL_SECONDS,
        )
    elif op == "mark_unread":
        await stub.MarkUnread(
            mpb.MarkUnreadRequest(request_id=request_id, conversation_id=conversation_id),
            metadata=md,
            timeout=CALL_SECONDS,
        )
    else:
        raise AssertionError(op)


async def _converged(world: World, groups: list[str]) -> list[View]:
    """Waits (bounded) until both regions show alice the same settings of
    ``groups``; that view."""
    seen: dict[str, list[View]] = {}

    async def same() -> bool:
        for region in (EU, US):
            seen[region] = _of(await _inbox(world, region), groups)
        return seen[EU] == seen[US]

    try:
        await wait_until(same, timeout=CONVERGE_SECONDS, interval=0.25, what="regions converge")
    except AssertionError:
        raise AssertionError(f"not converged: eu {seen.get(EU)} us {seen.get(US)}") from None
    return seen[EU]


async def _stored_states(regions: RegionsStack, region: str, account_id: str) -> dict[str, Any]:
    """The account's settings documents in ``region``: (version, CRDT state) by id."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(regions.region(region).mongo_uri)
    try:
        cursor = client["parley"]["inbox_settings"].find({"account_id": account_id})
        return {d["_id"]: (d.get("version"), d.get("crdt")) async for d in cursor}
    finally:
        await client.close()


async def test_settings_written_in_one_region_are_seen_through_the_other(world: World) -> None:
    muted, pinned, archived = await _groups(world, 3)
    # Alice's device connected to us hears of what was written through eu.
    stream = await open_stream(world.stubs[US], world.alice)
    try:
        await stream.wait_for(synced, timeout=CALL_SECONDS)
        await _write(world, EU, "mute", muted, 60)

        def muted_event(s: Stream) -> bool:
            return any(
                e.WhichOneof("kind") == "settings"
                and e.settings.conversation_id == muted
                and e.settings.HasField("muted_until")
                for e in s.events
            )

        await stream.wait_for(muted_event, timeout=CONVERGE_SECONDS)
    finally:
        await stream.close()
    await _write(world, EU, "pin", pinned, 0)
    await _write(world, US, "archive", archived, 0)

    async def shown_in(region: str) -> bool:
        views = {v[0]: v for v in await _inbox(world, region)}
        return (
            views[muted][1] is not None
            and views[pinned][2]
            and not views[pinned][4]
            and views[archived][4]
            and not views[archived][2]
        )

    for region in (EU, US):
        await wait_until(
            lambda region=region: shown_in(region),  # type: ignore[misc]
            timeout=CONVERGE_SECONDS,
            what=f"settings shown through {region}",
        )
    view = await _converged(world, [muted, pinned, archived])
    # The pinned conversation comes first, in both.
    assert view[0][0] == pinned


async def test_conflicting_writes_across_a_partition_converge_after_it_heals(
    regions: RegionsStack, world: World
) -> None:
    seed = int(os.environ.get("PARLEY_SETTINGS_SEED") or random.randrange(1 << 32))
    print(f"settings partition seed: {seed}")
    rng = random.Random(seed)
    groups = await _groups(world, 4)
    links = [regions.proxy(EU, US), regions.proxy(US, EU)]
    for link in links:
        link.cut()
    try:
        for _ in range(OPERATIONS):
            region = rng.choice((EU, US))
            await _write(world, region, rng.choice(OPS), rng.choice(groups), rng.randrange(30, 600))
        # Both sides wrote: while cut, each shows only its own writes.
        for _ in range(2):
            for region in (EU, US):
                await _write(world, region, "pin" if region == EU else "unpin", groups[0], 0)
    finally:
        for link in links:
            link.heal()
    await _converged(world, groups)
    # Converged to equal states, and nothing echoes between the regions.
    eu = await _stored_states(regions, EU, world.alice.account_id)
    us = await _stored_states(regions, US, world.alice.account_id)
    assert {k: v[1] for k, v in eu.items()} == {k: v[1] for k, v in us.items()}
    await asyncio.sleep(QUIET_SECONDS)
    assert await _stored_states(regions, EU, world.alice.account_id) == eu
    assert await _stored_states(regions, US, world.alice.account_id) == us


async def test_a_causally_later_write_in_the_slow_region_wins(world: World) -> None:
    archived, pinned = await _groups(world, 2)
    # eu's clock is 20 minutes ahead of us's: by wall time alone its writes win.
    await _write(world, EU, "archive", archived, 0)
    await _write(world, EU, "pin", pinned, 0)

    async def seen_in_us() -> bool:
        views = {v[0]: v for v in await _inbox(world, US)}
        return views[archived][4] and views[pinned][2]

    await wait_until(seen_in_us, timeout=CONVERGE_SECONDS, what="eu's writes seen in us")
    # us saw them; what it writes now comes after them.
    await _write(world, US, "unarchive", archived, 0)
    await _write(world, US, "archive", pinned, 0)
    view = {v[0]: v for v in await _converged(world, [archived, pinned])}
    assert not view[archived][4]
    assert view[pinned][4] and not view[pinned][2]
    await asyncio.sleep(QUIET_SECONDS)
    again = {v[0]: v for v in _of(await _inbox(world, EU), [archived, pinned])}
    assert again == view
