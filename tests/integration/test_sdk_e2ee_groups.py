"""The SDK's group encryption against the real stack: sender keys handed to every
member device, a new epoch after a removal that the removed member cannot read,
and a member added later reading what follows."""

from __future__ import annotations

import contextlib
from pathlib import Path

from parley_dev.stack import LocalStack
from parley_sdk import Direction, KeyNoticeEvent, KeyNoticeKind, MessageEvent
from tests.sdk_e2ee_inbox import link_device, listening, new_user


async def test_sender_keys_and_a_removal(stack: LocalStack, tmp_path: Path) -> None:
    alice = await new_user(stack, tmp_path / "alice.db", "kalice")
    alice_2 = await link_device(stack, alice, tmp_path / "alice-2.db", "kalice-2")
    bob = await new_user(stack, tmp_path / "bob.db", "kbob")
    carol = await new_user(stack, tmp_path / "carol.db", "kcarol")
    dave = await new_user(stack, tmp_path / "dave.db", "kdave")
    devices = [alice, alice_2, bob, carol]
    async with alice, alice_2, bob, carol, dave:
        gid = (
            await alice.create_group("keys", members=[bob.account_id, carol.account_id])
        ).conversation.conversation_id
        async with contextlib.AsyncExitStack() as exits:
            inboxes = [await exits.enter_async_context(listening(d)) for d in devices]
            spoken = {i: f"device {i} says hi" for i in range(len(devices))}
            for index, device in enumerate(devices):
                await device.send_text(gid, spoken[index])
            for index, inbox in enumerate(inboxes):
                await inbox.wait_texts(gid, [t for i, t in spoken.items() if i != index])
                errors = [e.decryption_error for e in inbox.messages(gid) if e.decryption_error]
                assert errors == []
                # Each device handed its key to the three others and got theirs.
                assert any(
                    e.kind is KeyNoticeKind.SENDER_KEYS_WAITING for e in inbox.of(KeyNoticeEvent)
                )

            await alice.remove_member(gid, carol.account_id)
            bob_in = inboxes[2]
            await bob_in.wait_for(
                "the re-key notice",
                lambda: any(
                    e.kind is KeyNoticeKind.GROUP_REKEY
                    and e.conversation_id == gid
                    and e.account_ids == (carol.account_id,)
                    for e in bob_in.of(KeyNoticeEvent)
                ),
            )
            after = {0: "alice after carol", 2: "bob after carol"}
            for index, text in after.items():
                await devices[index].send_text(gid, text)
            for index, inbox in enumerate(inboxes[:3]):
                await inbox.wait_texts(gid, [t for i, t in after.items() if i != index])
            assert not set(after.values()) & set(inboxes[3].texts(gid))

            await alice.add_members(gid, [dave.account_id])
            async with listening(dave) as dave_in:
                # Right after adding him: Alice's client hands Dave her key at once.
                await alice.send_text(gid, "welcome dave")
                await bob.send_text(gid, "hi dave")
                await dave_in.wait_texts(gid, ["welcome dave", "hi dave"])
                # Dave's stream starts at his joining: nothing older to read.
                assert set(dave_in.texts(gid)) == {"welcome dave", "hi dave"}

        # Handed the ciphertexts anyway, Carol reads what was sent before her
        # removal and nothing after it.
        history = [m async for m in bob.list_messages(gid, direction=Direction.FORWARD)]
        readable, unreadable = [], []
        for message in (m for m in history if m.body):
            decrypted = await carol.decrypt(message)
            if decrypted.text is None:
                assert decrypted.error
                unreadable.append(message.message_id)
            else:
                readable.append(decrypted.text)
        assert set(readable) == set(spoken.values())
        assert len(unreadable) == 4
        # Everyone still in reads the whole history, own messages included.
        texts = {m.text async for m in alice_2.read_history(gid)}
        assert set(spoken.values()) | set(after.values()) | {"welcome dave", "hi dave"} <= texts
        assert not [e for e in inboxes[1].events if isinstance(e, MessageEvent) and e.text is None]
