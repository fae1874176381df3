"""End-to-end encryption as users get it from the SDK, against the real stack.

- Two clients talk in both directions, one of them offline for part of it;
  then every document of every collection in the database and every Redis
  key is read back: no plaintext anywhere (and the same scan does find the
  ciphertext and the ids, so it is looking at the right data).
- A group of five devices (three users: two with two devices each, one with
  one) talks under sender keys; a removed member cannot decrypt anything sent
  after the removal, even handed the ciphertext.
- A re-installed device (same credentials, new keys) makes every member of a
  conversation with it see an identity-change system message, and messages
  to it still arrive readable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import bson
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from parley_dev.stack import LocalStack
from parley_sdk import (
    Client,
    DecryptedMessage,
    Direction,
    InvalidArgumentError,
    KeyNoticeEvent,
    KeyNoticeKind,
    MessageEvent,
    SystemAction,
    SystemMessageEvent,
)
from tests.sdk_e2ee_inbox import Inbox, connect, link_device, listening, new_user


def secret(label: str) -> str:
    """A plaintext no server-side code could produce by chance."""
    return f"{label} {uuid.uuid4().hex} tells no one"


# -- what the servers hold ----------------------------------------------------------


async def database_bytes(stack: LocalStack) -> dict[str, bytes]:
    """Every document of every collection of every database, BSON-encoded,
    joined per collection."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_uri)
    found: dict[str, bytes] = {}
    try:
        for db_name in await client.list_database_names():
            db = client[db_name]
            for name in await db.list_collection_names():
                chunks = [bson.encode(doc) async for doc in db[name].find({})]
                found[f"{db_name}.{name}"] = b"".join(chunks)
    finally:
        await client.close()
    return found


async def redis_bytes(stack: LocalStack) -> dict[bytes, bytes]:
    """Every Redis key's value, read by type, joined per key (with the key's name)."""
    redis = Redis.from_url(stack.redis_url)
    found: dict[bytes, bytes] = {}
    try:
        async for key in redis.scan_iter(count=500):
            kind = (await redis.type(key)).decode()
            parts: list[bytes] = [key]
            if kind == "none":  # expired between SCAN and TYPE
                continue
            if kind == "string":
                parts.append(await redis.get(key) or b"")
            elif kind == "hash":
                for k, v in (await redis.hgetall(key)).items():
                    parts += [k, v]
            elif kind == "list":
                parts += await redis.lrange(key, 0, -1)
            elif kind == "set":
                parts += list(await redis.smembers(key))
            elif kind == "zset":
                parts += [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                for _, entry in await redis.xrange(key):
                    for k, v in entry.items():
                        parts += [k, v]
            else:
                pytest.fail(f"Redis key {key!r} of type {kind} is not scanned")
            found[key] = b"\x00".join(parts)
    finally:
        await redis.aclose()
    return found


def holders(places: dict[Any, bytes], needle: bytes) -> list[Any]:
    return [name for name, data in places.items() if needle in data]


# -- 1. two clients, one offline for a while, then the scan -----------------------------


async def test_direct_messages_never_reach_the_server_in_plaintext(
    fresh_stack: LocalStack, tmp_path: Path
) -> None:
    stack = fresh_stack
    alice = await new_user(stack, tmp_path / "alice.db", "alice")
    bob = await new_user(stack, tmp_path / "bob.db", "bob")
    sent: list[str] = []
    async with alice:
        async with bob:
            chat = (await alice.create_direct_conversation(bob.account_id)).conversation
            cid = chat.conversation_id
            async with listening(alice) as alice_inbox, listening(bob) as bob_inbox:
                first = secret("hello bob")
                await alice.send_text(cid, first)
                await bob_inbox.wait_texts(cid, [first])
                reply = secret("hi alice")
                await bob.send_text(cid, reply)
                await alice_inbox.wait_texts(cid, [reply])
                sent += [first, reply]
        # Bob is offline (no client at all) while Alice writes three more.
        while_away = [secret(f"while away {i}") for i in range(3)]
        for text in while_away:
            await alice.send_text(cid, text)
        sent += while_away
        async with await connect(stack, tmp_path / "bob.db") as bob_again:
            assert bob_again.account_id == bob.account_id
            async with listening(bob_again) as bob_inbox:
                await bob_inbox.wait_texts(cid, while_away)
                assert all(e.decryption_error is None for e in bob_inbox.of(MessageEvent))
                answer = secret("back again")
                await bob_again.send_text(cid, answer)
                sent.append(answer)
            # History reads back decrypted on both sides.
            bob_history = [m.text async for m in bob_again.read_history(cid)]
            assert set(sent) <= set(bob_history)
        alice_history: list[DecryptedMessage] = [m async for m in alice.read_history(cid)]
        assert set(sent) <= {m.text for m in alice_history}
        bodies = [m.message.body for m in alice_history if m.text in sent]
        ids = [m.message_id for m in alice_history if m.text in sent]
        # Pages come from the recent cache too, so Redis holds message entries.
        assert len([m async for m in alice.list_messages(cid, direction=Direction.FORWARD)]) >= 6

    database = await database_bytes(stack)
    redis = await redis_bytes(stack)
    # The scan sees what the servers do store: the ciphertext bodies and ids.
    for body in bodies:
        assert holders(database, body), "a stored ciphertext was not found by the scan"
    assert any(holders(redis, i.encode()) for i in ids), "the scan read no message from Redis"
    assert holders(database, alice_history[0].message.conversation_id.encode())
    for text in sent:
        needle = text.encode()
        assert holders(database, needle) == []
        assert holders(redis, needle) == []
        # Nor any distinctive part of it (the random middle).
        middle = text.split()[-4].encode() if len(text.split()) > 4 else text.split()[2].encode()
        assert holders(database, middle) == []
        assert holders(redis, middle) == []
    # While the clients' own stores do keep it, for history after a restart.
    assert sent[0].encode() in (tmp_path / "bob.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("bob.db-wal")
    )


# -- 3. a group of five devices, one member removed --------------------------------------


async def test_group_of_five_devices_and_a_removed_member(
    stack: LocalStack, tmp_path: Path
) -> None:
    alice = await new_user(stack, tmp_path / "alice-1.db", "galice")
    alice_2 = await link_device(stack, alice, tmp_path / "alice-2.db", "galice-2")
    bob = await new_user(stack, tmp_path / "bob-1.db", "gbob")
    bob_2 = await link_device(stack, bob, tmp_path / "bob-2.db", "gbob-2")
    carol = await new_user(stack, tmp_path / "carol.db", "gcarol")
    devices = [alice, alice_2, bob, bob_2, carol]
    async with alice, alice_2, bob, bob_2, carol:
        group = (
            await alice.create_group("five", members=[bob.account_id, carol.account_id])
        ).conversation
        gid = group.conversation_id
        async with contextlib.AsyncExitStack() as exits:
            inboxes = [await exits.enter_async_context(listening(d)) for d in devices]
            spoken: dict[int, str] = {}
            for index, device in enumerate(devices):
                spoken[index] = secret(f"device {index} speaks")
                await device.send_text(gid, spoken[index])
            for index, inbox in enumerate(inboxes):
                heard = [text for i, text in spoken.items() if i != index]
                # Devices of the same account hear each other too.
                await inbox.wait_texts(gid, heard)
                assert all(e.decryption_error is None for e in inbox.of(MessageEvent))

            await alice.remove_member(gid, carol.account_id)
            for inbox in inboxes[:4]:
                await inbox.wait_for(
                    "the re-key notice",
                    lambda inbox=inbox: any(
                        e.kind is KeyNoticeKind.GROUP_REKEY and e.conversation_id == gid
                        for e in inbox.of(KeyNoticeEvent)
                    ),
                )
            after = {i: secret(f"device {i} after carol") for i in range(4)}
            for index in range(4):
                await devices[index].send_text(gid, after[index])
            for index, inbox in enumerate(inboxes[:4]):
                await inbox.wait_texts(gid, [t for i, t in after.items() if i != index])
            # Carol's stream got nothing after her removal.
            carol_texts = inboxes[4].texts(gid)
            assert not set(after.values()) & set(carol_texts)

        # Handed the ciphertexts anyway (as a server or a network could), Carol's
        # client cannot read one of them, while she still reads what came before.
        later = [m async for m in bob.list_messages(gid, direction=Direction.FORWARD)]
        later_bodies = [m for m in later if m.body]
        assert len(later_bodies) == 9
        readable: list[str] = []
        for message in later_bodies:
            decrypted = await carol.decrypt(message)
            if decrypted.text is not None:
                readable.append(decrypted.text)
            else:
                assert decrypted.error
        assert set(readable) == set(spoken.values())
        # And the removed member's old sender key is useless for new messages
        # even after she fetches every envelope addressed to her.
        assert await carol.claim_sender_keys() == []


# -- 4. bad signature, re-install ---------------------------------------------------------


async def test_bad_signature_refused_and_reinstall_notifies_conversations(
    stack: LocalStack, tmp_path: Path
) -> None:
    alice = await new_user(stack, tmp_path / "alice.db", "ralice")
    bob = await new_user(stack, tmp_path / "bob.db", "rbob")
    carol = await new_user(stack, tmp_path / "carol.db", "rcarol")
    async with alice, bob, carol:
        keys = await connect_keys_snapshot(alice)
        with pytest.raises(InvalidArgumentError):
            await alice.publish_keys(
                identity_key=keys.identity_key,
                signed_pre_key=dataclasses.replace(keys.signed_pre_key, signature=bytes(64)),
            )
        direct = (await bob.create_direct_conversation(alice.account_id)).conversation
        group = (
            await carol.create_group("reinstall", members=[alice.account_id, bob.account_id])
        ).conversation
        before = secret("before reinstall")
        await bob.send_text(direct.conversation_id, before)
        credentials = alice.credentials
        assert credentials is not None

        # Re-install: the app's data is gone, its saved credentials are not.
        async with (
            listening(bob) as bob_inbox,
            listening(carol) as carol_inbox,
            await connect(
                stack, tmp_path / "alice-reinstalled.db", credentials=credentials
            ) as reinstalled,
        ):
            assert reinstalled.identity_changed_on_connect
            assert reinstalled.device_id == alice.device_id

            def changes(inbox: Inbox, conversation_id: str) -> list[SystemMessageEvent]:
                return [
                    e
                    for e in inbox.of(SystemMessageEvent)
                    if e.conversation_id == conversation_id
                    and e.action is SystemAction.IDENTITY_CHANGED
                ]

            for inbox, cid in [
                (bob_inbox, direct.conversation_id),
                (bob_inbox, group.conversation_id),
                (carol_inbox, group.conversation_id),
            ]:
                await inbox.wait_for(
                    "the key-change notice", lambda i=inbox, c=cid: bool(changes(i, c))
                )
                [event] = changes(inbox, cid)
                assert event.actor_account_id == alice.account_id
                assert event.device_id == alice.device_id
            # Carol shares no direct conversation with Alice: one notice only.
            assert not [
                e
                for e in carol_inbox.of(SystemMessageEvent)
                if e.action is SystemAction.IDENTITY_CHANGED
                and e.conversation_id != group.conversation_id
            ]

            # Bob's next message reaches the new install readable.
            async with listening(reinstalled) as alice_inbox:
                after = secret("after reinstall")
                await bob.send_text(direct.conversation_id, after)
                await alice_inbox.wait_texts(direct.conversation_id, [after])
                group_after = secret("group after reinstall")
                await carol.send_text(group.conversation_id, group_after)
                await alice_inbox.wait_texts(group.conversation_id, [group_after])
            # What was encrypted for the old install is gone with it.
            history = {m.text async for m in reinstalled.read_history(direct.conversation_id)}
            assert before not in history


async def connect_keys_snapshot(client: Client) -> Any:
    """The device's published identity and signed prekey, as the directory has them."""
    [bundle] = [
        b
        for b in await client.get_pre_key_bundles(client.account_id, device_ids=[client.device_id])
        if b.device_id == client.device_id
    ]
    return bundle
