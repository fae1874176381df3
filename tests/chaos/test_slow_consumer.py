"""A delivery stream whose client never reads.

The server's per-stream queue is bounded; once the client's flow-control
windows are full and the queue overflows, the server ends the RPC with
RESOURCE_EXHAUSTED (reason ERROR_REASON_SLOW_CONSUMER) within bounded time,
releases what the stream held (the process's memory stays bounded), and other
streams keep receiving with low latency meanwhile. The slow device sees the
status once it reads again and catches up on reconnect: every message exactly
once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.stack import LocalStack
from tests.chaos.clients import (
    CLIENT_MAX_RECEIVE_BYTES,
    Channels,
    ResilientStream,
    SendLog,
    assert_exactly_once_in_order,
    metric,
    rss_kib,
    send_until_acked,
)
from tests.helpers import TEST_LIMITS
from tests.users import Device, direct, sign_up

pytestmark = pytest.mark.chaos

QUEUE_EVENTS = 16
BODY_BYTES = 60_000
# Each burst is ~9 MB for the slow stream: far more than its flow-control
# windows and queue hold.
BURST = 150
BURSTS = 4
SENDERS = 6
# How much the svc_message process may grow while ~36 MB go to a stream that
# never reads: a stream that kept what it could not send would exceed it.
RSS_GROWTH_LIMIT_KIB = 20 * 1024


@pytest_asyncio.fixture(loop_scope="session")
async def small_queue_stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    local = LocalStack.with_free_ports(
        root=tmp_path / "stack",
        message_instances=1,
        shutdown_grace_seconds=2.0,
        # Senders flood on purpose here; the limits would hold them back.
        extra_config={**TEST_LIMITS, "message": {"stream_queue_events": QUEUE_EVENTS}},
    )
    await local.start()
    try:
        yield local
    finally:
        await local.stop()


class NonReadingClient:
    """Opens Connect, sends resume, then reads nothing until told to."""

    def __init__(self, stub: mgrpc.MessageServiceStub, device: Device, conversation: str) -> None:
        self._stop = asyncio.Event()

        async def requests() -> AsyncIterator[mpb.ClientEvent]:
            yield mpb.ClientEvent(
                resume=mpb.Resume(
                    positions=[mpb.ConversationPosition(conversation_id=conversation, seq=0)]
                )
            )
            await self._stop.wait()

        self.call = stub.Connect(requests(), metadata=device.md)
        self.messages: list[mpb.Message] = []

    async def drain(self, *, timeout: float) -> grpc.aio.AioRpcError | None:
        """Read what the server buffered, up to the end of the RPC."""
        try:
            async with asyncio.timeout(timeout):
                async for server_event in self.call:
                    for event in server_event.events:
                        if event.WhichOneof("kind") == "message":
                            self.messages.append(event.message)
        except grpc.aio.AioRpcError as exc:
            return exc
        finally:
            self._stop.set()
        return None

    def close(self) -> None:
        self._stop.set()
        self.call.cancel()


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


async def test_a_stream_that_never_reads_is_cut_off_and_catches_up(
    small_queue_stack: LocalStack,
) -> None:
    stack = small_queue_stack
    pid = stack.message_process(0).pid
    assert pid is not None
    metrics_url = stack.message_metrics_urls[0]
    channels = Channels(stack.message_targets)
    async with grpc.aio.insecure_channel(stack.keys_target) as keys_channel:
        keys = kgrpc.AccountServiceStub(keys_channel)
        alice, bob, carol, dave = [await sign_up(keys) for _ in range(4)]
    stub = channels.stub(stack.message_targets[0])
    slow_conversation = await direct(stub, alice, bob)
    fast_conversation = await direct(stub, dave, carol)
    healthy = ResilientStream(channels, carol, conversations=[fast_conversation])
    slow = NonReadingClient(stub, bob, slow_conversation)
    log = SendLog()
    latencies: list[float] = []
    try:
        healthy.start()
        await healthy.wait_for(lambda s: s.sync_completes == 1, timeout=20, what="sync")

        async def wait_streams(count: int, timeout: float) -> float:
            deadline = time.monotonic() + timeout
            while (value := await metric(metrics_url, "parley_delivery_streams_open")) != count:
                assert time.monotonic() < deadline, f"{value} streams open, expected {count}"
                await asyncio.sleep(0.1)
            return time.monotonic() - (deadline - timeout)

        await wait_streams(2, 10)
        # Warm the process up (imports, caches, allocator) before measuring.
        await burst(channels, alice, slow_conversation, log, start=0, count=20)
        await asyncio.sleep(0.5)
        rss_before = rss_kib(pid)

        async def healthy_pings(stop: asyncio.Event) -> None:
            for i in range(600):
                if stop.is_set():
                    return
                sent_at = time.monotonic()
                message = await send_until_acked(
                    channels,
                    dave,
                    fast_conversation,
                    f"ping {i}".encode(),
                    log=log,
                    deadline=sent_at + 30,
                )
                await healthy.wait_for(
                    lambda s, seq=message.seq: seq in s.seqs(fast_conversation),
                    timeout=15,
                    what="the healthy stream",
                )
                latencies.append(time.monotonic() - sent_at)
                await asyncio.sleep(0.05)

        stop = asyncio.Event()
        pinger = asyncio.create_task(healthy_pings(stop))
        total = 20
        cut_after: float | None = None
        burst_started = time.monotonic()
        for round_ in range(BURSTS):
            await burst(channels, alice, slow_conversation, log, start=total, count=BURST)
            total += BURST
            if cut_after is None:
                with contextlib.suppress(AssertionError):
                    cut_after = await wait_streams(1, 0.1)
            rss_now = rss_kib(pid)
            assert rss_now - rss_before < RSS_GROWTH_LIMIT_KIB, (
                f"after burst {round_}: RSS grew {(rss_now - rss_before) // 1024} MiB"
            )
        # The server ends the slow stream in bounded time, on its own.
        if cut_after is None:
            cut_after = await wait_streams(1, 15)
        # The RPC itself is over for the server: no longer in flight, counted
        # with its status.
        deadline = time.monotonic() + 15
        while await metric(metrics_url, "parley_rpc_in_flight", method="Connect") != 1:
            assert time.monotonic() < deadline, "the cut stream is still in flight"
            await asyncio.sleep(0.1)
        ended = await metric(
            metrics_url, "parley_rpc_requests_total", method="Connect", code="RESOURCE_EXHAUSTED"
        )
        assert ended == 1
        stop.set()
        await pinger
        rss_after = rss_kib(pid)
        burst_seconds = time.monotonic() - burst_started

        assert len(latencies) >= 5, latencies
        assert max(latencies) < 3.0, f"healthy stream latencies {latencies}"
        assert statistics.median(latencies) < 1.0, f"healthy stream latencies {latencies}"
        assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB

        # The slow device reads again: what was buffered, then the clear status.
        error = await slow.drain(timeout=30)
        assert error is not None, "the slow stream was never ended"
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert reason_of(error) == "ERROR_REASON_SLOW_CONSUMER", error
        seqs = [m.seq for m in slow.messages]
        assert seqs == list(range(1, len(seqs) + 1)), "what it got is a gapless prefix"
        assert len(seqs) < total

        # It reconnects with its position and catches up: everything, once, in order.
        catch_up = ResilientStream(channels, bob, conversations=[slow_conversation])
        catch_up.messages.extend(slow.messages)
        catch_up.start()
        try:
            await catch_up.wait_for(
                lambda s: len(s.seqs(slow_conversation)) >= total, timeout=60, what="catch up"
            )
            assert_exactly_once_in_order(catch_up, slow_conversation, total)
            assert catch_up.errors == [], catch_up.errors
        finally:
            await catch_up.stop()
        assert_exactly_once_in_order(healthy, fast_conversation, len(latencies))
        print(
            f"slow consumer: cut after {cut_after:.1f}s, bursts {burst_seconds:.1f}s, "
            f"RSS {rss_before // 1024}->{rss_after // 1024} MiB, "
            f"healthy latency median {statistics.median(latencies) * 1000:.0f} ms "
            f"max {max(latencies) * 1000:.0f} ms, slow got {len(seqs)} of {total} before the cut"
        )
    finally:
        slow.close()
        await healthy.stop()
        await channels.close()


async def burst(
    channels: Channels, sender: Device, conversation: str, log: SendLog, *, start: int, count: int
) -> None:
    deadline = time.monotonic() + 60

    async def one_sender(n: int) -> None:
        for i in range(start + n, start + count, SENDERS):
            body = i.to_bytes(4, "big") * (BODY_BYTES // 4)
            await send_until_acked(channels, sender, conversation, body, log=log, deadline=deadline)

    await asyncio.gather(*(one_sender(n) for n in range(SENDERS)))


def test_the_parameters_can_expose_a_leak() -> None:
    # A burst is far larger than what a client buffers, and what the slow
    # stream is sent in all is well over the allowed growth.
    assert BURST * BODY_BYTES > 2 * CLIENT_MAX_RECEIVE_BYTES
    assert BURSTS * BURST * BODY_BYTES > 1.5 * RSS_GROWTH_LIMIT_KIB * 1024
