"""Sender keys for groups (docs/design/e2ee.md, "Groups: sender keys").

Per (group, sending device, epoch) a chain key ratcheted with HMAC-SHA256:
message key = HMAC(ck, 0x01), next chain key = HMAC(ck, 0x02). AES-256-GCM with
key and nonce from HKDF of the message key; associated data = group, device,
epoch, iteration; an Ed25519 signature over associated data + ciphertext so
members cannot pose as each other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError

from parley.e2ee.v1 import e2ee_pb2
from parley_sdk.e2ee.errors import DecryptionError, MissingSenderKeyError
from parley_sdk.e2ee.keys import DeviceAddress
from parley_sdk.e2ee.store import DeviceStore, OwnSenderKeyRecord, ReceivedSenderKeyRecord

MAX_SKIPPED_SENDER_KEYS = 1000
_MESSAGE_KEY_INFO = b"Parley Sender Key v1"
_KEY_SIZE = 32
_NONCE_SIZE = 12
_MAX_UINT32 = 2**32 - 1


def _step(chain_key: bytes) -> tuple[bytes, bytes]:
    """(message key, next chain key)."""
    return (
        hmac.digest(chain_key, b"\x01", hashlib.sha256),
        hmac.digest(chain_key, b"\x02", hashlib.sha256),
    )


def _cipher(message_key: bytes) -> tuple[AESGCM, bytes]:
    material = HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_SIZE + _NONCE_SIZE,
        salt=b"\x00" * 32,
        info=_MESSAGE_KEY_INFO,
    ).derive(message_key)
    return AESGCM(material[:_KEY_SIZE]), material[_KEY_SIZE:]


def _associated_data(
    conversation_id: str, sender: DeviceAddress, epoch: int, iteration: int
) -> bytes:
    parts = (
        b"Parley group v1",
        conversation_id.encode(),
        sender.account_id.encode(),
        sender.device_id.encode(),
    )
    return b"".join(struct.pack(">I", len(p)) + p for p in parts) + struct.pack(
        ">II", epoch, iteration
    )


def _raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _raw_private(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


class SenderKeys:
    """The sender-key half of :class:`parley_sdk.e2ee.Crypto` (synchronous: no locks needed,
    each call is one store transaction)."""

    def __init__(self, store: DeviceStore, me: DeviceAddress) -> None:
        self._store = store
        self._me = me

    def _current(self, conversation_id: str) -> OwnSenderKeyRecord:
        record = self._store.load_own_sender_key(conversation_id)
        if record is not None and record.chain_key is not None:
            return record
        signing = Ed25519PrivateKey.generate()
        fresh = OwnSenderKeyRecord(
            epoch=1 if record is None else record.epoch + 1,
            iteration=0,
            chain_key=secrets.token_bytes(_KEY_SIZE),
            signing_private_key=_raw_private(signing),
        )
        self._store.save_own_sender_key(conversation_id, fresh)
        return fresh

    def _current_epoch(self, conversation_id: str) -> int:
        """The epoch own_sender_key would hand out now (a rotated key counts as the next)."""
        record = self._store.load_own_sender_key(conversation_id)
        if record is None:
            return 1
        return record.epoch if record.chain_key is not None else record.epoch + 1

    def own_sender_key(self, conversation_id: str) -> tuple[int, bytes]:
        with self._store.transaction():
            record = self._current(conversation_id)
        assert record.chain_key is not None
        assert record.signing_private_key is not None
        signing = Ed25519PrivateKey.from_private_bytes(record.signing_private_key)
        distribution = e2ee_pb2.SenderKeyDistribution(
            conversation_id=conversation_id,
            epoch=record.epoch,
            iteration=record.iteration,
            chain_key=record.chain_key,
            signing_key=_raw_public(signing),
        )
        return record.epoch, distribution.SerializeToString()

    def rotate_sender_key(self, conversation_id: str) -> None:
        with self._store.transaction():
            record = self._store.load_own_sender_key(conversation_id)
            if record is not None and record.chain_key is not None:
                self._store.save_own_sender_key(
                    conversation_id, OwnSenderKeyRecord(record.epoch, record.iteration, None, None)
                )

    def undistributed(
        self, conversation_id: str, devices: Sequence[DeviceAddress]
    ) -> list[DeviceAddress]:
        given = self._store.distributed_devices(
            conversation_id, self._current_epoch(conversation_id)
        )
        missing: list[DeviceAddress] = []
        for device in devices:
            if device != self._me and device not in given and device not in missing:
                missing.append(device)
        return missing

    def mark_distributed(
        self, conversation_id: str, devices: Sequence[DeviceAddress], *, epoch: int | None = None
    ) -> None:
        with self._store.transaction():
            current = self._current_epoch(conversation_id)
            # A distribution of an epoch rotated away meanwhile counts for nothing.
            if epoch is None or epoch == current:
                self._store.mark_distributed(conversation_id, current, devices)

    def encrypt_group(self, conversation_id: str, content: bytes) -> bytes:
        with self._store.transaction():
            record = self._current(conversation_id)
            assert record.chain_key is not None
            assert record.signing_private_key is not None
            if record.iteration >= _MAX_UINT32:
                raise OverflowError("sender key chain exhausted; rotate the sender key")
            message_key, next_chain_key = _step(record.chain_key)
            # Saved before the ciphertext leaves: a crash never reuses the message key.
            self._store.save_own_sender_key(
                conversation_id,
                OwnSenderKeyRecord(
                    record.epoch, record.iteration + 1, next_chain_key, record.signing_private_key
                ),
            )
        associated = _associated_data(conversation_id, self._me, record.epoch, record.iteration)
        cipher, nonce = _cipher(message_key)
        ciphertext = cipher.encrypt(nonce, content, associated)
        signing = Ed25519PrivateKey.from_private_bytes(record.signing_private_key)
        return e2ee_pb2.GroupMessage(
            epoch=record.epoch,
            iteration=record.iteration,
            ciphertext=ciphertext,
            signature=signing.sign(associated + ciphertext),
        ).SerializeToString()

    def accept_sender_key(self, sender: DeviceAddress, distribution: bytes) -> None:
        try:
            parsed = e2ee_pb2.SenderKeyDistribution.FromString(distribution)
        except DecodeError:
            raise ValueError("not a SenderKeyDistribution") from None
        if (
            not parsed.conversation_id
            or parsed.epoch < 1
            or len(parsed.chain_key) != _KEY_SIZE
            or len(parsed.signing_key) != _KEY_SIZE
        ):
            raise ValueError("malformed SenderKeyDistribution")
        cid, epoch = parsed.conversation_id, parsed.epoch
        with self._store.transaction():
            known = self._store.load_received_sender_key(cid, sender, epoch)
            # The same key again (a re-send) never moves a chain backwards: that
            # would make already-read messages decryptable again. A different
            # signing key means the device was re-installed and restarted its epochs.
            if known is not None and known.signing_public_key == parsed.signing_key:
                return
            self._store.save_received_sender_key(
                cid,
                sender,
                epoch,
                ReceivedSenderKeyRecord(parsed.iteration, parsed.chain_key, parsed.signing_key),
                replace_skipped=True,
            )

    def decrypt_group(self, conversation_id: str, sender: DeviceAddress, message: bytes) -> bytes:
        try:
            parsed = e2ee_pb2.GroupMessage.FromString(message)
        except DecodeError:
            raise DecryptionError("not a GroupMessage") from None
        epoch, iteration = parsed.epoch, parsed.iteration
        if sender == self._me:
            # Own messages are never decrypted: their plaintext is in the history.
            raise DecryptionError("a device cannot decrypt its own group messages")
        with self._store.transaction():
            known = self._store.load_received_sender_key(conversation_id, sender, epoch)
            if known is None:
                raise MissingSenderKeyError(conversation_id, sender, epoch)
            associated = _associated_data(conversation_id, sender, epoch, iteration)
            try:
                Ed25519PublicKey.from_public_bytes(known.signing_public_key).verify(
                    parsed.signature, associated + parsed.ciphertext
                )
            except InvalidSignature:
                raise DecryptionError("group message signature does not verify") from None
            skipped: list[tuple[int, bytes]] = []
            if iteration < known.iteration:
                message_key = self._store.skipped_sender_key(
                    conversation_id, sender, epoch, iteration
                )
                if message_key is None:
                    raise DecryptionError("group message already read or too old")
                next_state = known
            else:
                if iteration - known.iteration > MAX_SKIPPED_SENDER_KEYS:
                    raise DecryptionError("group message skips too many keys")
                chain_key = known.chain_key
                for position in range(known.iteration, iteration):
                    skipped_key, chain_key = _step(chain_key)
                    skipped.append((position, skipped_key))
                message_key, chain_key = _step(chain_key)
                next_state = ReceivedSenderKeyRecord(
                    iteration + 1, chain_key, known.signing_public_key
                )
            cipher, nonce = _cipher(message_key)
            try:
                plaintext = cipher.decrypt(nonce, parsed.ciphertext, associated)
            except InvalidTag:
                raise DecryptionError("group message does not authenticate") from None
            self._store.save_received_sender_key(conversation_id, sender, epoch, next_state)
            self._store.update_skipped_sender_keys(
                conversation_id,
                sender,
                epoch,
                used=iteration if next_state is known else None,
                added=skipped,
                keep=MAX_SKIPPED_SENDER_KEYS,
            )
        return plaintext
