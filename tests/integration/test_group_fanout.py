"""Fan-out cost, proven: a send to a 1024-member group writes what a send to a
3-member group writes, and its live recipients get batched stream writes.

The database writes are read from svc_message's own accounting
(``parley_db_documents_written_total{collection,op}``, counted by a pymongo
command listener), before and after each batch of sends. Streams never ack
here, so no ack-driven watermark write mixes into the send's own cost.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import pytest

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.stack import LocalStack
from tests.helpers import http_get
from tests.users import Device, rid, send, sign_up

pytestmark = pytest.mark.slow

GROUP_SIZE = 1024
SMALL_GROUP_SIZE = 3
SIGN_UP_CONCURRENCY = 32
SAMPLED_STREAMS = 64
SENDS = 20
BURST = 40
# Heartbeats of the conversation projector: timed, not caused by sends.
# Written on a timer, whatever is sent: projector heartbeats and the
# conversation owners' shard leases.
# Leases and heartbeats: written on a timer, whatever is being sent.
TIMED_COLLECTIONS = frozenset(
    {
        "projectors",
        "message_shard_leases",
        "message_owners",
        "archive_control",
        "history_export_control",
    }
)
SETTLE_QUIET_SECONDS = 0.3
SETTLE_TIMEOUT_SECONDS = 15.0
SYNC_TIMEOUT_SECONDS = 60.0
DELIVERY_TIMEOUT_SECONDS = 60.0
CALL_TIMEOUT_SECONDS = 30.0
DOCUMENTS = "parley_db_documents_written_total"
PENDING = "parley_projection_pending_conversations"
_SAMPLE = re.compile(r'^(\w+)\{collection="([^"]*)",op="([^"]*)"\} (\S+)$')

T = TypeVar("T")
Writes = Counter[tuple[str, str]]


async def bounded(count: int, make: Callable[[int], Awaitable[T]], *, limit: int) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(index: int) -> T:
        async with gate:
            return await make(index)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def documents_written(url: str) -> Writes:
    """svc_message's documents written so far, per (collection, op)."""
    _status, text = await http_get(url)
    writes: Writes = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == DOCUMENTS:
            writes[(match.group(2), match.group(3))] = int(float(match.group(4)))
    return writes


async def projection_pending(url: str) -> float:
    _status, text = await http_get(url)
    for line in text.splitlines():
        if line.startswith(PENDING + " "):
            return float(line.split()[1])
    raise AssertionError(f"{PENDING} not exported at {url}")


async def settle(url: str) -> Writes:
    """Wait until the projector has nothing pending and no write happens for a
    moment: everything the last sends caused is then counted."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    before = await documents_written(url)
    while time.monotonic() < deadline:
        await asyncio.sleep(SETTLE_QUIET_SECONDS)
        now = await documents_written(url)
        if not send_cost(before, now) and await projection_pending(url) == 0:
            return now
        before = now
    raise AssertionError(f"svc_message kept writing for {SETTLE_TIMEOUT_SECONDS}s")


def send_cost(before: Writes, after: Writes) -> Writes:
    """Documents written between two readings, heartbeats left out."""
    delta: Writes = Counter()
    for key, value in after.items():
        if key[0] not in TIMED_COLLECTIONS and value - before.get(key, 0):
            delta[key] = value - before.get(key, 0)
    return delta


@dataclass
class LiveStream:
    """A device's Connect stream that never acks, keeping ServerEvent boundaries."""

    device: Device
    call: grpc.aio.StreamStreamCall[mpb.ClientEvent, mpb.ServerEvent]
    events_per_write: list[int] = field(default_factory=list)
    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        try:
            async for server_event in self.call:
                self.events_per_write.append(len(server_event.events))
                for event in server_event.events:
                    kind = event.WhichOneof("kind")
                    if kind == "message" and event.message.type == mpb.MESSAGE_TYPE_TEXT:
                        message = event.message
                        self.bodies.setdefault(message.conversation_id, []).append(message.body)
                    elif kind == "sync_complete":
                        self.synced.set()
                self.arrived.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{exc.code().name}: {exc.details()}"
        finally:
            self.arrived.set()

    async def wait_for(self, conversation_id: str, count: int, *, deadline: float) -> None:
        while len(self.bodies.get(conversation_id, ())) < count:
            assert self.error is None, f"stream of {self.device.handle} failed: {self.error}"
            remaining = deadline - time.monotonic()
            assert remaining > 0, (
                f"{self.device.handle} got {len(self.bodies.get(conversation_id, ()))} "
                f"of {count} messages"
            )
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout=min(remaining, 0.5))
            except TimeoutError:
                continue

    async def close(self) -> None:
        self.call.cancel()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def open_live(stub: mgrpc.MessageServiceAsyncStub, device: Device) -> LiveStream:
    async def requests() -> AsyncIterator[mpb.ClientEvent]:
        yield mpb.ClientEvent(resume=mpb.Resume())
        # Keep the request side open without ever acking.
        await asyncio.Event().wait()

    stream = LiveStream(device, stub.Connect(requests(), metadata=device.md))
    stream.task = asyncio.create_task(stream.read())
    return stream


async def create_group(
    stub: mgrpc.MessageServiceAsyncStub, owner: Device, members: Sequence[Device], title: str
) -> str:
    view = await stub.CreateGroup(
        mpb.CreateGroupRequest(
            request_id=rid(), title=title, member_account_ids=[m.account_id for m in members]
        ),
        metadata=owner.md,
        timeout=CALL_TIMEOUT_SECONDS,
    )
    conversation_id: str = view.conversation.conversation_id
    return conversation_id


async def send_one_by_one(
    stub: mgrpc.MessageServiceAsyncStub, owner: Device, conversation_id: str, tag: str, url: str
) -> tuple[Writes, list[Writes]]:
    """SENDS sends, each on its own (settled before the next): the total cost and each one's."""
    start = await settle(url)
    previous, each = start, []
    for i in range(SENDS):
        await send(stub, owner, conversation_id, f"{tag} {i}".encode())
        now = await settle(url)
        each.append(send_cost(previous, now))
        previous = now
    return send_cost(start, previous), each


async def test_a_send_to_1024_members_writes_what_a_send_to_3_does(
    fresh_stack: LocalStack,
) -> None:
    stack = fresh_stack
    url = stack.message_metrics_urls[0]
    async with (
        grpc.aio.insecure_channel(stack.keys_target) as keys_channel,
        grpc.aio.insecure_channel(stack.message_targets[0]) as message_channel,
    ):
        keys = kgrpc.AccountServiceStub(keys_channel)
        stub = mgrpc.MessageServiceStub(message_channel)
        owner = await sign_up(keys)
        members = await bounded(GROUP_SIZE - 1, lambda _i: sign_up(keys), limit=SIGN_UP_CONCURRENCY)
        sampled = members[:: (GROUP_SIZE - 1) // SAMPLED_STREAMS][:SAMPLED_STREAMS]
        big = await create_group(stub, owner, members, "everyone")
        small = await create_group(stub, owner, sampled[: SMALL_GROUP_SIZE - 1], "few")
        streams = [await open_live(stub, m) for m in sampled]
        try:
            sync_deadline = time.monotonic() + SYNC_TIMEOUT_SECONDS
            for stream in streams:
                await asyncio.wait_for(
                    stream.synced.wait(), timeout=max(0.1, sync_deadline - time.monotonic())
                )

            big_total, big_each = await send_one_by_one(stub, owner, big, "big", url)
            small_total, small_each = await send_one_by_one(stub, owner, small, "small", url)
            print(f"\nwrites for {SENDS} sends, 1024 members: {dict(big_total)}")
            print(f"writes for {SENDS} sends, 3 members:    {dict(small_total)}")

            # The message itself: one document per send, in one insert.
            assert big_total[("messages", "insert")] == SENDS
            # Same documents, collection by collection, send by send.
            assert big_total == small_total
            assert big_each == small_each
            per_send = sum(small_total.values()) / SENDS
            assert per_send <= 4, f"{per_send} documents per send"

            # A burst: sends commit together and each stream gets them batched.
            before = await settle(url)
            await asyncio.gather(
                *(send(stub, owner, big, f"burst {i}".encode()) for i in range(BURST))
            )
            burst = send_cost(before, await settle(url))
            print(f"writes for a burst of {BURST} sends, 1024 members: {dict(burst)}")
            assert burst[("messages", "insert")] == BURST
            assert sum(burst.values()) <= per_send * BURST

            deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
            expected_big = {f"big {i}".encode() for i in range(SENDS)} | {
                f"burst {i}".encode() for i in range(BURST)
            }
            expected_small = [f"small {i}".encode() for i in range(SENDS)]
            for stream in streams:
                await stream.wait_for(big, SENDS + BURST, deadline=deadline)
                got = stream.bodies[big]
                assert len(got) == len(set(got)) == SENDS + BURST, stream.device.handle
                assert set(got) == expected_big, stream.device.handle
                # One by one, the sends arrive in order.
                assert got[:SENDS] == [f"big {i}".encode() for i in range(SENDS)]
            for stream in streams[: SMALL_GROUP_SIZE - 1]:
                await stream.wait_for(small, SENDS, deadline=deadline)
                assert stream.bodies[small] == expected_small
            batched = [max(s.events_per_write) for s in streams]
            print(f"most events in one ServerEvent per stream: max {max(batched)}")
            assert max(batched) > 1, "no ServerEvent carried more than one event"
            assert all(s.error is None for s in streams), [s.error for s in streams]
        finally:
            await asyncio.gather(*(s.close() for s in streams), return_exceptions=True)
