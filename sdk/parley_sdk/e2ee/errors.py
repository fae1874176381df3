"""Errors of the encryption core. Messages never carry key material or plaintext."""

from __future__ import annotations

from parley_sdk.e2ee.keys import DeviceAddress

__all__ = [
    "DecryptionError",
    "InvalidBundleError",
    "MissingSenderKeyError",
    "UntrustedIdentityError",
]


class DecryptionError(Exception):
    """The message cannot be decrypted: not for this device, tampered with, replayed,
    or there is no session for it."""


class UntrustedIdentityError(DecryptionError):
    """A session start carries another identity key than the one on record for the
    sending device. Raised only by a ``Crypto`` made with ``accept_new_identities=False``;
    the caller decides (e.g. ``forget_device`` and retry)."""

    def __init__(self, address: DeviceAddress, identity_key: bytes) -> None:
        super().__init__(
            f"device {address.account_id}/{address.device_id} presents a new identity key"
        )
        self.address = address
        self.identity_key = identity_key


class MissingSenderKeyError(DecryptionError):
    """No sender key is known for (group, sending device, epoch): claim the waiting
    sender-key envelopes, accept them and retry."""

    def __init__(self, conversation_id: str, sender: DeviceAddress, epoch: int) -> None:
        super().__init__(
            f"no sender key for epoch {epoch} of device "
            f"{sender.account_id}/{sender.device_id} in conversation {conversation_id}"
        )
        self.conversation_id = conversation_id
        self.sender = sender
        self.epoch = epoch


class InvalidBundleError(ValueError):
    """A prekey bundle is malformed or its signed prekey's signature does not verify
    against its identity key; no session can be started from it."""

    def __init__(self, address: DeviceAddress, reason: str) -> None:
        super().__init__(f"bundle of device {address.account_id}/{address.device_id}: {reason}")
        self.address = address
