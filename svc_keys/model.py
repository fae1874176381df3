"""Plain data shared by the layers of svc_keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    handle: str
    display_name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    account_id: str
    name: str
    platform: int
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    access_token: str
    access_expires_at: float
    refresh_token: str
    refresh_expires_at: float


@dataclass(frozen=True, slots=True)
class DeviceSession:
    """What sign-up and device registration hand back to the new device."""

    account: Account
    device: Device
    credentials: Credentials


@dataclass(frozen=True, slots=True)
class SignedPreKey:
    key_id: int
    public_key: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class PreKey:
    """A one-time prekey."""

    key_id: int
    public_key: bytes


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    device_id: str
    account_id: str
    identity_key: bytes
    signed_pre_key: SignedPreKey
    updated_at: datetime
    # The identity key replaced another one and the change is not yet
    # recorded for svc_message (a publish that stopped half-way).
    identity_change_pending: bool = False


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    device_id: str
    identity_key: bytes
    signed_pre_key: SignedPreKey
    # None when the device had none left.
    pre_key: PreKey | None


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device's identity key as GetDeviceKeys lists it."""

    account_id: str
    device_id: str
    identity_key: bytes


@dataclass(frozen=True, slots=True)
class NewEnvelope:
    """A sender-key envelope as a sender hands it in (no id or time yet)."""

    recipient_account_id: str
    recipient_device_id: str
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class SenderKeyEnvelope:
    envelope_id: str
    conversation_id: str
    sender_account_id: str
    sender_device_id: str
    recipient_account_id: str
    recipient_device_id: str
    ciphertext: bytes
    created_at: datetime


class HandleTaken(Exception):
    pass


class SignupRequestSeen(Exception):
    pass


class PreKeyConflict(Exception):
    """Some key ids are already stored with other public keys."""

    def __init__(self, key_ids: list[int]) -> None:
        super().__init__(f"key ids already used with another key: {key_ids}")
        self.key_ids = key_ids


@dataclass(frozen=True, slots=True)
class ErasureJob:
    """An account erasure in progress (its document until it finishes)."""

    erasure_id: str
    account_id: str
    device_ids: tuple[str, ...]
    steps: tuple[str, ...]
    created_at: datetime
    cold_deadline: datetime
    handle_release_at: datetime
    # Set by the ``account`` step when the handle's registrar is a peer
    # region: the release there is a step of its own (``handle@<region>``),
    # which needs the handle after the account is gone.
    handle_key: str | None = None
    handle_registrar: str | None = None


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    """What stays of an erasure: no account id, handle or device id."""

    erasure_id: str
    state: str
    steps: tuple[str, ...]
    created_at: datetime
    finished_at: datetime | None
    cold_deadline: datetime
    handle_release_at: datetime


@dataclass(frozen=True, slots=True)
class Reservation:
    """A handle held at its registrar region for an account (docs/design/regions.md)."""

    account_id: str
    home_region: str
    request_id: str


@dataclass(frozen=True, slots=True)
class SignUpForward:
    """A sign-up for an account homed in another region, as forwarded there."""

    request_id: str
    handle: str
    display_name: str
    device_name: str
    platform: int
    client_address: str
