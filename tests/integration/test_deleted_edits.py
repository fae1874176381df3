"""A device that catches up after a message was edited and then deleted for
everyone never receives the edited text: the feed keeps the edit entry, and
its replay carries no body."""

from __future__ import annotations

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from tests.users import direct, open_stream, rid, send, sign_up, synced

SECRET = b"the edited text that was then deleted"


async def test_an_edit_of_a_message_deleted_for_everyone_is_replayed_without_its_body(
    keys: kgrpc.AccountServiceStub, messages: mgrpc.MessageServiceStub
) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation_id = await direct(messages, alice, bob)
    first = await send(messages, alice, conversation_id, b"hello")
    stream = await open_stream(messages, bob)
    try:
        await stream.wait_for(lambda s: synced(s) and s.messages(conversation_id))
        held = stream.versions()
    finally:
        await stream.close()

    sent = await send(messages, alice, conversation_id, b"original")
    await messages.EditMessage(
        mpb.EditMessageRequest(
            request_id=rid(),
            conversation_id=conversation_id,
            message_id=sent.message_id,
            body=SECRET,
        ),
        metadata=alice.md,
    )
    await messages.DeleteMessage(
        mpb.DeleteMessageRequest(
            request_id=rid(),
            conversation_id=conversation_id,
            message_id=sent.message_id,
            scope=mpb.DELETE_SCOPE_FOR_EVERYONE,
        ),
        metadata=alice.md,
    )

    # bob comes back from the version he held before the edit.
    resumed = await open_stream(messages, bob, positions=held)
    try:
        await resumed.wait_for(lambda s: any(e.WhichOneof("kind") == "deletion" for e in s.events))
        edits = [e.edit for e in resumed.events if e.WhichOneof("kind") == "edit"]
        assert all(edit.body == b"" for edit in edits), "an edit of a deleted message kept its body"
        assert all(SECRET not in e.SerializeToString() for e in resumed.events)
        assert first.seq < sent.seq
    finally:
        await resumed.close()
