"""An account erasure across a partition longer than the tombstone window
(issue 20, part 7; docs/design/regions.md, "Presence, erasure, failure").

Two regions joined by the fault proxies, the replicators' clock moved by the
test hook (message.replication.clock_offset_file), not by waiting. An account
homed in eu writes in a group owned by eu and in one owned by us, both
replicated to the other region. The regions are cut apart, the account is
erased through its home region (eu erases its own copies at once; the
``message@us`` step waits for the link), the clocks move 31 days on, and the
link heals: each owner's replicator finds its peer's last acknowledgement
older than the window and resyncs it instead of resuming the stream, the
erasure job reaches us, and in the end both regions hold the same copy of
each conversation, with none of the account's ciphertexts, member documents
or id in either region's MongoDB. eu, erased first, is scanned throughout:
nothing erased ever reappears there while the regions converge (not its
ciphertexts: the erased copy wins; not its id: eu applies what names an
account it erased as the erasure leaves it, though us replicates its
unerased copies before its own erasure step runs).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.regions import RegionsStack
from tests.helpers import TEST_LIMITS, http_get
from tests.region_handles import handle_registered_in
from tests.region_users import sign_up_in
from tests.store_scan import scan_mongo
from tests.users import Device, rid, send

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(420)]

EU, US = "eu", "us"
CALL_SECONDS = 10.0
MONTH_SECONDS = 31 * 86400
ERASED_HERE_SECONDS = 60.0
CONVERGE_SECONDS = 150.0
# Longer than the replicators' retry pause (0.5 s): each looks at its cursor
# again after the clock moved, before the link heals.
NOTICE_SECONDS = 2.0
ERASED = "erased"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RegionsStack, Path]]:
    root = tmp_path_factory.mktemp("erasure_window")
    offset = root / "replicator_clock_offset"
    config: dict[str, Any] = {
        **TEST_LIMITS,
        "keys": {"erasure_poll_seconds": 0.5, "erasure_lease_seconds": 5},
        "message": {"replication": {"clock_offset_file": str(offset)}},
    }
    harness = RegionsStack(root=root, regions=[EU, US], extra_config=config)
    async with harness:
        yield harness, offset


async def _sign_up(regions: RegionsStack, home: str, handle: str | None = None) -> Device:
    return await sign_up_in(regions, home, handle=handle, timeout=CALL_SECONDS)


async def _group(stub: mgrpc.MessageServiceStub, creator: Device, others: list[Device]) -> str:
    view = await stub.CreateGroup(
        mpb.CreateGroupRequest(
            request_id=rid(), title="window", member_account_ids=[m.account_id for m in others]
        ),
        metadata=creator.md,
        timeout=CALL_SECONDS,
    )
    return str(view.conversation.conversation_id)


async def _copy(regions: RegionsStack, region: str, conversation_id: str) -> Any:
    """A region's copy of a conversation, as the regions must agree on it."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(regions.region(region).mongo_uri)
    try:
        db = client["parley"]
        messages = db["messages"].find({"conversation_id": conversation_id}).sort("version", 1)
        entries = [
            (
                d["_id"],
                d.get("seq"),
                d.get("version"),
                d.get("state_version"),
                d.get("sender_id"),
                bytes(d.get("body") or b""),
                bool(d.get("deleted")),
            )
            async for d in messages
        ]
        head = await db["conversations"].find_one({"_id": conversation_id})
        members = db["members"].find({"conversation_id": conversation_id})
        return (
            entries,
            None
            if head is None
            else (sorted(head.get("member_ids") or ()), sorted((head.get("sent") or {}).keys())),
            sorted([str(d.get("account_id")) async for d in members]),
        )
    finally:
        await client.close()


async def _naming(regions: RegionsStack, region: str, account_id: str) -> list[str]:
    """Feed collections of the region with a document naming the account."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(regions.region(region).mongo_uri)
    try:
        db = client["parley"]
        found = []
        for name in ("messages", "conversations", "members"):
            query = {
                "$or": [
                    {"sender_id": account_id},
                    {"member_ids": account_id},
                    {"account_id": account_id},
                    {"system.actor": account_id},
                    {"system.targets": account_id},
                    {f"sent.{account_id}": {"$exists": True}},
                ]
            }
            if await db[name].find_one(query) is not None:
                found.append(name)
        return found
    finally:
        await client.close()


async def _erasure_done(regions: RegionsStack, erasure_id: str) -> bool:
    client: AsyncMongoClient[Any] = AsyncMongoClient(regions.region(EU).mongo_uri)
    try:
        record = await client["parley"]["erasures"].find_one({"_id": erasure_id})
    finally:
        await client.close()
    return record is not None and record.get("state") == "done"


async def _snapshots(regions: RegionsStack, region: str, peer: str) -> float:
    status, body = await http_get(regions.region(region).message_metrics_urls[0])
    assert status == 200
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name.startswith("parley_replication_snapshots") and (
                sample.labels.get("peer") == peer
            ):
                return float(sample.value)
    return 0.0


async def _found(regions: RegionsStack, region: str, needles: list[bytes]) -> set[bytes]:
    return {hit.needle for hit in await scan_mongo(regions.region(region), needles)}


async def _wait(what: str, seconds: float, check: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.5)


async def test_erasure_across_a_partition_longer_than_the_window(
    world: tuple[RegionsStack, Path],
) -> None:
    regions, offset = world
    # The handle's registrar across the cut too: its release is a step of the
    # peer's part (handle@us), which holds back nothing of eu's own.
    erin = await _sign_up(regions, EU, handle_registered_in(US, (EU, US)))  # erased
    eve = await _sign_up(regions, EU)
    ulla = await _sign_up(regions, US)
    channels = {
        r: grpc.aio.insecure_channel(regions.region(r).message_targets[0]) for r in (EU, US)
    }
    stubs = {r: mgrpc.MessageServiceStub(c) for r, c in channels.items()}
    try:
        # Each created through its creator's home, which owns it.
        owned_by_eu = await _group(stubs[EU], erin, [eve, ulla])
        owned_by_us = await _group(stubs[US], ulla, [erin, eve])
        conversations = (owned_by_eu, owned_by_us)
        secrets: list[bytes] = []
        for cid in conversations:
            for _ in range(3):
                secrets.append(f"erased-secret {uuid.uuid4()}".encode())
                await send(stubs[EU], erin, cid, secrets[-1])
            await send(stubs[US], ulla, cid, f"kept {uuid.uuid4()}".encode())

        # The positive control: both regions hold every ciphertext.
        async def everywhere() -> bool:
            return all([await _found(regions, r, secrets) == set(secrets) for r in (EU, US)])

        await _wait("the conversations replicated", 60.0, everywhere)
        snapshots_before = {
            (EU, US): await _snapshots(regions, EU, US),
            (US, EU): await _snapshots(regions, US, EU),
        }

        regions.proxy(EU, US).cut(refuse=True)
        regions.proxy(US, EU).cut(refuse=True)
        try:
            # us's own group goes on while it is cut off.
            await send(stubs[US], ulla, owned_by_us, b"during the partition")
            async with grpc.aio.insecure_channel(regions.region(EU).keys_target) as channel:
                reply = await kgrpc.AccountServiceStub(channel).DeleteAccount(
                    kpb.DeleteAccountRequest(request_id=rid(), confirm_handle=erin.handle),
                    metadata=erin.md,
                    timeout=CALL_SECONDS,
                )
            erasure_id = reply.erasure_id

            async def erased_in_eu() -> bool:
                return not await _found(regions, EU, secrets)

            await _wait("eu erased its own copies", ERASED_HERE_SECONDS, erased_in_eu)
            # us cannot have heard of it: its copies are intact.
            assert await _found(regions, US, secrets) == set(secrets)
            assert not await _erasure_done(regions, erasure_id)
            offset.write_text(str(MONTH_SECONDS))
            await asyncio.sleep(NOTICE_SECONDS)
        finally:
            regions.proxy(EU, US).heal()
            regions.proxy(US, EU).heal()

        reappeared: set[str] = set()

        async def converged() -> bool:
            # eu erased first: nothing of it may come back while the regions converge.
            assert await _found(regions, EU, secrets) == set()
            reappeared.update(await _naming(regions, EU, erin.account_id))
            if not await _erasure_done(regions, erasure_id):
                return False
            if await _found(regions, US, secrets):
                return False
            for region in (EU, US):
                if await _naming(regions, region, erin.account_id):
                    return False
            for cid in conversations:
                if await _copy(regions, EU, cid) != await _copy(regions, US, cid):
                    return False
            return True

        await _wait("both regions erased and agreeing", CONVERGE_SECONDS, converged)
        # Not even the account's member documents or head entries: eu applies
        # us's copies, replicated before us ran its own step, as erased.
        assert reappeared == set()
        # Each owner resynced its peer rather than resuming a month-old stream.
        assert await _snapshots(regions, EU, US) > snapshots_before[(EU, US)]
        assert await _snapshots(regions, US, EU) > snapshots_before[(US, EU)]
        for cid in conversations:
            entries, head, members = await _copy(regions, EU, cid)
            assert erin.account_id not in members and erin.account_id not in head[0]
            senders = {sender for _, _, _, _, sender, _, _ in entries}
            assert erin.account_id not in senders and ERASED in senders
    finally:
        offset.write_text("0")
        for c in channels.values():
            await c.close()
