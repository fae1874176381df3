"""Two regions joined by fault proxies: homes, handles and the owner region of
a conversation (issue 20, parts 1, 2 and 8; docs/design/regions.md).

One two-region harness for the module: every service of each region serves
and reports its own region (from the topology file the harness wrote),
accounts are homed where they ask to be and live only there, handles are
unique across regions, accounts are found from any region, writes to a
conversation reach its owner region from the other one, a cut link gives a
fast, explicit REGION_UNAVAILABLE without a second writer, history and live
events replicate to where members live, and the SDK chats encrypted across
regions.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from parley.common.v1 import common_pb2
from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_core.ids import region_number_of
from parley_dev.probes import grpc_health_serving
from parley_dev.regions import RegionsStack
from parley_dev.stack import LocalStack
from tests.helpers import http_get, wait_until
from tests.sdk_e2ee_inbox import connect, listening, unique
from tests.users import (
    Device,
    Stream,
    all_messages,
    error_reason,
    open_stream,
    rid,
    send,
    synced,
    unique_handle,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

EU, US = "eu", "us"
NUMBERS = {EU: 1, US: 2}
CALL_SECONDS = 10.0
# A refusal of a region that is down must not wait for the call's deadline.
FAST_REFUSAL_SECONDS = 3.0
HEAL_SECONDS = 20.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def regions(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RegionsStack]:
    harness = RegionsStack(root=tmp_path_factory.mktemp("regions"), regions=[EU, US])
    async with harness:
        yield harness


def _services(stack: LocalStack) -> dict[str, tuple[str, str]]:
    """Service -> (gRPC target, metrics URL)."""
    return {
        "svc_keys": (stack.keys_target, stack.keys_metrics_url),
        "svc_message": (stack.message_targets[0], stack.message_metrics_urls[0]),
        "svc_presence": (stack.presence_target, stack.presence_metrics_url),
        "svc_media": (stack.media_target, stack.media_metrics_url),
        "svc_search": (stack.search_target, stack.search_metrics_url),
    }


async def _topology_series(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, body = await http_get(url)
    assert status == 200
    return {
        sample.name: [(dict(s.labels), s.value) for s in family.samples if s.name == sample.name]
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name.startswith("parley_topology_")
    }


async def test_every_service_of_each_region_serves_and_names_its_region(
    regions: RegionsStack,
) -> None:
    for name in ("eu", "us"):
        for service, (target, metrics_url) in _services(regions.region(name)).items():
            await grpc_health_serving(target, timeout=5.0)
            series = await _topology_series(metrics_url)
            assert series["parley_topology_region"] == [({"region": name}, 1.0)], service
            assert series["parley_topology_regions"] == [({}, 2.0)], service
            assert series["parley_topology_generation"] == [({}, 1.0)], service


async def _sign_up(
    regions: RegionsStack, reached: str, *, home: str = "", handle: str | None = None
) -> tuple[Device, kpb.Account]:
    handle = handle or unique_handle()
    async with grpc.aio.insecure_channel(regions.region(reached).keys_target) as channel:
        reply = await kgrpc.AccountServiceStub(channel).SignUp(
            kpb.SignUpRequest(
                request_id=rid(),
                handle=handle,
                display_name=handle,
                device=kpb.NewDevice(name="phone", platform=common_pb2.PLATFORM_ANDROID),
                home_region=home,
            ),
            timeout=CALL_SECONDS,
        )
    device = Device(
        account_id=reply.account.account_id,
        device_id=reply.device.device_id,
        access_token=reply.credentials.access_token,
        refresh_token=reply.credentials.refresh_token,
        handle=handle,
    )
    return device, reply.account


async def _stored_account(regions: RegionsStack, region: str, account_id: str) -> Any:
    client: AsyncMongoClient[Any] = AsyncMongoClient(regions.region(region).mongo_uri)
    try:
        return await client["parley"]["accounts"].find_one({"_id": account_id})
    finally:
        await client.close()


async def test_an_account_lives_in_the_region_it_asked_for(regions: RegionsStack) -> None:
    here, account = await _sign_up(regions, EU)
    assert account.home_region == EU
    assert region_number_of(account.account_id) == NUMBERS[EU]

    away, account = await _sign_up(regions, EU, home=US)
    assert account.home_region == US
    assert region_number_of(away.account_id) == NUMBERS[US]
    assert await _stored_account(regions, US, away.account_id) is not None
    assert await _stored_account(regions, EU, away.account_id) is None
    assert await _stored_account(regions, US, here.account_id) is None

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _sign_up(regions, EU, home="mars")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(refused.value) == "ERROR_REASON_REGION_UNKNOWN"


async def test_a_handle_is_unique_across_regions(regions: RegionsStack) -> None:
    handle = unique_handle("solo")
    await _sign_up(regions, EU, handle=handle)
    for region in (EU, US):
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await _sign_up(regions, region, handle=handle.upper())
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_reason(taken.value) == "ERROR_REASON_HANDLE_TAKEN"


async def test_accounts_are_found_from_any_region(regions: RegionsStack) -> None:
    eu_user, _ = await _sign_up(regions, EU)
    us_user, _ = await _sign_up(regions, US)
    async with grpc.aio.insecure_channel(regions.region(US).keys_target) as channel:
        keys = kgrpc.AccountServiceStub(channel)
        # An eu device's token works in us; eu accounts are answered from eu.
        by_id = await keys.GetAccount(
            kpb.GetAccountRequest(account_id=eu_user.account_id),
            metadata=us_user.md,
            timeout=CALL_SECONDS,
        )
        by_handle = await keys.GetAccount(
            kpb.GetAccountRequest(handle=eu_user.handle),
            metadata=eu_user.md,
            timeout=CALL_SECONDS,
        )
    assert by_id.handle == eu_user.handle and by_id.home_region == EU
    assert by_handle.account_id == eu_user.account_id


async def _group(regions: RegionsStack, region: str, owner: Device, members: list[Device]) -> str:
    async with grpc.aio.insecure_channel(regions.region(region).message_targets[0]) as channel:
        view = await mgrpc.MessageServiceStub(channel).CreateGroup(
            mpb.CreateGroupRequest(
                request_id=rid(),
                title="across",
                member_account_ids=[m.account_id for m in members],
            ),
            metadata=owner.md,
            timeout=CALL_SECONDS,
        )
    conversation_id: str = view.conversation.conversation_id
    return conversation_id


async def test_writes_reach_the_owner_region_from_the_other(regions: RegionsStack) -> None:
    alice, _ = await _sign_up(regions, EU)
    bob, _ = await _sign_up(regions, US)
    # Created through us, owned by eu: the creator's home.
    group = await _group(regions, US, alice, [bob])
    assert region_number_of(group) == NUMBERS[EU]
    async with (
        grpc.aio.insecure_channel(regions.region(EU).message_targets[0]) as eu_channel,
        grpc.aio.insecure_channel(regions.region(US).message_targets[0]) as us_channel,
    ):
        eu, us = mgrpc.MessageServiceStub(eu_channel), mgrpc.MessageServiceStub(us_channel)
        sent = await send(us, bob, group, b"from us")
        again = await us.SendMessage(
            mpb.SendMessageRequest(
                request_id=rid(), conversation_id=group, type=mpb.MESSAGE_TYPE_TEXT, body=b"2"
            ),
            metadata=bob.md,
            timeout=CALL_SECONDS,
        )
        assert again.message.seq == sent.seq + 1
        history = await all_messages(eu, alice, group)
        assert [m.body for m in history if m.type == mpb.MESSAGE_TYPE_TEXT] == [b"from us", b"2"]
        # A direct chat is owned by the home of the lesser account id, from either side.
        views = [
            await stub.CreateDirectConversation(
                mpb.CreateDirectConversationRequest(request_id=rid(), peer_account_id=peer),
                metadata=device.md,
                timeout=CALL_SECONDS,
            )
            for stub, device, peer in ((eu, alice, bob.account_id), (us, bob, alice.account_id))
        ]
        direct = {v.conversation.conversation_id for v in views}
        assert len(direct) == 1
        lesser_home = EU if min(alice.account_id, bob.account_id) == alice.account_id else US
        assert region_number_of(direct.pop()) == NUMBERS[lesser_home]


async def test_a_cut_owner_region_is_refused_fast_and_nothing_writes_for_it(
    regions: RegionsStack,
) -> None:
    alice, _ = await _sign_up(regions, EU)
    bob, _ = await _sign_up(regions, US)
    group = await _group(regions, EU, alice, [bob])
    link = regions.proxy(US, EU)
    async with (
        grpc.aio.insecure_channel(regions.region(EU).message_targets[0]) as eu_channel,
        grpc.aio.insecure_channel(regions.region(US).message_targets[0]) as us_channel,
    ):
        eu, us = mgrpc.MessageServiceStub(eu_channel), mgrpc.MessageServiceStub(us_channel)
        await send(us, bob, group, b"before")
        link.cut(refuse=True)
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await us.SendMessage(
                        mpb.SendMessageRequest(
                            request_id=rid(),
                            conversation_id=group,
                            type=mpb.MESSAGE_TYPE_TEXT,
                            body=b"during",
                        ),
                        metadata=bob.md,
                        timeout=CALL_SECONDS,
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert error_reason(refused.value) == "ERROR_REASON_REGION_UNAVAILABLE"
                assert time.monotonic() - started < FAST_REFUSAL_SECONDS
            # The owner region keeps full service for its own users meanwhile.
            await send(eu, alice, group, b"owner side")
        finally:
            link.heal()

        async def delivered() -> bool:
            try:
                await send(us, bob, group, b"after")
            except grpc.aio.AioRpcError:
                return False
            return True

        await wait_until(delivered, timeout=HEAL_SECONDS)
        bodies = [m.body for m in await all_messages(eu, alice, group)]
        # Seqs stayed gapless and nothing refused was written anywhere.
        assert b"during" not in bodies
        assert bodies[-3:] == [b"before", b"owner side", b"after"]
        seqs = [m.seq for m in await all_messages(eu, alice, group)]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def _stored_ids(regions: RegionsStack, region: str, conversation_id: str) -> list[str]:
    client: AsyncMongoClient[Any] = AsyncMongoClient(regions.region(region).mongo_uri)
    try:
        cursor = client["parley"]["messages"].find({"conversation_id": conversation_id})
        return [doc["_id"] async for doc in cursor]
    finally:
        await client.close()


async def test_history_replicates_to_where_members_live_and_nowhere_else(
    regions: RegionsStack,
) -> None:
    alice, _ = await _sign_up(regions, EU)
    carol, _ = await _sign_up(regions, EU)
    bob, _ = await _sign_up(regions, US)
    shared = await _group(regions, EU, alice, [bob])
    local = await _group(regions, EU, alice, [carol])
    async with (
        grpc.aio.insecure_channel(regions.region(EU).message_targets[0]) as eu_channel,
        grpc.aio.insecure_channel(regions.region(US).message_targets[0]) as us_channel,
    ):
        eu, us = mgrpc.MessageServiceStub(eu_channel), mgrpc.MessageServiceStub(us_channel)
        for i in range(3):
            await send(eu, alice, shared, f"shared {i}".encode())
            await send(eu, alice, local, f"local {i}".encode())
        expected = [f"shared {i}".encode() for i in range(3)]

        async def replicated() -> bool:
            try:
                history = await all_messages(us, bob, shared)
            except grpc.aio.AioRpcError:
                return False
            return [m.body for m in history if m.type == mpb.MESSAGE_TYPE_TEXT] == expected

        # bob reads the eu-owned group's history from his own region's replica.
        await wait_until(replicated, timeout=HEAL_SECONDS, what="history replicated to us")
    # A conversation with no member homed in us never reaches it.
    assert await _stored_ids(regions, EU, local)
    assert await _stored_ids(regions, US, local) == []


async def test_a_device_connected_to_its_region_receives_the_owners_events(
    regions: RegionsStack,
) -> None:
    alice, _ = await _sign_up(regions, EU)
    bob, _ = await _sign_up(regions, US)
    group = await _group(regions, EU, alice, [bob])
    async with (
        grpc.aio.insecure_channel(regions.region(EU).message_targets[0]) as eu_channel,
        grpc.aio.insecure_channel(regions.region(US).message_targets[0]) as us_channel,
    ):
        eu, us = mgrpc.MessageServiceStub(eu_channel), mgrpc.MessageServiceStub(us_channel)
        stream = await open_stream(us, bob)
        try:
            await stream.wait_for(synced, timeout=HEAL_SECONDS)
            for i in range(3):
                await send(eu, alice, group, f"live {i}".encode())

            def arrived(s: Stream) -> bool:
                bodies = [m.body for m in s.messages(group) if m.type == mpb.MESSAGE_TYPE_TEXT]
                return bodies == [f"live {i}".encode() for i in range(3)]

            await stream.wait_for(arrived, timeout=HEAL_SECONDS)
        finally:
            await stream.close()


async def test_encrypted_chat_between_users_of_two_regions(
    regions: RegionsStack, tmp_path: Path
) -> None:
    """The SDK end to end: each user connected to its own region, keys fetched
    from the other's home region, direct chat and group in both directions."""
    eu_stack, us_stack = regions.region(EU), regions.region(US)
    alice = await connect(eu_stack, tmp_path / "alice.db", handle=unique("alice"), device_name="a")
    bob = await connect(
        us_stack, tmp_path / "bob.db", handle=unique("bob"), device_name="b", home_region=US
    )
    try:
        async with listening(alice) as alice_inbox, listening(bob) as bob_inbox:
            found = await alice.get_account(account_id=bob.account_id)
            assert found.home_region == US
            chat = (await alice.create_direct_conversation(bob.account_id)).conversation
            await alice.send_text(chat.conversation_id, "hello from eu")
            await bob_inbox.wait_texts(chat.conversation_id, ["hello from eu"])
            await bob.send_text(chat.conversation_id, "hello from us")
            await alice_inbox.wait_texts(chat.conversation_id, ["hello from us"])
            group = (await bob.create_group("two regions", members=[alice.account_id])).conversation
            await bob.send_text(group.conversation_id, "group from us")
            await alice_inbox.wait_texts(group.conversation_id, ["group from us"])
            await alice.send_text(group.conversation_id, "group from eu")
            await bob_inbox.wait_texts(group.conversation_id, ["group from eu"])
    finally:
        await alice.close()
        await bob.close()


async def test_accounts_of_an_unreachable_region_get_a_fast_explicit_error(
    regions: RegionsStack,
) -> None:
    alice, _ = await _sign_up(regions, EU)
    bob, _ = await _sign_up(regions, US)
    link = regions.proxy(EU, US)
    async with grpc.aio.insecure_channel(regions.region(EU).keys_target) as channel:
        keys = kgrpc.AccountServiceStub(channel)
        link.cut(refuse=True)
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await keys.GetAccount(
                        kpb.GetAccountRequest(account_id=bob.account_id),
                        metadata=alice.md,
                        timeout=CALL_SECONDS,
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert error_reason(refused.value) == "ERROR_REASON_REGION_UNAVAILABLE"
                assert time.monotonic() - started < FAST_REFUSAL_SECONDS
            # eu's own accounts are served meanwhile.
            mine = await keys.GetAccount(
                kpb.GetAccountRequest(account_id=alice.account_id),
                metadata=alice.md,
                timeout=CALL_SECONDS,
            )
            assert mine.account_id == alice.account_id
        finally:
            link.heal()

        async def back() -> bool:
            try:
                await keys.GetAccount(
                    kpb.GetAccountRequest(account_id=bob.account_id),
                    metadata=alice.md,
                    timeout=CALL_SECONDS,
                )
            except grpc.aio.AioRpcError:
                return False
            return True

        await wait_until(back, timeout=HEAL_SECONDS, what="bob's account after the heal")
