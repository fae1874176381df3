"""The SDK's pairwise encryption (X3DH + Double Ratchet) without servers: two or
more devices with their own stores exchange DeviceCopy bytes directly."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from parley.e2ee.v1 import e2ee_pb2
from parley_sdk.e2ee import (
    Crypto,
    DecryptionError,
    DeviceAddress,
    DeviceStore,
    HistoryEntry,
    InvalidBundleError,
    PublicKeys,
    RemoteBundle,
    UntrustedIdentityError,
    parse_content,
    text_content,
)
from parley_sdk.e2ee.store import CURRENT
from svc_keys.domain.keys import signature_valid
from svc_keys.model import SignedPreKey

ALICE = DeviceAddress("acct-alice", "dev-laptop")
BOB = DeviceAddress("acct-bob", "dev-phone")
BOB_TABLET = DeviceAddress("acct-bob", "dev-tablet")
CAROL = DeviceAddress("acct-carol", "dev-1")


@dataclass
class Device:
    """A device as the SDK would hold it, plus the one-time prekeys the directory still has."""

    crypto: Crypto
    store: DeviceStore
    keys: PublicKeys
    path: str

    def bundle(self, *, with_one_time: bool = True) -> RemoteBundle:
        one_time = None
        if with_one_time:
            one_time = self.keys.one_time_pre_keys[0]
            self.keys = replace(self.keys, one_time_pre_keys=self.keys.one_time_pre_keys[1:])
        return RemoteBundle(
            self.crypto.me,
            self.crypto.identity_key(),
            self.crypto.public_keys().signed_pre_key,
            one_time,
        )

    def reopen(self) -> None:
        """A restart: a new store object and a new Crypto on the same file."""
        self.store.close()
        self.store = DeviceStore.open(self.path)
        self.crypto = Crypto(self.store, self.crypto.me)


def make_device(address: DeviceAddress, path: str = ":memory:", pre_keys: int = 5) -> Device:
    store = DeviceStore.open(path)
    crypto = Crypto(store, address)
    return Device(crypto, store, crypto.create_identity(pre_keys=pre_keys), path)


async def send(sender: Device, recipient: Device, text: str, *, bundle: bool = False) -> bytes:
    bundles = {recipient.crypto.me: recipient.bundle()} if bundle else {}
    (copy,) = await sender.crypto.encrypt_pairwise(
        text_content(text), [recipient.crypto.me], bundles
    )
    return copy


async def read(recipient: Device, sender: Device, copy: bytes) -> str:
    content = parse_content(await recipient.crypto.decrypt_pairwise(sender.crypto.me, copy))
    return content.text.text


def has_start(copy: bytes) -> bool:
    return e2ee_pb2.DeviceCopy.FromString(copy).HasField("start")


def message_number(copy: bytes) -> int:
    return e2ee_pb2.DeviceCopy.FromString(copy).header.message_number


async def test_exchange_both_directions_with_out_of_order_and_several_before_reply() -> None:
    alice, bob = make_device(ALICE), make_device(BOB)
    first = await send(alice, bob, "one", bundle=True)
    second = await send(alice, bob, "two")
    third = await send(alice, bob, "three")
    # Every copy carries the start until bob answers.
    assert [has_start(c) for c in (first, second, third)] == [True, True, True]
    assert bob.crypto.pre_key_count() == 5

    assert await read(bob, alice, third) == "three"
    assert bob.crypto.pre_key_count() == 4  # the used one-time prekey is deleted
    assert await read(bob, alice, first) == "one"
    assert await read(bob, alice, second) == "two"

    replies = [await send(bob, alice, f"re {i}") for i in range(3)]
    assert not any(has_start(c) for c in replies)
    assert [await read(alice, bob, replies[i]) for i in (2, 0, 1)] == ["re 2", "re 0", "re 1"]

    # Bob answered, so alice stops attaching the start; a new DH step both ways.
    after = await send(alice, bob, "after the answer")
    assert not has_start(after)
    assert await read(bob, alice, after) == "after the answer"
    assert bob.crypto.sessions_with(ALICE.account_id) == {
        ALICE.device_id: alice.crypto.identity_key()
    }
    assert alice.crypto.sessions_with(BOB.account_id) == {BOB.device_id: bob.crypto.identity_key()}


async def test_session_from_signed_pre_key_alone_when_one_time_keys_are_exhausted() -> None:
    alice, bob = make_device(ALICE), make_device(BOB, pre_keys=0)
    bundle = bob.bundle(with_one_time=False)
    (copy,) = await alice.crypto.encrypt_pairwise(text_content("no otpk"), [BOB], {BOB: bundle})
    assert e2ee_pb2.DeviceCopy.FromString(copy).start.one_time_pre_key == b""
    assert await read(bob, alice, copy) == "no otpk"
    assert await read(alice, bob, await send(bob, alice, "ok")) == "ok"


async def test_a_one_time_pre_key_opens_one_session_only() -> None:
    alice, bob, carol = make_device(ALICE), make_device(BOB), make_device(CAROL)
    bundle = bob.bundle()
    (from_alice,) = await alice.crypto.encrypt_pairwise(text_content("a"), [BOB], {BOB: bundle})
    (from_carol,) = await carol.crypto.encrypt_pairwise(text_content("c"), [BOB], {BOB: bundle})
    assert await read(bob, alice, from_alice) == "a"
    with pytest.raises(DecryptionError):
        await read(bob, carol, from_carol)


async def test_restart_mid_conversation_on_both_sides(tmp_path: Path) -> None:
    alice = make_device(ALICE, str(tmp_path / "alice.db"))
    bob = make_device(BOB, str(tmp_path / "bob.db"))
    assert await read(bob, alice, await send(alice, bob, "hello", bundle=True)) == "hello"
    in_flight_to_bob = await send(alice, bob, "sent before the restart")
    in_flight_to_alice = await send(bob, alice, "reply before the restart")

    alice.reopen()
    bob.reopen()

    assert await read(bob, alice, in_flight_to_bob) == "sent before the restart"
    assert await read(alice, bob, in_flight_to_alice) == "reply before the restart"
    for i in range(3):
        assert await read(bob, alice, await send(alice, bob, f"a{i}")) == f"a{i}"
        assert await read(alice, bob, await send(bob, alice, f"b{i}")) == f"b{i}"


async def test_ratchet_state_is_saved_before_the_ciphertext_is_returned(tmp_path: Path) -> None:
    alice = make_device(ALICE, str(tmp_path / "alice.db"))
    bob = make_device(BOB)
    first = await send(alice, bob, "first", bundle=True)
    # A crash right after encrypting: the next process must not reuse the key.
    crashed = DeviceStore.open(alice.path)
    alice.crypto = Crypto(crashed, ALICE)
    second = await send(alice, bob, "second")
    assert (message_number(first), message_number(second)) == (0, 1)
    assert await read(bob, alice, second) == "second"
    assert await read(bob, alice, first) == "first"


async def test_concurrent_encryptions_to_one_device_never_share_a_key() -> None:
    alice, bob = make_device(ALICE), make_device(BOB)
    await read(bob, alice, await send(alice, bob, "start", bundle=True))
    copies = await asyncio.gather(*(send(alice, bob, f"m{i}") for i in range(10)))
    assert sorted(message_number(c) for c in copies) == list(range(1, 11))
    assert [await read(bob, alice, c) for c in copies] == [f"m{i}" for i in range(10)]


async def test_tampered_ciphertext_and_header_are_rejected_and_the_session_survives() -> None:
    alice, bob = make_device(ALICE), make_device(BOB)
    await read(bob, alice, await send(alice, bob, "start", bundle=True))
    original = await send(alice, bob, "secret")
    copy = e2ee_pb2.DeviceCopy.FromString(original)
    flipped = bytearray(copy.ciphertext)
    flipped[0] ^= 1
    copy.ciphertext = bytes(flipped)
    with pytest.raises(DecryptionError):
        await read(bob, alice, copy.SerializeToString())
    copy = e2ee_pb2.DeviceCopy.FromString(original)
    copy.header.previous_chain_length += 1
    with pytest.raises(DecryptionError):
        await read(bob, alice, copy.SerializeToString())
    with pytest.raises(DecryptionError):
        await read(bob, alice, b"\xff\xff not a copy")
    assert await read(bob, alice, original) == "secret"


async def test_a_copy_opens_only_on_its_device_and_from_its_sender() -> None:
    alice, bob, tablet, carol = (
        make_device(ALICE),
        make_device(BOB),
        make_device(BOB_TABLET),
        make_device(CAROL),
    )
    bundles = {BOB: bob.bundle(), BOB_TABLET: tablet.bundle()}
    to_phone, to_tablet = await alice.crypto.encrypt_pairwise(
        text_content("hi"), [BOB, BOB_TABLET], bundles
    )
    with pytest.raises(DecryptionError):
        await read(tablet, alice, to_phone)
    # Re-addressed to the tablet, it still does not open there.
    readdressed = e2ee_pb2.DeviceCopy.FromString(to_phone)
    readdressed.device_id = BOB_TABLET.device_id
    with pytest.raises(DecryptionError):
        await read(tablet, alice, readdressed.SerializeToString())
    assert await read(tablet, alice, to_tablet) == "hi"

    # Bob knows carol too; a copy from alice claimed to be carol's does not open.
    await read(bob, carol, await send(carol, bob, "carol here", bundle=True))
    with pytest.raises(DecryptionError):
        await read(bob, carol, to_phone)
    assert await read(bob, alice, to_phone) == "hi"


async def test_replayed_copies_are_rejected() -> None:
    alice, bob = make_device(ALICE), make_device(BOB)
    start = await send(alice, bob, "start", bundle=True)
    assert await read(bob, alice, start) == "start"
    with pytest.raises(DecryptionError):
        await read(bob, alice, start)
    later = await send(alice, bob, "later")
    assert await read(bob, alice, later) == "later"
    with pytest.raises(DecryptionError):
        await read(bob, alice, later)
    # Even after bob answered and the start is no longer the session's.
    await read(alice, bob, await send(bob, alice, "answer"))
    with pytest.raises(DecryptionError):
        await read(bob, alice, start)
    assert await read(bob, alice, await send(alice, bob, "still fine")) == "still fine"


async def test_replayed_start_without_one_time_key_opens_no_second_session() -> None:
    alice, bob = make_device(ALICE), make_device(BOB, pre_keys=0)
    (start,) = await alice.crypto.encrypt_pairwise(
        text_content("start"), [BOB], {BOB: bob.bundle(with_one_time=False)}
    )
    await read(bob, alice, start)
    bob.crypto.forget_device(ALICE)  # even once the session it made is gone
    with pytest.raises(DecryptionError):
        await read(bob, alice, start)


async def test_reinstall_with_a_new_identity_replaces_the_session() -> None:
    alice, bob = make_device(ALICE), make_device(BOB, pre_keys=10)
    await read(bob, alice, await send(alice, bob, "old install", bundle=True))
    await read(alice, bob, await send(bob, alice, "answer"))
    late_from_old = await send(alice, bob, "late from the old install")
    old_identity = alice.crypto.identity_key()

    reinstalled = make_device(ALICE)  # same address, new store and identity
    assert reinstalled.crypto.identity_key() != old_identity
    copy = await send(reinstalled, bob, "new install", bundle=True)
    assert await read(bob, reinstalled, copy) == "new install"
    assert bob.crypto.sessions_with(ALICE.account_id) == {
        ALICE.device_id: reinstalled.crypto.identity_key()
    }
    # The previous session is kept for late messages, without becoming current again.
    assert await read(bob, alice, late_from_old) == "late from the old install"
    assert bob.crypto.sessions_with(ALICE.account_id)[ALICE.device_id] != old_identity
    assert await read(reinstalled, bob, await send(bob, alice, "to new")) == "to new"


async def test_bundle_with_a_new_identity_replaces_the_senders_session() -> None:
    alice, bob = make_device(ALICE), make_device(BOB)
    await read(bob, alice, await send(alice, bob, "hi", bundle=True))
    new_bob = make_device(BOB)
    # Without a bundle the old session is used (new_bob cannot read it) ...
    with pytest.raises(DecryptionError):
        await read(new_bob, alice, await send(alice, bob, "to the old install"))
    # ... with the re-installed device's bundle the session is replaced.
    assert await read(new_bob, alice, await send(alice, new_bob, "to new", bundle=True)) == "to new"
    assert alice.crypto.sessions_with(BOB.account_id) == {
        BOB.device_id: new_bob.crypto.identity_key()
    }


async def test_strict_crypto_refuses_a_new_identity_until_the_caller_forgets_the_device() -> None:
    alice, bob = make_device(ALICE), make_device(BOB)
    strict = Crypto(bob.store, BOB, accept_new_identities=False)
    await strict.decrypt_pairwise(ALICE, await send(alice, bob, "hi", bundle=True))
    reinstalled = make_device(ALICE)
    copy = await send(reinstalled, bob, "new identity", bundle=True)
    with pytest.raises(UntrustedIdentityError) as caught:
        await strict.decrypt_pairwise(ALICE, copy)
    assert caught.value.identity_key == reinstalled.crypto.identity_key()
    assert caught.value.address == ALICE
    strict.forget_device(ALICE)
    assert strict.sessions_with(ALICE.account_id) == {}
    assert parse_content(await strict.decrypt_pairwise(ALICE, copy)).text.text == "new identity"


async def test_both_devices_starting_at_once_converge() -> None:
    alice, bob = make_device(ALICE), make_device(BOB)
    from_alice = await send(alice, bob, "a0", bundle=True)
    from_bob = await send(bob, alice, "b0", bundle=True)
    assert await read(bob, alice, from_alice) == "a0"
    assert await read(alice, bob, from_bob) == "b0"
    for i in range(1, 4):
        assert await read(bob, alice, await send(alice, bob, f"a{i}")) == f"a{i}"
        assert await read(alice, bob, await send(bob, alice, f"b{i}")) == f"b{i}"
    # Both now use one session (the other is only kept for late messages).
    alice_session = alice.store.load_session(BOB, CURRENT)
    bob_session = bob.store.load_session(ALICE, CURRENT)
    assert alice_session is not None
    assert bob_session is not None
    assert alice_session.start_ephemeral == bob_session.start_ephemeral


async def test_unknown_recipient_bad_bundle_and_self_are_refused() -> None:
    alice, bob = make_device(ALICE), make_device(BOB)
    with pytest.raises(KeyError):
        await alice.crypto.encrypt_pairwise(text_content("x"), [BOB], {})
    bundle = bob.bundle()
    forged = replace(bundle, signed_pre_key=replace(bundle.signed_pre_key, signature=bytes(64)))
    carol = make_device(CAROL)
    with pytest.raises(InvalidBundleError):
        # Nothing is encrypted when one bundle is bad, not even for the good one.
        await alice.crypto.encrypt_pairwise(
            text_content("x"), [CAROL, BOB], {CAROL: carol.bundle(), BOB: forged}
        )
    assert alice.crypto.sessions_with(CAROL.account_id) == {}
    with pytest.raises(InvalidBundleError):
        await alice.crypto.encrypt_pairwise(
            text_content("x"), [BOB], {BOB: replace(bundle, identity_key=b"short")}
        )
    with pytest.raises(ValueError, match="itself"):
        await alice.crypto.encrypt_pairwise(text_content("x"), [ALICE], {})
    assert alice.crypto.sessions_with(BOB.account_id) == {}


async def test_decrypting_without_any_session_fails() -> None:
    alice, bob, carol = make_device(ALICE), make_device(BOB), make_device(CAROL)
    await read(bob, alice, await send(alice, bob, "hi", bundle=True))
    follow_up = await send(bob, alice, "for alice")
    with pytest.raises(DecryptionError):
        await carol.crypto.decrypt_pairwise(BOB, follow_up)


async def test_plaintext_is_remembered_in_the_same_step(tmp_path: Path) -> None:
    alice, bob = make_device(ALICE), make_device(BOB, str(tmp_path / "bob.db"))
    copy = await send(alice, bob, "keep me", bundle=True)
    entry = HistoryEntry(message_id="m-1", conversation_id="c-1", sent_at=12.5)
    content = await bob.crypto.decrypt_pairwise(ALICE, copy, remember=entry)
    bob.reopen()
    assert bob.store.recall_plaintext("m-1") == content
    assert parse_content(content).text.text == "keep me"


def test_keys_made_by_the_core_pass_the_servers_signature_check() -> None:
    device = make_device(ALICE)
    keys = device.crypto.public_keys()
    assert len(keys.identity_key) == 32
    signed = keys.signed_pre_key
    assert signature_valid(
        keys.identity_key, SignedPreKey(signed.key_id, signed.public_key, signed.signature)
    )
    rotated = device.crypto.rotate_signed_pre_key()
    assert rotated.key_id == signed.key_id + 1
    assert rotated.public_key != signed.public_key
    assert signature_valid(
        keys.identity_key, SignedPreKey(rotated.key_id, rotated.public_key, rotated.signature)
    )
    # The check is real: the old signature does not cover the new key.
    assert not signature_valid(
        keys.identity_key, SignedPreKey(rotated.key_id, rotated.public_key, signed.signature)
    )


async def test_a_start_to_the_previous_signed_pre_key_still_opens_after_rotation() -> None:
    alice, bob = make_device(ALICE), make_device(BOB)
    bundle = bob.bundle()
    bob.crypto.rotate_signed_pre_key()
    (copy,) = await alice.crypto.encrypt_pairwise(text_content("late start"), [BOB], {BOB: bundle})
    assert await read(bob, alice, copy) == "late start"


def test_pre_key_ids_come_from_a_persisted_counter(tmp_path: Path) -> None:
    device = make_device(ALICE, str(tmp_path / "a.db"), pre_keys=3)
    assert [k.key_id for k in device.keys.one_time_pre_keys] == [1, 2, 3]
    assert [k.key_id for k in device.crypto.new_pre_keys(2)] == [4, 5]
    device.reopen()
    assert device.crypto.has_identity()
    assert [k.key_id for k in device.crypto.new_pre_keys(1)] == [6]
    assert device.crypto.pre_key_count() == 6
    assert device.crypto.public_keys().one_time_pre_keys == []
    assert device.crypto.identity_key() == device.keys.identity_key
    with pytest.raises(ValueError, match="already"):
        device.crypto.create_identity()


def test_without_identity_key_operations_say_so() -> None:
    crypto = Crypto(DeviceStore.open(":memory:"), ALICE)
    assert not crypto.has_identity()
    with pytest.raises(RuntimeError, match="create_identity"):
        crypto.public_keys()
    with pytest.raises(RuntimeError, match="create_identity"):
        crypto.new_pre_keys(1)


async def test_associated_data_binds_the_recipient_address(tmp_path: Path) -> None:
    """Even a device holding the very same session state (a copied store) cannot
    open a copy re-addressed to it: both addresses are authenticated."""
    alice, bob = make_device(ALICE), make_device(BOB, str(tmp_path / "bob.db"))
    await read(bob, alice, await send(alice, bob, "start", bundle=True))
    copy = await send(alice, bob, "for the phone only")
    bob.store.close()
    shutil.copy(tmp_path / "bob.db", tmp_path / "clone.db")
    clone = Crypto(DeviceStore.open(tmp_path / "clone.db"), BOB_TABLET)
    readdressed = e2ee_pb2.DeviceCopy.FromString(copy)
    readdressed.device_id = BOB_TABLET.device_id
    with pytest.raises(DecryptionError):
        await clone.decrypt_pairwise(ALICE, readdressed.SerializeToString())
    bob.reopen()
    assert await read(bob, alice, copy) == "for the phone only"


async def test_a_copy_skipping_more_than_a_thousand_keys_is_refused() -> None:
    alice, bob = make_device(ALICE), make_device(BOB)
    await read(bob, alice, await send(alice, bob, "start", bundle=True))
    copies = [await send(alice, bob, str(i)) for i in range(1, 1003)]
    assert message_number(copies[-1]) == 1002
    with pytest.raises(DecryptionError):
        await read(bob, alice, copies[-1])  # would skip 1001 keys
    assert await read(bob, alice, copies[-2]) == "1001"  # skips exactly 1000
    assert await read(bob, alice, copies[0]) == "1"
    assert await read(bob, alice, copies[-1]) == "1002"
