"""An account erasure while its handle's registrar region is cut off
(docs/design/regions.md, "Presence, erasure, failure"; docs/ARCHITECTURE.md,
"Regions"): two real regions joined by fault proxies. An account homed in eu
whose handle is registered in us is erased through eu with both directions
of the link cut: eu's own part (keys, devices, account, its svc_message's
copies) is erased during the cut, the job waits only for us's steps
(``message@us``, ``handle@us``, ``revocations@us``), and after the heal it
finishes with the handle released at us for the cooling-off period."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import grpc
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley.common.v1 import common_pb2
from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley_dev.regions import RegionsStack
from svc_keys.domain.handles import handle_key
from tests.helpers import wait_until
from tests.region_handles import handle_registered_in
from tests.users import Device, error_reason, rid

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EU, US = "eu", "us"
CALL_SECONDS = 10.0
# eu's own steps: the settle delay (revocation poll + 1 s) and a few rounds.
LOCAL_SECONDS = 30.0
# After the heal: the step retry (5 s), the revocation push's longest backoff
# (10 s) and a margin.
HEAL_SECONDS = 45.0
PEER_STEPS = ("message@us", "handle@us", "revocations@us")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def regions(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RegionsStack]:
    config = {"keys": {"erasure_poll_seconds": 0.5, "erasure_lease_seconds": 5}}
    harness = RegionsStack(
        root=tmp_path_factory.mktemp("erasure_order"), regions=[EU, US], extra_config=config
    )
    async with harness:
        yield harness


async def _find(regions: RegionsStack, region: str, collection: str, query: Any) -> Any:
    client: AsyncMongoClient[Any] = AsyncMongoClient(regions.region(region).mongo_uri)
    try:
        return await client["parley"][collection].find_one(query)
    finally:
        await client.close()


async def _sign_up(regions: RegionsStack, region: str, handle: str) -> Any:
    async with grpc.aio.insecure_channel(regions.region(region).keys_target) as channel:
        return await kgrpc.AccountServiceStub(channel).SignUp(
            kpb.SignUpRequest(
                request_id=rid(),
                handle=handle,
                display_name=handle,
                device=kpb.NewDevice(name="phone", platform=common_pb2.PLATFORM_ANDROID),
                home_region=EU,
            ),
            timeout=CALL_SECONDS,
        )


async def test_a_cut_off_registrar_holds_back_only_its_own_steps(regions: RegionsStack) -> None:
    handle = handle_registered_in(US, (EU, US), prefix="erased")
    reply = await _sign_up(regions, EU, handle)
    device = Device(
        account_id=reply.account.account_id,
        device_id=reply.device.device_id,
        access_token=reply.credentials.access_token,
        refresh_token=reply.credentials.refresh_token,
        handle=handle,
    )
    account_id, key = device.account_id, handle_key(handle)
    reserved = await _find(regions, US, "handle_reservations", {"_id": key})
    assert reserved is not None and reserved["account_id"] == account_id

    for link in (regions.proxy(EU, US), regions.proxy(US, EU)):
        link.cut(refuse=True)
    try:
        async with grpc.aio.insecure_channel(regions.region(EU).keys_target) as channel:
            started = await kgrpc.AccountServiceStub(channel).DeleteAccount(
                kpb.DeleteAccountRequest(request_id=rid(), confirm_handle=handle),
                metadata=device.md,
                timeout=CALL_SECONDS,
            )
        erasure_id = started.erasure_id

        async def erased_here() -> bool:
            record = await _find(regions, EU, "erasures", {"_id": erasure_id})
            steps = [] if record is None else record["steps"]
            return {"account", "message", "presence", "cold"} <= set(steps)

        await wait_until(erased_here, timeout=LOCAL_SECONDS, what="eu's own steps, while cut")
        # eu's database holds nothing of the account; the job waits for us.
        assert await _find(regions, EU, "accounts", {"_id": account_id}) is None
        assert await _find(regions, EU, "devices", {"account_id": account_id}) is None
        record = await _find(regions, EU, "erasures", {"_id": erasure_id})
        assert record["state"] == "running"
        assert not set(PEER_STEPS) & set(record["steps"])
        assert record["handle_registrar"] == US
        # us heard nothing: the handle is still reserved for the account there.
        reserved = await _find(regions, US, "handle_reservations", {"_id": key})
        assert reserved["account_id"] == account_id and "released_until" not in reserved
    finally:
        for link in (regions.proxy(EU, US), regions.proxy(US, EU)):
            link.heal()

    async def finished() -> bool:
        record = await _find(regions, EU, "erasures", {"_id": erasure_id})
        return record is not None and record["state"] == "done"

    await wait_until(finished, timeout=HEAL_SECONDS, what="the job finished after the heal")
    record = await _find(regions, EU, "erasures", {"_id": erasure_id})
    assert set(PEER_STEPS) <= set(record["steps"])
    assert record["steps"][-1] == "revocations@us"
    # The record names neither the account nor its handle.
    assert not {"account_id", "device_ids", "handle_key", "handle_registrar"} & set(record)
    # Released at the registrar at the end of the cooling-off, not at once.
    reserved = await _find(regions, US, "handle_reservations", {"_id": key})
    release_time = started.handle_release_time.ToDatetime(tzinfo=UTC)
    released = reserved["released_until"].replace(tzinfo=UTC)
    assert abs((released - release_time).total_seconds()) < 0.01
    # us acknowledged the revocation of the account's device.
    revocation = await _find(regions, EU, "revocations", {"_id": device.device_id})
    assert revocation is not None and US not in revocation.get("unsent", [])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _sign_up(regions, US, handle)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(refused.value) == "ERROR_REASON_HANDLE_TAKEN"
