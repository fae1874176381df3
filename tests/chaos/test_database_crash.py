"""SIGKILL the database mid-load and start it again.

The services are not restarted: their drivers reconnect by themselves. Every
acknowledged message survives (journaled writes), sends work again after the
restart on every instance, and delivery streams resume with every message
exactly once, in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import grpc
import pytest

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley_dev.stack import LocalStack
from tests.chaos.clients import (
    Channels,
    ResilientStream,
    SendLog,
    assert_exactly_once_in_order,
    assert_history_exactly_once,
    send_until_acked,
    wait_inbox,
)
from tests.users import all_messages, direct, link_device, sign_up

pytestmark = pytest.mark.chaos

SERVICES = ("svc_keys", "svc_message-0", "svc_message-1")


async def status_of(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_database_sigkill_and_restart_loses_nothing_acknowledged(
    chaos: LocalStack, keys_stub: kgrpc.AccountServiceStub, channels: Channels
) -> None:
    pids = {name: chaos.process(name).pid for name in SERVICES}
    alice, bob = await sign_up(keys_stub), await sign_up(keys_stub)
    bob_laptop = await link_device(keys_stub, bob)
    conversation = await direct(channels.stub(chaos.message_targets[0]), alice, bob)
    bob_stream = ResilientStream(channels, bob, conversations=[conversation], prefer=0)
    alice_stream = ResilientStream(channels, alice, conversations=[conversation], prefer=1)
    streams: tuple[ResilientStream, ...] = (bob_stream, alice_stream)
    log = SendLog()
    deadline = time.monotonic() + 100
    clients, per_client = 8, 20
    try:
        for stream in streams:
            stream.start()
            await stream.wait_for(lambda s: s.sync_completes >= 1, timeout=20, what="sync")

        async def client(n: int) -> None:
            sender = alice if n % 2 else bob
            for i in range(per_client):
                await send_until_acked(
                    channels,
                    sender,
                    conversation,
                    f"c{n}-m{i}".encode(),
                    log=log,
                    deadline=deadline,
                    prefer=n % 2,
                )

        tasks = [asyncio.create_task(client(n)) for n in range(clients)]
        while len(log.acked) < 40:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        acked_before_kill = dict(log.acked)
        await chaos.kill_db()
        down_at = time.monotonic()
        # While it is down: a read is UNAVAILABLE (retryable), never INTERNAL,
        # and a device that connects now is told the same and comes back later.
        late = ResilientStream(channels, bob_laptop, conversations=[conversation], prefer=1)
        streams = (*streams, late)
        late.start()
        probe = channels.stub(chaos.message_targets[1])
        inbox, history_read = await asyncio.gather(
            status_of(
                probe.ListConversations(mpb.ListConversationsRequest(), metadata=bob.md, timeout=20)
            ),
            status_of(
                probe.ListMessages(
                    mpb.ListMessagesRequest(conversation_id=conversation),
                    metadata=bob.md,
                    timeout=20,
                )
            ),
        )
        assert inbox == grpc.StatusCode.UNAVAILABLE
        # History may be served from the recent-messages cache in Redis.
        assert history_read in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
        await late.wait_for(lambda s: s.errors, timeout=20, what="the stream to fail")
        failures_while_down = len(log.failures)
        await chaos.start_db()
        restarted_after = time.monotonic() - down_at
        await asyncio.gather(*tasks)

        assert failures_while_down > 0 or log.failures, "the outage interrupted no send"
        stub = channels.stub(chaos.message_targets[0])
        history = await all_messages(stub, alice, conversation)
        assert all(body in {m.body for m in history} for body in acked_before_kill)
        assert_history_exactly_once(history, log)
        assert len(history) == clients * per_client

        # Sends work again on every instance, without restarting any service.
        for index, target in enumerate(chaos.message_targets):
            reply = await channels.stub(target).SendMessage(
                mpb.SendMessageRequest(
                    request_id=f"00000000-0000-4000-8000-00000000000{index}",
                    conversation_id=conversation,
                    type=mpb.MESSAGE_TYPE_TEXT,
                    body=f"after restart {index}".encode(),
                ),
                metadata=alice.md,
                timeout=10,
            )
            assert reply.message.seq == len(history) + index + 1
        last = len(history) + len(chaos.message_targets)
        await wait_inbox(stub, bob, {conversation: last}, timeout=60)

        for stream in streams:
            await stream.wait_for(
                lambda s: len(s.seqs(conversation)) >= last, timeout=30, what="catch up"
            )
        await asyncio.sleep(0.3)
        for stream in streams:
            assert_exactly_once_in_order(stream, conversation, last)
            # A stream either stayed up or was ended as UNAVAILABLE, never INTERNAL.
            codes = {code for _t, code, _d in stream.errors}
            assert codes <= {grpc.StatusCode.UNAVAILABLE}, stream.errors
        assert {name: chaos.process(name).pid for name in SERVICES} == pids, (
            "a service was restarted"
        )
        assert restarted_after < 30
    finally:
        for stream in streams:
            await stream.stop()
        if not chaos.process("secantusdb").alive():
            await chaos.start_db()
