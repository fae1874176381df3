"""svc_keys' key directory, second part, against the real stack: listing
device identity keys, bundles for named devices only, identity changes
recorded once, and the prekey low-water record and live notice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import keys_pb2 as pb
from parley.message.v1 import messages_pb2 as mpb
from parley_dev.stack import LocalStack
from tests.integration.test_key_directory import Identity, count, invalid, pre_keys, publish
from tests.users import Device, link_device, rid, sign_up

MISSING = "0190d3a4-6f1e-7c2a-9b1e-2f6a8c1d4e5f"


@contextlib.asynccontextmanager
async def database(stack: LocalStack) -> AsyncIterator[Any]:
    client: AsyncMongoClient[Any] = AsyncMongoClient(stack.mongo_uri, retryWrites=False)
    try:
        yield client[stack.settings.mongo.database]
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def account_channel(stack: LocalStack, account_id: str) -> AsyncIterator[Any]:
    """A Redis subscriber of the account's doorbell channel."""
    client = aioredis.Redis.from_url(stack.redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"parley:u:{account_id}")
    try:
        yield pubsub
    finally:
        await pubsub.aclose()
        await client.aclose()


async def key_notices(pubsub: Any, *, wait: float) -> list[mpb.KeyNotice]:
    """The key notices published on the channel within ``wait`` seconds."""
    notices = []
    deadline = asyncio.get_running_loop().time() + wait
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is None:
            continue
        event = mpb.Event.FromString(message["data"])
        if event.WhichOneof("kind") == "key_notice":
            notices.append(event.key_notice)
    return notices


async def device_keys(key_service: Any, caller: Device, account_ids: list[str]) -> list[tuple]:
    reply = await key_service.GetDeviceKeys(
        pb.GetDeviceKeysRequest(account_ids=account_ids), metadata=caller.md
    )
    return [(d.account_id, d.device_id, d.identity_key) for d in reply.devices]


async def test_device_keys_lists_active_keyed_devices_by_account(keys, key_service) -> None:
    alice = await sign_up(keys)
    laptop = await link_device(keys, alice)
    await link_device(keys, alice, name="tablet")  # never publishes: not listed
    bob, caller = await sign_up(keys), await sign_up(keys)
    alice_keys, _ = await publish(key_service, alice)
    laptop_keys, _ = await publish(key_service, laptop, count=2)
    bob_keys, _ = await publish(key_service, bob)
    alice_devices = sorted(
        [
            (alice.account_id, alice.device_id, alice_keys.identity_key),
            (alice.account_id, laptop.device_id, laptop_keys.identity_key),
        ]
    )
    listed = await device_keys(
        key_service, caller, [bob.account_id, MISSING, alice.account_id, caller.account_id]
    )
    assert listed == [(bob.account_id, bob.device_id, bob_keys.identity_key), *alice_devices]
    assert await device_keys(key_service, caller, [MISSING]) == []
    # Nothing was consumed.
    assert await count(key_service, laptop) == 2

    await keys.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=laptop.device_id), metadata=alice.md
    )
    listed = await device_keys(key_service, caller, [alice.account_id])
    assert listed == [(alice.account_id, alice.device_id, alice_keys.identity_key)]

    fields = await invalid(
        key_service.GetDeviceKeys(
            pb.GetDeviceKeysRequest(account_ids=[bob.account_id, bob.account_id]),
            metadata=caller.md,
        )
    )
    assert fields == ["account_ids[1]"]
    assert await invalid(
        key_service.GetDeviceKeys(pb.GetDeviceKeysRequest(), metadata=caller.md)
    ) == ["account_ids"]


async def test_bundles_for_named_devices_consume_only_their_prekeys(keys, key_service) -> None:
    phone = await sign_up(keys)
    laptop = await link_device(keys, phone)
    tablet = await link_device(keys, phone, name="tablet")  # no keys
    stranger, requester = await sign_up(keys), await sign_up(keys)
    await publish(key_service, phone, count=3)
    await publish(key_service, laptop, count=3)
    await publish(key_service, stranger, count=3)

    async def bundles(device_ids: list[str]) -> list[pb.PreKeyBundle]:
        reply = await key_service.GetPreKeyBundles(
            pb.GetPreKeyBundlesRequest(account_id=phone.account_id, device_ids=device_ids),
            metadata=requester.md,
        )
        return list(reply.bundles)

    [bundle] = await bundles([laptop.device_id])
    assert bundle.device_id == laptop.device_id and bundle.HasField("one_time_pre_key")
    assert (await count(key_service, phone), await count(key_service, laptop)) == (3, 2)
    # Devices without keys, of another account or unknown are left out.
    assert await bundles([tablet.device_id, stranger.device_id, MISSING]) == []
    assert await count(key_service, stranger) == 3
    both = await bundles([phone.device_id, laptop.device_id])
    assert sorted(b.device_id for b in both) == sorted([phone.device_id, laptop.device_id])
    assert (await count(key_service, phone), await count(key_service, laptop)) == (2, 1)
    fields = await invalid(
        key_service.GetPreKeyBundles(
            pb.GetPreKeyBundlesRequest(
                account_id=phone.account_id, device_ids=[phone.device_id, phone.device_id, "x"]
            ),
            metadata=requester.md,
        )
    )
    assert fields == ["device_ids[1]", "device_ids[2]"]


async def test_identity_changed_only_for_another_key_and_recorded_once(
    stack, keys, key_service
) -> None:
    device = await sign_up(keys)
    async with database(stack) as db:
        # svc_message's worker may take and delete a change at any moment, so
        # count the inserts as they happen.
        changes = db["identity_changes"]
        watch = await changes.watch([{"$match": {"operationType": "insert"}}])
        try:
            first, reply = await publish(key_service, device)
            assert reply.identity_changed is False
            again = await key_service.PublishKeys(first, metadata=device.md)
            assert again.identity_changed is False
            second, reply = await publish(key_service, device)
            assert reply.identity_changed is True
            # A retry of the change: the key is already the new one.
            retry = await key_service.PublishKeys(second, metadata=device.md)
            assert retry.identity_changed is False
            inserted = []
            deadline = asyncio.get_running_loop().time() + 3
            while asyncio.get_running_loop().time() < deadline:
                change = await watch.try_next()
                if change is None:
                    await asyncio.sleep(0.05)
                    continue
                doc = change["fullDocument"]
                if doc["device_id"] == device.device_id:
                    inserted.append(doc)
        finally:
            await watch.close()
    assert len(inserted) == 1
    assert inserted[0]["account_id"] == device.account_id


async def test_low_water_record_and_live_notice(stack, keys, key_service) -> None:
    owner, requester = await sign_up(keys), await sign_up(keys)
    laptop = await link_device(keys, owner)
    async with database(stack) as db:
        lows = db["pre_key_lows"]
        await publish(key_service, owner, count=21)
        await publish(key_service, laptop, count=3)
        # Publishing few keys is already low.
        low = await lows.find_one({"_id": laptop.device_id})
        assert low is not None and low["count"] == 3
        assert await lows.find_one({"_id": owner.device_id}) is None

        async with account_channel(stack, owner.account_id) as channel:
            only_owner = pb.GetPreKeyBundlesRequest(
                account_id=owner.account_id, device_ids=[owner.device_id]
            )
            await key_service.GetPreKeyBundles(only_owner, metadata=requester.md)  # 21 -> 20
            assert await key_notices(channel, wait=0.5) == []
            assert await lows.find_one({"_id": owner.device_id}) is None
            await key_service.GetPreKeyBundles(only_owner, metadata=requester.md)  # 20 -> 19
            notices = await key_notices(channel, wait=2)
            assert notices == [
                mpb.KeyNotice(
                    kind=mpb.KeyNotice.KIND_PRE_KEYS_LOW,
                    pre_key_count=19,
                    device_id=owner.device_id,
                )
            ]
            low = await lows.find_one({"_id": owner.device_id})
            assert low is not None
            assert (low["count"], low["account_id"]) == (19, owner.account_id)

            # Every fetch that leaves it below tells it again.
            await key_service.GetPreKeyBundles(only_owner, metadata=requester.md)  # 19 -> 18
            assert [n.pre_key_count for n in await key_notices(channel, wait=2)] == [18]

        # An upload that stays below updates the record; one that reaches the mark clears it.
        await key_service.UploadPreKeys(
            pb.UploadPreKeysRequest(pre_keys=pre_keys(1)), metadata=owner.md
        )
        assert (await lows.find_one({"_id": owner.device_id}) or {}).get("count") == 19
        await key_service.UploadPreKeys(
            pb.UploadPreKeysRequest(pre_keys=pre_keys(5)), metadata=owner.md
        )
        assert await lows.find_one({"_id": owner.device_id}) is None

        await keys.RevokeDevice(
            kpb.RevokeDeviceRequest(request_id=rid(), device_id=laptop.device_id),
            metadata=owner.md,
        )
        assert await lows.find_one({"_id": laptop.device_id}) is None


@pytest.mark.parametrize("method", ["GetDeviceKeys", "SendSenderKeys", "ClaimSenderKeys"])
async def test_new_rpcs_need_a_token(key_service, method) -> None:
    request_type = getattr(pb, f"{method}Request")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await getattr(key_service, method)(request_type())
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_new_identity_drops_the_old_installs_prekeys_and_envelopes(keys, key_service) -> None:
    device, sender = await sign_up(keys), await sign_up(keys)
    old = Identity()
    old_keys = [pb.OneTimePreKey(key_id=i, public_key=bytes([i]) * 32) for i in range(1, 31)]
    await key_service.PublishKeys(
        pb.PublishKeysRequest(
            identity_key=old.public,
            signed_pre_key=old.signed_pre_key(),
            one_time_pre_keys=old_keys,
        ),
        metadata=device.md,
    )
    await publish(key_service, sender)
    await key_service.SendSenderKeys(
        pb.SendSenderKeysRequest(
            request_id=rid(),
            conversation_id=rid(),
            envelopes=[
                pb.SenderKeyEnvelope(
                    recipient_account_id=device.account_id,
                    recipient_device_id=device.device_id,
                    ciphertext=b"sealed for the old install",
                )
            ],
        ),
        metadata=sender.md,
    )
    # The re-installed app numbers its prekeys from 1 again, with new keys.
    new = Identity()
    new_keys = [pb.OneTimePreKey(key_id=i, public_key=bytes([i + 100]) * 32) for i in range(1, 6)]
    reply = await key_service.PublishKeys(
        pb.PublishKeysRequest(
            identity_key=new.public,
            signed_pre_key=new.signed_pre_key(),
            one_time_pre_keys=new_keys,
        ),
        metadata=device.md,
    )
    assert reply.identity_changed is True
    assert reply.pre_key_count == 5
    bundles = await key_service.GetPreKeyBundles(
        pb.GetPreKeyBundlesRequest(account_id=device.account_id), metadata=sender.md
    )
    [bundle] = bundles.bundles
    assert bundle.identity_key == new.public
    assert bundle.one_time_pre_key.public_key in {k.public_key for k in new_keys}
    claimed = await key_service.ClaimSenderKeys(pb.ClaimSenderKeysRequest(), metadata=device.md)
    assert list(claimed.envelopes) == []
