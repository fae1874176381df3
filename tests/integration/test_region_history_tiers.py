"""A replica keeps only the hot part of another region's conversation; its
member reads the whole history through the replica all the same (issue 20,
parts 3 and 5; issue 17).

Two regions (eu, us). A group owned by eu has a member homed in us. Its
entries are aged by rewriting their creation times in both regions' logs
(ids stay; the archivers below are driven by a clock 100 days ahead, so
every id lies before their windows). eu's archiver moves the old weeks to
its archive; us's pass trims its copy below the window and records its
floor. bob, connected to us, pages the history backward and forward across
the floor and sees every message once, in order, as the owner shows it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_core.ids import region_number_of
from parley_core.storage import mongo as mongo_storage
from parley_dev.regions import RegionsStack
from svc_message.archive_wiring import build_archive
from svc_message.model import HISTORY_KINDS, ChangeKind
from tests.helpers import wait_until
from tests.region_users import sign_up_in
from tests.users import (
    Device,
    all_messages,
    error_reason,
    open_stream,
    rid,
    send,
    synced,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

EU, US = "eu", "us"
NUMBERS = {EU: 1, US: 2}
CALL_SECONDS = 10.0
REPLICATED_SECONDS = 30.0
OLD, RECENT = 24, 8
PAGE = 5
DAY = 86400.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def regions(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RegionsStack]:
    harness = RegionsStack(root=tmp_path_factory.mktemp("regions"), regions=[EU, US])
    async with harness:
        yield harness


async def _sign_up(regions: RegionsStack, home: str, handle: str | None = None) -> Device:
    return await sign_up_in(regions, home, handle=handle, timeout=CALL_SECONDS)


def _database(regions: RegionsStack, region: str, client: Any) -> Any:
    return mongo_storage.durable_database(client, regions.region(region).settings.mongo)


async def _age(db: Any, conversation_id: str, times: dict[str, datetime]) -> None:
    for entry_id, when in times.items():
        await db["messages"].update_one({"_id": entry_id}, {"$set": {"created_at": when}})


async def _pages(
    stub: mgrpc.MessageServiceStub, device: Device, group: str, *, forward: bool, start: int = 0
) -> list[int]:
    seqs: list[int] = []
    token = ""
    for _ in range(200):
        page = await stub.ListMessages(
            mpb.ListMessagesRequest(
                conversation_id=group,
                page_size=PAGE,
                page_token=token,
                direction=mpb.DIRECTION_FORWARD if forward else mpb.DIRECTION_BACKWARD,
                start_seq=start,
            ),
            metadata=device.md,
            timeout=CALL_SECONDS,
        )
        seqs += [m.seq for m in page.messages]
        token = page.next_page_token
        if not token:
            return seqs
    raise AssertionError("paging did not end")


def _owned_by(region: str) -> Any:
    return lambda conversation_id: region_number_of(conversation_id) == NUMBERS[region]


async def test_a_replica_trims_old_history_and_reads_it_from_the_owner(
    regions: RegionsStack,
) -> None:
    alice = await _sign_up(regions, EU)
    bob = await _sign_up(regions, US)
    async with (
        grpc.aio.insecure_channel(regions.region(EU).message_targets[0]) as eu_channel,
        grpc.aio.insecure_channel(regions.region(US).message_targets[0]) as us_channel,
    ):
        eu, us = mgrpc.MessageServiceStub(eu_channel), mgrpc.MessageServiceStub(us_channel)
        created = await eu.CreateGroup(
            mpb.CreateGroupRequest(
                request_id=rid(), title="old and new", member_account_ids=[bob.account_id]
            ),
            metadata=alice.md,
            timeout=CALL_SECONDS,
        )
        group = created.conversation.conversation_id
        assert region_number_of(group) == NUMBERS[EU]
        for i in range(OLD + RECENT):
            await send(eu, alice, group, f"m{i}".encode())
        # bob's history as the owner shows it.
        owner_view = [m.seq for m in await all_messages(eu, bob, group)]

        async def replicated() -> bool:
            try:
                return [m.seq for m in await all_messages(us, bob, group)] == owner_view
            except grpc.aio.AioRpcError:
                return False

        await wait_until(replicated, timeout=REPLICATED_SECONDS, what="history replicated to us")

        eu_client: AsyncMongoClient[Any] = AsyncMongoClient(regions.region(EU).mongo_uri)
        us_client: AsyncMongoClient[Any] = AsyncMongoClient(regions.region(US).mongo_uri)
        try:
            eu_db, us_db = _database(regions, EU, eu_client), _database(regions, US, us_client)
            # "Now" of the archivers: far enough ahead that every id is old.
            now = time.time() + 100 * DAY
            entries = [
                doc
                async for doc in eu_db["messages"]
                .find({"conversation_id": group}, {"_id": 1, "version": 1})
                .sort("version", 1)
            ]
            old = len(entries) - RECENT
            # Old entries spread over weeks 80 to 40 days back; the rest 2 days back.
            times = {
                str(doc["_id"]): datetime.fromtimestamp(
                    now - (80 - 40 * i / max(old - 1, 1)) * DAY
                    if i < old
                    else now - 2 * DAY + i * 60,
                    UTC,
                )
                for i, doc in enumerate(entries)
            }
            await _age(eu_db, group, times)
            await _age(us_db, group, times)

            eu_settings = regions.region(EU).settings
            _, eu_archiver, _ = await build_archive(
                eu_settings, eu_db, clock=lambda: now, owns=_owned_by(EU)
            )
            report = await eu_archiver.run_pass(now)
            assert report.moved > 0 and report.trimmed == 0
            # eu's pass never trims what eu owns: no floor, its newest entries stay.
            assert await eu_db["replica_floors"].find_one({"_id": group}) is None
            assert await eu_db["messages"].count_documents({"conversation_id": group}) >= RECENT

            us_settings = regions.region(US).settings
            _, us_archiver, _ = await build_archive(
                us_settings, us_db, clock=lambda: now, owns=_owned_by(US)
            )
            report = await us_archiver.run_pass(now)
            assert report.moved == 0 and report.trimmed == old
            floor = await us_db["replica_floors"].find_one({"_id": group})
            assert floor is not None and floor["version"] == entries[old - 1]["version"]
            floor_version = int(floor["version"])
            window_start = datetime.fromtimestamp(now - us_settings.archive.hot_window_seconds, UTC)
            assert (
                await us_db["messages"].count_documents(
                    {"conversation_id": group, "created_at": {"$lt": window_start}}
                )
                == 0
            )
            held = [
                int(doc["seq"])
                async for doc in us_db["messages"].find(
                    {"conversation_id": group, "seq": {"$gte": 1}}
                )
                if doc.get("kind", ChangeKind.MESSAGE) in HISTORY_KINDS
            ]
            assert held and min(held) > min(owner_view)
            # Nothing archived at us: the archive objects are the owner's.
            assert await us_db["archive_manifest"].count_documents({}) == 0
        finally:
            await eu_client.close()
            await us_client.close()

        # Through us, across the floor, in both directions: the owner's history exactly.
        backward = await _pages(us, bob, group, forward=False)
        assert backward == owner_view[::-1]
        forward = await _pages(us, bob, group, forward=True)
        assert forward == owner_view
        # A forward page starting below the floor runs on past it.
        below = min(held) - 2
        assert await _pages(us, bob, group, forward=True, start=below) == [
            s for s in owner_view if s >= below
        ]
        # A backward page starting just above the floor runs on below it.
        above = min(held) + 1
        assert await _pages(us, bob, group, forward=False, start=above) == [
            s for s in owner_view[::-1] if s <= above
        ]
        # The owner answers the same from its two tiers.
        assert await _pages(eu, bob, group, forward=False) == owner_view[::-1]

        # A device resuming its feed from below the floor is told where to
        # resume (as from the glacier tier); from the floor it catches up.
        stream = await open_stream(us, bob, positions={group: 1}, auto_ack=False)

        async def refused() -> bool:
            return stream.error is not None

        try:
            await wait_until(refused, timeout=CALL_SECONDS, what="stream refused")
            assert stream.error is not None
            assert stream.error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_reason(stream.error) == "ERROR_REASON_HISTORY_ARCHIVED"
        finally:
            await stream.close()
        stream = await open_stream(us, bob, positions={group: floor_version}, auto_ack=False)
        try:
            await stream.wait_for(synced, timeout=CALL_SECONDS)
            replayed = {m.seq for m in stream.messages(group)}
            assert replayed and min(replayed) >= min(held)
        finally:
            await stream.close()
