"""The regions harness's fault proxy against a loopback echo server and a real gRPC server.

Delays are checked from below tightly (a chunk can never arrive early) and
from above loosely: the machine is shared and a late wake-up is noise, not a
bug of the proxy.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from parley_dev.fault_proxy import FaultProxy
from parley_dev.process import free_port

# Above the injected delay, what a loaded 2-core machine may add to one round trip.
SLACK_SECONDS = 0.25
IO_SECONDS = 5.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest_asyncio.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest_asyncio.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(upstream_port=echo_port, seed=7) as started:
        yield started


async def _open(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> float:
    started = time.monotonic()
    writer.write(data)
    await writer.drain()
    echoed = await asyncio.wait_for(reader.readexactly(len(data)), IO_SECONDS)
    assert echoed == data
    return time.monotonic() - started


async def test_bytes_pass_both_ways_and_are_counted(proxy: FaultProxy) -> None:
    reader, writer = await _open(proxy)
    await _round_trip(reader, writer, b"x" * 100_000)
    writer.close()
    assert proxy.stats.connections == 1
    assert proxy.stats.bytes_up == 100_000
    assert proxy.stats.bytes_down == 100_000


async def test_each_direction_adds_its_own_delay(proxy: FaultProxy) -> None:
    reader, writer = await _open(proxy)
    baseline = min([await _round_trip(reader, writer, b"ping") for _ in range(5)])
    proxy.set_delay(50, direction="up")
    proxy.set_delay(30, direction="down")
    delayed = [await _round_trip(reader, writer, b"ping") for _ in range(5)]
    writer.close()
    assert min(delayed) >= 0.080
    assert statistics.median(delayed) <= 0.080 + baseline + SLACK_SECONDS


async def test_jitter_never_reorders_the_stream(proxy: FaultProxy) -> None:
    proxy.set_delay(2, jitter_ms=30)
    reader, writer = await _open(proxy)
    sent = b""
    for index in range(200):
        piece = f"{index:04d};".encode()
        sent += piece
        writer.write(piece)
        await writer.drain()
        # Separate reads on the proxy's side, so each piece gets its own jitter.
        await asyncio.sleep(0.001)
    received = await asyncio.wait_for(reader.readexactly(len(sent)), IO_SECONDS)
    writer.close()
    assert received == sent


async def test_a_lost_chunk_costs_a_retransmission(proxy: FaultProxy) -> None:
    reader, writer = await _open(proxy)
    proxy.set_loss(1.0, retransmit_ms=100)
    lossy = await _round_trip(reader, writer, b"ping")
    proxy.clear()
    clean = await _round_trip(reader, writer, b"ping")
    writer.close()
    assert lossy >= 0.200
    assert clean < lossy


async def test_cut_resets_live_connections_and_blackholes_new_ones_until_heal(
    proxy: FaultProxy,
) -> None:
    reader, writer = await _open(proxy)
    await _round_trip(reader, writer, b"before")
    proxy.cut()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), IO_SECONDS)
    assert proxy.stats.reset == 1

    held_reader, held_writer = await _open(proxy)
    held_writer.write(b"during")
    await held_writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(held_reader.readexactly(6), 0.3)
    assert proxy.stats.blackholed == 1
    assert proxy.stats.bytes_up == len(b"before")

    proxy.heal()
    # The black-holed connection goes through, late.
    assert await asyncio.wait_for(held_reader.readexactly(6), IO_SECONDS) == b"during"
    fresh_reader, fresh_writer = await _open(proxy)
    await _round_trip(fresh_reader, fresh_writer, b"after")
    for each in (writer, held_writer, fresh_writer):
        each.close()


async def test_a_refusing_cut_resets_new_connections_at_once(proxy: FaultProxy) -> None:
    proxy.cut(refuse=True)
    reader, writer = await _open(proxy)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), IO_SECONDS)
    writer.close()
    assert proxy.stats.refused == 1


async def test_an_upstream_that_is_down_closes_the_connection() -> None:
    async with FaultProxy(upstream_port=free_port()) as proxy:
        reader, writer = await _open(proxy)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), IO_SECONDS)
        writer.close()
        assert proxy.stats.upstream_failures == 1


async def test_bad_settings_are_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="negative"):
        proxy.set_delay(-1)
    with pytest.raises(ValueError, match="probability"):
        proxy.set_loss(1.5)


async def _health_seconds(stub: health_pb2_grpc.HealthStub, calls: int) -> list[float]:
    took = []
    for _ in range(calls):
        started = time.monotonic()
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=IO_SECONDS)
        took.append(time.monotonic() - started)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return took


async def test_an_80_ms_rtt_adds_80_ms_to_a_grpc_call() -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with (
            FaultProxy(upstream_port=port) as proxy,
            grpc.aio.insecure_channel(proxy.address) as channel,
        ):
            stub = health_pb2_grpc.HealthStub(channel)
            await _health_seconds(stub, 3)  # connection and HTTP/2 setup
            bare = statistics.median(await _health_seconds(stub, 10))
            proxy.set_rtt(80)
            delayed = await _health_seconds(stub, 10)
            added = statistics.median(delayed) - bare
            assert min(delayed) >= 0.080
            assert 0.070 <= added <= 0.080 + SLACK_SECONDS
            proxy.clear()
            proxy.cut()
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
    finally:
        await server.stop(None)
