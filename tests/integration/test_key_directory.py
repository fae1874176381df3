"""svc_keys' key directory against the real stack: publishing keys, signature
checks, prekey bundles consumed exactly once, the fetch rate limit, and keys
forgotten with their device."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.keys.v1 import keys_pb2 as pb
from parley.keys.v1 import keys_pb2_grpc as pbgrpc
from tests.users import (
    Device,
    error_fields,
    error_reason,
    link_device,
    rid,
    sign_up,
    sign_up_many,
)

_key_ids = itertools.count(1)


def raw(public_key: object) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)  # type: ignore[attr-defined, no-any-return]


def x25519() -> bytes:
    return raw(X25519PrivateKey.generate().public_key())


class Identity:
    """A device's keys as a client makes them (docs/design/e2ee.md)."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.public = raw(self.private.public_key())

    def signed_pre_key(self, key_id: int = 1) -> pb.SignedPreKey:
        public = x25519()
        return pb.SignedPreKey(
            key_id=key_id, public_key=public, signature=self.private.sign(b"\x05" + public)
        )


def pre_keys(count: int, start: int | None = None) -> list[pb.OneTimePreKey]:
    first = next(_key_ids) * 1000 if start is None else start
    return [pb.OneTimePreKey(key_id=first + i, public_key=x25519()) for i in range(count)]


async def publish(
    key_service, device: Device, *, count: int = 0
) -> tuple[pb.PublishKeysRequest, pb.PublishKeysResponse]:
    identity = Identity()
    request = pb.PublishKeysRequest(
        identity_key=identity.public,
        signed_pre_key=identity.signed_pre_key(),
        one_time_pre_keys=pre_keys(count),
    )
    return request, await key_service.PublishKeys(request, metadata=device.md)


async def invalid(call) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value.details()
    return error_fields(failure.value)


async def count(key_service, device: Device) -> int:
    reply = await key_service.GetPreKeyCount(pb.GetPreKeyCountRequest(), metadata=device.md)
    return int(reply.count)


async def test_publish_and_fetch_round_trip(keys, key_service) -> None:
    owner, requester = await sign_up(keys), await sign_up(keys)
    request, reply = await publish(key_service, owner, count=3)
    assert reply.pre_key_count == 3
    fetched = await key_service.GetPreKeyBundles(
        pb.GetPreKeyBundlesRequest(account_id=owner.account_id), metadata=requester.md
    )
    [bundle] = fetched.bundles
    assert bundle.device_id == owner.device_id
    assert bundle.identity_key == request.identity_key
    assert bundle.signed_pre_key == request.signed_pre_key
    assert bundle.one_time_pre_key in request.one_time_pre_keys
    assert not bundle.one_time_pre_key_exhausted
    assert await count(key_service, owner) == 2


async def test_a_new_signed_prekey_keeps_prekeys_and_a_new_identity_drops_them(
    keys, key_service
) -> None:
    owner, requester = await sign_up(keys), await sign_up(keys)
    identity = Identity()
    first = pb.PublishKeysRequest(
        identity_key=identity.public,
        signed_pre_key=identity.signed_pre_key(1),
        one_time_pre_keys=pre_keys(3),
    )
    await key_service.PublishKeys(first, metadata=owner.md)
    # Rotating the signed prekey under the same identity keeps the prekeys.
    rotated = pb.PublishKeysRequest(
        identity_key=identity.public, signed_pre_key=identity.signed_pre_key(2)
    )
    reply = await key_service.PublishKeys(rotated, metadata=owner.md)
    assert (reply.pre_key_count, reply.identity_changed) == (3, False)
    fetched = await key_service.GetPreKeyBundles(
        pb.GetPreKeyBundlesRequest(account_id=owner.account_id), metadata=requester.md
    )
    assert fetched.bundles[0].identity_key == identity.public
    assert fetched.bundles[0].signed_pre_key == rotated.signed_pre_key
    # A new identity (a re-install) makes the old install's prekeys useless.
    second, reply = await publish(key_service, owner, count=0)
    assert (reply.pre_key_count, reply.identity_changed) == (0, True)
    fetched = await key_service.GetPreKeyBundles(
        pb.GetPreKeyBundlesRequest(account_id=owner.account_id), metadata=requester.md
    )
    assert fetched.bundles[0].identity_key == second.identity_key
    assert fetched.bundles[0].one_time_pre_key_exhausted


async def test_bad_signatures_are_refused(keys, key_service) -> None:
    device = await sign_up(keys)
    identity = Identity()
    good = identity.signed_pre_key()
    flipped = bytearray(good.signature)
    flipped[10] ^= 0x01
    by_other = Identity().signed_pre_key()
    unprefixed_public = x25519()
    cases = [
        pb.SignedPreKey(key_id=1, public_key=good.public_key, signature=bytes(flipped)),
        # Signed by another identity key.
        pb.SignedPreKey(key_id=1, public_key=by_other.public_key, signature=by_other.signature),
        # Signed without the 0x05 prefix the contract requires.
        pb.SignedPreKey(
            key_id=1,
            public_key=unprefixed_public,
            signature=identity.private.sign(unprefixed_public),
        ),
        pb.SignedPreKey(key_id=1, public_key=good.public_key, signature=good.signature[:63]),
    ]
    for spk in cases:
        fields = await invalid(
            key_service.PublishKeys(
                pb.PublishKeysRequest(identity_key=identity.public, signed_pre_key=spk),
                metadata=device.md,
            )
        )
        assert fields == ["signed_pre_key.signature"]
    # Nothing was stored: prekeys still need a successful publish first.
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await key_service.UploadPreKeys(
            pb.UploadPreKeysRequest(pre_keys=pre_keys(1)), metadata=device.md
        )
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The contract with a good signature is accepted.
    await key_service.PublishKeys(
        pb.PublishKeysRequest(identity_key=identity.public, signed_pre_key=good),
        metadata=device.md,
    )


async def test_validation_names_the_fields(keys, key_service) -> None:
    device = await sign_up(keys)
    identity = Identity()
    spk = identity.signed_pre_key()
    fields = await invalid(
        key_service.PublishKeys(
            pb.PublishKeysRequest(
                identity_key=identity.public[:31],
                signed_pre_key=pb.SignedPreKey(
                    key_id=1, public_key=spk.public_key + b"\x00", signature=spk.signature
                ),
            ),
            metadata=device.md,
        )
    )
    assert set(fields) == {"identity_key", "signed_pre_key.public_key"}
    fields = await invalid(
        key_service.PublishKeys(
            pb.PublishKeysRequest(identity_key=identity.public), metadata=device.md
        )
    )
    assert fields == ["signed_pre_key"]
    fields = await invalid(
        key_service.PublishKeys(
            pb.PublishKeysRequest(
                identity_key=identity.public, signed_pre_key=spk, one_time_pre_keys=pre_keys(101)
            ),
            metadata=device.md,
        )
    )
    assert fields == ["one_time_pre_keys"]
    await key_service.PublishKeys(
        pb.PublishKeysRequest(identity_key=identity.public, signed_pre_key=spk),
        metadata=device.md,
    )
    batch = pre_keys(3)
    batch[2].key_id = batch[0].key_id
    batch[1].public_key = b"\x01" * 31
    fields = await invalid(
        key_service.UploadPreKeys(pb.UploadPreKeysRequest(pre_keys=batch), metadata=device.md)
    )
    assert set(fields) == {"pre_keys[1].public_key", "pre_keys[2].key_id"}
    assert await invalid(
        key_service.UploadPreKeys(pb.UploadPreKeysRequest(), metadata=device.md)
    ) == ["pre_keys"]
    assert await invalid(
        key_service.UploadPreKeys(
            pb.UploadPreKeysRequest(pre_keys=pre_keys(101)), metadata=device.md
        )
    ) == ["pre_keys"]
    assert await invalid(
        key_service.GetPreKeyBundles(
            pb.GetPreKeyBundlesRequest(account_id="nope"), metadata=device.md
        )
    ) == ["account_id"]
    assert await count(key_service, device) == 0


async def test_uploads_are_idempotent_by_key_id_and_capped(keys, key_service) -> None:
    device = await sign_up(keys)
    await publish(key_service, device)
    batch = pre_keys(100)
    for _ in range(2):
        reply = await key_service.UploadPreKeys(
            pb.UploadPreKeysRequest(pre_keys=batch), metadata=device.md
        )
        assert reply.pre_key_count == 100
    changed = pb.OneTimePreKey(key_id=batch[5].key_id, public_key=x25519())
    fields = await invalid(
        key_service.UploadPreKeys(
            pb.UploadPreKeysRequest(pre_keys=[*pre_keys(2), changed]), metadata=device.md
        )
    )
    assert fields == ["pre_keys"]
    assert await count(key_service, device) == 100
    # Up to the cap of 1000 (the default), then refused with a clear message.
    for _ in range(9):
        await key_service.UploadPreKeys(
            pb.UploadPreKeysRequest(pre_keys=pre_keys(100)), metadata=device.md
        )
    assert await count(key_service, device) == 1000
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await key_service.UploadPreKeys(
            pb.UploadPreKeysRequest(pre_keys=pre_keys(1)), metadata=device.md
        )
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 1000" in (failure.value.details() or "")
    assert error_reason(failure.value) == "ERROR_REASON_TOO_MANY_PRE_KEYS"
    # A retry of keys already held is still fine at the cap.
    await key_service.UploadPreKeys(
        pb.UploadPreKeysRequest(pre_keys=batch[:10]), metadata=device.md
    )


async def test_concurrent_fetches_hand_out_each_prekey_once(keys, key_service) -> None:
    owner = await sign_up(keys)
    request, _ = await publish(key_service, owner, count=100)
    requesters = await sign_up_many(keys, 200, prefix="fetcher")

    async def fetch(requester: Device) -> pb.PreKeyBundle:
        reply = await key_service.GetPreKeyBundles(
            pb.GetPreKeyBundlesRequest(account_id=owner.account_id), metadata=requester.md
        )
        [bundle] = reply.bundles
        return bundle

    bundles = await asyncio.wait_for(asyncio.gather(*(fetch(r) for r in requesters)), 60)
    handed = [b.one_time_pre_key for b in bundles if b.HasField("one_time_pre_key")]
    assert len(handed) == 100
    assert len({k.key_id for k in handed}) == 100
    assert {k.SerializeToString() for k in handed} == {
        k.SerializeToString() for k in request.one_time_pre_keys
    }
    assert all(not b.one_time_pre_key_exhausted for b in bundles if b.HasField("one_time_pre_key"))
    fallen_back = [b for b in bundles if not b.HasField("one_time_pre_key")]
    assert len(fallen_back) == 100
    assert all(b.one_time_pre_key_exhausted for b in fallen_back)
    assert all(b.signed_pre_key == request.signed_pre_key for b in bundles)
    assert await count(key_service, owner) == 0


async def test_count_decreases_and_each_device_gets_a_bundle(keys, key_service) -> None:
    phone = await sign_up(keys)
    laptop = await link_device(keys, phone)
    unpublished = await link_device(keys, phone, name="tablet")
    requester = await sign_up(keys)
    await publish(key_service, phone, count=2)
    await publish(key_service, laptop, count=1)
    del unpublished  # has no keys: no bundle
    seen: dict[str, list[bool]] = {phone.device_id: [], laptop.device_id: []}
    for expected_phone, expected_laptop in ((1, 0), (0, 0)):
        reply = await key_service.GetPreKeyBundles(
            pb.GetPreKeyBundlesRequest(account_id=phone.account_id), metadata=requester.md
        )
        assert sorted(b.device_id for b in reply.bundles) == sorted(seen)
        for b in reply.bundles:
            seen[b.device_id].append(b.one_time_pre_key_exhausted)
        assert await count(key_service, phone) == expected_phone
        assert await count(key_service, laptop) == expected_laptop
    assert seen == {phone.device_id: [False, False], laptop.device_id: [False, True]}


async def test_unknown_account_is_not_found(keys, key_service) -> None:
    requester = await sign_up(keys)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await key_service.GetPreKeyBundles(
            pb.GetPreKeyBundlesRequest(account_id="0190d3a4-6f1e-7c2a-9b1e-2f6a8c1d4e5f"),
            metadata=requester.md,
        )
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(failure.value) == "ERROR_REASON_ACCOUNT_NOT_FOUND"


async def test_fetching_past_the_burst_is_rate_limited(keys, key_service) -> None:
    owner, requester = await sign_up(keys), await sign_up(keys)
    await publish(key_service, owner, count=30)
    refused = None
    # Burst 20 by default; a refill of one per 3 s cannot keep up with this.
    for _ in range(25):
        try:
            await key_service.GetPreKeyBundles(
                pb.GetPreKeyBundlesRequest(account_id=owner.account_id), metadata=requester.md
            )
        except grpc.aio.AioRpcError as exc:
            refused = exc
            break
    assert refused is not None, "25 fetches in a row were all allowed"
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(refused) == "ERROR_REASON_RATE_LIMITED"
    status = rpc_status.from_call(refused)
    assert status is not None
    delays = []
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delays.append(info.retry_delay.ToMilliseconds())
    assert len(delays) == 1 and 0 < delays[0] <= 3000
    # The refused fetches did not consume prekeys; another requester is unaffected.
    assert await count(key_service, owner) == 10
    other = await sign_up(keys)
    reply = await key_service.GetPreKeyBundles(
        pb.GetPreKeyBundlesRequest(account_id=owner.account_id), metadata=other.md
    )
    assert reply.bundles[0].HasField("one_time_pre_key")


async def test_revoking_a_device_forgets_its_keys(stack, keys, key_service) -> None:
    phone = await sign_up(keys)
    laptop = await link_device(keys, phone)
    requester = await sign_up(keys)
    await publish(key_service, phone, count=5)
    await publish(key_service, laptop, count=5)
    await keys.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=laptop.device_id), metadata=phone.md
    )
    reply = await key_service.GetPreKeyBundles(
        pb.GetPreKeyBundlesRequest(account_id=phone.account_id), metadata=requester.md
    )
    assert [b.device_id for b in reply.bundles] == [phone.device_id]
    assert await count(key_service, phone) == 4
    # The revoked device cannot put keys back, however soon it tries.
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await publish(key_service, laptop, count=3)
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Its keys are gone from the database, not just hidden.
    client: AsyncMongoClient = AsyncMongoClient(stack.mongo_uri, retryWrites=False)
    try:
        db = client[stack.settings.mongo.database]
        assert await db["device_keys"].count_documents({"_id": laptop.device_id}) == 0
        assert await db["one_time_pre_keys"].count_documents({"device_id": laptop.device_id}) == 0
        assert await db["device_keys"].count_documents({"_id": phone.device_id}) == 1
        assert await db["one_time_pre_keys"].count_documents({"device_id": phone.device_id}) == 4
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("method", "request_message"),
    [
        ("PublishKeys", pb.PublishKeysRequest()),
        ("UploadPreKeys", pb.UploadPreKeysRequest()),
        ("GetPreKeyBundles", pb.GetPreKeyBundlesRequest()),
        ("GetPreKeyCount", pb.GetPreKeyCountRequest()),
    ],
)
async def test_every_rpc_needs_a_token(key_service, method, request_message) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await getattr(key_service, method)(request_message)
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_rate_limit_holds_without_redis(fresh_stack) -> None:
    """With Redis stopped, fetches neither fail nor go unlimited: each process
    falls back to its own buckets."""
    async with grpc.aio.insecure_channel(fresh_stack.keys_target) as channel:
        keys = kgrpc.AccountServiceStub(channel)
        key_service = pbgrpc.KeyServiceStub(channel)
        owner, requester, other = await sign_up_many(keys, 3)
        await publish(key_service, owner, count=5)
        await fresh_stack.stop_redis()
        outcomes = []
        for _ in range(25):
            try:
                reply = await key_service.GetPreKeyBundles(
                    pb.GetPreKeyBundlesRequest(account_id=owner.account_id),
                    metadata=requester.md,
                )
                outcomes.append(reply.bundles[0].one_time_pre_key_exhausted)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                assert error_reason(exc) == "ERROR_REASON_RATE_LIMITED"
                break
        assert outcomes == [False] * 5 + [True] * 15
        reply = await key_service.GetPreKeyBundles(
            pb.GetPreKeyBundlesRequest(account_id=owner.account_id), metadata=other.md
        )
        assert reply.bundles[0].one_time_pre_key_exhausted
