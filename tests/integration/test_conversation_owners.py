"""One owner per conversation across svc_message processes.

Twenty senders spread over two or three processes write one group at once
(and others write a direct conversation): every process forwards to the
conversation's owner, so nobody is answered ABORTED, every send is acked
exactly once with gapless seqs, and a retry through another process returns
the same message. Killing the owner mid-burst loses nothing acknowledged:
its leases expire, a survivor takes the shard over and continues the seqs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley_core.topology import conversation_shard
from parley_dev.stack import LocalStack
from tests.chaos.clients import Channels, SendLog, send_until_acked
from tests.helpers import TEST_LIMITS, wait_until
from tests.users import Device, all_messages, direct, rid, sign_up

SENDERS = 20
PER_SENDER = 10
SHARDS = 64  # the default: the stacks run without a topology


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def three(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    async with LocalStack.with_free_ports(
        root=Path(tmp_path_factory.mktemp("three_owners")),
        message_instances=3,
        shutdown_grace_seconds=2.0,
        extra_config=TEST_LIMITS,
    ) as local:
        yield local


async def group_of(stub: object, owner: Device, members: list[Device]) -> str:
    view = await stub.CreateGroup(  # type: ignore[attr-defined]
        mpb.CreateGroupRequest(
            request_id=rid(), title="owners", member_account_ids=[m.account_id for m in members]
        ),
        metadata=owner.md,
    )
    return str(view.conversation.conversation_id)


async def owner_address(stack: LocalStack, conversation_id: str) -> str:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stack.mongo_uri)
    try:
        shard = conversation_shard(conversation_id, SHARDS)
        lease = await client["parley"]["message_shard_leases"].find_one({"_id": shard})
        assert lease is not None, f"shard {shard} has no lease"
        return str(lease["address"])
    finally:
        await client.close()


@dataclass
class Burst:
    log: SendLog
    histories: dict[str, list[mpb.Message]]
    channels: Channels
    member: Device
    group: str


async def lease_holders(stack: LocalStack) -> dict[str, int]:
    """Unexpired shard leases per owner address."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stack.mongo_uri)
    try:
        now = datetime.now(UTC)
        counts: dict[str, int] = {}
        async for lease in client["parley"]["message_shard_leases"].find({}):
            expires = lease["expires_at"]
            assert isinstance(expires, datetime)
            if expires.replace(tzinfo=UTC) > now:
                address = str(lease["address"])
                counts[address] = counts.get(address, 0) + 1
        return counts
    finally:
        await client.close()


async def burst(stack: LocalStack, keys_url: str, *, kill_owner: bool = False) -> Burst:
    """SENDERS senders over every process on one group, a few on a direct
    conversation; optionally SIGKILL the group's owner once a third is acked."""
    async with grpc.aio.insecure_channel(keys_url) as keys_channel:
        keys = kgrpc.AccountServiceStub(keys_channel)
        people = [await sign_up(keys) for _ in range(5)]
    channels = Channels(stack.message_targets)
    first = channels.stub(stack.message_targets[0])
    group = await group_of(first, people[0], people[1:])
    pair = await direct(first, people[0], people[1])
    log = SendLog()
    deadline = time.monotonic() + 120
    total = SENDERS * PER_SENDER + 2 * PER_SENDER

    async def sender(n: int, conversation: str, count: int) -> None:
        for i in range(count):
            await send_until_acked(
                channels,
                people[n % 2 if conversation == pair else n % len(people)],
                conversation,
                f"{conversation[:8]}-s{n}-m{i}".encode(),
                log=log,
                deadline=deadline,
                prefer=n,  # spread over every process
            )

    tasks = [asyncio.create_task(sender(n, group, PER_SENDER)) for n in range(SENDERS)]
    tasks += [asyncio.create_task(sender(n, pair, PER_SENDER)) for n in range(2)]
    if kill_owner:
        owner = await owner_address(stack, group)

        async def a_third_acked() -> bool:
            return len(log.acked) >= total // 3

        await wait_until(a_third_acked, timeout=60, what="a third of the sends acked")
        await stack.kill_message(stack.message_targets.index(owner))
    await asyncio.gather(*tasks)
    reader = next(
        t for i, t in enumerate(stack.message_targets) if stack.message_process(i).alive()
    )
    histories = {c: await all_messages(channels.stub(reader), people[0], c) for c in (group, pair)}
    return Burst(log, histories, channels, member=people[0], group=group)


def check(log: SendLog, histories: dict[str, list[mpb.Message]]) -> None:
    for conversation, history in histories.items():
        assert [m.seq for m in history] == list(range(1, len(history) + 1)), "seqs have a gap"
        sent = [m for m in history if not m.HasField("system")]
        mine = SendLog(
            acked={b: m for b, m in log.acked.items() if m.conversation_id == conversation}
        )
        by_body = {m.body: m for m in sent}
        assert len(by_body) == len(sent), "a message was stored twice"
        assert set(by_body) == set(mine.acked), "stored and acknowledged messages differ"
        for body, acked in mine.acked.items():
            assert by_body[body].message_id == acked.message_id, f"{body!r} acked as another"
    assert len(log.acked) == SENDERS * PER_SENDER + 2 * PER_SENDER
    aborted = [f for f in log.failures if f[2] == "ABORTED"]
    assert not aborted, f"answered ABORTED: {aborted[:5]}"


async def retries_return_the_same_message(
    channels: Channels, device: Device, conversation: str
) -> None:
    request_id = rid()
    request = mpb.SendMessageRequest(
        request_id=request_id,
        conversation_id=conversation,
        type=mpb.MESSAGE_TYPE_TEXT,
        body=b"once",
    )
    answers = [
        await channels.stub(target).SendMessage(request, metadata=device.md, timeout=10)
        for target in channels.targets
    ]
    assert len({a.message.message_id for a in answers}) == 1
    assert len({a.message.seq for a in answers}) == 1


async def test_two_processes_one_conversation_no_aborted(stack: LocalStack) -> None:
    assert len(stack.message_targets) == 2
    # Both processes own half the shards, so one of them forwards the group's sends.
    assert await lease_holders(stack) == dict.fromkeys(stack.message_targets, SHARDS // 2)
    run = await burst(stack, stack.keys_target)
    try:
        check(run.log, run.histories)
        assert not run.log.failures, f"retries were needed: {run.log.failures[:5]}"
        await retries_return_the_same_message(run.channels, run.member, run.group)
    finally:
        await run.channels.close()


async def test_three_processes_one_conversation_no_aborted(three: LocalStack) -> None:
    run = await burst(three, three.keys_target)
    try:
        check(run.log, run.histories)
        assert not run.log.failures, f"retries were needed: {run.log.failures[:5]}"
        await retries_return_the_same_message(run.channels, run.member, run.group)
    finally:
        await run.channels.close()


@pytest.mark.chaos
async def test_sigkill_of_the_owner_mid_burst_loses_nothing(three: LocalStack) -> None:
    try:
        run = await burst(three, three.keys_target, kill_owner=True)
        try:
            check(run.log, run.histories)
            assert run.log.failures, "the kill interrupted nothing, so nothing was proven"
            sent = [m for m in run.histories[run.group] if not m.HasField("system")]
            assert len(sent) == SENDERS * PER_SENDER
        finally:
            await run.channels.close()
    finally:
        for index in range(three.message_instances):
            if not three.message_process(index).alive():
                await three.start_message(index)
