"""Revocations take effect in every region (docs/design/regions.md,
"Revocations"): two real regions joined by fault proxies; a device of an
account homed in eu, connected to us, is refused there within seconds of
RevokeDevice or DeleteAccount in eu, and its open stream in us ends; with the
eu → us link cut the revocation waits in eu's outbox and reaches us after
the heal."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
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
from parley_dev.regions import RegionsStack
from tests.helpers import http_get, wait_until
from tests.users import Device, Stream, error_reason, open_stream, rid, synced, unique_handle

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EU, US = "eu", "us"
CALL_SECONDS = 10.0
# A revocation pushed at once reaches the other region in well under this.
REVOKED_SECONDS = 5.0
# After a heal: the push's longest backoff (10 s) plus its sweep and a margin.
HEAL_SECONDS = 25.0
TOKEN_REVOKED = "ERROR_REASON_TOKEN_REVOKED"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def regions(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RegionsStack]:
    harness = RegionsStack(root=tmp_path_factory.mktemp("revocations"), regions=[EU, US])
    async with harness:
        yield harness


def _device(reply: Any, handle: str) -> Device:
    return Device(
        account_id=reply.device.account_id,
        device_id=reply.device.device_id,
        access_token=reply.credentials.access_token,
        refresh_token=reply.credentials.refresh_token,
        handle=handle,
    )


async def _account_with_laptop(regions: RegionsStack) -> tuple[Device, Device]:
    """A phone and a laptop of an account homed in eu."""
    handle = unique_handle("revoked")
    async with grpc.aio.insecure_channel(regions.region(EU).keys_target) as channel:
        keys = kgrpc.AccountServiceStub(channel)
        signed_up = await keys.SignUp(
            kpb.SignUpRequest(
                request_id=rid(),
                handle=handle,
                display_name=handle,
                device=kpb.NewDevice(name="phone", platform=common_pb2.PLATFORM_ANDROID),
                home_region=EU,
            ),
            timeout=CALL_SECONDS,
        )
        phone = _device(signed_up, handle)
        registered = await keys.RegisterDevice(
            kpb.RegisterDeviceRequest(
                request_id=rid(),
                device=kpb.NewDevice(name="laptop", platform=common_pb2.PLATFORM_ANDROID),
            ),
            metadata=phone.md,
            timeout=CALL_SECONDS,
        )
    return phone, _device(registered, handle)


async def _refused_in(regions: RegionsStack, region: str, device: Device) -> bool:
    """True once ``region``'s svc_message and svc_keys both refuse the
    device's token as revoked; it must be accepted or refused so, nothing else."""
    stack = regions.region(region)
    refusals = 0
    async with (
        grpc.aio.insecure_channel(stack.message_targets[0]) as message_channel,
        grpc.aio.insecure_channel(stack.keys_target) as keys_channel,
    ):
        calls = (
            mgrpc.MessageServiceStub(message_channel).ListConversations(
                mpb.ListConversationsRequest(), metadata=device.md, timeout=CALL_SECONDS
            ),
            kgrpc.AccountServiceStub(keys_channel).GetAccount(
                kpb.GetAccountRequest(), metadata=device.md, timeout=CALL_SECONDS
            ),
        )
        for call in calls:
            try:
                await call
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
                assert error_reason(error) == TOKEN_REVOKED
                refusals += 1
    return refusals == len(calls)


@contextlib.asynccontextmanager
async def _stream_in(regions: RegionsStack, region: str, device: Device) -> AsyncIterator[Stream]:
    """The device's Connect stream in ``region``, synced."""
    async with grpc.aio.insecure_channel(regions.region(region).message_targets[0]) as channel:
        stream = await open_stream(mgrpc.MessageServiceStub(channel), device)

        async def ready() -> bool:
            assert stream.error is None, stream.error
            return synced(stream)

        try:
            await wait_until(ready, timeout=CALL_SECONDS, what="the stream's sync")
            yield stream
        finally:
            stream.outgoing.put_nowait(None)
            stream.call.cancel()


async def _stream_ended_revoked(stream: Stream) -> bool:
    if stream.error is None:
        return False
    assert stream.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(stream.error) == TOKEN_REVOKED
    return True


async def _revoke(regions: RegionsStack, through: str, owner: Device, device: Device) -> None:
    async with grpc.aio.insecure_channel(regions.region(through).keys_target) as channel:
        await kgrpc.AccountServiceStub(channel).RevokeDevice(
            kpb.RevokeDeviceRequest(request_id=rid(), device_id=device.device_id),
            metadata=owner.md,
            timeout=CALL_SECONDS,
        )


async def _push_series(regions: RegionsStack, region: str) -> dict[tuple[str, str], float]:
    """(metric, label values) -> value of the revocation push metrics."""
    status, body = await http_get(regions.region(region).keys_metrics_url)
    assert status == 200
    return {
        (sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name.startswith(("parley_revocations_pushed", "parley_revocation_push"))
    }


async def _revocation_doc(regions: RegionsStack, region: str, device_id: str) -> Any:
    client: AsyncMongoClient[Any] = AsyncMongoClient(regions.region(region).mongo_uri)
    try:
        return await client["parley"]["revocations"].find_one({"_id": device_id})
    finally:
        await client.close()


@pytest.mark.parametrize("through", [EU, US])
async def test_a_device_revoked_in_its_home_region_is_refused_in_the_other(
    regions: RegionsStack, through: str
) -> None:
    phone, laptop = await _account_with_laptop(regions)
    async with _stream_in(regions, US, laptop) as stream:
        assert not await _refused_in(regions, US, laptop)
        await _revoke(regions, through, phone, laptop)
        await wait_until(
            lambda: _refused_in(regions, US, laptop),
            timeout=REVOKED_SECONDS,
            what="us refusing the revoked laptop",
        )
        await wait_until(
            lambda: _stream_ended_revoked(stream),
            timeout=REVOKED_SECONDS,
            what="the laptop's stream in us ending",
        )
    # us holds it as its own revocation, marked as eu's; eu owes it to no one.
    held = await _revocation_doc(regions, US, laptop.device_id)
    assert held is not None and held["source"] == EU and "unsent" not in held
    home = await _revocation_doc(regions, EU, laptop.device_id)
    assert home is not None and home.get("unsent", []) == []
    # The phone is untouched in both regions.
    assert not await _refused_in(regions, US, phone)
    assert not await _refused_in(regions, EU, phone)
    series = await _push_series(regions, EU)
    assert series[("parley_revocations_pushed_total", "outcome=sent,peer=us")] >= 1


async def test_a_revocation_made_while_the_link_is_cut_arrives_after_the_heal(
    regions: RegionsStack,
) -> None:
    phone, laptop = await _account_with_laptop(regions)
    link = regions.proxy(EU, US)
    async with _stream_in(regions, US, laptop) as stream:
        link.cut(refuse=True)
        try:
            await _revoke(regions, EU, phone, laptop)
            assert await _refused_in(regions, EU, laptop)

            async def waiting_in_the_outbox() -> bool:
                series = await _push_series(regions, EU)
                failed = series.get(
                    ("parley_revocations_pushed_total", "outcome=failed,peer=us"), 0
                )
                backlog = series.get(("parley_revocation_push_backlog", "peer=us"), 0)
                return failed >= 1 and backlog >= 1

            await wait_until(waiting_in_the_outbox, timeout=HEAL_SECONDS, what="a failed push")
            # Cut off, us cannot know yet: the device keeps working there.
            assert stream.error is None
        finally:
            link.heal()
        await wait_until(
            lambda: _refused_in(regions, US, laptop),
            timeout=HEAL_SECONDS,
            what="us refusing the laptop after the heal",
        )
        await wait_until(
            lambda: _stream_ended_revoked(stream),
            timeout=REVOKED_SECONDS,
            what="the laptop's stream in us ending",
        )

    async def backlog_empty() -> bool:
        series = await _push_series(regions, EU)
        return series.get(("parley_revocation_push_backlog", "peer=us")) == 0

    await wait_until(backlog_empty, timeout=REVOKED_SECONDS * 2, what="eu's outbox emptied")


async def test_an_erased_account_is_refused_in_every_region(regions: RegionsStack) -> None:
    phone, laptop = await _account_with_laptop(regions)
    async with _stream_in(regions, US, laptop) as stream:
        async with grpc.aio.insecure_channel(regions.region(US).keys_target) as channel:
            # Through us: served by the home region, eu.
            await kgrpc.AccountServiceStub(channel).DeleteAccount(
                kpb.DeleteAccountRequest(request_id=rid(), confirm_handle=phone.handle),
                metadata=phone.md,
                timeout=CALL_SECONDS,
            )

        async def both_refused() -> bool:
            return all([await _refused_in(regions, US, d) for d in (phone, laptop)])

        await wait_until(
            both_refused, timeout=REVOKED_SECONDS, what="us refusing the erased account's devices"
        )
        await wait_until(
            lambda: _stream_ended_revoked(stream),
            timeout=REVOKED_SECONDS,
            what="the erased account's stream in us ending",
        )
