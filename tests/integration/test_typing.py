"""Typing indicators over real Connect streams, across both svc_message
instances of the session stack, on a single Redis and on a Redis Cluster:
the typist's stream is on instance 0, the recipients' mostly on instance 1.

Negative checks need a barrier, since "nothing arrived" proves nothing on
its own. Two are used: a later event that must arrive after the one that
must not (Redis delivers one connection's publishes in order, and each
process routes them in order), and a ping (the server handles a stream's
client events in order, so its pong means the typing events before it were
handled).
"""

from __future__ import annotations

import pytest

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.stack import LocalStack
from tests.chaos.clients import metric
from tests.redis_server import Stubs
from tests.users import (
    Device,
    Stream,
    all_messages,
    direct,
    link_device,
    open_stream,
    rid,
    rpc,
    send,
    sign_up_many,
    synced,
)


@pytest.fixture(scope="module")
def keys(redis_stubs: Stubs) -> accounts_pb2_grpc.AccountServiceStub:
    return redis_stubs.keys


@pytest.fixture(scope="module")
def messages(redis_stubs: Stubs) -> mgrpc.MessageServiceStub:
    return redis_stubs.messages


@pytest.fixture(scope="module")
def messages_b(redis_stubs: Stubs) -> mgrpc.MessageServiceStub:
    return redis_stubs.messages_b


def typing(conversation_id: str, on: bool = True) -> mpb.ClientEvent:
    return mpb.ClientEvent(typing=mpb.Typing(conversation_id=conversation_id, typing=on))


def indicators(stream: Stream, conversation_id: str | None = None) -> list[mpb.TypingIndicator]:
    return [
        e.typing
        for e in stream.events
        if e.WhichOneof("kind") == "typing"
        and (conversation_id is None or e.typing.conversation_id == conversation_id)
    ]


def seen(stream: Stream, conversation_id: str) -> list[tuple[str, bool]]:
    return [(t.account_id, t.typing) for t in indicators(stream, conversation_id)]


async def handled(stream: Stream, nonce: int) -> None:
    """Wait until the server has handled everything sent on ``stream`` so far."""
    stream.outgoing.put_nowait(mpb.ClientEvent(ping=mpb.Ping(nonce=nonce)))
    await stream.wait_for(
        lambda s: any(e.WhichOneof("kind") == "pong" and e.pong.nonce == nonce for e in s.events)
    )


async def group(messages: mgrpc.MessageServiceStub, owner: Device, *members: Device) -> str:
    view = await rpc(
        messages,
        "CreateGroup",
        owner,
        title="typing",
        member_account_ids=[m.account_id for m in members],
    )
    return str(view.conversation.conversation_id)


async def opened(*pairs: tuple[mgrpc.MessageServiceStub, Device]) -> list[Stream]:
    streams = [await open_stream(stub, device) for stub, device in pairs]
    for stream in streams:
        await stream.wait_for(synced)
    return streams


async def close(streams: list[Stream]) -> None:
    for stream in streams:
        await stream.close()


def no_errors(streams: list[Stream]) -> None:
    for stream in streams:
        assert stream.error is None, stream.error


async def test_members_see_who_is_typing_and_the_typists_devices_do_not(
    keys, messages, messages_b, redis_stack: LocalStack
) -> None:
    stack = redis_stack
    alice, bob, carol = await sign_up_many(keys, 3)
    alice_laptop = await link_device(keys, alice)
    conversation = await group(messages, alice, bob, carol)
    typist, laptop, bob_s, carol_s = streams = await opened(
        (messages, alice),
        (messages_b, alice_laptop),
        (messages_b, bob),
        (messages, carol),  # on the typist's own process too
    )
    try:
        typist.outgoing.put_nowait(typing(conversation))
        for stream in (bob_s, carol_s):
            await stream.wait_for(lambda s: len(indicators(s, conversation)) == 1)
            (shown,) = indicators(stream, conversation)
            assert (shown.account_id, shown.typing) == (alice.account_id, True)
            expires = stack.settings.message.typing_expires_seconds
            assert shown.expires_in.ToTimedelta().total_seconds() == expires

        # Published after the indicator reached bob, so behind it everywhere.
        sent = await send(messages, alice, conversation, b"done typing")
        for stream in streams:
            await stream.wait_for(lambda s: sent.seq in [m.seq for m in s.messages(conversation)])
        assert indicators(typist) == []
        assert indicators(laptop) == [], "the typist's other device is the same account"

        typist.outgoing.put_nowait(typing(conversation, False))
        await bob_s.wait_for(lambda s: len(indicators(s, conversation)) == 2)
        assert seen(bob_s, conversation) == [(alice.account_id, True), (alice.account_id, False)]
        no_errors(streams)
    finally:
        await close(streams)


async def test_repeated_starts_within_the_interval_are_forwarded_once(
    keys, messages, messages_b, redis_stack: LocalStack
) -> None:
    stack = redis_stack
    url = stack.message_metrics_urls[0]
    repeats = await metric(url, "parley_typing_events_dropped_total", reason="repeat")
    unstarted = await metric(url, "parley_typing_events_dropped_total", reason="not_started")
    forwarded = await metric(url, "parley_typing_events_forwarded_total")
    alice, bob = await sign_up_many(keys, 2)
    conversation = await direct(messages, alice, bob)
    typist, bob_s = streams = await opened((messages, alice), (messages_b, bob))
    try:
        typist.outgoing.put_nowait(typing(conversation, False))  # nothing showing to stop
        for _ in range(5):
            typist.outgoing.put_nowait(typing(conversation))
        typist.outgoing.put_nowait(typing(conversation, False))
        # Every publish goes out in order: once the stop is here, so is the rest.
        await bob_s.wait_for(lambda s: (alice.account_id, False) in seen(s, conversation))
        assert seen(bob_s, conversation) == [(alice.account_id, True), (alice.account_id, False)]
        assert await metric(url, "parley_typing_events_dropped_total", reason="repeat") >= (
            repeats + 4
        )
        assert await metric(url, "parley_typing_events_dropped_total", reason="not_started") >= (
            unstarted + 1
        )
        assert await metric(url, "parley_typing_events_forwarded_total") >= forwarded + 2

        # Stopped, then typing again at once: recipients must see it again.
        typist.outgoing.put_nowait(typing(conversation))
        await bob_s.wait_for(lambda s: len(indicators(s, conversation)) == 3)
        assert seen(bob_s, conversation)[-1] == (alice.account_id, True)
        no_errors(streams)
    finally:
        await close(streams)


async def test_typing_from_outside_a_conversation_is_dropped_and_the_stream_lives(
    keys, messages, messages_b, redis_stack: LocalStack
) -> None:
    stack = redis_stack
    url = stack.message_metrics_urls[0]
    outside = await metric(url, "parley_typing_events_dropped_total", reason="not_member")
    malformed = await metric(url, "parley_typing_events_dropped_total", reason="invalid")
    alice, bob, mallory = await sign_up_many(keys, 3)
    conversation = await group(messages, alice, bob)
    mallory_own = await direct(messages, mallory, bob)
    intruder, typist, bob_s = streams = await opened(
        (messages, mallory), (messages, alice), (messages_b, bob)
    )
    try:
        intruder.outgoing.put_nowait(typing(conversation))  # not a member
        intruder.outgoing.put_nowait(typing("not-an-id"))
        intruder.outgoing.put_nowait(typing(""))
        intruder.outgoing.put_nowait(typing(rid()))  # no such conversation
        await handled(intruder, 1)
        # The same process publishes alice's typing after anything mallory's
        # could have queued.
        typist.outgoing.put_nowait(typing(conversation))
        await bob_s.wait_for(lambda s: len(indicators(s, conversation)) == 1)
        assert seen(bob_s, conversation) == [(alice.account_id, True)]
        assert await metric(url, "parley_typing_events_dropped_total", reason="not_member") >= (
            outside + 2
        )
        assert await metric(url, "parley_typing_events_dropped_total", reason="invalid") >= (
            malformed + 2
        )

        # Mallory's stream still works: typing where she is a member, messages, acks.
        intruder.outgoing.put_nowait(typing(mallory_own))
        await bob_s.wait_for(lambda s: len(indicators(s, mallory_own)) == 1)
        sent = await send(messages_b, bob, mallory_own, b"hello mallory")
        await intruder.wait_for(lambda s: len(s.messages(mallory_own)) == 1)

        def delivered(stream: Stream) -> bool:
            return any(
                e.WhichOneof("kind") == "receipt"
                and e.receipt.account_id == mallory.account_id
                and e.receipt.delivered_seq >= sent.seq
                for e in stream.events
            )

        await bob_s.wait_for(delivered)  # mallory's stream acked it
        no_errors(streams)
    finally:
        await close(streams)


async def test_a_removed_member_neither_types_nor_sees_typing(keys, messages, messages_b) -> None:
    alice, bob, carol = await sign_up_many(keys, 3)
    conversation = await group(messages, alice, bob, carol)
    with_carol = await direct(messages, alice, carol)
    typist, bob_s, carol_s = streams = await opened(
        (messages, alice), (messages_b, bob), (messages_b, carol)
    )
    try:
        await rpc(
            messages,
            "RemoveMember",
            alice,
            conversation_id=conversation,
            account_id=carol.account_id,
        )

        def removal_seen(stream: Stream) -> bool:
            return any(
                m.system.action == mpb.SystemEvent.ACTION_MEMBER_REMOVED
                for m in stream.messages(conversation)
            )

        await carol_s.wait_for(removal_seen)
        carol_s.outgoing.put_nowait(typing(conversation))
        await handled(carol_s, 7)
        typist.outgoing.put_nowait(typing(conversation))
        typist.outgoing.put_nowait(typing(with_carol))
        await bob_s.wait_for(lambda s: len(indicators(s, conversation)) == 1)
        await carol_s.wait_for(lambda s: len(indicators(s, with_carol)) == 1)
        assert seen(bob_s, conversation) == [(alice.account_id, True)]
        assert indicators(carol_s, conversation) == []
        no_errors(streams)
    finally:
        await close(streams)


async def test_typing_is_suppressed_in_channels(
    keys, messages, messages_b, redis_stack: LocalStack
) -> None:
    stack = redis_stack
    urls = stack.message_metrics_urls
    name = "parley_typing_events_dropped_total"
    before = [await metric(url, name, reason="channel") for url in urls]
    owner, reader = await sign_up_many(keys, 2)
    view = await rpc(messages, "CreateChannel", owner, title="news", public=True)
    channel = view.conversation.conversation_id
    await rpc(messages, "SubscribeChannel", reader, conversation_id=channel)
    with_reader = await direct(messages, owner, reader)
    typist, reader_s = streams = await opened((messages, owner), (messages_b, reader))
    try:
        typist.outgoing.put_nowait(typing(channel))
        reader_s.outgoing.put_nowait(typing(channel))
        typist.outgoing.put_nowait(typing(with_reader))
        await reader_s.wait_for(lambda s: len(indicators(s)) == 1)
        assert [t.conversation_id for t in indicators(reader_s)] == [with_reader]
        await handled(reader_s, 3)
        sent = await send(messages, owner, channel, b"post")
        await typist.wait_for(lambda s: sent.seq in [m.seq for m in s.messages(channel)])
        assert indicators(typist) == []
        # Suppressed where typed, not only where it would be shown.
        after = [await metric(url, name, reason="channel") for url in urls]
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1]
        no_errors(streams)
    finally:
        await close(streams)


async def test_typing_is_never_stored_nor_replayed(keys, messages, messages_b) -> None:
    alice, bob = await sign_up_many(keys, 2)
    conversation = await group(messages, alice, bob)
    typist, bob_s = streams = await opened((messages, alice), (messages_b, bob))
    try:
        await send(messages, alice, conversation, b"one")
        typist.outgoing.put_nowait(typing(conversation))
        await bob_s.wait_for(lambda s: len(indicators(s, conversation)) == 1)
        await send(messages, alice, conversation, b"two")
        typist.outgoing.put_nowait(typing(conversation, False))
        await bob_s.wait_for(lambda s: len(indicators(s, conversation)) == 2)
        await bob_s.wait_for(lambda s: len(s.messages(conversation)) == 3)
        no_errors(streams)
    finally:
        await close(streams)

    # The feed holds the creation and the two messages, versions without a gap.
    for stub in (messages, messages_b):
        history = await all_messages(stub, bob, conversation)
        assert [(m.seq, m.version) for m in history] == [(1, 1), (2, 2), (3, 3)]
        assert [m.body for m in history[1:]] == [b"one", b"two"]
    view = await rpc(messages_b, "GetConversation", bob, conversation_id=conversation)
    assert view.conversation.last_version == 3

    # A device resuming from the start replays the feed and nothing else.
    again = await open_stream(messages_b, bob, positions={conversation: 0})
    try:
        await again.wait_for(synced)
        assert "typing" not in again.kinds()
        assert [m.version for m in again.messages(conversation)] == [1, 2, 3]
    finally:
        await again.close()
