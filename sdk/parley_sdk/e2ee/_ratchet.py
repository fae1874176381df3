"""The X3DH and Double Ratchet configuration (docs/design/e2ee.md): library
subclasses, the associated data, and (de)serialization of sessions."""

from __future__ import annotations

import json
import struct
from typing import Any, cast

from doubleratchet import DoubleRatchet, EncryptedMessage, Header
from doubleratchet.recommended import HashFunction as RatchetHash
from doubleratchet.recommended import aead_aes_hmac, kdf_hkdf, kdf_separate_hmacs
from doubleratchet.recommended.diffie_hellman_ratchet_curve25519 import (
    DiffieHellmanRatchet as Curve25519Ratchet,
)
from x3dh import BaseState, HashFunction, IdentityKeyFormat

from parley_sdk.e2ee.keys import DeviceAddress

X3DH_INFO = b"Parley X3DH v1"
ROOT_CHAIN_INFO = b"Parley Root Chain v1"
MESSAGE_KEYS_INFO = b"Parley Message Keys v1"
MESSAGE_CHAIN_CONSTANT = b"\x02\x01"
MAX_SKIPPED_MESSAGE_KEYS = 1000
DOS_PROTECTION_THRESHOLD = MAX_SKIPPED_MESSAGE_KEYS
IDENTITY_KEY_FORMAT = IdentityKeyFormat.ED_25519
X3DH_HASH = HashFunction.SHA_256
KEY_SIZE = 32

# The byte contract with svc_keys: Curve25519 keys are signed with this type prefix.
CURVE25519_PREFIX = b"\x05"
_ED25519_PREFIX = b"\x06"


class X3dhState(BaseState):
    """The device's X3DH state. One-time prekeys live in the store, not here:
    a state is built with only the prekey a handshake needs."""

    @staticmethod
    def _encode_public_key(key_format: IdentityKeyFormat, pub: bytes) -> bytes:
        prefix = (
            CURVE25519_PREFIX if key_format is IdentityKeyFormat.CURVE_25519 else _ED25519_PREFIX
        )
        return prefix + pub


def new_x3dh_state() -> X3dhState:
    return X3dhState.create(IDENTITY_KEY_FORMAT, X3DH_HASH, X3DH_INFO)


def load_x3dh_state(serialized: str, *, pre_key: bytes | None = None) -> X3dhState:
    """``pre_key``: the private one-time prekey a passive handshake needs."""
    state, _ = X3dhState.from_json(
        json.loads(serialized), IDENTITY_KEY_FORMAT, X3DH_HASH, X3DH_INFO
    )
    if pre_key is None:
        return state
    model = state.model.model_copy(update={"pre_keys": frozenset({pre_key})})
    return X3dhState.from_model(model, IDENTITY_KEY_FORMAT, X3DH_HASH, X3DH_INFO)


def dump_x3dh_state(state: X3dhState) -> str:
    return json.dumps(state.json)


class _RootChainKdf(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function() -> RatchetHash:
        return RatchetHash.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return ROOT_CHAIN_INFO


class _MessageChainKdf(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function() -> RatchetHash:
        return RatchetHash.SHA_256


class _Aead(aead_aes_hmac.AEAD):
    @staticmethod
    def _get_hash_function() -> RatchetHash:
        return RatchetHash.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return MESSAGE_KEYS_INFO


class Ratchet(DoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data: bytes, header: Header) -> bytes:
        return (
            _field(associated_data)
            + _field(header.ratchet_pub)
            + struct.pack(">II", header.previous_sending_chain_length, header.sending_chain_length)
        )


# Passed again on every load: the library does not store its configuration.
_CONFIG: dict[str, Any] = {
    "diffie_hellman_ratchet_class": Curve25519Ratchet,
    "root_chain_kdf": _RootChainKdf,
    "message_chain_kdf": _MessageChainKdf,
    "message_chain_constant": MESSAGE_CHAIN_CONSTANT,
    "dos_protection_threshold": DOS_PROTECTION_THRESHOLD,
    "max_num_skipped_message_keys": MAX_SKIPPED_MESSAGE_KEYS,
    "aead": _Aead,
}


async def start_ratchet(
    shared_secret: bytes, recipient_ratchet_pub: bytes, plaintext: bytes, associated_data: bytes
) -> tuple[Ratchet, EncryptedMessage]:
    return await Ratchet.encrypt_initial_message(
        shared_secret=shared_secret,
        recipient_ratchet_pub=recipient_ratchet_pub,
        message=plaintext,
        associated_data=associated_data,
        **_CONFIG,
    )


async def accept_ratchet(
    shared_secret: bytes, own_ratchet_priv: bytes, message: EncryptedMessage, associated_data: bytes
) -> tuple[Ratchet, bytes]:
    return await Ratchet.decrypt_initial_message(
        shared_secret=shared_secret,
        own_ratchet_priv=own_ratchet_priv,
        message=message,
        associated_data=associated_data,
        **_CONFIG,
    )


def load_ratchet(serialized: str) -> Ratchet:
    return Ratchet.from_json(json.loads(serialized), **_CONFIG)


def dump_ratchet(ratchet: Ratchet) -> str:
    return json.dumps(cast(dict[str, Any], ratchet.json))


def pairwise_associated_data(
    sender: DeviceAddress,
    sender_identity: bytes,
    recipient: DeviceAddress,
    recipient_identity: bytes,
) -> bytes:
    """Binds both identity keys and both device addresses, in sending direction,
    so a copy only opens on the device and from the sender it was made for."""
    return b"".join(
        _field(part)
        for part in (
            b"Parley pairwise v1",
            sender_identity,
            sender.account_id.encode(),
            sender.device_id.encode(),
            recipient_identity,
            recipient.account_id.encode(),
            recipient.device_id.encode(),
        )
    )


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value
