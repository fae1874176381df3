"""parley.keys.v1.AccountService over gRPC."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from parley.common.v1 import common_pb2
from parley.keys.v1 import accounts_pb2, accounts_pb2_grpc
from parley_core.pagination import decode_page_token, encode_page_token
from parley_core.regions import region_forwarded
from parley_core.rpc.address import ClientAddresses
from parley_core.rpc.convert import timestamp
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_keys.domain.accounts import AccountsHandler
from svc_keys.domain.erasure import ErasureHandler
from svc_keys.domain.key_routing import KeyRegionRouter
from svc_keys.model import Account, Credentials, Device
from svc_keys.servicer.home_routing import refresh_tokens_home, served_at_home

SERVICE_NAME = accounts_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name
PUBLIC_METHODS = (f"/{SERVICE_NAME}/SignUp", f"/{SERVICE_NAME}/RefreshToken")
PLATFORMS = frozenset(common_pb2.Platform.values()) - {common_pb2.PLATFORM_UNSPECIFIED}
NAME_MAX = 64
DEVICES_PAGE_DEFAULT = 20
DEVICES_PAGE_MAX = 100


REGION_NAME_MAX = 32


def account_proto(account: Account, *, home_region: str) -> accounts_pb2.Account:
    return accounts_pb2.Account(
        account_id=account.account_id,
        handle=account.handle,
        display_name=account.display_name,
        create_time=timestamp(account.created_at),
        home_region=home_region,
    )


def _forwarded(context: Any) -> bool:
    return region_forwarded(context.invocation_metadata())


def device_proto(device: Device) -> accounts_pb2.Device:
    return accounts_pb2.Device(
        device_id=device.device_id,
        account_id=device.account_id,
        name=device.name,
        platform=device.platform,  # type: ignore[arg-type]
        create_time=timestamp(device.created_at),
    )


def credentials_proto(credentials: Credentials) -> accounts_pb2.Credentials:
    return accounts_pb2.Credentials(
        access_token=credentials.access_token,
        access_token_expire_time=timestamp(credentials.access_expires_at),
        refresh_token=credentials.refresh_token,
        refresh_token_expire_time=timestamp(credentials.refresh_expires_at),
    )


def _check_new_device(check: Check, device: accounts_pb2.NewDevice, field: str) -> None:
    check.text(f"{field}.name", device.name, min_len=1, max_len=NAME_MAX)
    check.enum(f"{field}.platform", device.platform, PLATFORMS)


class AccountServicer(accounts_pb2_grpc.AccountServiceServicer):
    def __init__(
        self,
        accounts: AccountsHandler,
        *,
        addresses: ClientAddresses,
        erasure: ErasureHandler,
        router: KeyRegionRouter | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._router = router
        self._erasure = erasure
        self._accounts = accounts
        self._addresses = addresses
        self._clock = clock

    async def SignUp(
        self, request: accounts_pb2.SignUpRequest, context: Any
    ) -> accounts_pb2.SignUpResponse:
        check = Check().request_id(request.request_id)
        # Handle syntax is domain policy; here only its presence and size.
        check.text("handle", request.handle, min_len=1, max_len=64)
        check.text("display_name", request.display_name, max_len=NAME_MAX)
        check.text("home_region", request.home_region, max_len=REGION_NAME_MAX)
        if not request.HasField("device"):
            check.fail("device", "required")
        else:
            _check_new_device(check, request.device, "device")
        check.done()
        session = await self._accounts.sign_up(
            request_id=request.request_id.lower(),
            handle=request.handle,
            display_name=request.display_name,
            device_name=request.device.name,
            platform=request.device.platform,
            client_address=self._addresses.of(context),
            now=self._clock(),
            home_region=request.home_region,
            forwarded=_forwarded(context),
        )
        return accounts_pb2.SignUpResponse(
            account=account_proto(
                session.account, home_region=self._accounts.home_region(session.account.account_id)
            ),
            device=device_proto(session.device),
            credentials=credentials_proto(session.credentials),
        )

    @served_at_home(SERVICE_NAME, accounts_pb2.RegisterDeviceResponse)
    async def RegisterDevice(
        self, request: accounts_pb2.RegisterDeviceRequest, context: Any
    ) -> accounts_pb2.RegisterDeviceResponse:
        check = Check().request_id(request.request_id)
        if not request.HasField("device"):
            check.fail("device", "required")
        else:
            _check_new_device(check, request.device, "device")
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        session = await self._accounts.register_device(
            account_id=rpc.account_id,
            request_id=rpc.request_id,
            name=request.device.name,
            platform=request.device.platform,
            now=rpc.now,
        )
        return accounts_pb2.RegisterDeviceResponse(
            device=device_proto(session.device),
            credentials=credentials_proto(session.credentials),
        )

    @served_at_home(
        SERVICE_NAME,
        accounts_pb2.RefreshTokenResponse,
        home_of=refresh_tokens_home,
        authenticated=False,
    )
    async def RefreshToken(
        self, request: accounts_pb2.RefreshTokenRequest, context: Any
    ) -> accounts_pb2.RefreshTokenResponse:
        check = Check().request_id(request.request_id)
        check.text("refresh_token", request.refresh_token, min_len=1, max_len=256)
        check.done()
        credentials = await self._accounts.refresh(
            refresh_token=request.refresh_token,
            client_address=self._addresses.of(context),
            now=self._clock(),
        )
        return accounts_pb2.RefreshTokenResponse(credentials=credentials_proto(credentials))

    @served_at_home(SERVICE_NAME, accounts_pb2.RevokeDeviceResponse)
    async def RevokeDevice(
        self, request: accounts_pb2.RevokeDeviceRequest, context: Any
    ) -> accounts_pb2.RevokeDeviceResponse:
        check = Check().request_id(request.request_id)
        check.id("device_id", request.device_id, required=False)
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        await self._accounts.revoke_device(
            account_id=rpc.account_id,
            device_id=request.device_id or rpc.device_id,
            now=rpc.now,
        )
        return accounts_pb2.RevokeDeviceResponse()

    @served_at_home(SERVICE_NAME, accounts_pb2.ListDevicesResponse)
    async def ListDevices(
        self, request: accounts_pb2.ListDevicesRequest, context: Any
    ) -> accounts_pb2.ListDevicesResponse:
        check = Check()
        limit = check.page_size(
            request.page_size, default=DEVICES_PAGE_DEFAULT, maximum=DEVICES_PAGE_MAX
        )
        check.done()
        rpc = request_context(context, clock=self._clock)
        scope = {"rpc": "ListDevices", "account": rpc.account_id}
        after = None
        if request.page_token:
            after = str(decode_page_token(request.page_token, scope=scope).get("after", ""))
        devices = await self._accounts.list_devices(
            account_id=rpc.account_id, after_device_id=after, limit=limit + 1
        )
        next_token = ""
        if len(devices) > limit:
            devices = devices[:limit]
            next_token = encode_page_token({"after": devices[-1].device_id}, scope=scope)
        return accounts_pb2.ListDevicesResponse(
            devices=[device_proto(d) for d in devices], next_page_token=next_token
        )

    async def GetAccount(
        self, request: accounts_pb2.GetAccountRequest, context: Any
    ) -> accounts_pb2.Account:
        check = Check()
        lookup = request.WhichOneof("lookup")
        if lookup == "account_id":
            check.id("account_id", request.account_id)
        elif lookup == "handle":
            check.text("handle", request.handle, min_len=1, max_len=64)
        check.done()
        rpc = request_context(context, clock=self._clock)
        if lookup == "handle":
            account = await self._accounts.get_account(
                handle=request.handle, bearer_token=rpc.bearer_token, forwarded=_forwarded(context)
            )
        else:
            account_id = request.account_id if lookup else rpc.account_id
            account = await self._accounts.get_account(
                account_id=account_id, bearer_token=rpc.bearer_token, forwarded=_forwarded(context)
            )
        return account_proto(account, home_region=self._accounts.home_region(account.account_id))

    @served_at_home(SERVICE_NAME, accounts_pb2.DeleteAccountResponse)
    async def DeleteAccount(
        self, request: accounts_pb2.DeleteAccountRequest, context: Any
    ) -> accounts_pb2.DeleteAccountResponse:
        check = Check().request_id(request.request_id)
        check.text("confirm_handle", request.confirm_handle, min_len=1, max_len=64)
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        started = await self._erasure.delete_account(
            account_id=rpc.account_id, confirm_handle=request.confirm_handle, now=rpc.now
        )
        return accounts_pb2.DeleteAccountResponse(
            erasure_id=started.erasure_id,
            handle_release_time=timestamp(started.handle_release_at),
            cold_erase_deadline=timestamp(started.cold_deadline),
        )
