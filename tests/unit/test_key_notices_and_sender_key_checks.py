"""Pure parts of the key notices and sender-key distribution: request shape
checks, recipient and cap policy, envelope ids, the encoded notices, and the
identity change recorded at least once across a publish that stopped."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from parley.keys.v1 import keys_pb2 as pb
from parley.message.v1 import messages_pb2 as mpb
from parley_core.errors import InvalidArgument
from parley_core.limits import InProcessBuckets, Limiter
from svc_keys.domain.keys import KeysHandler
from svc_keys.domain.sender_keys import over_cap, unreachable_recipients
from svc_keys.model import Device, DeviceKeys, NewEnvelope, SignedPreKey
from svc_keys.servicer.keys import (
    check_bundles_request,
    check_device_keys_request,
    check_send_sender_keys,
)
from svc_keys.storage.notices import pre_keys_low_event, sender_keys_waiting_event
from svc_keys.storage.sender_keys import envelope_id

A1 = "0190d3a4-6f1e-7c2a-9b1e-2f6a8c1d4e51"
A2 = "0190d3a4-6f1e-7c2a-9b1e-2f6a8c1d4e52"
D1 = "0190d3a4-6f1e-7c2a-9b1e-2f6a8c1d4e61"
D2 = "0190d3a4-6f1e-7c2a-9b1e-2f6a8c1d4e62"
D3 = "0190d3a4-6f1e-7c2a-9b1e-2f6a8c1d4e63"
GROUP = "3f1c7a52-9d1e-4b6a-8e2f-1a2b3c4d5e6f"
REQUEST = "0190d3a4-6f1e-7c2a-9b1e-2f6a8c1d4e70"


def fields(check: Any) -> list[str]:
    with pytest.raises(InvalidArgument) as failure:
        check.done()
    return [v.field for v in failure.value.violations]


def envelope(account: str, device: str, ciphertext: bytes = b"sealed") -> pb.SenderKeyEnvelope:
    return pb.SenderKeyEnvelope(
        recipient_account_id=account, recipient_device_id=device, ciphertext=ciphertext
    )


def test_a_well_formed_send_passes_and_keeps_only_the_recipient_fields() -> None:
    request = pb.SendSenderKeysRequest(
        request_id=REQUEST,
        conversation_id=GROUP,
        envelopes=[
            envelope(A1, D1),
            pb.SenderKeyEnvelope(
                recipient_account_id=A2,
                recipient_device_id=D2,
                ciphertext=b"x" * 65_536,
                sender_account_id="forged",
                envelope_id="mine",
            ),
        ],
    )
    check, envelopes = check_send_sender_keys(request)
    check.done()
    assert envelopes == [
        NewEnvelope(A1, D1, b"sealed"),
        NewEnvelope(A2, D2, b"x" * 65_536),
    ]


def test_send_shape_violations_name_every_field() -> None:
    request = pb.SendSenderKeysRequest(
        request_id="not-a-uuid",
        conversation_id="",
        envelopes=[
            envelope(A1, D1),
            envelope("nope", D1, b""),
            envelope(A2, D2.upper(), b"x" * 65_537),
        ],
    )
    check, _ = check_send_sender_keys(request)
    assert fields(check) == [
        "request_id",
        "conversation_id",
        "envelopes[1].recipient_account_id",
        "envelopes[1].recipient_device_id",
        "envelopes[1].ciphertext",
        "envelopes[2].recipient_device_id",
        "envelopes[2].ciphertext",
    ]


def test_a_repeated_recipient_is_named_by_position_whatever_its_size() -> None:
    # Details travel in trailing metadata (clients refuse values over 16 KiB):
    # a 64 KiB id echoed back once turned INVALID_ARGUMENT into the client's
    # own RESOURCE_EXHAUSTED.
    huge = "a" * 65_537
    request = pb.SendSenderKeysRequest(
        request_id=REQUEST,
        conversation_id=GROUP,
        envelopes=[envelope(A1, D1), envelope(A1, huge), envelope(A1, huge), envelope(A2, D1)],
    )
    check, _ = check_send_sender_keys(request)
    assert [(v.field, v.description) for v in check.violations] == [
        ("envelopes[1].recipient_device_id", "must be a lower-case UUID"),
        ("envelopes[2].recipient_device_id", "must be a lower-case UUID"),
        ("envelopes[2].recipient_device_id", "the same device as envelopes[1]"),
        ("envelopes[3].recipient_device_id", "the same device as envelopes[0]"),
    ]


def test_a_repeated_id_is_named_by_position_whatever_its_size() -> None:
    huge = "a" * 65_537
    check = check_device_keys_request(pb.GetDeviceKeysRequest(account_ids=[A1, huge, huge, A1]))
    assert [(v.field, v.description) for v in check.violations] == [
        ("account_ids[1]", "must be a lower-case UUID"),
        ("account_ids[2]", "must be a lower-case UUID"),
        ("account_ids[2]", "the same id as account_ids[1]"),
        ("account_ids[3]", "the same id as account_ids[0]"),
    ]


@pytest.mark.parametrize("count", [0, 501])
def test_a_send_holds_1_to_500_envelopes(count: int) -> None:
    devices = [f"0190d3a4-6f1e-7c2a-9b1e-{i:012x}" for i in range(count)]
    request = pb.SendSenderKeysRequest(
        request_id=REQUEST, conversation_id=GROUP, envelopes=[envelope(A1, d) for d in devices]
    )
    check, _ = check_send_sender_keys(request)
    assert fields(check) == ["envelopes"]


def test_device_keys_asks_for_1_to_256_distinct_ids() -> None:
    assert fields(check_device_keys_request(pb.GetDeviceKeysRequest())) == ["account_ids"]
    too_many = [f"0190d3a4-6f1e-7c2a-9b1e-{i:012x}" for i in range(257)]
    assert fields(check_device_keys_request(pb.GetDeviceKeysRequest(account_ids=too_many))) == [
        "account_ids"
    ]
    check_device_keys_request(pb.GetDeviceKeysRequest(account_ids=too_many[:256])).done()
    request = pb.GetDeviceKeysRequest(account_ids=[A1, A2, A1, "x"])
    assert fields(check_device_keys_request(request)) == ["account_ids[2]", "account_ids[3]"]


def test_bundle_device_filter_is_optional_distinct_and_at_most_64() -> None:
    check_bundles_request(pb.GetPreKeyBundlesRequest(account_id=A1)).done()
    check_bundles_request(pb.GetPreKeyBundlesRequest(account_id=A1, device_ids=[D1, D2])).done()
    request = pb.GetPreKeyBundlesRequest(account_id=A1, device_ids=[D1, D1])
    assert fields(check_bundles_request(request)) == ["device_ids[1]"]
    many = [f"0190d3a4-6f1e-7c2a-9b1e-{i:012x}" for i in range(65)]
    request = pb.GetPreKeyBundlesRequest(account_id=A1, device_ids=many)
    assert fields(check_bundles_request(request)) == ["device_ids"]


def test_recipients_must_be_active_keyed_devices_of_the_named_account() -> None:
    envelopes = [
        NewEnvelope(A1, D1, b"x"),  # fine
        NewEnvelope(A2, D2, b"x"),  # D2 belongs to A1
        NewEnvelope(A1, D3, b"x"),  # no keys
    ]
    active = {D1: A1, D2: A1, D3: A1}
    assert unreachable_recipients(envelopes, active=active, published={D1, D2}) == [D2, D3]
    assert unreachable_recipients(envelopes[:1], active={}, published={D1}) == [D1]


def test_cap_counts_what_already_waits() -> None:
    envelopes = [NewEnvelope(A1, D1, b"x"), NewEnvelope(A1, D2, b"x")]
    assert over_cap(envelopes, waiting={D1: 2, D2: 3}, cap=3) == [D2]
    assert over_cap(envelopes, waiting={}, cap=1) == []


def test_envelope_ids_are_the_same_for_every_attempt_and_differ_otherwise() -> None:
    first = envelope_id(D1, REQUEST, D2)
    assert first == envelope_id(D1, REQUEST.upper(), D2)
    assert len({first, envelope_id(D1, REQUEST, D3), envelope_id(D2, REQUEST, D2)}) == 3


def test_notices_are_events_svc_message_can_forward() -> None:
    event = mpb.Event.FromString(pre_keys_low_event(device_id=D1, count=19))
    assert event.WhichOneof("kind") == "key_notice"
    assert event.key_notice == mpb.KeyNotice(
        kind=mpb.KeyNotice.KIND_PRE_KEYS_LOW, pre_key_count=19, device_id=D1
    )
    event = mpb.Event.FromString(sender_keys_waiting_event(conversation_id=GROUP, device_id=D2))
    assert event.key_notice == mpb.KeyNotice(
        kind=mpb.KeyNotice.KIND_SENDER_KEYS_WAITING, conversation_id=GROUP, device_id=D2
    )


# -- identity changes ------------------------------------------------------------


def _raw(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


class _Keys:
    def __init__(self) -> None:
        self.stored: dict[str, DeviceKeys] = {}
        self.pre_keys_dropped: list[str] = []

    async def device_keys(self, device_id: str) -> DeviceKeys | None:
        return self.stored.get(device_id)

    async def set_device_keys(self, keys: DeviceKeys) -> None:
        self.stored[keys.device_id] = keys

    async def identity_change_recorded(self, device_id: str, identity_key: bytes) -> None:
        keys = self.stored[device_id]
        if keys.identity_key == identity_key:
            self.stored[device_id] = dataclasses.replace(keys, identity_change_pending=False)

    async def count_pre_keys(self, device_id: str) -> int:
        return 0

    async def delete_pre_keys(self, device_id: str) -> None:
        self.pre_keys_dropped.append(device_id)


class _Changes:
    def __init__(self) -> None:
        self.recorded: list[str] = []
        self.fail_next = False

    async def record(self, *, account_id: str, device_id: str, now: datetime) -> str:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the process stopped here")
        self.recorded.append(device_id)
        return "change"


class _Lows:
    async def record(self, **_: Any) -> None:
        pass


class _Envelopes:
    def __init__(self) -> None:
        self.dropped: list[str] = []

    async def delete_for_device(self, recipient_device_id: str) -> None:
        self.dropped.append(recipient_device_id)


class _Accounts:
    async def device_by_id(self, device_id: str) -> Device:
        return Device(device_id, A1, "phone", 1, datetime(2026, 1, 1, tzinfo=UTC))


async def test_an_identity_change_is_recorded_once_and_survives_a_stopped_publish() -> None:
    keys, changes, envelopes = _Keys(), _Changes(), _Envelopes()
    handler = KeysHandler(
        keys,  # type: ignore[arg-type]
        _Accounts(),  # type: ignore[arg-type]
        Limiter(InProcessBuckets(), {}, names=(), enabled=False),
        pre_key_lows=_Lows(),  # type: ignore[arg-type]
        identity_changes=changes,  # type: ignore[arg-type]
        notices=None,  # type: ignore[arg-type]
        sender_keys=envelopes,  # type: ignore[arg-type]
        max_pre_keys=1000,
    )

    async def publish(identity: Ed25519PrivateKey) -> bool:
        spk = _raw(X25519PrivateKey.generate().public_key())
        published = await handler.publish_keys(
            account_id=A1,
            device_id=D1,
            identity_key=_raw(identity.public_key()),
            signed_pre_key=SignedPreKey(1, spk, identity.sign(b"\x05" + spk)),
            pre_keys=[],
            now=1.0,
        )
        return published.identity_changed

    first, second = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert [await publish(first), await publish(first)] == [False, False]
    assert changes.recorded == []
    # The new key is written, then the process stops before the record.
    changes.fail_next = True
    with pytest.raises(ConnectionError):
        await publish(second)
    assert keys.stored[D1].identity_change_pending
    # The retry sees its own key, yet still records the change, once.
    assert await publish(second) is True
    assert await publish(second) is False
    assert changes.recorded == [D1]
    assert not keys.stored[D1].identity_change_pending
    # The old install's prekeys and envelopes went, on the stopped attempt and
    # again on its retry (which cannot know how far the first one got).
    assert keys.pre_keys_dropped == [D1, D1]
    assert envelopes.dropped == [D1, D1]
