"""Redis goes away under svc_presence: stopped, then hung.

Presence lives in Redis, so its RPCs must fail at once with UNAVAILABLE and a
clear message (not hang, not INTERNAL), open subscriptions must end with
that status, settings and contacts (MongoDB) must keep working, and
messaging must not notice. When Redis is back, presence works again without
restarting any process.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.presence.v1 import presence_pb2 as pb
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley_dev.stack import LocalStack
from tests.integration.test_accounts import details
from tests.integration.test_presence import ONLINE, Sub, get, settings
from tests.users import Device, all_messages, direct, send, sign_up

pytestmark = pytest.mark.chaos

DOWN_MESSAGE = "presence is unavailable: its store (Redis) cannot be reached"
# "Fails fast": well under the 2 s a client would wait for a hung store.
FAST_SECONDS = 1.5


def presence_calls(
    presence: pgrpc.PresenceServiceStub, alice: Device, bob: Device
) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def subscribe() -> Any:
        call = presence.SubscribePresence(
            pb.SubscribePresenceRequest(account_ids=[bob.account_id]), metadata=alice.md
        )
        async for event in call:
            return event
        return None

    return {
        "Heartbeat": lambda: presence.Heartbeat(pb.HeartbeatRequest(), metadata=alice.md),
        "GoOffline": lambda: presence.GoOffline(pb.GoOfflineRequest(), metadata=alice.md),
        "GetPresence": lambda: presence.GetPresence(
            pb.GetPresenceRequest(account_ids=[bob.account_id]), metadata=alice.md
        ),
        "SubscribePresence": subscribe,
    }


async def assert_presence_down(
    presence: pgrpc.PresenceServiceStub, alice: Device, bob: Device
) -> dict[str, float]:
    took = {}
    for name, call in presence_calls(presence, alice, bob).items():
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await asyncio.wait_for(call(), 10)
        took[name] = time.monotonic() - started
        error = failure.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (name, error)
        assert details(error)[0] == "ERROR_REASON_DEPENDENCY_UNAVAILABLE", name
        assert DOWN_MESSAGE in (error.details() or ""), (name, error.details())
        assert took[name] < FAST_SECONDS, (name, took[name])
    return took


async def assert_settings_and_contacts_work(
    presence: pgrpc.PresenceServiceStub, alice: Device, bob: Device
) -> None:
    updated = await settings(presence, alice, online=pb.VISIBILITY_EVERYONE)
    assert updated.online == pb.VISIBILITY_EVERYONE
    await presence.RemoveContacts(
        pb.RemoveContactsRequest(account_ids=[bob.account_id]), metadata=alice.md, timeout=10
    )
    added = await presence.AddContacts(
        pb.AddContactsRequest(account_ids=[bob.account_id]), metadata=alice.md, timeout=10
    )
    assert added.added_count == 1
    listed = await presence.ListContacts(pb.ListContactsRequest(), metadata=alice.md, timeout=10)
    assert [c.account_id for c in listed.contacts] == [bob.account_id]
    read = await presence.GetPresenceSettings(
        pb.GetPresenceSettingsRequest(), metadata=alice.md, timeout=10
    )
    assert read.online == pb.VISIBILITY_EVERYONE


async def assert_presence_back(
    presence: pgrpc.PresenceServiceStub, alice: Device, bob: Device, *, timeout: float
) -> float:
    started = time.monotonic()
    while True:
        try:
            await presence.Heartbeat(pb.HeartbeatRequest(), metadata=bob.md, timeout=5)
            sub = await Sub(presence, alice, [bob.account_id]).started()
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        else:
            try:
                if sub.error is None:
                    assert sub.snapshot[0][1] == ONLINE
                    assert (await get(presence, alice, [bob.account_id]))[0][1] == ONLINE
                    return time.monotonic() - started
                assert sub.error.code() == grpc.StatusCode.UNAVAILABLE, sub.error
            finally:
                await sub.close()
        assert time.monotonic() - started < timeout, "presence did not come back"
        await asyncio.sleep(0.1)


async def test_presence_fails_fast_while_redis_is_down_and_messaging_does_not_notice(
    fresh_stack: LocalStack,
) -> None:
    stack = fresh_stack
    async with (
        grpc.aio.insecure_channel(stack.keys_target) as keys_channel,
        grpc.aio.insecure_channel(stack.message_targets[0]) as message_channel,
        grpc.aio.insecure_channel(stack.presence_target) as presence_channel,
    ):
        keys = kgrpc.AccountServiceStub(keys_channel)
        messages = mgrpc.MessageServiceStub(message_channel)
        presence = pgrpc.PresenceServiceStub(presence_channel)
        alice, bob = await sign_up(keys), await sign_up(keys)
        for user in (alice, bob):
            await settings(presence, user, pb.VISIBILITY_EVERYONE, pb.VISIBILITY_EVERYONE)
        await presence.AddContacts(
            pb.AddContactsRequest(account_ids=[bob.account_id]), metadata=alice.md
        )
        conversation = await direct(messages, alice, bob)
        await send(messages, alice, conversation, b"before")
        await presence.Heartbeat(pb.HeartbeatRequest(), metadata=bob.md)
        watching = await Sub(presence, alice, [bob.account_id]).started()
        assert watching.snapshot[0][1] == ONLINE
        services = [n for n in stack.component_names if n.startswith("svc_")]
        pids = {name: stack.process(name).pid for name in services}

        # -- stopped: connections refused ------------------------------------------------
        await stack.stop_redis()
        await watching.wait_for(lambda s: s.error is not None, timeout=5, what="the stream to end")
        assert watching.error is not None
        assert watching.error.code() == grpc.StatusCode.UNAVAILABLE
        assert details(watching.error)[0] == "ERROR_REASON_DEPENDENCY_UNAVAILABLE"
        took = await assert_presence_down(presence, alice, bob)
        await assert_settings_and_contacts_work(presence, alice, bob)
        for i in range(3):
            reply = await send(messages, bob, conversation, f"during {i}".encode())
            assert reply.seq == 2 + i
        history = await all_messages(messages, alice, conversation)
        assert [m.body for m in history] == [b"before", b"during 0", b"during 1", b"during 2"]

        await stack.start_redis()
        back = await assert_presence_back(presence, alice, bob, timeout=15)

        # -- hung: connections open, nothing answers ------------------------------------------
        watching = await Sub(presence, alice, [bob.account_id]).started()
        redis = stack.process("redis")
        redis.signal(signal.SIGSTOP)
        try:
            hung = await assert_presence_down(presence, alice, bob)
            await assert_settings_and_contacts_work(presence, alice, bob)
            reply = await send(messages, bob, conversation, b"while hung")
            assert reply.seq == 5
            # The watchdog notices the silent pub/sub connection.
            await watching.wait_for(
                lambda s: s.error is not None, timeout=15, what="the stream to end"
            )
            assert watching.error is not None
            assert watching.error.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            redis.signal(signal.SIGCONT)
        await assert_presence_back(presence, alice, bob, timeout=15)
        # No service was restarted to get here.
        assert {name: stack.process(name).pid for name in services} == pids
        print(
            "\npresence RPCs with Redis stopped: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in took.items())
            + f"; hung: {', '.join(f'{k} {v * 1000:.0f} ms' for k, v in hung.items())}"
            + f"; back {back:.2f} s after redis-server started"
        )
