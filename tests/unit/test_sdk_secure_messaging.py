"""The SDK's encryption layer over an in-memory key directory and message log:
who gets a copy, which bundles are fetched, the self-copy cache, sender keys and
their rotation, edits, restarts and re-installs, and stream preparation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from parley.e2ee.v1 import e2ee_pb2
from parley.message.v1 import messages_pb2 as pb
from parley_sdk import (
    KeyNoticeEvent,
    KeyNoticeKind,
    MessageEditedEvent,
    MessageEvent,
    NoRecipientDevicesError,
    SystemMessageEvent,
)
from parley_sdk._secure import E2EE, history_key
from tests.sdk_e2ee_fakes import FakeServer, device

DIRECT = pb.CONVERSATION_TYPE_DIRECT
GROUP = pb.CONVERSATION_TYPE_GROUP
CHANNEL = pb.CONVERSATION_TYPE_CHANNEL


async def online(
    server: FakeServer, account_id: str, device_id: str, store: object = ":memory:"
) -> E2EE:
    e2ee = device(server, account_id, device_id, store)
    await e2ee.ensure_keys()
    return e2ee


def copies_for(message: pb.Message) -> list[tuple[str, str]]:
    envelope = e2ee_pb2.Envelope.FromString(message.body)
    return [(c.account_id, c.device_id) for c in envelope.pairwise.copies]


async def test_direct_copies_reach_the_peer_and_own_other_devices() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    alice_2 = await online(server, "alice", "a2")
    bob = await online(server, "bob", "b1")
    cid = server.conversation(DIRECT, ["alice", "bob"])

    sent = await alice.send_text(cid, "hello bob", reply_to_message_id="", forwarded=False)
    assert sent.text == "hello bob"
    stored = server.messages[cid][0]
    assert b"hello bob" not in stored.body
    assert sorted(copies_for(stored)) == [("alice", "a2"), ("bob", "b1")]

    assert (await bob.decrypt(stored)).text == "hello bob"
    assert (await alice_2.decrypt(stored)).text == "hello bob"
    # The sender holds no copy for itself: it reads its own message from the cache.
    assert (await alice.decrypt(stored)).text == "hello bob"
    # Message keys work once, so a second read comes from the cache too.
    assert (await bob.decrypt(stored)).text == "hello bob"

    reply = await bob.send_text(cid, "hi alice", reply_to_message_id="", forwarded=False)
    assert (await alice.decrypt(reply.message)).text == "hi alice"
    assert (await alice_2.decrypt(reply.message)).text == "hi alice"


async def test_bundles_only_for_devices_without_a_session_and_revoked_ones_dropped() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    await online(server, "alice", "a2")
    await online(server, "bob", "b1")
    cid = server.conversation(DIRECT, ["alice", "bob"])

    await alice.send_text(cid, "one", reply_to_message_id="", forwarded=False)
    assert sorted(server.calls_to("bundles", "a1")) == [("alice", ("a2",)), ("bob", ("b1",))]
    server.calls.clear()
    await alice.send_text(cid, "two", reply_to_message_id="", forwarded=False)
    assert server.calls_to("bundles", "a1") == []

    # Bob links a phone; only its bundle is fetched (no other prekey is used up).
    await online(server, "bob", "b2")
    server.calls.clear()
    third = await alice.send_text(cid, "three", reply_to_message_id="", forwarded=False)
    assert server.calls_to("bundles", "a1") == [("bob", ("b2",))]
    assert sorted(copies_for(third.message)) == [("alice", "a2"), ("bob", "b1"), ("bob", "b2")]

    # Alice's second device is revoked: no more copies, and its session is gone.
    del server.devices["alice"]["a2"]
    fourth = await alice.send_text(cid, "four", reply_to_message_id="", forwarded=False)
    assert sorted(copies_for(fourth.message)) == [("bob", "b1"), ("bob", "b2")]
    assert "a2" not in alice.crypto.sessions_with("alice")


async def test_a_device_that_holds_no_copy_gets_an_error_not_an_exception() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    await online(server, "bob", "b1")
    cid = server.conversation(DIRECT, ["alice", "bob"])
    sent = await alice.send_text(cid, "before the phone", reply_to_message_id="", forwarded=False)
    bob_phone = await online(server, "bob", "b2")
    decrypted = await bob_phone.decrypt(sent.message)
    assert decrypted.text is None
    assert decrypted.error == "not encrypted for this device"

    tampered = pb.Message()
    tampered.CopyFrom(sent.message)
    tampered.message_id = "other"
    tampered.body = b"\xff\x00garbage"
    assert (await bob_phone.decrypt(tampered)).error
    system = pb.Message(message_id="s", type=pb.MESSAGE_TYPE_SYSTEM)
    assert (await bob_phone.decrypt(system)).text is None
    assert (await bob_phone.decrypt(system)).error is None


async def test_a_device_with_a_broken_bundle_is_skipped() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    await online(server, "bob", "b2")
    broken = server.devices["bob"]["b2"]
    broken.signed_pre_key = dataclasses.replace(broken.signed_pre_key, signature=bytes(64))
    cid = server.conversation(DIRECT, ["alice", "bob"])
    sent = await alice.send_text(cid, "still arrives", reply_to_message_id="", forwarded=False)
    assert copies_for(sent.message) == [("bob", "b1")]
    assert (await bob.decrypt(sent.message)).text == "still arrives"


async def test_a_peer_without_keys_is_refused_before_sending() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    cid = server.conversation(DIRECT, ["alice", "bob"])
    with pytest.raises(NoRecipientDevicesError):
        await alice.send_text(cid, "anyone?", reply_to_message_id="", forwarded=False)
    assert server.messages[cid] == []


async def test_group_sender_keys_are_distributed_once_and_rotated_on_removal() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    alice_2 = await online(server, "alice", "a2")
    bob = await online(server, "bob", "b1")
    carol = await online(server, "carol", "c1")
    gid = server.conversation(GROUP, ["alice", "bob", "carol"])

    first = await alice.send_text(gid, "hello group", reply_to_message_id="", forwarded=False)
    assert e2ee_pb2.Envelope.FromString(first.message.body).WhichOneof("content") == "group"
    [recipients] = server.calls_to("send_sender_keys", "a1")
    assert sorted(recipients) == [("alice", "a2"), ("bob", "b1"), ("carol", "c1")]
    for member in (alice_2, bob, carol):
        assert (await member.decrypt(first.message)).text == "hello group"

    second = await alice.send_text(gid, "again", reply_to_message_id="", forwarded=False)
    assert len(server.calls_to("send_sender_keys", "a1")) == 1  # nobody lacks the key
    assert (await carol.decrypt(second.message)).text == "again"

    server.conversations[gid][1].remove("carol")
    # What the stream's system message reports; the re-key notice after it is a no-op.
    removal = pb.Message(
        conversation_id=gid,
        type=pb.MESSAGE_TYPE_SYSTEM,
        system=pb.SystemEvent(
            action=pb.SystemEvent.ACTION_MEMBER_REMOVED, target_account_ids=["carol"]
        ),
    )
    await alice.prepare(SystemMessageEvent(removal))
    await alice.prepare(
        KeyNoticeEvent(KeyNoticeKind.GROUP_REKEY, conversation_id=gid, account_ids=("carol",))
    )
    after = await alice.send_text(gid, "carol is gone", reply_to_message_id="", forwarded=False)
    [_, again] = server.calls_to("send_sender_keys", "a1")
    assert sorted(again) == [("alice", "a2"), ("bob", "b1")]
    assert (await bob.decrypt(after.message)).text == "carol is gone"
    assert (await alice_2.decrypt(after.message)).text == "carol is gone"
    lost = await carol.decrypt(after.message)
    assert lost.text is None and lost.error
    # A replayed departure does not start yet another epoch.
    await alice.prepare(SystemMessageEvent(removal))
    await alice.send_text(gid, "still three", reply_to_message_id="", forwarded=False)
    assert len(server.calls_to("send_sender_keys", "a1")) == 2


async def test_a_departure_missed_while_offline_still_rotates() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    await online(server, "bob", "b1")
    carol = await online(server, "carol", "c1")
    gid = server.conversation(GROUP, ["alice", "bob", "carol"])
    await alice.send_text(gid, "hi", reply_to_message_id="", forwarded=False)
    server.conversations[gid][1].remove("carol")
    alice.groups._cache.clear()  # as after the cache expired
    after = await alice.send_text(gid, "secret", reply_to_message_id="", forwarded=False)
    assert (await carol.decrypt(after.message)).text is None


async def test_sender_keys_from_non_members_are_refused() -> None:
    server = FakeServer()
    mallory = await online(server, "mallory", "m1")
    bob = await online(server, "bob", "b1")
    gid = server.conversation(GROUP, ["mallory", "bob"])
    sent = await mallory.send_text(gid, "trust me", reply_to_message_id="", forwarded=False)
    server.conversations[gid][1].remove("mallory")
    decrypted = await bob.decrypt(sent.message)
    assert decrypted.text is None and decrypted.error


async def test_edits_decrypt_and_the_original_text_is_not_reused() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    for kind in (DIRECT, GROUP):
        cid = server.conversation(kind, ["alice", "bob"])
        sent = await alice.send_text(cid, "helo", reply_to_message_id="", forwarded=False)
        assert (await bob.decrypt(sent.message)).text == "helo"
        await alice.edit_text(cid, sent.message_id, "hello")
        [edited] = server.messages[cid]
        assert edited.edited
        assert (await bob.decrypt(edited)).text == "hello"
        assert (await alice.decrypt(edited)).text == "hello"
    assert history_key("m", b"x", edited=False) == "m"
    assert history_key("m", b"x", edited=True) != history_key("m", b"y", edited=True)


async def test_channels_carry_public_content() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    reader = await online(server, "bob", "b1")
    cid = server.conversation(CHANNEL, ["alice"])
    sent = await alice.send_text(cid, "news", reply_to_message_id="", forwarded=False)
    assert e2ee_pb2.Envelope.FromString(sent.message.body).WhichOneof("content") == "public"
    assert (await reader.decrypt(sent.message)).text == "news"


async def test_a_restart_reads_history_and_keeps_the_session(tmp_path: Path) -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1", tmp_path / "bob.db")
    cid = server.conversation(DIRECT, ["alice", "bob"])
    first = await alice.send_text(cid, "first", reply_to_message_id="", forwarded=False)
    assert (await bob.decrypt(first.message)).text == "first"
    bob.close()

    bob_again = await online(server, "bob", "b1", tmp_path / "bob.db")
    assert server.calls_to("publish", "b1") and len(server.calls_to("publish", "b1")) == 1
    await alice.send_text(cid, "second", reply_to_message_id="", forwarded=False)
    texts = [m.text async for m in bob_again.read_history(cid, page_size=None)]
    assert texts == ["second", "first"]
    bob_again.close()


async def test_a_reinstall_publishes_a_new_identity_and_peers_follow() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    await online(server, "bob", "b1")
    cid = server.conversation(DIRECT, ["alice", "bob"])
    old = await alice.send_text(cid, "to the old install", reply_to_message_id="", forwarded=False)

    reinstalled = device(server, "bob", "b1")
    assert await reinstalled.ensure_keys() is True
    new = await alice.send_text(cid, "to the new one", reply_to_message_id="", forwarded=False)
    assert (await reinstalled.decrypt(new.message)).text == "to the new one"
    assert (await reinstalled.decrypt(old.message)).text is None


async def test_prekeys_are_topped_up_below_the_low_water_mark() -> None:
    server = FakeServer()
    bob = await online(server, "bob", "b1")
    assert len(server.devices["bob"]["b1"].one_time) == 100
    assert await bob.replenish() == 100
    assert server.calls_to("upload", "b1") == []
    del server.devices["bob"]["b1"].one_time[:85]
    await bob.prepare(KeyNoticeEvent(KeyNoticeKind.PRE_KEYS_LOW, pre_key_count=15))
    assert server.calls_to("upload", "b1") == [85]
    assert len(server.devices["bob"]["b1"].one_time) == 100
    # Notices for another device of the account are not this one's business.
    del server.devices["bob"]["b1"].one_time[:90]
    await bob.prepare(KeyNoticeEvent(KeyNoticeKind.PRE_KEYS_LOW, device_id="b2"))
    assert server.calls_to("upload", "b1") == [85]
    # A session started from a used-up directory still works (signed prekey only).
    alice = await online(server, "alice", "a1")
    del server.devices["bob"]["b1"].one_time[:]
    cid = server.conversation(DIRECT, ["alice", "bob"])
    sent = await alice.send_text(cid, "no prekeys left", reply_to_message_id="", forwarded=False)
    assert (await bob.decrypt(sent.message)).text == "no prekeys left"


async def test_stream_events_are_decrypted_before_they_are_yielded() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    cid = server.conversation(DIRECT, ["alice", "bob"])
    sent = await alice.send_text(cid, "streamed", reply_to_message_id="", forwarded=False)
    event = await bob.prepare(MessageEvent(sent.message))
    assert isinstance(event, MessageEvent)
    assert (event.text, event.decryption_error) == ("streamed", None)
    tampered = pb.Message()
    tampered.CopyFrom(sent.message)
    tampered.message_id = "another"
    event = await bob.prepare(MessageEvent(tampered))
    assert isinstance(event, MessageEvent)
    assert event.text is None and event.decryption_error


async def test_a_reinstalled_member_gets_the_group_key_again() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    await online(server, "bob", "b1")
    direct = server.conversation(DIRECT, ["alice", "bob"])
    gid = server.conversation(GROUP, ["alice", "bob"])
    await alice.send_text(gid, "before", reply_to_message_id="", forwarded=False)

    reinstalled = await online(server, "bob", "b1")
    # A direct message first: it moves Alice's session to the new identity, so
    # only the identity-change notice in the group tells her to re-send the key.
    await alice.send_text(direct, "hi again", reply_to_message_id="", forwarded=False)
    notice = pb.Message(
        message_id="n1",
        conversation_id=gid,
        type=pb.MESSAGE_TYPE_SYSTEM,
        system=pb.SystemEvent(
            action=pb.SystemEvent.ACTION_IDENTITY_CHANGED, actor_account_id="bob", device_id="b1"
        ),
    )
    await alice.prepare(SystemMessageEvent(notice))
    after = await alice.send_text(gid, "after", reply_to_message_id="", forwarded=False)
    assert (await reinstalled.decrypt(after.message)).text == "after"
    assert len(server.calls_to("send_sender_keys", "a1")) == 2


async def test_edit_events_are_decrypted_through_their_message() -> None:
    server = FakeServer()
    alice = await online(server, "alice", "a1")
    bob = await online(server, "bob", "b1")
    cid = server.conversation(DIRECT, ["alice", "bob"])
    sent = await alice.send_text(cid, "draft", reply_to_message_id="", forwarded=False)
    edit = await alice.edit_text(cid, sent.message_id, "final")
    event = await bob.prepare(MessageEditedEvent(edit))
    assert isinstance(event, MessageEditedEvent)
    assert (event.text, event.decryption_error) == ("final", None)
