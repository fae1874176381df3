"""Public key material and device addresses exchanged with the key directory."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DeviceAddress",
    "PublicKeys",
    "PublicPreKey",
    "PublicSignedPreKey",
    "RemoteBundle",
]


@dataclass(frozen=True, slots=True)
class DeviceAddress:
    """One device of one account: the unit every session and sender key belongs to."""

    account_id: str
    device_id: str


@dataclass(frozen=True, slots=True)
class PublicSignedPreKey:
    """X25519 public key signed (Ed25519, over ``0x05 || public_key``) by the identity key."""

    key_id: int
    public_key: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class PublicPreKey:
    """An unsigned X25519 one-time prekey; ``key_id`` comes from the device's own counter."""

    key_id: int
    public_key: bytes


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """What PublishKeys needs: Ed25519 identity key, signed prekey, new one-time prekeys."""

    identity_key: bytes
    signed_pre_key: PublicSignedPreKey
    one_time_pre_keys: list[PublicPreKey]


@dataclass(frozen=True, slots=True)
class RemoteBundle:
    """One device's prekey bundle as GetPreKeyBundles hands it out.

    ``one_time_pre_key`` is exactly the key the server handed out, or None when
    the device had none left (the session then starts from the signed prekey).
    """

    address: DeviceAddress
    identity_key: bytes
    signed_pre_key: PublicSignedPreKey
    one_time_pre_key: PublicPreKey | None
