"""Typed end-to-end encryption key directory values: prekeys and bundles (public keys only)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Self

from parley.keys.v1 import keys_pb2

__all__ = ["DeviceKey", "OneTimePreKey", "PreKeyBundle", "SenderKeyEnvelope", "SignedPreKey"]


@dataclass(frozen=True, slots=True)
class SignedPreKey:
    """An X25519 public key signed by the device's identity key.

    ``signature`` is the identity key's Ed25519 signature over
    ``b"\\x05" + public_key``; the server refuses any other. ``key_id`` is the
    client's own number for finding the private half later.
    """

    key_id: int
    public_key: bytes
    signature: bytes

    def to_proto(self) -> keys_pb2.SignedPreKey:
        return keys_pb2.SignedPreKey(
            key_id=self.key_id, public_key=self.public_key, signature=self.signature
        )

    @classmethod
    def from_proto(cls, proto: keys_pb2.SignedPreKey) -> Self:
        return cls(key_id=proto.key_id, public_key=proto.public_key, signature=proto.signature)


@dataclass(frozen=True, slots=True)
class OneTimePreKey:
    """An unsigned X25519 public key, handed out by the directory at most once.
    ``key_id`` must be unique per device."""

    key_id: int
    public_key: bytes

    def to_proto(self) -> keys_pb2.OneTimePreKey:
        return keys_pb2.OneTimePreKey(key_id=self.key_id, public_key=self.public_key)

    @classmethod
    def from_proto(cls, proto: keys_pb2.OneTimePreKey) -> Self:
        return cls(key_id=proto.key_id, public_key=proto.public_key)


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """What a sender needs to start a session with one device of an account.

    ``one_time_pre_key`` is None (and ``exhausted`` True) when the device had
    none left; the session then starts from the signed prekey alone.
    """

    device_id: str
    identity_key: bytes
    signed_pre_key: SignedPreKey
    one_time_pre_key: OneTimePreKey | None
    exhausted: bool

    def to_proto(self) -> keys_pb2.PreKeyBundle:
        proto = keys_pb2.PreKeyBundle(
            device_id=self.device_id,
            identity_key=self.identity_key,
            signed_pre_key=self.signed_pre_key.to_proto(),
            one_time_pre_key_exhausted=self.exhausted,
        )
        if self.one_time_pre_key is not None:
            proto.one_time_pre_key.CopyFrom(self.one_time_pre_key.to_proto())
        return proto

    @classmethod
    def from_proto(cls, proto: keys_pb2.PreKeyBundle) -> Self:
        one_time = None
        if proto.HasField("one_time_pre_key"):
            one_time = OneTimePreKey.from_proto(proto.one_time_pre_key)
        return cls(
            device_id=proto.device_id,
            identity_key=proto.identity_key,
            signed_pre_key=SignedPreKey.from_proto(proto.signed_pre_key),
            one_time_pre_key=one_time,
            exhausted=proto.one_time_pre_key_exhausted,
        )


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """The identity key a device of an account published (GetDeviceKeys)."""

    account_id: str
    device_id: str
    identity_key: bytes

    @classmethod
    def from_proto(cls, proto: keys_pb2.DeviceKey) -> Self:
        return cls(
            account_id=proto.account_id,
            device_id=proto.device_id,
            identity_key=proto.identity_key,
        )


@dataclass(frozen=True, slots=True)
class SenderKeyEnvelope:
    """A group sender key sealed (pairwise) for one recipient device.

    To send one, set the recipient and ``ciphertext``; the server fills in the
    rest, which :meth:`KeyMethods.claim_sender_keys` returns.
    """

    recipient_account_id: str
    recipient_device_id: str
    ciphertext: bytes
    conversation_id: str = ""
    sender_account_id: str = ""
    sender_device_id: str = ""
    envelope_id: str = ""
    create_time: datetime | None = None

    def to_proto(self) -> keys_pb2.SenderKeyEnvelope:
        return keys_pb2.SenderKeyEnvelope(
            recipient_account_id=self.recipient_account_id,
            recipient_device_id=self.recipient_device_id,
            ciphertext=self.ciphertext,
        )

    @classmethod
    def from_proto(cls, proto: keys_pb2.SenderKeyEnvelope) -> Self:
        created = None
        if proto.HasField("create_time"):
            created = proto.create_time.ToDatetime(tzinfo=UTC)
        return cls(
            recipient_account_id=proto.recipient_account_id,
            recipient_device_id=proto.recipient_device_id,
            ciphertext=proto.ciphertext,
            conversation_id=proto.conversation_id,
            sender_account_id=proto.sender_account_id,
            sender_device_id=proto.sender_device_id,
            envelope_id=proto.envelope_id,
            create_time=created,
        )
