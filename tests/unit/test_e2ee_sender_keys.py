"""Group sender keys without servers: five member devices (three accounts, two of
them with two devices) hand each other distributions and read each other's
messages; rotation, newcomers, forgery, replay and the skipped-key bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.e2ee.v1 import e2ee_pb2
from parley_sdk.e2ee import (
    Crypto,
    DecryptionError,
    DeviceAddress,
    DeviceStore,
    HistoryEntry,
    MissingSenderKeyError,
    RemoteBundle,
    parse_content,
    sender_key_content,
    text_content,
)
from parley_sdk.e2ee._sender_keys import _associated_data, _cipher, _step

GROUP = "conv-group"
ALICE_LAPTOP = DeviceAddress("acct-alice", "laptop")
ALICE_PHONE = DeviceAddress("acct-alice", "phone")
BOB_LAPTOP = DeviceAddress("acct-bob", "laptop")
BOB_PHONE = DeviceAddress("acct-bob", "phone")
CAROL = DeviceAddress("acct-carol", "laptop")
MEMBERS = [ALICE_LAPTOP, ALICE_PHONE, BOB_LAPTOP, BOB_PHONE, CAROL]


def device(address: DeviceAddress, path: str = ":memory:") -> Crypto:
    crypto = Crypto(DeviceStore.open(path), address)
    crypto.create_identity(pre_keys=5)
    return crypto


def distribute(sender: Crypto, recipients: dict[DeviceAddress, Crypto]) -> list[DeviceAddress]:
    """What the SDK does before a group send: give the current epoch to devices lacking it."""
    lacking = sender.undistributed(GROUP, list(recipients))
    _, distribution = sender.own_sender_key(GROUP)
    for address in lacking:
        recipients[address].accept_sender_key(sender.me, distribution)
    sender.mark_distributed(GROUP, lacking)
    return lacking


def text(crypto: Crypto, sender: Crypto, message: bytes) -> str:
    return parse_content(crypto.decrypt_group(GROUP, sender.me, message)).text.text


@pytest.fixture
def group() -> dict[DeviceAddress, Crypto]:
    return {address: device(address) for address in MEMBERS}


def test_five_member_devices_read_each_other(group: dict[DeviceAddress, Crypto]) -> None:
    for address, sender in group.items():
        assert distribute(sender, group) == [a for a in MEMBERS if a != address]
        assert distribute(sender, group) == []  # once per epoch
    for address, sender in group.items():
        message = sender.encrypt_group(GROUP, text_content(f"from {address.device_id}"))
        for reader_address, reader in group.items():
            if reader_address == address:
                with pytest.raises(DecryptionError):
                    reader.decrypt_group(GROUP, address, message)
            else:
                assert text(reader, sender, message) == f"from {address.device_id}"


async def test_distribution_travels_inside_a_pairwise_copy() -> None:
    alice, bob = device(ALICE_LAPTOP), device(BOB_PHONE)
    keys = bob.public_keys()
    bundle = RemoteBundle(BOB_PHONE, keys.identity_key, keys.signed_pre_key, None)
    _, distribution = alice.own_sender_key(GROUP)
    (copy,) = await alice.encrypt_pairwise(
        sender_key_content(distribution), [BOB_PHONE], {BOB_PHONE: bundle}
    )
    content = parse_content(await bob.decrypt_pairwise(ALICE_LAPTOP, copy))
    assert content.WhichOneof("kind") == "sender_key"
    bob.accept_sender_key(ALICE_LAPTOP, content.sender_key.SerializeToString())
    assert (
        text(bob, alice, alice.encrypt_group(GROUP, text_content("hello group"))) == "hello group"
    )


def test_rotation_excludes_a_removed_member(group: dict[DeviceAddress, Crypto]) -> None:
    for sender in group.values():
        distribute(sender, group)
    alice, carol = group[ALICE_LAPTOP], group[CAROL]
    before = alice.encrypt_group(GROUP, text_content("before removal"))
    assert text(carol, alice, before) == "before removal"

    late_old_epoch = alice.encrypt_group(GROUP, text_content("late, old epoch"))
    remaining = {a: c for a, c in group.items() if a != CAROL}
    for sender in remaining.values():
        sender.rotate_sender_key(GROUP)
        # The new epoch has been given to nobody yet.
        assert sender.undistributed(GROUP, list(remaining)) == [
            a for a in remaining if a != sender.me
        ]
        distribute(sender, remaining)
    epoch, _ = alice.own_sender_key(GROUP)
    assert epoch == 2

    after = alice.encrypt_group(GROUP, text_content("after removal"))
    assert e2ee_pb2.GroupMessage.FromString(after).epoch == 2
    for reader in remaining.values():
        if reader is not alice:
            assert text(reader, alice, after) == "after removal"
            assert text(reader, alice, late_old_epoch) == "late, old epoch"
    with pytest.raises(MissingSenderKeyError) as caught:
        carol.decrypt_group(GROUP, ALICE_LAPTOP, after)
    assert (caught.value.epoch, caught.value.sender, caught.value.conversation_id) == (
        2,
        ALICE_LAPTOP,
        GROUP,
    )


def test_rotated_key_is_fresh() -> None:
    alice = device(ALICE_LAPTOP)
    _, first = alice.own_sender_key(GROUP)
    alice.rotate_sender_key(GROUP)
    alice.rotate_sender_key(GROUP)  # twice in a row is still one new epoch
    epoch, second = alice.own_sender_key(GROUP)
    old = e2ee_pb2.SenderKeyDistribution.FromString(first)
    new = e2ee_pb2.SenderKeyDistribution.FromString(second)
    assert (old.epoch, new.epoch, new.iteration, epoch) == (1, 2, 0, 2)
    assert new.chain_key != old.chain_key
    assert new.signing_key != old.signing_key


def test_newcomer_cannot_read_what_was_sent_before(group: dict[DeviceAddress, Crypto]) -> None:
    alice, bob = group[ALICE_LAPTOP], group[BOB_LAPTOP]
    distribute(alice, {BOB_LAPTOP: bob})
    older = [alice.encrypt_group(GROUP, text_content(f"old {i}")) for i in range(3)]
    newcomer = device(DeviceAddress("acct-dave", "laptop"))
    _, distribution = alice.own_sender_key(GROUP)
    assert e2ee_pb2.SenderKeyDistribution.FromString(distribution).iteration == 3
    newcomer.accept_sender_key(ALICE_LAPTOP, distribution)
    newer = alice.encrypt_group(GROUP, text_content("new"))
    assert text(newcomer, alice, newer) == "new"
    for message in older:
        with pytest.raises(DecryptionError):
            newcomer.decrypt_group(GROUP, ALICE_LAPTOP, message)
        assert text(bob, alice, message).startswith("old")


def test_a_member_cannot_pose_as_another(group: dict[DeviceAddress, Crypto]) -> None:
    alice, bob, carol = group[ALICE_LAPTOP], group[BOB_LAPTOP], group[CAROL]
    _, distribution = alice.own_sender_key(GROUP)
    bob.accept_sender_key(ALICE_LAPTOP, distribution)
    carol.accept_sender_key(ALICE_LAPTOP, distribution)
    # Bob holds alice's chain key, so he can encrypt "as alice", but not sign as her.
    stolen = e2ee_pb2.SenderKeyDistribution.FromString(distribution)
    message_key, _ = _step(stolen.chain_key)
    associated = _associated_data(GROUP, ALICE_LAPTOP, stolen.epoch, stolen.iteration)
    cipher, nonce = _cipher(message_key)
    ciphertext = cipher.encrypt(nonce, text_content("I am alice"), associated)
    forged = e2ee_pb2.GroupMessage(
        epoch=stolen.epoch, iteration=stolen.iteration, ciphertext=ciphertext, signature=bytes(64)
    ).SerializeToString()
    with pytest.raises(DecryptionError):
        carol.decrypt_group(GROUP, ALICE_LAPTOP, forged)
    # A genuine message at the same position still opens: the forgery consumed nothing.
    assert text(carol, alice, alice.encrypt_group(GROUP, text_content("real"))) == "real"


def test_tampered_misattributed_and_replayed_messages_fail(
    group: dict[DeviceAddress, Crypto],
) -> None:
    alice, bob, carol = group[ALICE_LAPTOP], group[BOB_LAPTOP], group[CAROL]
    distribute(alice, {CAROL: carol})
    distribute(bob, {CAROL: carol})
    message = alice.encrypt_group(GROUP, text_content("once"))
    tampered = e2ee_pb2.GroupMessage.FromString(message)
    tampered.ciphertext = bytes([tampered.ciphertext[0] ^ 1]) + tampered.ciphertext[1:]
    with pytest.raises(DecryptionError):
        carol.decrypt_group(GROUP, ALICE_LAPTOP, tampered.SerializeToString())
    with pytest.raises(DecryptionError):
        carol.decrypt_group(GROUP, BOB_LAPTOP, message)  # claimed to be bob's
    with pytest.raises(DecryptionError):
        carol.decrypt_group("another-group", ALICE_LAPTOP, message)
    with pytest.raises(DecryptionError):
        carol.decrypt_group(GROUP, ALICE_LAPTOP, b"\xff garbage")
    assert text(carol, alice, message) == "once"
    with pytest.raises(DecryptionError):
        carol.decrypt_group(GROUP, ALICE_LAPTOP, message)


def test_out_of_order_within_the_bound_and_keys_work_once() -> None:
    alice, bob = device(ALICE_LAPTOP), device(BOB_LAPTOP)
    distribute(alice, {BOB_LAPTOP: bob})
    messages = [alice.encrypt_group(GROUP, text_content(f"m{i}")) for i in range(6)]
    for i in (4, 0, 5, 2, 1, 3):
        assert text(bob, alice, messages[i]) == f"m{i}"
    for i in (0, 4):
        with pytest.raises(DecryptionError):
            bob.decrypt_group(GROUP, ALICE_LAPTOP, messages[i])


def test_skipped_keys_are_bounded_to_a_thousand() -> None:
    alice, bob = device(ALICE_LAPTOP), device(BOB_LAPTOP)
    distribute(alice, {BOB_LAPTOP: bob})
    messages = [alice.encrypt_group(GROUP, text_content(str(i))) for i in range(1503)]
    # A jump over more than 1000 keys is refused outright ...
    with pytest.raises(DecryptionError, match="too many"):
        bob.decrypt_group(GROUP, ALICE_LAPTOP, messages[1001])
    # ... exactly 1000 skipped keys are fine and kept ...
    assert text(bob, alice, messages[1000]) == "1000"
    store = bob._store
    assert store.skipped_sender_key_count(GROUP, ALICE_LAPTOP, 1) == 1000
    # ... and more skipped keys push the oldest out.
    assert text(bob, alice, messages[1502]) == "1502"
    assert store.skipped_sender_key_count(GROUP, ALICE_LAPTOP, 1) == 1000
    for i in (0, 500):
        with pytest.raises(DecryptionError):
            bob.decrypt_group(GROUP, ALICE_LAPTOP, messages[i])
    for i in (501, 999, 1001, 1501):
        assert text(bob, alice, messages[i]) == str(i)


def test_a_repeated_distribution_never_rewinds_the_chain() -> None:
    alice, bob = device(ALICE_LAPTOP), device(BOB_LAPTOP)
    _, at_start = alice.own_sender_key(GROUP)
    bob.accept_sender_key(ALICE_LAPTOP, at_start)
    first = alice.encrypt_group(GROUP, text_content("first"))
    assert text(bob, alice, first) == "first"
    bob.accept_sender_key(ALICE_LAPTOP, at_start)
    with pytest.raises(DecryptionError):
        bob.decrypt_group(GROUP, ALICE_LAPTOP, first)


def test_a_reinstalled_sender_restarting_at_epoch_one_is_accepted() -> None:
    alice, bob = device(ALICE_LAPTOP), device(BOB_LAPTOP)
    distribute(alice, {BOB_LAPTOP: bob})
    assert text(bob, alice, alice.encrypt_group(GROUP, text_content("old"))) == "old"
    reinstalled = device(ALICE_LAPTOP)
    distribute(reinstalled, {BOB_LAPTOP: bob})
    message = reinstalled.encrypt_group(GROUP, text_content("new install"))
    assert text(bob, reinstalled, message) == "new install"


def test_malformed_distributions_are_refused() -> None:
    bob = device(BOB_LAPTOP)
    with pytest.raises(ValueError, match="not a SenderKeyDistribution"):
        bob.accept_sender_key(ALICE_LAPTOP, b"\xff junk")
    short = e2ee_pb2.SenderKeyDistribution(
        conversation_id=GROUP, epoch=1, chain_key=b"x", signing_key=bytes(32)
    )
    with pytest.raises(ValueError, match="malformed"):
        bob.accept_sender_key(ALICE_LAPTOP, short.SerializeToString())
    with pytest.raises(ValueError, match="not a SenderKeyDistribution"):
        sender_key_content(b"\xff junk")


def test_sender_keys_survive_a_restart(tmp_path: Path) -> None:
    alice = device(ALICE_LAPTOP, str(tmp_path / "alice.db"))
    bob = device(BOB_LAPTOP, str(tmp_path / "bob.db"))
    distribute(alice, {BOB_LAPTOP: bob})
    skipped = alice.encrypt_group(GROUP, text_content("skipped"))
    assert text(bob, alice, alice.encrypt_group(GROUP, text_content("read"))) == "read"

    alice = Crypto(DeviceStore.open(tmp_path / "alice.db"), ALICE_LAPTOP)
    bob = Crypto(DeviceStore.open(tmp_path / "bob.db"), BOB_LAPTOP)
    assert bob.undistributed(GROUP, [ALICE_LAPTOP]) == [ALICE_LAPTOP]
    assert alice.undistributed(GROUP, [BOB_LAPTOP, ALICE_LAPTOP]) == []
    entry = HistoryEntry(message_id="m-9", conversation_id=GROUP, sent_at=1.0)
    after = alice.encrypt_group(GROUP, text_content("after restart"))
    assert e2ee_pb2.GroupMessage.FromString(after).iteration == 2
    content = bob.decrypt_group(GROUP, ALICE_LAPTOP, after, remember=entry)
    assert parse_content(content).text.text == "after restart"
    assert bob._store.recall_plaintext("m-9") == content
    assert text(bob, alice, skipped) == "skipped"


def test_marking_an_epoch_rotated_away_meanwhile_marks_nothing() -> None:
    alice = device(ALICE_LAPTOP)
    epoch, _ = alice.own_sender_key(GROUP)
    alice.rotate_sender_key(GROUP)  # e.g. a re-key notice while the envelopes were in flight
    alice.mark_distributed(GROUP, [BOB_LAPTOP], epoch=epoch)
    assert alice.undistributed(GROUP, [BOB_LAPTOP]) == [BOB_LAPTOP]
    new_epoch, _ = alice.own_sender_key(GROUP)
    alice.mark_distributed(GROUP, [BOB_LAPTOP], epoch=new_epoch)
    assert alice.undistributed(GROUP, [BOB_LAPTOP, CAROL]) == [CAROL]
