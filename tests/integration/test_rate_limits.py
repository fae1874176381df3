"""Abuse limits end to end: real services, real Redis, tight limits.

The stack trusts 127.0.0.1 as its load balancer, so each test client names
its own address in ``x-forwarded-for``: sign-ups are held per address (and a
retried sign-up is answered, not refused); SendMessage is held per device and
per group, a refused send spends nothing elsewhere and the retry of an
acknowledged send is answered; contact adds are held per account; every
refusal is RESOURCE_EXHAUSTED / RATE_LIMITED with RetryInfo and the limit's
name, and counted per limit in /metrics. Last, with Redis stopped, the limits
still hold (per process) and nothing fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.presence.v1 import presence_pb2 as ppb
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley_dev.stack import LocalStack
from tests.helpers import http_get
from tests.users import Device, direct, rid, send, unique_handle

FALLBACK_SECONDS = 0.5
LIMITS = {
    "trusted_proxies": ["127.0.0.1/32"],
    "fallback_seconds": FALLBACK_SECONDS,
    "signup_per_address": {"burst": 3, "per_minute": 1},
    "send_per_device": {"burst": 5, "per_minute": 6},
    "send_per_account": {"burst": 8, "per_minute": 6},
    "send_per_conversation": {"burst": 6, "per_minute": 6},
    "contact_add_per_account": {"burst": 2, "per_minute": 1},
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def limited(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    async with LocalStack.with_free_ports(
        root=Path(tmp_path_factory.mktemp("limited")),
        shutdown_grace_seconds=2.0,
        extra_config={"limits": LIMITS},
    ) as local:
        yield local


class Clients:
    def __init__(self, stack: LocalStack) -> None:
        self.channels = [
            grpc.aio.insecure_channel(t)
            for t in (stack.keys_target, stack.message_targets[0], stack.presence_target)
        ]
        self.keys = kgrpc.AccountServiceStub(self.channels[0])
        self.messages = mgrpc.MessageServiceStub(self.channels[1])
        self.presence = pgrpc.PresenceServiceStub(self.channels[2])

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


@pytest_asyncio.fixture(loop_scope="session")
async def clients(limited: LocalStack) -> AsyncIterator[Clients]:
    opened = Clients(limited)
    yield opened
    await opened.close()


_next_address = iter(range(1, 250))


def fresh_address() -> str:
    """A client address no other test of this module signs up from."""
    return f"198.51.100.{next(_next_address)}"


def signup_request(handle: str | None = None) -> kpb.SignUpRequest:
    handle = handle or unique_handle("lim")
    return kpb.SignUpRequest(
        request_id=rid(),
        handle=handle,
        display_name=handle,
        device=kpb.NewDevice(name="phone", platform=1),
    )


async def sign_up_from(keys: kgrpc.AccountServiceStub, address: str) -> Device:
    request = signup_request()
    reply = await keys.SignUp(request, metadata=(("x-forwarded-for", address),))
    return Device(
        account_id=reply.account.account_id,
        device_id=reply.device.device_id,
        access_token=reply.credentials.access_token,
        refresh_token=reply.credentials.refresh_token,
        handle=request.handle,
    )


def refusal(error: grpc.aio.AioRpcError) -> tuple[str, str, float]:
    """(reason, limit, retry delay in seconds) of a refused call."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    reason, limit, delay = "", "", -1.0
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, limit = info.reason, info.metadata.get("limit", "")
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToNanoseconds() / 1e9
    return reason, limit, delay


async def refused_counts(url: str) -> dict[str, float]:
    _status, text = await http_get(url)
    return {
        sample.labels["limit"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "parley_rate_limited"
        for sample in family.samples
        if sample.name == "parley_rate_limited_total"
    }


async def local_buckets(url: str) -> float:
    """parley_rate_limit_local of the process at ``url``."""
    _status, text = await http_get(url)
    (value,) = [
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "parley_rate_limit_local"
        for sample in family.samples
    ]
    return value


async def test_sign_ups_are_held_per_client_address(limited: LocalStack, clients: Clients) -> None:
    address = fresh_address()
    for _ in range(3):
        await sign_up_from(clients.keys, address)
    retried = signup_request()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.keys.SignUp(retried, metadata=(("x-forwarded-for", address),))
    reason, limit, delay = refusal(refused.value)
    assert (reason, limit) == ("ERROR_REASON_RATE_LIMITED", "signup_per_address")
    assert 50 < delay <= 60, "one sign-up a minute refills the bucket"
    # Another address, and the proxy's own (no header), are unaffected. The
    # client's own left entry is not believed: the proxy appended the real one.
    await sign_up_from(clients.keys, fresh_address())
    spoofed = f"{fresh_address()}, {address}"
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await clients.keys.SignUp(signup_request(), metadata=(("x-forwarded-for", spoofed),))
    assert refusal(again.value)[1] == "signup_per_address"
    assert (await refused_counts(limited.keys_metrics_url))["signup_per_address"] == 2


async def test_a_retried_sign_up_is_answered_past_the_limit(clients: Clients) -> None:
    address = fresh_address()
    first = signup_request()
    md = (("x-forwarded-for", address),)
    created = await clients.keys.SignUp(first, metadata=md)
    for _ in range(2):
        await sign_up_from(clients.keys, address)
    # The answer was lost; the retry comes after the address's budget is spent.
    again = await clients.keys.SignUp(first, metadata=md)
    assert again.account.account_id == created.account.account_id


async def test_sends_are_held_per_device(limited: LocalStack, clients: Clients) -> None:
    alice, bob = [await sign_up_from(clients.keys, fresh_address()) for _ in range(2)]
    conversation = await direct(clients.messages, alice, bob)
    before = (await refused_counts(limited.message_metrics_urls[0])).get("send_per_device", 0)
    for i in range(5):
        await send(clients.messages, alice, conversation, b"%d" % i)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await send(clients.messages, alice, conversation, b"one too many")
    reason, limit, delay = refusal(refused.value)
    assert (reason, limit) == ("ERROR_REASON_RATE_LIMITED", "send_per_device")
    assert 0 < delay <= 10
    # The other side of the conversation has its own budget.
    await send(clients.messages, bob, conversation, b"hi")
    after = (await refused_counts(limited.message_metrics_urls[0]))["send_per_device"]
    assert after == before + 1


async def test_a_retried_send_is_never_refused(clients: Clients) -> None:
    """The ack of the first send was lost; its retry comes once the device's
    budget is spent, and gets the message the first attempt stored."""
    alice, bob = [await sign_up_from(clients.keys, fresh_address()) for _ in range(2)]
    conversation = await direct(clients.messages, alice, bob)
    request_id = rid()
    first = await send(clients.messages, alice, conversation, b"m0", request_id=request_id)
    for i in range(4):
        await send(clients.messages, alice, conversation, b"m%d" % (i + 1))
    again = await send(clients.messages, alice, conversation, b"m0", request_id=request_id)
    assert (again.message_id, again.seq) == (first.message_id, first.seq)


async def test_a_group_is_held_as_a_whole_and_a_refusal_spends_nothing_else(
    limited: LocalStack, clients: Clients
) -> None:
    owner, a, b = [await sign_up_from(clients.keys, fresh_address()) for _ in range(3)]
    view = await clients.messages.CreateGroup(
        mpb.CreateGroupRequest(
            request_id=rid(), title="busy", member_account_ids=[a.account_id, b.account_id]
        ),
        metadata=owner.md,
    )
    group = view.conversation.conversation_id
    for member in (owner, a, b):
        for i in range(2):
            await send(clients.messages, member, group, b"%d" % i)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await send(clients.messages, a, group, b"the group's seventh")
    assert refusal(refused.value)[:2] == ("ERROR_REASON_RATE_LIMITED", "send_per_conversation")
    # The refused send gave a's device and account their tokens back: three
    # more sends elsewhere still pass (5 per device, 2 spent).
    elsewhere = await direct(clients.messages, a, b)
    for i in range(3):
        await send(clients.messages, a, elsewhere, b"%d" % i)
    with pytest.raises(grpc.aio.AioRpcError) as own:
        await send(clients.messages, a, elsewhere, b"sixth")
    assert refusal(own.value)[1] == "send_per_device"
    assert (await refused_counts(limited.message_metrics_urls[0]))["send_per_conversation"] >= 1


async def test_contact_adds_are_held_per_account(limited: LocalStack, clients: Clients) -> None:
    owner, *others = [await sign_up_from(clients.keys, fresh_address()) for _ in range(2)]
    for other in others * 2:
        await clients.presence.AddContacts(
            ppb.AddContactsRequest(account_ids=[other.account_id]), metadata=owner.md
        )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.presence.AddContacts(
            ppb.AddContactsRequest(account_ids=[others[0].account_id]), metadata=owner.md
        )
    reason, limit, delay = refusal(refused.value)
    assert (reason, limit) == ("ERROR_REASON_RATE_LIMITED", "contact_add_per_account")
    assert 0 < delay <= 60
    counts = await refused_counts(limited.presence_metrics_url)
    assert counts == {"contact_add_per_account": 1, "presence_subscribe_per_account": 0}


async def test_without_redis_the_limits_hold_per_process_and_nothing_fails(
    limited: LocalStack, clients: Clients
) -> None:
    alice, bob = [await sign_up_from(clients.keys, fresh_address()) for _ in range(2)]
    conversation = await direct(clients.messages, alice, bob)
    await limited.stop_redis()
    try:
        # Each process's own buckets start full: the same budget, then refusals.
        for i in range(5):
            await send(clients.messages, alice, conversation, b"%d" % i)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await send(clients.messages, alice, conversation, b"sixth")
        assert refusal(refused.value)[1] == "send_per_device"
        assert await local_buckets(limited.message_metrics_urls[0]) == 1
        address = fresh_address()
        for _ in range(3):
            await sign_up_from(clients.keys, address)
        with pytest.raises(grpc.aio.AioRpcError) as signup:
            await sign_up_from(clients.keys, address)
        assert refusal(signup.value)[1] == "signup_per_address"
    finally:
        await limited.start_redis()
    # Redis is asked again after the fallback window, and the gauge clears.
    # The first asks after a restart open connections and reload the script;
    # on a loaded machine one may exceed the limiter's Redis deadline and
    # start another window, so a few windows are allowed.
    for window in range(4):
        await asyncio.sleep(FALLBACK_SECONDS + 0.1)
        await send(clients.messages, bob, conversation, b"back %d" % window)
        if await local_buckets(limited.message_metrics_urls[0]) == 0:
            break
    assert await local_buckets(limited.message_metrics_urls[0]) == 0
