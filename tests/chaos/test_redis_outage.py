"""Stop redis-server, then start it again.

Redis is only a doorbell and a cache: while it is down, sends and history
keep working and a device that connects gets what it missed through sync.
When Redis is back, live delivery resumes without restarting any service, and
a stream that stayed connected through the outage gets the messages sent
during it, because svc_message resyncs every stream from the log after its
doorbell reconnects.
"""

from __future__ import annotations

import asyncio
import signal
import time

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
)
from tests.users import all_messages, direct, link_device, rid, sign_up

pytestmark = pytest.mark.chaos

SERVICES = ("svc_keys", "svc_message-0", "svc_message-1")


async def test_redis_outage_degrades_to_sync_and_live_delivery_comes_back(
    chaos: LocalStack, keys_stub: kgrpc.AccountServiceStub, channels: Channels
) -> None:
    pids = {name: chaos.process(name).pid for name in SERVICES}
    alice, bob = await sign_up(keys_stub), await sign_up(keys_stub)
    bob_laptop = await link_device(keys_stub, bob)
    conversation = await direct(channels.stub(chaos.message_targets[0]), alice, bob)
    log = SendLog()
    # Bob's phone stays connected through the outage, on instance 0.
    phone = ResilientStream(channels, bob, conversations=[conversation], prefer=0)
    laptop = ResilientStream(channels, bob_laptop, conversations=[conversation], prefer=1)
    try:
        phone.start()
        await phone.wait_for(lambda s: s.sync_completes == 1, timeout=20, what="sync")
        for i in range(3):
            await send_until_acked(
                channels,
                alice,
                conversation,
                f"before {i}".encode(),
                log=log,
                deadline=time.monotonic() + 20,
                prefer=i,
            )
        await phone.wait_for(lambda s: len(s.messages) == 3, timeout=10, what="live")

        await chaos.stop_redis()
        down_at = time.monotonic()
        # Sends and history keep working, on both instances.
        for i in range(10):
            reply = await send_until_acked(
                channels,
                alice,
                conversation,
                f"during {i}".encode(),
                log=log,
                deadline=time.monotonic() + 30,
                prefer=i,
            )
            assert reply.seq == 4 + i
        assert log.failures == [], "a send failed while Redis was down"
        for target in chaos.message_targets:
            stub = channels.stub(target)
            history = await all_messages(stub, bob, conversation)
            assert [m.seq for m in history] == list(range(1, 14))
            inbox = await stub.ListConversations(
                mpb.ListConversationsRequest(), metadata=bob.md, timeout=10
            )
            assert [
                (v.conversation.conversation_id, v.conversation.last_seq)
                for v in inbox.conversations
            ] == [(conversation, 13)]
            marked = await stub.MarkRead(
                mpb.MarkReadRequest(request_id=rid(), conversation_id=conversation, seq=5),
                metadata=bob.md,
                timeout=10,
            )
            assert (marked.delivered_seq, marked.read_seq) == (5, 5)
        # A conversation can still be started (its announcement is only a doorbell).
        carol = await sign_up(keys_stub)
        assert await direct(channels.stub(chaos.message_targets[1]), carol, bob)
        # A device that connects now gets what it missed through sync.
        laptop.start()
        await laptop.wait_for(
            lambda s: s.sync_completes == 1 and len(s.seqs(conversation)) == 13,
            timeout=20,
            what="sync during the outage",
        )
        outage = time.monotonic() - down_at
        assert not chaos.process("redis").alive()
        # Their doorbells were lost: the connected stream has not seen them.
        assert phone.seqs(conversation) == [1, 2, 3]
        assert phone.errors == []

        await chaos.start_redis()
        # The stream that stayed connected catches up from the log once the
        # doorbell is back, without reconnecting.
        await phone.wait_for(
            lambda s: len(s.seqs(conversation)) == 13,
            timeout=20,
            what=f"the connected stream to resync after a {outage:.1f}s outage",
        )
        assert phone.connections == [chaos.message_targets[0]]

        # Live delivery is back, through both instances' doorbells.
        for i in range(4):
            await send_until_acked(
                channels,
                alice,
                conversation,
                f"after {i}".encode(),
                log=log,
                deadline=time.monotonic() + 20,
                prefer=i,
            )
        for stream in (phone, laptop):
            await stream.wait_for(
                lambda s: len(s.seqs(conversation)) == 17, timeout=20, what="live again"
            )
        history = await all_messages(channels.stub(chaos.message_targets[1]), alice, conversation)
        assert_history_exactly_once(history, log)
        assert len(history) == 17
        for stream in (phone, laptop):
            assert_exactly_once_in_order(stream, conversation, 17)
            assert stream.errors == [], stream.errors
        assert {name: chaos.process(name).pid for name in SERVICES} == pids
    finally:
        await phone.stop()
        await laptop.stop()
        if not chaos.process("redis").alive():
            await chaos.start_redis()


async def test_history_is_complete_after_redis_hangs(
    chaos: LocalStack, keys_stub: kgrpc.AccountServiceStub, channels: Channels
) -> None:
    """A hung Redis (SIGSTOP: connections stay open, nothing answers) is
    another failure than a stopped one: calls time out instead of failing fast."""
    alice, bob = await sign_up(keys_stub), await sign_up(keys_stub)
    conversation = await direct(channels.stub(chaos.message_targets[0]), alice, bob)
    log = SendLog()
    await send_until_acked(
        channels, alice, conversation, b"first", log=log, deadline=time.monotonic() + 20
    )
    # A newest-first read puts the conversation in the recent-messages cache.
    for target in chaos.message_targets:
        history = await all_messages(channels.stub(target), bob, conversation)
        assert [m.body for m in history] == [b"first"]
        newest = await channels.stub(target).ListMessages(
            mpb.ListMessagesRequest(conversation_id=conversation), metadata=bob.md, timeout=10
        )
        assert [m.seq for m in newest.messages] == [1]

    redis = chaos.process("redis")
    redis.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        during = await send_until_acked(
            channels,
            alice,
            conversation,
            b"while redis hangs",
            log=log,
            deadline=time.monotonic() + 30,
        )
        assert during.seq == 2
        assert time.monotonic() - started < 15, "a hung Redis must not stall sends for long"
    finally:
        redis.signal(signal.SIGCONT)

    # The process whose cache add failed stops trusting the cache for that
    # conversation and, once Redis answers again, deletes its cached state, so
    # every process serves the full history within a bounded time.
    for target in chaos.message_targets:
        deadline = time.monotonic() + 5
        while True:
            newest = await channels.stub(target).ListMessages(
                mpb.ListMessagesRequest(conversation_id=conversation), metadata=bob.md, timeout=10
            )
            if [m.seq for m in newest.messages] == [2, 1]:
                break
            assert time.monotonic() < deadline, f"stale history on {target}"
            await asyncio.sleep(0.1)
