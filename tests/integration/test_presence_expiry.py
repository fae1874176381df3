"""svc_presence on a stack of its own with a short TTL and small caps:
expiry, the contact cap under concurrency, the subscription cap, and last
seen surviving a Redis restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.presence.v1 import presence_pb2 as pb
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley_dev.stack import LocalStack
from tests.integration.test_accounts import details
from tests.integration.test_presence import (
    OFFLINE,
    ONLINE,
    E,
    Sub,
    add_contacts,
    failure,
    get,
    own_last_seen,
    settings,
)
from tests.users import sign_up, sign_up_many

SHORT_TTL = 2.0
SHORT_SWEEP = 0.2
SHORT_MAX_CONTACTS = 5
SHORT_MAX_SUBSCRIPTIONS = 4


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def short(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    async with LocalStack.with_free_ports(
        root=tmp_path_factory.mktemp("presence_short"),
        shutdown_grace_seconds=2.0,
        extra_config={
            "presence": {
                "device_ttl_seconds": SHORT_TTL,
                "sweep_interval_seconds": SHORT_SWEEP,
                "max_contacts": SHORT_MAX_CONTACTS,
                "max_subscriptions": SHORT_MAX_SUBSCRIPTIONS,
            }
        },
    ) as local:
        yield local


@pytest_asyncio.fixture(loop_scope="session")
async def short_stubs(
    short: LocalStack,
) -> AsyncIterator[tuple[kgrpc.AccountServiceStub, pgrpc.PresenceServiceStub]]:
    async with (
        grpc.aio.insecure_channel(short.keys_target) as keys_channel,
        grpc.aio.insecure_channel(short.presence_target) as presence_channel,
    ):
        yield kgrpc.AccountServiceStub(keys_channel), pgrpc.PresenceServiceStub(presence_channel)


async def test_online_until_the_ttl_runs_out_then_offline_with_last_seen(
    short_stubs: tuple[kgrpc.AccountServiceStub, pgrpc.PresenceServiceStub],
) -> None:
    keys, presence = short_stubs
    alice, bob = await sign_up_many(keys, 2)
    await settings(presence, alice, E, E)
    await settings(presence, bob, E, E)
    await presence.Heartbeat(pb.HeartbeatRequest(), metadata=alice.md)
    started = time.monotonic()
    at = await own_last_seen(presence, alice)
    assert await get(presence, bob, [alice.account_id]) == [(alice.account_id, ONLINE, at)]
    while (await get(presence, bob, [alice.account_id]))[0][1] == ONLINE:
        assert time.monotonic() - started < SHORT_TTL + 3, "never went offline"
        await asyncio.sleep(0.05)
    took = time.monotonic() - started
    assert SHORT_TTL - 0.3 <= took <= SHORT_TTL + SHORT_SWEEP + 1.0, took
    assert await get(presence, bob, [alice.account_id]) == [(alice.account_id, OFFLINE, at)]


async def test_the_contact_cap_is_exact_under_concurrent_adds(
    short_stubs: tuple[kgrpc.AccountServiceStub, pgrpc.PresenceServiceStub],
) -> None:
    keys, presence = short_stubs
    owner = await sign_up(keys)
    others = await sign_up_many(keys, 9)
    assert await add_contacts(presence, owner, *others[:3]) == 3
    error = await failure(add_contacts(presence, owner, *others[3:6]))  # 6 > 5: adds nothing
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(error)[0] == "ERROR_REASON_TOO_MANY_CONTACTS"
    results = await asyncio.gather(
        *(add_contacts(presence, owner, other) for other in others[3:9]), return_exceptions=True
    )
    added = [r for r in results if r == 1]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(added) == 2 and len(refused) == 4, results
    assert all(details(r)[0] == "ERROR_REASON_TOO_MANY_CONTACTS" for r in refused)
    listed = await presence.ListContacts(pb.ListContactsRequest(), metadata=owner.md)
    assert len(listed.contacts) == SHORT_MAX_CONTACTS
    # At the cap, adding someone already listed is still fine (idempotent).
    assert await add_contacts(presence, owner, others[0]) == 0


async def test_subscriptions_per_process_are_capped(
    short_stubs: tuple[kgrpc.AccountServiceStub, pgrpc.PresenceServiceStub],
) -> None:
    keys, presence = short_stubs
    alice = await sign_up(keys)
    subs = [
        await Sub(presence, alice, [alice.account_id]).started()
        for _ in range(SHORT_MAX_SUBSCRIPTIONS)
    ]
    extra = Sub(presence, alice, [alice.account_id])
    try:
        await extra.wait_for(lambda s: s.error is not None, what="refusal")
        assert extra.error is not None
        assert extra.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await subs[0].close()
        await asyncio.sleep(0.2)
        again = await Sub(presence, alice, [alice.account_id]).started()
        subs.append(again)
        assert again.error is None
    finally:
        for sub in subs:
            await sub.close()


async def test_last_seen_survives_a_redis_restart(
    short: LocalStack,
    short_stubs: tuple[kgrpc.AccountServiceStub, pgrpc.PresenceServiceStub],
) -> None:
    keys, presence = short_stubs
    gone, online, viewer = await sign_up_many(keys, 3)
    for user in (gone, online, viewer):
        await settings(presence, user, E, E)
    await presence.Heartbeat(pb.HeartbeatRequest(), metadata=gone.md)
    await presence.GoOffline(pb.GoOfflineRequest(), metadata=gone.md)
    gone_at = (await get(presence, viewer, [gone.account_id]))[0][2]
    await presence.Heartbeat(pb.HeartbeatRequest(), metadata=online.md)
    online_at = await own_last_seen(presence, online)

    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(short.mongo_uri)
    stored = mongo.parley.presence_last_seen
    try:
        # The offline one with its transition, the online one from the save
        # queue (its first heartbeat is due at once); both within a flush.
        deadline = time.monotonic() + 10
        while (
            await stored.count_documents({"_id": {"$in": [gone.account_id, online.account_id]}}) < 2
        ):
            assert time.monotonic() < deadline, "last seen never reached MongoDB"
            await presence.Heartbeat(pb.HeartbeatRequest(), metadata=online.md)
            await asyncio.sleep(0.1)
        online_stored = await stored.find_one({"_id": online.account_id})
        assert online_stored is not None
        online_ms = int(online_stored["seen"].timestamp() * 1000)
        assert online_ms >= online_at
    finally:
        await mongo.close()
    pid = short.process("svc_presence").pid

    await short.stop_redis()
    await short.start_redis()

    deadline = time.monotonic() + 10
    while True:
        try:
            after = await get(presence, viewer, [gone.account_id, online.account_id])
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() < deadline, "presence did not come back"
            await asyncio.sleep(0.1)
    # Redis forgot both; MongoDB remembers. The online one's leases are gone
    # with Redis, so it shows offline with its last stored activity.
    assert after == [(gone.account_id, OFFLINE, gone_at), (online.account_id, OFFLINE, online_ms)]
    assert short.process("svc_presence").pid == pid
    # And presence works as before without a restart.
    await presence.Heartbeat(pb.HeartbeatRequest(), metadata=online.md)
    assert (await get(presence, viewer, [online.account_id]))[0][1] == ONLINE
    sub = await Sub(presence, viewer, [online.account_id]).started()
    await sub.close()
