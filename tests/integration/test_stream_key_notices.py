"""Key notices on the delivery stream, against the session stack (two
svc_message instances) on a single Redis and on a Redis Cluster. svc_keys is
simulated: the tests write its records (pre_key_lows) and publish its live
notices on the account's channel as it does, through
parley_core.storage.key_notices.

Negative checks use a barrier: a later notice that must arrive after the one
that must not (Redis delivers one connection's publishes in order, and each
process routes them in order).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_core.storage import redis as redis_storage
from parley_core.storage.key_notices import PreKeyLows, account_channel, publish_to_account
from parley_core.storage.redis import Redis
from parley_dev.stack import LocalStack
from tests.redis_server import Stubs
from tests.users import Device, Stream, link_device, open_stream, rpc, sign_up_many, synced

WAITING = mpb.KeyNotice.KIND_SENDER_KEYS_WAITING
REKEY = mpb.KeyNotice.KIND_GROUP_REKEY
LOW = mpb.KeyNotice.KIND_PRE_KEYS_LOW
REMOVED = mpb.SystemEvent.ACTION_MEMBER_REMOVED
LEFT = mpb.SystemEvent.ACTION_MEMBER_LEFT


@pytest_asyncio.fixture(loop_scope="session")
async def redis(redis_stack: LocalStack) -> AsyncIterator[Redis]:
    client = redis_storage.connect(redis_stack.settings.redis)
    yield client
    await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def pre_key_lows(redis_stack: LocalStack) -> AsyncIterator[PreKeyLows]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        redis_stack.mongo_uri, tz_aware=True
    )
    yield PreKeyLows(client[redis_stack.settings.mongo.database])
    await client.close()


@pytest.fixture(scope="module")
def keys(redis_stubs: Stubs) -> accounts_pb2_grpc.AccountServiceStub:
    return redis_stubs.keys


@pytest.fixture(scope="module")
def messages(redis_stubs: Stubs) -> mgrpc.MessageServiceStub:
    return redis_stubs.messages


@pytest.fixture(scope="module")
def messages_b(redis_stubs: Stubs) -> mgrpc.MessageServiceStub:
    return redis_stubs.messages_b


def notices(stream: Stream) -> list[mpb.KeyNotice]:
    return [e.key_notice for e in stream.events if e.WhichOneof("kind") == "key_notice"]


def tagged(stream: Stream, tag: str) -> list[mpb.KeyNotice]:
    """The notices of one test step (the conversation_id field carries a tag)."""
    return [n for n in notices(stream) if n.conversation_id == tag]


async def publish(redis: Redis, account: Device, notice: mpb.KeyNotice) -> None:
    event = mpb.Event(key_notice=notice).SerializeToString()
    assert await publish_to_account(redis, account.account_id, event)


async def opened(*pairs: tuple[mgrpc.MessageServiceStub, Device]) -> list[Stream]:
    streams = [await open_stream(stub, device) for stub, device in pairs]
    for stream in streams:
        await stream.wait_for(synced)
    return streams


async def close(streams: list[Stream]) -> None:
    for stream in streams:
        await stream.close()


def no_errors(streams: list[Stream]) -> None:
    for stream in streams:
        assert stream.error is None, stream.error


# -- routing of the key directory's notices --------------------------------------------


async def test_a_notice_for_one_device_reaches_that_device_only(
    keys, messages, messages_b, redis: Redis
) -> None:
    alice, bob = await sign_up_many(keys, 2)
    laptop = await link_device(keys, alice)
    assert account_channel(alice.account_id) == f"parley:u:{alice.account_id}"
    streams = phone_s, laptop_s, bob_s = await opened(
        (messages, alice), (messages_b, laptop), (messages, bob)
    )
    try:
        await publish(
            redis,
            alice,
            mpb.KeyNotice(kind=WAITING, conversation_id="t1", device_id=alice.device_id),
        )
        # For every device of the account: the barrier behind the first.
        await publish(redis, alice, mpb.KeyNotice(kind=WAITING, conversation_id="t2"))
        await publish(redis, bob, mpb.KeyNotice(kind=WAITING, conversation_id="t3"))
        await phone_s.wait_for(lambda s: len(tagged(s, "t2")) == 1)
        await laptop_s.wait_for(lambda s: len(tagged(s, "t2")) == 1)
        await bob_s.wait_for(lambda s: len(tagged(s, "t3")) == 1)

        assert [n.conversation_id for n in notices(phone_s)] == ["t1", "t2"]
        (first, _) = notices(phone_s)
        assert (first.kind, first.device_id) == (WAITING, alice.device_id)
        assert [n.conversation_id for n in notices(laptop_s)] == ["t2"]
        assert [n.conversation_id for n in notices(bob_s)] == ["t3"]
        # Not part of the feed: nothing to ack, no version to resume from.
        assert phone_s.versions() == {}
        no_errors(streams)
    finally:
        await close(streams)


async def test_an_undecodable_payload_on_the_account_channel_is_ignored(
    keys, messages, redis: Redis
) -> None:
    (alice,) = await sign_up_many(keys, 1)
    (stream,) = await opened((messages, alice))
    try:
        assert await publish_to_account(redis, alice.account_id, b"\xff\xff not an event")
        await publish(redis, alice, mpb.KeyNotice(kind=WAITING, conversation_id="after"))
        await stream.wait_for(lambda s: len(tagged(s, "after")) == 1)
        assert len(notices(stream)) == 1
        no_errors([stream])
    finally:
        await stream.close()


# -- low on one-time prekeys at connect -------------------------------------------------


async def test_a_device_low_on_prekeys_is_told_right_after_sync_complete(
    keys, messages, messages_b, pre_key_lows: PreKeyLows, redis: Redis
) -> None:
    (alice,) = await sign_up_many(keys, 1)
    laptop = await link_device(keys, alice)
    now = datetime.now(UTC)
    await pre_key_lows.record(
        account_id=alice.account_id, device_id=alice.device_id, count=3, now=now
    )
    streams = phone_s, laptop_s = await opened((messages, alice), (messages_b, laptop))
    try:
        await phone_s.wait_for(lambda s: len(notices(s)) == 1)
        kinds = phone_s.kinds()
        at = kinds.index("sync_complete")
        assert kinds[at + 1] == "key_notice", kinds
        (low,) = notices(phone_s)
        assert (low.kind, low.pre_key_count, low.device_id) == (LOW, 3, alice.device_id)

        # The laptop holds enough: nothing after its SyncComplete but the barrier.
        await barrier(redis, laptop_s, alice)
        assert [n.kind for n in notices(laptop_s)] == [WAITING]
        no_errors(streams)
    finally:
        await close(streams)

    # Told at every stream start while it stays low, and no more once it is not.
    again = await open_stream(messages_b, alice)
    try:
        await again.wait_for(lambda s: len(notices(s)) == 1)
        assert notices(again)[0].pre_key_count == 3
    finally:
        await again.close()
    await pre_key_lows.record(
        account_id=alice.account_id, device_id=alice.device_id, count=100, now=now
    )
    refilled = await open_stream(messages, alice)
    try:
        await refilled.wait_for(synced)
        await barrier(redis, refilled, alice)
        assert [n.kind for n in notices(refilled)] == [WAITING]
    finally:
        await refilled.close()


# -- re-key notices after departures from groups ----------------------------------------


def after_departures(stream: Stream, conversation_id: str) -> list[tuple[str, list[str]]]:
    """What follows each departure from the conversation on the stream: a
    re-key notice ("rekey" and its accounts) or the next event's kind."""
    events = stream.events
    found: list[tuple[str, list[str]]] = []
    for i, event in enumerate(events):
        if not (
            event.WhichOneof("kind") == "message"
            and event.message.conversation_id == conversation_id
            and event.message.system.action in (REMOVED, LEFT)
        ):
            continue
        following = events[i + 1] if i + 1 < len(events) else mpb.Event()
        notice = following.key_notice
        if following.WhichOneof("kind") == "key_notice" and notice.kind == REKEY:
            assert notice.conversation_id == conversation_id
            assert notice.device_id == "", "for every device of the account"
            found.append(("rekey", list(notice.account_ids)))
        else:
            found.append((following.WhichOneof("kind") or "", []))
    return found


def rekeys(stream: Stream, conversation_id: str) -> list[mpb.KeyNotice]:
    return [n for n in notices(stream) if n.kind == REKEY and n.conversation_id == conversation_id]


async def barrier(redis: Redis, stream: Stream, account: Device) -> None:
    """Wait until the stream's process has routed everything published before."""
    tag = f"barrier-{len(stream.events)}"
    await publish(redis, account, mpb.KeyNotice(kind=WAITING, conversation_id=tag))
    await stream.wait_for(lambda s: len(tagged(s, tag)) == 1)


async def test_remaining_members_are_told_to_rekey_after_a_removal_and_a_leave(
    keys, messages, messages_b, redis: Redis
) -> None:
    alice, bob, carol, dave = await sign_up_many(keys, 4)
    bob_laptop = await link_device(keys, bob)
    view = await rpc(
        messages,
        "CreateGroup",
        alice,
        title="rekey",
        member_account_ids=[bob.account_id, carol.account_id, dave.account_id],
    )
    gid = view.conversation.conversation_id
    # Where everyone was before the departures, to resume from afterwards.
    laptop_s = await open_stream(messages, bob_laptop)
    await laptop_s.wait_for(synced)
    held = laptop_s.versions()
    await laptop_s.close()
    assert held.get(gid)

    streams = alice_s, bob_s, carol_s, dave_s = await opened(
        (messages, alice), (messages_b, bob), (messages, carol), (messages_b, dave)
    )
    try:
        await rpc(messages, "RemoveMember", alice, conversation_id=gid, account_id=carol.account_id)
        for stream in (alice_s, bob_s, dave_s):
            await stream.wait_for(lambda s: len(rekeys(s, gid)) == 1)
            assert after_departures(stream, gid) == [("rekey", [carol.account_id])]
        # The removed member gets the removal and nothing after it.
        await carol_s.wait_for(lambda s: len(after_departures(s, gid)) == 1)
        await barrier(redis, carol_s, carol)
        [(following, _)] = after_departures(carol_s, gid)
        assert following != "rekey"
        assert rekeys(carol_s, gid) == []

        await rpc(messages_b, "LeaveConversation", dave, conversation_id=gid)
        for stream in (alice_s, bob_s):
            await stream.wait_for(lambda s: len(rekeys(s, gid)) == 2)
            assert after_departures(stream, gid) == [
                ("rekey", [carol.account_id]),
                ("rekey", [dave.account_id]),
            ]
        await dave_s.wait_for(lambda s: len(after_departures(s, gid)) == 2)
        await barrier(redis, dave_s, dave)
        first, (following, _) = after_departures(dave_s, gid)
        assert first == ("rekey", [carol.account_id])
        assert following != "rekey"
        assert len(rekeys(dave_s, gid)) == 1
        no_errors(streams)
    finally:
        await close(streams)

    # Replayed after resume: each departure is followed by its notice again.
    resumed = await open_stream(messages_b, bob_laptop, positions=held)
    try:
        await resumed.wait_for(synced)
        assert after_departures(resumed, gid) == [
            ("rekey", [carol.account_id]),
            ("rekey", [dave.account_id]),
        ]
        kinds = resumed.kinds()
        assert kinds.index("key_notice") < kinds.index("sync_complete")
    finally:
        await resumed.close()
    # The departed, resuming from before they left, replay up to their own
    # departure and get no notice after it.
    carol_replay = await open_stream(messages, carol, positions=held)
    dave_replay = await open_stream(messages_b, dave, positions=held)
    try:
        await carol_replay.wait_for(synced)
        [(following, _)] = after_departures(carol_replay, gid)
        assert following != "rekey"
        await dave_replay.wait_for(synced)
        first, (following, _) = after_departures(dave_replay, gid)
        assert first == ("rekey", [carol.account_id])
        assert following != "rekey"
    finally:
        await carol_replay.close()
        await dave_replay.close()


async def test_an_admin_leaving_a_channel_brings_no_rekey(keys, messages, redis: Redis) -> None:
    owner, admin = await sign_up_many(keys, 2)
    view = await rpc(messages, "CreateChannel", owner, title="news", public=True)
    cid = view.conversation.conversation_id
    await rpc(messages, "SubscribeChannel", admin, conversation_id=cid)
    await rpc(
        messages,
        "SetMemberRole",
        owner,
        conversation_id=cid,
        account_id=admin.account_id,
        role=mpb.ROLE_ADMIN,
    )
    (owner_s,) = await opened((messages, owner))
    try:
        await rpc(messages, "LeaveConversation", admin, conversation_id=cid)
        await owner_s.wait_for(lambda s: any(m.system.action == LEFT for m in s.messages(cid)))
        await barrier(redis, owner_s, owner)
        assert rekeys(owner_s, cid) == []
        no_errors([owner_s])
    finally:
        await owner_s.close()
