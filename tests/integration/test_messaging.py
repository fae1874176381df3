"""svc_message against the real stack: conversations, sends, history, inbox."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from parley.message.v1 import messages_pb2 as mpb
from parley_dev.stack import LocalStack
from tests.integration.test_accounts import details
from tests.users import all_messages, direct, link_device, rid, send, sign_up


async def test_direct_conversation_is_one_per_pair(keys, messages, messages_b) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    ids = await asyncio.gather(
        direct(messages, alice, bob), direct(messages_b, bob, alice), direct(messages, alice, bob)
    )
    assert len(set(ids)) == 1
    view = await messages.GetConversation(
        mpb.GetConversationRequest(conversation_id=ids[0]), metadata=bob.md
    )
    assert sorted(view.conversation.member_account_ids) == sorted(
        [alice.account_id, bob.account_id]
    )
    assert view.conversation.type == mpb.CONVERSATION_TYPE_DIRECT


async def test_direct_conversation_needs_a_real_other_account(keys, messages) -> None:
    alice = await sign_up(keys)
    for peer, code in (
        (alice.account_id, grpc.StatusCode.INVALID_ARGUMENT),
        (rid(), grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await messages.CreateDirectConversation(
                mpb.CreateDirectConversationRequest(request_id=rid(), peer_account_id=peer),
                metadata=alice.md,
            )
        assert caught.value.code() == code


async def test_send_assigns_seq_id_and_server_time(keys, messages) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    first = await send(messages, alice, conversation, b"\x00ciphertext\xff")
    second = await send(messages, bob, conversation, b"reply")
    assert (first.seq, second.seq) == (1, 2)
    assert first.message_id != second.message_id
    assert first.sender_account_id == alice.account_id
    assert first.sender_device_id == alice.device_id
    assert first.body == b"\x00ciphertext\xff"
    assert first.create_time.seconds > 0


async def test_retried_send_returns_the_original_and_stores_one(keys, messages, messages_b) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    request_id = rid()
    # Retries race each other on both processes.
    sent = await asyncio.gather(
        *(
            send(stub, alice, conversation, b"once", request_id=request_id)
            for stub in (messages, messages_b) * 5
        )
    )
    assert len({m.message_id for m in sent}) == 1
    later = await send(messages, alice, conversation, b"later", request_id=request_id)
    assert later.message_id == sent[0].message_id
    history = await all_messages(messages, bob, conversation)
    assert [m.body for m in history] == [b"once"]


async def test_a_burst_of_retries_in_one_batch_all_get_the_first_attempts_message(
    keys, messages
) -> None:
    # More copies of one request than a batch has conflict rounds: the owner
    # commits the first and hands its message to every copy.
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    request_id = rid()
    sent = await asyncio.gather(
        *(send(messages, alice, conversation, b"once", request_id=request_id) for _ in range(20))
    )
    assert len({m.message_id for m in sent}) == 1
    assert [m.body for m in await all_messages(messages, bob, conversation)] == [b"once"]


async def test_many_retries_of_committed_sends_in_one_batch_are_answered_not_aborted(
    keys, messages
) -> None:
    # As after an owner's crash: every sender retries a send the log already
    # holds, and the retries arrive together. Each is found in the log (a
    # round each), which is progress, not contention: none is ABORTED.
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    request_ids = [rid() for _ in range(24)]
    first = [
        await send(messages, alice, conversation, f"m{i}".encode(), request_id=request_id)
        for i, request_id in enumerate(request_ids)
    ]
    again = await asyncio.gather(
        *(
            send(messages, alice, conversation, f"m{i}".encode(), request_id=request_id)
            for i, request_id in enumerate(request_ids)
        ),
        send(messages, alice, conversation, b"new"),
    )
    assert [m.message_id for m in again[:-1]] == [m.message_id for m in first]
    history = await all_messages(messages, bob, conversation)
    assert [m.seq for m in history] == list(range(1, 26))
    assert history[-1].body == b"new"


async def test_fifty_concurrent_senders_get_gapless_seqs(keys, messages, messages_b) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    devices = [alice, bob, await link_device(keys, alice), await link_device(keys, bob)]
    conversation = await direct(messages, alice, bob)
    stubs = [messages, messages_b]
    sent = await asyncio.gather(
        *(
            send(stubs[i % 2], devices[i % len(devices)], conversation, f"m{i}".encode())
            for i in range(50)
        )
    )
    seqs = sorted(m.seq for m in sent)
    assert seqs == list(range(1, 51))
    history = await all_messages(messages, alice, conversation)
    assert [m.seq for m in history] == list(range(1, 51))
    assert {m.message_id for m in history} == {m.message_id for m in sent}


async def test_non_member_is_denied_everything(keys, messages) -> None:
    alice, bob, eve = await sign_up(keys), await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    await send(messages, alice, conversation, b"secret")
    calls = [
        messages.GetConversation(
            mpb.GetConversationRequest(conversation_id=conversation), metadata=eve.md
        ),
        messages.SendMessage(
            mpb.SendMessageRequest(
                request_id=rid(),
                conversation_id=conversation,
                type=mpb.MESSAGE_TYPE_TEXT,
                body=b"x",
            ),
            metadata=eve.md,
        ),
        messages.ListMessages(
            mpb.ListMessagesRequest(conversation_id=conversation), metadata=eve.md
        ),
        messages.MarkRead(
            mpb.MarkReadRequest(request_id=rid(), conversation_id=conversation, seq=1),
            metadata=eve.md,
        ),
        messages.MarkDelivered(
            mpb.MarkDeliveredRequest(request_id=rid(), conversation_id=conversation, seq=1),
            metadata=eve.md,
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert details(caught.value)[0] == "ERROR_REASON_NOT_A_MEMBER"
    inbox = await messages.ListConversations(mpb.ListConversationsRequest(), metadata=eve.md)
    assert list(inbox.conversations) == []


async def test_unknown_conversation_is_not_found(keys, messages) -> None:
    alice = await sign_up(keys)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send(messages, alice, rid(), b"x")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_send_validation(keys, messages, stack: LocalStack) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    limit = stack.settings.message.max_body_bytes
    ok = await send(messages, alice, conversation, b"x" * limit)
    assert len(ok.body) == limit
    cases = [
        (dict(body=b"x" * (limit + 1)), ["body"], "ERROR_REASON_BODY_TOO_LARGE"),
        (dict(body=b""), ["body"], "ERROR_REASON_INVALID_FIELD"),
        (dict(type=0), ["type"], "ERROR_REASON_INVALID_FIELD"),
        (dict(type=999), ["type"], "ERROR_REASON_INVALID_FIELD"),
        (dict(request_id=""), ["request_id"], "ERROR_REASON_INVALID_FIELD"),
        (dict(conversation_id="nope"), ["conversation_id"], "ERROR_REASON_INVALID_FIELD"),
        (dict(reply_to_message_id=rid()), ["reply_to_message_id"], "ERROR_REASON_INVALID_FIELD"),
    ]
    for overrides, fields, reason in cases:
        request = dict(
            request_id=rid(), conversation_id=conversation, type=mpb.MESSAGE_TYPE_TEXT, body=b"hi"
        )
        request.update(overrides)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await messages.SendMessage(mpb.SendMessageRequest(**request), metadata=alice.md)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, overrides
        assert details(caught.value) == (reason, fields), overrides


async def test_reply_must_be_in_the_same_conversation(keys, messages) -> None:
    alice, bob, carol = await sign_up(keys), await sign_up(keys), await sign_up(keys)
    here = await direct(messages, alice, bob)
    elsewhere = await direct(messages, alice, carol)
    original = await send(messages, bob, here, b"question")
    foreign = await send(messages, carol, elsewhere, b"other")
    reply = await messages.SendMessage(
        mpb.SendMessageRequest(
            request_id=rid(),
            conversation_id=here,
            type=mpb.MESSAGE_TYPE_TEXT,
            body=b"answer",
            reply_to_message_id=original.message_id,
        ),
        metadata=alice.md,
    )
    assert reply.message.reply_to_message_id == original.message_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await messages.SendMessage(
            mpb.SendMessageRequest(
                request_id=rid(),
                conversation_id=here,
                type=mpb.MESSAGE_TYPE_TEXT,
                body=b"x",
                reply_to_message_id=foreign.message_id,
            ),
            metadata=alice.md,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_history_pages_both_ways(keys, messages) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    for i in range(1, 24):
        await send(messages, alice if i % 2 else bob, conversation, f"m{i}".encode())

    async def walk(direction: int, start_seq: int = 0) -> list[int]:
        seqs, token = [], ""
        for _ in range(100):
            page = await messages.ListMessages(
                mpb.ListMessagesRequest(
                    conversation_id=conversation,
                    page_size=5,
                    page_token=token,
                    direction=direction,
                    start_seq=start_seq,
                ),
                metadata=bob.md,
            )
            assert len(page.messages) <= 5
            seqs.extend(m.seq for m in page.messages)
            token = page.next_page_token
            if not token:
                return seqs
        raise AssertionError("no end")

    assert await walk(mpb.DIRECTION_BACKWARD) == list(range(23, 0, -1))
    assert await walk(mpb.DIRECTION_UNSPECIFIED) == list(range(23, 0, -1))
    assert await walk(mpb.DIRECTION_FORWARD) == list(range(1, 24))
    assert await walk(mpb.DIRECTION_FORWARD, start_seq=20) == [20, 21, 22, 23]
    assert await walk(mpb.DIRECTION_BACKWARD, start_seq=3) == [3, 2, 1]

    first = await messages.ListMessages(
        mpb.ListMessagesRequest(conversation_id=conversation, page_size=5), metadata=bob.md
    )
    # A token belongs to its request: other parameters or garbage are refused.
    for bad in (
        mpb.ListMessagesRequest(
            conversation_id=conversation,
            page_token=first.next_page_token,
            direction=mpb.DIRECTION_FORWARD,
        ),
        mpb.ListMessagesRequest(conversation_id=conversation, page_token="garbage!"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await messages.ListMessages(bad, metadata=bob.md)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(caught.value) == ("ERROR_REASON_PAGE_TOKEN_INVALID", ["page_token"])


async def test_inbox_orders_by_activity_with_unread_counts(keys, messages) -> None:
    me = await sign_up(keys)
    peers = [await sign_up(keys) for _ in range(5)]
    conversations = [await direct(messages, me, peer) for peer in peers]
    # Activity in a shuffled order; peer i sends i+1 messages.
    order = list(range(5))
    random.shuffle(order)
    for i in order:
        for n in range(i + 1):
            await send(messages, peers[i], conversations[i], f"{n}".encode())
    await send(messages, me, conversations[order[0]], b"mine")  # my own message is read

    expected = [conversations[order[0]], *(conversations[i] for i in reversed(order[1:]))]

    async def inbox() -> list[mpb.ConversationView]:
        seen, token = [], ""
        while True:
            page = await messages.ListConversations(
                mpb.ListConversationsRequest(page_size=2, page_token=token), metadata=me.md
            )
            seen.extend(page.conversations)
            token = page.next_page_token
            if not token:
                return seen

    # Unread counts are current at once.
    for i in range(5):
        view = await messages.GetConversation(
            mpb.GetConversationRequest(conversation_id=conversations[i]), metadata=me.md
        )
        assert view.unread_count == (0 if i == order[0] else i + 1)
    # The order follows as soon as the conversation metadata, written behind
    # the log, lands (pages walked meanwhile may see a conversation move).
    seen = await inbox()
    for _ in range(50):
        if [v.conversation.conversation_id for v in seen] == expected:
            break
        await asyncio.sleep(0.1)
        seen = await inbox()
    assert [v.conversation.conversation_id for v in seen] == expected
    unread = {v.conversation.conversation_id: v.unread_count for v in seen}
    assert unread == {c: (0 if i == order[0] else i + 1) for i, c in enumerate(conversations)}
    top = seen[0]
    assert top.last_message.sender_account_id == me.account_id
    assert top.last_message.seq == top.conversation.last_seq == order[0] + 2


async def test_watermarks_are_monotonic_and_drive_unread(keys, messages) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    for i in range(6):
        await send(messages, alice, conversation, f"{i}".encode())

    async def bob_view() -> mpb.ConversationView:
        return await messages.GetConversation(
            mpb.GetConversationRequest(conversation_id=conversation), metadata=bob.md
        )

    assert (await bob_view()).unread_count == 6
    marked = await messages.MarkRead(
        mpb.MarkReadRequest(request_id=rid(), conversation_id=conversation, seq=4), metadata=bob.md
    )
    assert (marked.read_seq, marked.delivered_seq) == (4, 4)
    lower = await messages.MarkRead(
        mpb.MarkReadRequest(request_id=rid(), conversation_id=conversation, seq=2), metadata=bob.md
    )
    assert lower.read_seq == 4
    delivered = await messages.MarkDelivered(
        mpb.MarkDeliveredRequest(request_id=rid(), conversation_id=conversation, seq=6),
        metadata=bob.md,
    )
    assert (delivered.delivered_seq, delivered.read_seq) == (6, 4)
    beyond = await messages.MarkRead(
        mpb.MarkReadRequest(request_id=rid(), conversation_id=conversation, seq=99), metadata=bob.md
    )
    assert beyond.read_seq == 6  # clamped to the newest message
    view = await bob_view()
    assert view.unread_count == 0
    # Alice sees Bob's watermarks: the ticks of her messages.
    alice_view = await messages.GetConversation(
        mpb.GetConversationRequest(conversation_id=conversation), metadata=alice.md
    )
    marks = {w.account_id: (w.delivered_seq, w.read_seq) for w in alice_view.member_watermarks}
    assert marks[bob.account_id] == (6, 6)
    assert marks[alice.account_id] == (6, 6)
