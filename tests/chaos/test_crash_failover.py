"""SIGKILL one of two svc_message instances mid-load.

Senders retry with the same request_id and fail over to the other instance;
devices whose stream was on the killed instance reconnect to the other one
with their positions. Nothing acknowledged is lost or doubled, seqs stay
gapless, and every device ends with every message exactly once, in order.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
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


async def wait_acked(log: SendLog, count: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(log.acked) < count:
        assert time.monotonic() < deadline, f"only {len(log.acked)} sends acknowledged"
        await asyncio.sleep(0.01)


async def test_sigkill_one_instance_clients_fail_over_to_the_other(
    chaos: LocalStack, keys_stub: kgrpc.AccountServiceStub, channels: Channels
) -> None:
    alice, bob, carol = [await sign_up(keys_stub) for _ in range(3)]
    conversations = [
        await direct(channels.stub(chaos.message_targets[0]), alice, bob),
        await direct(channels.stub(chaos.message_targets[1]), carol, alice),
    ]
    peers = {conversations[0]: (alice, bob), conversations[1]: (alice, carol)}
    log = SendLog()
    deadline = time.monotonic() + 90
    clients, per_client = 12, 25

    async def client(n: int) -> None:
        conversation = conversations[n % 2]
        sender = peers[conversation][(n // 2) % 2]
        for i in range(per_client):
            await send_until_acked(
                channels,
                sender,
                conversation,
                f"c{n}-m{i}".encode(),
                log=log,
                deadline=deadline,
                prefer=n % 2,  # both instances write both conversations
            )

    try:
        tasks = [asyncio.create_task(client(n)) for n in range(clients)]
        await wait_acked(log, 60, timeout=60)
        await chaos.kill_message(0)
        killed_at = len(log.acked)
        await asyncio.gather(*tasks)

        survivor = channels.stub(chaos.message_targets[1])
        total = 0
        lasts = {}
        for conversation in conversations:
            history = await all_messages(survivor, alice, conversation)
            mine = SendLog(
                acked={b: m for b, m in log.acked.items() if m.conversation_id == conversation}
            )
            assert_history_exactly_once(history, mine)
            total += len(history)
            lasts[conversation] = len(history)
        assert total == clients * per_client
        # The inbox (metadata written behind the log) catches up with it too.
        await wait_inbox(survivor, alice, lasts, timeout=60)
        killed = chaos.message_targets[0]
        assert any(target == killed for _b, target, _c in log.failures), (
            "the kill interrupted no send on the killed instance, so nothing was proven"
        )
        assert killed_at < clients * per_client
        # Clients that preferred the killed instance finished on the survivor.
        preferred_killed = {f"c{n}-".encode() for n in range(0, clients, 2)}
        moved = [
            b
            for b, target in log.acked_by.items()
            if target == chaos.message_targets[1] and b.split(b"m")[0] in preferred_killed
        ]
        assert moved, "no client failed over"

        # The restarted instance continues the log where it stands, without a gap.
        await chaos.start_message(0)
        again = await send_until_acked(
            channels,
            alice,
            conversations[0],
            b"after restart",
            log=log,
            deadline=time.monotonic() + 30,
        )
        history = await all_messages(survivor, alice, conversations[0])
        assert again.seq == len(history) == history[-1].seq
    finally:
        if not chaos.message_process(0).alive():
            await chaos.start_message(0)


async def test_streams_on_the_killed_instance_resume_on_the_other(
    chaos: LocalStack, keys_stub: kgrpc.AccountServiceStub, channels: Channels
) -> None:
    alice, bob, carol = [await sign_up(keys_stub) for _ in range(3)]
    bob_laptop = await link_device(keys_stub, bob)
    first = channels.stub(chaos.message_targets[0])
    ab = await direct(first, alice, bob)
    ac = await direct(first, alice, carol)
    # Every stream starts on instance 0, the one that will be killed.
    streams = {
        "bob": ResilientStream(channels, bob, conversations=[ab], prefer=0),
        "bob_laptop": ResilientStream(channels, bob_laptop, conversations=[ab], prefer=0),
        "carol": ResilientStream(channels, carol, conversations=[ac], prefer=0),
        "alice": ResilientStream(channels, alice, conversations=[ab, ac], prefer=0),
    }
    log = SendLog()
    deadline = time.monotonic() + 90
    clients, per_client = 8, 25
    try:
        for stream in streams.values():
            stream.start()
        for stream in streams.values():
            await stream.wait_for(lambda s: s.sync_completes >= 1, timeout=20, what="sync")

        async def client(n: int) -> None:
            conversation = (ab, ac)[n % 2]
            sender = (alice, bob if conversation == ab else carol)[(n // 2) % 2]
            for i in range(per_client):
                await send_until_acked(
                    channels,
                    sender,
                    conversation,
                    f"c{n}-m{i}".encode(),
                    log=log,
                    deadline=deadline,
                    prefer=1 if n < 6 else 0,
                )

        tasks = [asyncio.create_task(client(n)) for n in range(clients)]
        await wait_acked(log, 50, timeout=60)
        await streams["bob"].wait_for(lambda s: len(s.messages) > 0, timeout=20, what="live")
        await chaos.kill_message(0)
        await asyncio.gather(*tasks)

        survivor = channels.stub(chaos.message_targets[1])
        last = {}
        for conversation in (ab, ac):
            history = await all_messages(survivor, alice, conversation)
            mine = SendLog(
                acked={b: m for b, m in log.acked.items() if m.conversation_id == conversation}
            )
            assert_history_exactly_once(history, mine)
            last[conversation] = len(history)
        assert sum(last.values()) == clients * per_client
        await wait_inbox(survivor, alice, last, timeout=60)

        expected = {
            "bob": [ab],
            "bob_laptop": [ab],
            "carol": [ac],
            "alice": [ab, ac],
        }
        for name, stream in streams.items():
            for conversation in expected[name]:
                await stream.wait_for(
                    lambda s, c=conversation: len(s.seqs(c)) >= last[c],
                    timeout=30,
                    what=f"{name} to catch up",
                )
        # One more, live, through the survivor.
        extra = await send_until_acked(
            channels, carol, ac, b"live after failover", log=log, deadline=time.monotonic() + 20
        )
        last[ac] += 1
        assert extra.seq == last[ac]
        for name in ("carol", "alice"):
            await streams[name].wait_for(
                lambda s: len(s.seqs(ac)) >= last[ac], timeout=15, what=f"{name} live"
            )
        await asyncio.sleep(0.3)  # room for a late duplicate to show up

        for name, stream in streams.items():
            for conversation in expected[name]:
                assert_exactly_once_in_order(stream, conversation, last[conversation])
            assert len(stream.connections) >= 2, f"{name}'s stream was never cut"
            assert stream.connections[0] == chaos.message_targets[0]
            assert stream.current_target() == chaos.message_targets[1]
            codes = {code for _t, code, _d in stream.errors}
            assert codes == {grpc.StatusCode.UNAVAILABLE}, f"{name}: {stream.errors}"
            assert stream.sync_completes == len(stream.connections)
    finally:
        for stream in streams.values():
            await stream.stop()
        if not chaos.message_process(0).alive():
            await chaos.start_message(0)
