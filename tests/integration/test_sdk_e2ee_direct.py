"""The SDK's end-to-end encryption in direct conversations, against the real stack:
two devices of one account and a peer, in both directions; a restart on the same
store files; prekeys topped up when the server says they run low."""

from __future__ import annotations

from pathlib import Path

from parley_dev.stack import LocalStack
from parley_sdk import Client, DeviceStore, Direction, KeyNoticeEvent, KeyNoticeKind
from parley_sdk._secure import SIGNED_PRE_KEY_MAX_AGE, SIGNED_PRE_KEY_SINCE
from tests.helpers import wait_until
from tests.sdk_e2ee_inbox import WAIT, connect, link_device, listening, new_user, unique


async def test_two_devices_and_a_peer_read_each_other(stack: LocalStack, tmp_path: Path) -> None:
    alice = await new_user(stack, tmp_path / "alice.db", "dalice")
    alice_2 = await link_device(stack, alice, tmp_path / "alice-2.db", "dalice-2")
    bob = await new_user(stack, tmp_path / "bob.db", "dbob")
    async with alice, alice_2, bob:
        assert alice.encrypted and alice_2.encrypted
        cid = (await alice.create_direct_conversation(bob.account_id)).conversation.conversation_id
        async with (
            listening(alice) as alice_in,
            listening(alice_2) as alice_2_in,
            listening(bob) as bob_in,
        ):
            sent = await alice.send_text(cid, "hello from the laptop")
            assert sent.text == "hello from the laptop"
            assert b"hello from the laptop" not in sent.message.body
            await bob_in.wait_texts(cid, ["hello from the laptop"])
            # The account's other device gets its own copy.
            await alice_2_in.wait_texts(cid, ["hello from the laptop"])

            reply = await bob.send_text(cid, "hi both")
            await alice_in.wait_texts(cid, ["hi both"])
            await alice_2_in.wait_texts(cid, ["hi both"])
            from_phone = await alice_2.send_text(cid, "and from the phone")
            await bob_in.wait_texts(cid, ["and from the phone"])
            await alice_in.wait_texts(cid, ["and from the phone"])

            for inbox in (alice_in, alice_2_in, bob_in):
                assert all(e.decryption_error is None for e in inbox.messages(cid))
            # Each device's own message arrives too, readable from its cache.
            own = [e for e in alice_in.messages(cid) if e.message.message_id == sent.message_id]
            assert [e.text for e in own] == ["hello from the laptop"]

        expected = ["and from the phone", "hi both", "hello from the laptop"]
        for device in (alice, alice_2, bob):
            assert [m.text async for m in device.read_history(cid)] == expected
        ids = [m.message_id async for m in bob.read_history(cid)]
        assert ids == [from_phone.message_id, reply.message_id, sent.message_id]
        # The server holds ciphertext only.
        bodies = [m.body async for m in alice.list_messages(cid, direction=Direction.FORWARD)]
        assert not any(text.encode() in body for body in bodies for text in expected)


async def test_a_restart_on_the_same_store_keeps_reading(stack: LocalStack, tmp_path: Path) -> None:
    alice = await new_user(stack, tmp_path / "alice.db", "ralice")
    bob = await new_user(stack, tmp_path / "bob.db", "rbob")
    async with alice:
        async with bob:
            cid = (
                await alice.create_direct_conversation(bob.account_id)
            ).conversation.conversation_id
            async with listening(bob) as bob_in:
                await alice.send_text(cid, "before the restart")
                await bob_in.wait_texts(cid, ["before the restart"])
            bob_account, bob_device = bob.account_id, bob.device_id
        # Bob is gone (no client) while Alice writes; then he comes back with
        # only his store: credentials, keys and history all come from it.
        await alice.send_text(cid, "while you were away")
        async with await connect(stack, tmp_path / "bob.db") as bob_again:
            assert (bob_again.account_id, bob_again.device_id) == (bob_account, bob_device)
            assert not bob_again.identity_changed_on_connect
            async with listening(bob_again) as bob_in:
                await bob_in.wait_texts(cid, ["while you were away"])
                await alice.send_text(cid, "live after the restart")
                await bob_in.wait_texts(cid, ["live after the restart"])
                await bob_again.send_text(cid, "back")
            history = [m.text async for m in bob_again.read_history(cid)]
            assert history == [
                "back",
                "live after the restart",
                "while you were away",
                "before the restart",
            ]
        assert await anext(m.text async for m in alice.read_history(cid)) == "back"


async def test_prekeys_are_topped_up_when_the_server_says_they_run_low(
    stack: LocalStack, tmp_path: Path
) -> None:
    bob = await new_user(stack, tmp_path / "bob.db", "pbob")
    async with bob:
        assert await bob.pre_key_count() == 100
        async with listening(bob) as bob_in:
            # Bundle fetches are rate-limited per fetching account, so several
            # accounts take 85 of Bob's 100 one-time prekeys.
            fetchers = [
                await Client.sign_up(
                    handle=unique("fetcher"),
                    device_name="fetcher",
                    keys_target=stack.keys_target,
                    message_target=stack.message_targets[0],
                )
                for _ in range(5)
            ]
            for fetcher in fetchers:
                async with fetcher:
                    for _ in range(17):
                        await fetcher.get_pre_key_bundles(bob.account_id)
            await bob_in.wait_for(
                "the low-prekey notice",
                lambda: any(
                    e.kind is KeyNoticeKind.PRE_KEYS_LOW for e in bob_in.of(KeyNoticeEvent)
                ),
            )

            # The notice comes when a fetch takes the count below 20; Bob tops up
            # to 100, and the at most 4 fetches still to come take a few again
            # (without the top-up, 15 would be left).
            async def topped_up() -> bool:
                return await bob.pre_key_count() >= 96

            await wait_until(topped_up, timeout=WAIT, what="bob's prekeys topped up")
        held = await bob.pre_key_count()
        # Above the low-water mark: nothing to upload.
        assert await bob.replenish_pre_keys() == held


async def test_an_old_signed_prekey_is_replaced_at_connect(
    stack: LocalStack, tmp_path: Path
) -> None:
    alice = await new_user(stack, tmp_path / "alice.db", "salice")
    bob = await new_user(stack, tmp_path / "bob.db", "sbob")
    async with bob:
        async with alice:
            [before] = await bob.get_pre_key_bundles(alice.account_id)
        # Connecting again a week later.
        store = DeviceStore.open(tmp_path / "alice.db")
        since = float(store.get_setting(SIGNED_PRE_KEY_SINCE) or 0)
        assert since > 0
        store.set_setting(SIGNED_PRE_KEY_SINCE, repr(since - SIGNED_PRE_KEY_MAX_AGE - 1))
        store.close()
        async with await connect(stack, tmp_path / "alice.db") as alice_again:
            [after] = await bob.get_pre_key_bundles(alice.account_id)
            assert after.identity_key == before.identity_key
            assert after.signed_pre_key.key_id != before.signed_pre_key.key_id
            assert after.signed_pre_key.public_key != before.signed_pre_key.public_key
            assert not alice_again.identity_changed_on_connect
            # Sessions started from either prekey still work.
            cid = (await bob.create_direct_conversation(alice.account_id)).conversation
            async with listening(alice_again) as alice_in:
                await bob.send_text(cid.conversation_id, "after the rotation")
                await alice_in.wait_texts(cid.conversation_id, ["after the rotation"])
