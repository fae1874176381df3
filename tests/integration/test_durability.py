"""Durability: killing svc_message with SIGKILL mid-burst loses no acknowledged
message, and clients retrying with the same request_id create no duplicate."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2_grpc
from parley_dev.stack import LocalStack
from tests.integration.test_accounts import details
from tests.users import Device, all_messages, direct, open_stream, rid, send, sign_up, synced

pytestmark = pytest.mark.chaos

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


async def send_until_acked(
    target: str,
    device: Device,
    conversation_id: str,
    body: bytes,
    *,
    deadline: float,
    retries: list[bytes],
) -> str:
    """Send like a real client: same request_id on every retry, fresh channel
    after a failure, bounded in time."""
    request_id = rid()
    while True:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = messages_pb2_grpc.MessageServiceStub(channel)
            try:
                message = await asyncio.wait_for(
                    send(stub, device, conversation_id, body, request_id=request_id), timeout=5
                )
                return message.message_id
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
            except TimeoutError:
                pass
        retries.append(body)
        if time.monotonic() > deadline:
            raise AssertionError(f"send {body!r} not acknowledged in time")
        await asyncio.sleep(0.05)


async def test_sigkill_during_burst_loses_nothing_acknowledged(fresh_stack: LocalStack) -> None:
    target = fresh_stack.message_targets[0]
    async with grpc.aio.insecure_channel(fresh_stack.keys_target) as keys_channel:
        keys = accounts_pb2_grpc.AccountServiceStub(keys_channel)
        alice, bob = await sign_up(keys), await sign_up(keys)
    async with grpc.aio.insecure_channel(target) as channel:
        conversation = await direct(messages_pb2_grpc.MessageServiceStub(channel), alice, bob)

    acked: dict[bytes, str] = {}
    retries: list[bytes] = []
    deadline = time.monotonic() + 60

    async def client(n: int) -> None:
        for i in range(30):
            body = f"c{n}-m{i}".encode()
            sender = alice if n % 2 else bob
            acked[body] = await send_until_acked(
                target, sender, conversation, body, deadline=deadline, retries=retries
            )

    clients = [asyncio.create_task(client(n)) for n in range(16)]
    # Let the burst get going, then kill the process holding batches in flight.
    while len(acked) < 60:
        await asyncio.sleep(0.01)
    acked_before_kill = dict(acked)
    await fresh_stack.kill_message(0)
    await asyncio.sleep(0.5)
    await fresh_stack.start_message(0)
    await asyncio.gather(*clients)

    async with grpc.aio.insecure_channel(target) as channel:
        history = await all_messages(
            messages_pb2_grpc.MessageServiceStub(channel), alice, conversation
        )
    by_body: dict[bytes, list[str]] = {}
    for message in history:
        by_body.setdefault(message.body, []).append(message.message_id)

    assert all(body in by_body for body in acked_before_kill), "an acknowledged message was lost"
    duplicates = {body: ids for body, ids in by_body.items() if len(ids) > 1}
    assert not duplicates, f"retries created duplicates: {duplicates}"
    assert set(by_body) == set(acked), "every send was acknowledged exactly once"
    for body, message_id in acked.items():
        assert by_body[body] == [message_id], "the ack named the stored message"
    assert [m.seq for m in history] == list(range(1, len(history) + 1)), "seqs are gapless"
    assert len(history) == 16 * 30
    assert retries, "the kill interrupted no send, so nothing was proven"


async def test_shutdown_ends_streams_at_once_with_unavailable(tmp_path) -> None:
    """SIGTERM: streams end right away so devices resume elsewhere, while the
    grace period is there for unary calls in flight."""
    stack = LocalStack.with_free_ports(
        root=tmp_path / "stack", message_instances=1, shutdown_grace_seconds=20
    )
    await stack.start()
    try:
        async with (
            grpc.aio.insecure_channel(stack.keys_target) as kc,
            grpc.aio.insecure_channel(stack.message_targets[0]) as mc,
        ):
            bob = await sign_up(accounts_pb2_grpc.AccountServiceStub(kc))
            stream = await open_stream(messages_pb2_grpc.MessageServiceStub(mc), bob)
            await stream.wait_for(synced)
            started = time.monotonic()
            stopping = asyncio.ensure_future(stack.stop_message(0))
            while stream.error is None and time.monotonic() - started < 10:
                await asyncio.sleep(0.05)
            assert stream.error is not None
            assert stream.error.code() == grpc.StatusCode.UNAVAILABLE
            assert details(stream.error)[0] == "ERROR_REASON_SHUTTING_DOWN"
            assert time.monotonic() - started < 5, "the stream waited out the grace period"
            await stopping
            assert time.monotonic() - started < 15
    finally:
        await stack.stop()
