"""Identity-change system messages, against the session stack: svc_keys is
simulated by writing its outbox records (identity_changes) directly; both
svc_message instances run the worker, so every change is raced for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_core.storage.key_notices import IdentityChanges
from parley_dev.stack import LocalStack
from tests.chaos.clients import metric
from tests.helpers import wait_until
from tests.users import (
    Device,
    Stream,
    all_messages,
    direct,
    link_device,
    open_stream,
    rpc,
    send,
    sign_up_many,
    synced,
)

CHANGED = mpb.SystemEvent.ACTION_IDENTITY_CHANGED
# A poll a second per worker, and a margin for a loaded machine.
WRITTEN_WITHIN = 20.0


@pytest_asyncio.fixture(loop_scope="session")
async def outbox(stack: LocalStack) -> AsyncIterator[AsyncCollection[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_uri, tz_aware=True)
    yield client[stack.settings.mongo.database]["identity_changes"]
    await client.close()


def changes_in(history: list[mpb.Message]) -> list[mpb.Message]:
    return [m for m in history if m.system.action == CHANGED]


def streamed(stream: Stream, conversation_id: str) -> list[mpb.Message]:
    return changes_in(stream.messages(conversation_id))


async def history_changes(
    messages: mgrpc.MessageServiceStub, reader: Device, conversation_id: str
) -> list[mpb.Message]:
    return changes_in(await all_messages(messages, reader, conversation_id))


async def gone(outbox: AsyncCollection[dict[str, Any]], change_id: str) -> None:
    async def done() -> bool:
        return await outbox.find_one({"_id": change_id}) is None

    await wait_until(done, timeout=WRITTEN_WITHIN, what=f"change {change_id} to be done")


async def announced(stack: LocalStack) -> tuple[float, float]:
    """(changes done, messages submitted) by the workers of both instances."""
    done = submitted = 0.0
    for url in stack.message_metrics_urls:
        done += await metric(url, "parley_identity_changes_announced_total")
        submitted += await metric(url, "parley_identity_change_messages_total")
    return done, submitted


async def test_an_identity_change_is_announced_once_in_each_direct_and_group_conversation(
    keys, messages, messages_b, outbox: AsyncCollection[dict[str, Any]], stack: LocalStack
) -> None:
    alice, bob, carol = await sign_up_many(keys, 3)
    alice_laptop = await link_device(keys, alice)
    with_bob = await direct(messages, alice, bob)
    with_carol = await direct(messages_b, carol, alice)
    group = (
        await rpc(
            messages,
            "CreateGroup",
            carol,
            title="friends",
            member_account_ids=[alice.account_id, bob.account_id],
        )
    ).conversation.conversation_id
    # A channel alice runs (she is in its member list): not announced there.
    channel = (
        await rpc(messages, "CreateChannel", alice, title="news", public=True)
    ).conversation.conversation_id
    await rpc(messages_b, "SubscribeChannel", bob, conversation_id=channel)
    # A group alice left is not hers any more.
    left = (
        await rpc(messages, "CreateGroup", bob, title="old", member_account_ids=[alice.account_id])
    ).conversation.conversation_id
    await rpc(messages, "LeaveConversation", alice, conversation_id=left)
    unread = await send(messages, bob, with_bob, b"not read yet")

    bob_s = await open_stream(messages_b, bob)
    carol_s = await open_stream(messages, carol)
    try:
        await bob_s.wait_for(synced)
        await carol_s.wait_for(synced)
        done_before, submitted_before = await announced(stack)
        change_id = await IdentityChanges(outbox.database).record(
            account_id=alice.account_id, device_id=alice_laptop.device_id, now=datetime.now(UTC)
        )
        await bob_s.wait_for(
            lambda s: len(streamed(s, with_bob)) == 1 and len(streamed(s, group)) == 1,
            timeout=WRITTEN_WITHIN,
        )
        await carol_s.wait_for(
            lambda s: len(streamed(s, with_carol)) == 1 and len(streamed(s, group)) == 1,
            timeout=WRITTEN_WITHIN,
        )
        for shown in [*streamed(bob_s, with_bob), *streamed(carol_s, group)]:
            assert shown.type == mpb.MESSAGE_TYPE_SYSTEM
            assert shown.system.actor_account_id == alice.account_id
            assert shown.system.device_id == alice_laptop.device_id
            # Sent in the actor's name, from the device concerned, like other
            # system messages.
            assert shown.sender_account_id == alice.account_id
            assert shown.sender_device_id == alice_laptop.device_id
        await gone(outbox, change_id)

        expected = {with_bob: 1, with_carol: 1, group: 1, channel: 0, left: 0}
        for conversation_id, count in expected.items():
            found = await history_changes(messages_b, alice, conversation_id)
            assert len(found) == count, conversation_id
        [in_history] = await history_changes(messages, bob, with_bob)
        assert in_history.system.device_id == alice_laptop.device_id
        assert in_history.seq == unread.seq + 1

        # Nobody read anything by changing keys: alice's read watermark stays
        # where it was, as bob sees it.
        view = await rpc(messages, "GetConversation", bob, conversation_id=with_bob)
        marks = {w.account_id: w for w in view.member_watermarks}
        assert marks[alice.account_id].read_seq == 0
        mine = await rpc(messages, "GetConversation", alice, conversation_id=with_bob)
        assert mine.unread_count == 2

        # Claimed again after a lease ran out (its worker wrote everything and
        # died before marking it done): nothing is written twice.
        await outbox.insert_one(
            {
                "_id": change_id,
                "account_id": alice.account_id,
                "device_id": alice_laptop.device_id,
                "created_at": datetime.now(UTC),
                "claimed_by": "a-worker-that-died",
                "lease_until": datetime.now(UTC) - timedelta(seconds=1),
            }
        )
        await gone(outbox, change_id)
        for conversation_id, count in expected.items():
            assert len(await history_changes(messages, alice, conversation_id)) == count
        assert len(streamed(bob_s, with_bob)) == 1
        assert len(streamed(bob_s, group)) == 1
        # Both passes did the work (other tests' changes may add to it).
        done_after, submitted_after = await announced(stack)
        assert done_after - done_before >= 2
        assert submitted_after - submitted_before >= 2 * 3
        assert bob_s.error is None and carol_s.error is None
    finally:
        await bob_s.close()
        await carol_s.close()


async def test_a_change_held_under_a_live_lease_waits_for_the_lease(
    keys, messages, outbox: AsyncCollection[dict[str, Any]]
) -> None:
    dave, erin = await sign_up_many(keys, 2)
    conversation_id = await direct(messages, erin, dave)
    lease_until = datetime.now(UTC) + timedelta(seconds=4)
    await outbox.insert_one(
        {
            "_id": f"held-{dave.account_id}",
            "account_id": dave.account_id,
            "device_id": dave.device_id,
            "created_at": datetime.now(UTC),
            "claimed_by": "a-worker-still-at-it",
            "lease_until": lease_until,
        }
    )
    # Both workers polled at least once meanwhile (every second).
    await asyncio.sleep(2.0)
    before = await history_changes(messages, erin, conversation_id)
    if time.time() < lease_until.timestamp() - 0.5:
        assert before == [], "taken from a worker whose lease had not run out"
    await gone(outbox, f"held-{dave.account_id}")
    [announced] = await history_changes(messages, erin, conversation_id)
    assert announced.system.device_id == dave.device_id


async def test_two_changes_of_one_device_are_two_messages(
    keys, messages, outbox: AsyncCollection[dict[str, Any]]
) -> None:
    frank, gina = await sign_up_many(keys, 2)
    conversation_id = await direct(messages, gina, frank)
    changes = IdentityChanges(outbox.database)
    first = await changes.record(
        account_id=frank.account_id, device_id=frank.device_id, now=datetime.now(UTC)
    )
    second = await changes.record(
        account_id=frank.account_id, device_id=frank.device_id, now=datetime.now(UTC)
    )
    await gone(outbox, first)
    await gone(outbox, second)
    assert len(await history_changes(messages, gina, conversation_id)) == 2
