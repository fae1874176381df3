"""Sender-key envelopes through svc_keys against the real stack: stored,
claimed exactly once (concurrent claimers included), idempotent by request id
even after claims, refused for devices nobody could open them on, capped per
device, announced on the recipients' account channels, and dropped with a
revoked device."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.keys.v1 import keys_pb2 as pb
from parley.keys.v1 import keys_pb2_grpc as pbgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley_dev.stack import LocalStack
from tests.conftest import TEST_SHUTDOWN_GRACE_SECONDS
from tests.integration.test_key_directory import invalid, publish
from tests.integration.test_key_directory_notices import account_channel, database, key_notices
from tests.users import Device, error_reason, link_device, rid, sign_up

GROUP = "3f1c7a52-9d1e-4b6a-8e2f-1a2b3c4d5e6f"


def sealed(to: Device, ciphertext: bytes) -> pb.SenderKeyEnvelope:
    return pb.SenderKeyEnvelope(
        recipient_account_id=to.account_id, recipient_device_id=to.device_id, ciphertext=ciphertext
    )


async def send(
    key_service: pbgrpc.KeyServiceStub,
    sender: Device,
    envelopes: list[pb.SenderKeyEnvelope],
    *,
    request_id: str | None = None,
    conversation_id: str = GROUP,
) -> int:
    reply = await key_service.SendSenderKeys(
        pb.SendSenderKeysRequest(
            request_id=request_id or rid(), conversation_id=conversation_id, envelopes=envelopes
        ),
        metadata=sender.md,
    )
    return int(reply.stored)


async def claim_all(
    key_service: pbgrpc.KeyServiceStub, device: Device, page_size: int = 0
) -> list[pb.SenderKeyEnvelope]:
    claimed: list[pb.SenderKeyEnvelope] = []
    while True:
        reply = await key_service.ClaimSenderKeys(
            pb.ClaimSenderKeysRequest(page_size=page_size), metadata=device.md
        )
        claimed.extend(reply.envelopes)
        if not reply.more:
            return claimed


async def keyed(keys: kgrpc.AccountServiceStub, key_service: pbgrpc.KeyServiceStub) -> Device:
    device = await sign_up(keys)
    await publish(key_service, device)
    return device


async def test_envelopes_are_stored_announced_and_claimed_once(stack, keys, key_service) -> None:
    alice = await keyed(keys, key_service)
    bob = await keyed(keys, key_service)
    bob_laptop = await link_device(keys, bob)
    await publish(key_service, bob_laptop)
    async with account_channel(stack, bob.account_id) as channel:
        before = time.time()
        stored = await send(
            key_service, alice, [sealed(bob, b"for phone"), sealed(bob_laptop, b"for laptop")]
        )
        assert stored == 2
        notices = await key_notices(channel, wait=2)
    assert sorted(notices, key=lambda n: n.device_id) == sorted(
        [
            mpb.KeyNotice(
                kind=mpb.KeyNotice.KIND_SENDER_KEYS_WAITING, conversation_id=GROUP, device_id=d
            )
            for d in (bob.device_id, bob_laptop.device_id)
        ],
        key=lambda n: n.device_id,
    )
    reply = await key_service.ClaimSenderKeys(pb.ClaimSenderKeysRequest(), metadata=bob.md)
    [envelope] = reply.envelopes
    assert not reply.more
    assert envelope.ciphertext == b"for phone"
    assert envelope.conversation_id == GROUP
    # The sender is the caller's token, whatever the request said.
    assert (envelope.sender_account_id, envelope.sender_device_id) == (
        alice.account_id,
        alice.device_id,
    )
    assert (envelope.recipient_account_id, envelope.recipient_device_id) == (
        bob.account_id,
        bob.device_id,
    )
    assert envelope.envelope_id
    assert before - 1 <= envelope.create_time.ToMicroseconds() / 1e6 <= time.time() + 1
    again = await key_service.ClaimSenderKeys(pb.ClaimSenderKeysRequest(), metadata=bob.md)
    assert list(again.envelopes) == [] and not again.more
    [other] = await claim_all(key_service, bob_laptop)
    assert other.ciphertext == b"for laptop"
    assert other.envelope_id != envelope.envelope_id


async def test_claims_page_oldest_first(keys, key_service) -> None:
    alice, bob = await keyed(keys, key_service), await keyed(keys, key_service)
    for i in range(5):
        await send(key_service, alice, [sealed(bob, f"n{i}".encode())])
    first = await key_service.ClaimSenderKeys(
        pb.ClaimSenderKeysRequest(page_size=2), metadata=bob.md
    )
    assert [e.ciphertext for e in first.envelopes] == [b"n0", b"n1"] and first.more
    rest = await claim_all(key_service, bob, page_size=2)
    assert [e.ciphertext for e in rest] == [b"n2", b"n3", b"n4"]
    assert await invalid(
        key_service.ClaimSenderKeys(pb.ClaimSenderKeysRequest(page_size=-1), metadata=bob.md)
    ) == ["page_size"]


async def test_concurrent_claimers_of_one_device_get_disjoint_sets(keys, key_service) -> None:
    alice, bob = await keyed(keys, key_service), await keyed(keys, key_service)
    senders = [alice, *[await keyed(keys, key_service) for _ in range(3)]]
    expected = set()
    for n in range(60):
        body = f"envelope {n}".encode()
        expected.add(body)
        await send(key_service, senders[n % len(senders)], [sealed(bob, body)])

    got = await asyncio.wait_for(
        asyncio.gather(*(claim_all(key_service, bob, page_size=5) for _ in range(20))), 60
    )
    bodies = [e.ciphertext for claimer in got for e in claimer]
    assert len(bodies) == len(set(bodies)) == 60
    assert set(bodies) == expected
    assert sum(1 for claimer in got if claimer) > 1, "one claimer took everything"


async def test_a_retry_stores_nothing_twice_even_after_claims(stack, keys, key_service) -> None:
    alice, bob = await keyed(keys, key_service), await keyed(keys, key_service)
    carol = await keyed(keys, key_service)
    request_id = rid()
    envelopes = [sealed(bob, b"to bob"), sealed(carol, b"to carol")]
    assert await send(key_service, alice, envelopes, request_id=request_id) == 2
    [claimed] = await claim_all(key_service, bob)
    # A retry (the client never saw the answer) even with re-encrypted bytes.
    retried = [sealed(bob, b"to bob again"), sealed(carol, b"to carol again")]
    assert await send(key_service, alice, retried, request_id=request_id) == 2
    assert await claim_all(key_service, bob) == []
    assert [e.ciphertext for e in await claim_all(key_service, carol)] == [b"to carol"]

    # The first attempt stopped after its envelopes, before its request record;
    # bob claimed meanwhile; the retry must not bring bob's envelope back.
    request_id = rid()
    assert await send(key_service, alice, [sealed(bob, b"half")], request_id=request_id) == 1
    async with database(stack) as db:
        deleted = await db["sender_key_requests"].delete_one(
            {"_id": f"{alice.device_id}:{request_id}"}
        )
        assert deleted.deleted_count == 1
    assert [e.ciphertext for e in await claim_all(key_service, bob)] == [b"half"]
    assert await send(key_service, alice, [sealed(bob, b"half")], request_id=request_id) == 1
    assert await claim_all(key_service, bob) == []
    # The same request id for another conversation is a client bug.
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await send(
            key_service,
            alice,
            [sealed(bob, b"x")],
            request_id=request_id,
            conversation_id="4f1c7a52-9d1e-4b6a-8e2f-1a2b3c4d5e6f",
        )
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert claimed.ciphertext == b"to bob"


async def test_malformed_sends_are_refused_with_every_field(keys, key_service) -> None:
    alice, bob = await keyed(keys, key_service), await keyed(keys, key_service)
    fields = await invalid(
        key_service.SendSenderKeys(
            pb.SendSenderKeysRequest(
                request_id="nope",
                conversation_id="not a conversation",
                envelopes=[sealed(bob, b"x"), sealed(bob, b""), sealed(bob, b"y" * 65_537)],
            ),
            metadata=alice.md,
        )
    )
    assert fields == [
        "request_id",
        "conversation_id",
        "envelopes[1].recipient_device_id",
        "envelopes[1].ciphertext",
        "envelopes[2].recipient_device_id",
        "envelopes[2].ciphertext",
    ]
    assert await invalid(
        key_service.SendSenderKeys(
            pb.SendSenderKeysRequest(request_id=rid(), conversation_id=GROUP),
            metadata=alice.md,
        )
    ) == ["envelopes"]
    assert await claim_all(key_service, bob) == []


async def test_devices_nobody_could_open_an_envelope_on_are_named(keys, key_service) -> None:
    alice, bob = await keyed(keys, key_service), await keyed(keys, key_service)
    unkeyed = await link_device(keys, bob, name="tablet")
    revoked = await link_device(keys, bob, name="old phone")
    await publish(key_service, revoked)
    await keys.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=revoked.device_id), metadata=bob.md
    )
    carol = await keyed(keys, key_service)
    wrong_account = pb.SenderKeyEnvelope(
        recipient_account_id=bob.account_id, recipient_device_id=carol.device_id, ciphertext=b"x"
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await send(
            key_service,
            alice,
            [sealed(bob, b"fine"), sealed(unkeyed, b"x"), sealed(revoked, b"x"), wrong_account],
        )
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = failure.value.details() or ""
    for device in (unkeyed, revoked, carol):
        assert device.device_id in details
    assert bob.device_id not in details
    # Nothing of the refused request was stored.
    assert await claim_all(key_service, bob) == []


async def test_revoking_a_device_drops_its_envelopes(stack, keys, key_service) -> None:
    alice, bob = await keyed(keys, key_service), await keyed(keys, key_service)
    laptop = await link_device(keys, bob)
    await publish(key_service, laptop)
    await send(key_service, alice, [sealed(bob, b"phone"), sealed(laptop, b"laptop")])
    await keys.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=laptop.device_id), metadata=bob.md
    )
    async with database(stack) as db:
        envelopes = db["sender_key_envelopes"]
        assert await envelopes.count_documents({"recipient_device_id": laptop.device_id}) == 0
        assert await envelopes.count_documents({"recipient_device_id": bob.device_id}) == 1


async def test_a_full_device_refuses_more_until_it_claims(tmp_path: Path) -> None:
    async with (
        LocalStack.with_free_ports(
            root=tmp_path / "stack",
            message_instances=1,
            shutdown_grace_seconds=TEST_SHUTDOWN_GRACE_SECONDS,
            extra_config={"keys": {"max_unclaimed_sender_keys_per_device": 3}},
        ) as local,
        grpc.aio.insecure_channel(local.keys_target) as channel,
    ):
        keys = kgrpc.AccountServiceStub(channel)
        key_service = pbgrpc.KeyServiceStub(channel)
        alice, bob = await keyed(keys, key_service), await keyed(keys, key_service)
        carol = await keyed(keys, key_service)
        for i in range(3):
            await send(key_service, alice, [sealed(bob, f"{i}".encode())])
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await send(key_service, alice, [sealed(carol, b"c"), sealed(bob, b"3")])
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(failure.value) == "ERROR_REASON_TOO_MANY_ENVELOPES"
        assert bob.device_id in (failure.value.details() or "")
        assert carol.device_id not in (failure.value.details() or "")
        assert await claim_all(key_service, carol) == []
        reply = await key_service.ClaimSenderKeys(
            pb.ClaimSenderKeysRequest(page_size=1), metadata=bob.md
        )
        assert [e.ciphertext for e in reply.envelopes] == [b"0"]
        # Claimed envelopes (now tombstones) no longer count.
        assert await send(key_service, alice, [sealed(bob, b"3")]) == 1
        bodies = [e.ciphertext for e in await claim_all(key_service, bob)]
        assert bodies == [b"1", b"2", b"3"]
