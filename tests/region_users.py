"""Accounts for the multi-region tests: signed up through a region's own
svc_keys, homed there."""

from __future__ import annotations

import grpc

from parley.common.v1 import common_pb2
from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley_dev.regions import RegionsStack
from tests.users import Device, rid, unique_handle


async def sign_up_in(
    regions: RegionsStack, home: str, *, handle: str | None = None, timeout: float = 10.0
) -> Device:
    """A new account homed in ``home`` (asked of that region) with one device."""
    handle = handle or unique_handle()
    async with grpc.aio.insecure_channel(regions.region(home).keys_target) as channel:
        reply = await kgrpc.AccountServiceStub(channel).SignUp(
            kpb.SignUpRequest(
                request_id=rid(),
                handle=handle,
                display_name=handle,
                device=kpb.NewDevice(name="phone", platform=common_pb2.PLATFORM_ANDROID),
                home_region=home,
            ),
            timeout=timeout,
        )
    assert reply.account.home_region == home
    return Device(
        account_id=reply.account.account_id,
        device_id=reply.device.device_id,
        access_token=reply.credentials.access_token,
        refresh_token=reply.credentials.refresh_token,
        handle=handle,
    )
