"""The svc_keys of the deployment's other regions (docs/design/regions.md).

Sign-ups for accounts homed elsewhere are forwarded to AccountService.SignUp
there, marked as forwarded (the receiver never forwards again) and with the
client's address appended to ``x-forwarded-for``, which the receiver believes
only from a peer in its ``limits.trusted_proxies``. Handle reservations go to
AccountRegionService.ReserveHandle with the deployment's service credential,
and so are revocations pushed to ApplyRevocations.
A region that cannot be reached is Unavailable with REGION_UNAVAILABLE and
the region in the error's metadata; a refusal it answered is raised as it came.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_status import rpc_status

from parley.common.v1 import common_pb2
from parley.keys.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    regions_pb2,
    regions_pb2_grpc,
)
from parley_core.auth.credentials import ServiceCredential
from parley_core.auth.revocations import Revocation
from parley_core.errors import ParleyError, Reason
from parley_core.regions import REGION_FORWARDED, RegionBreaker, region_unavailable
from parley_core.rpc.address import FORWARDED_FOR
from parley_core.rpc.status import error_from_status
from parley_core.topology import Topology
from svc_keys.model import Account, Credentials, Device, DeviceSession, Reservation, SignUpForward

log = structlog.get_logger(__name__)


CALL_TIMEOUT_SECONDS = 10.0
# After a call that did not reach a region, calls to it are refused at once
# for this long (a fast, explicit REGION_UNAVAILABLE).
DOWN_SECONDS = 2.0
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def _datetime(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def _seconds(value: Timestamp) -> float:
    return value.ToNanoseconds() / 1e9


def _account(answer: accounts_pb2.Account) -> Account:
    return Account(
        account_id=answer.account_id,
        handle=answer.handle,
        display_name=answer.display_name,
        created_at=_datetime(answer.create_time),
    )


def session_of(answer: accounts_pb2.SignUpResponse) -> DeviceSession:
    return DeviceSession(
        account=_account(answer.account),
        device=Device(
            device_id=answer.device.device_id,
            account_id=answer.device.account_id,
            name=answer.device.name,
            platform=answer.device.platform,
            created_at=_datetime(answer.device.create_time),
        ),
        credentials=Credentials(
            access_token=answer.credentials.access_token,
            access_expires_at=_seconds(answer.credentials.access_token_expire_time),
            refresh_token=answer.credentials.refresh_token,
            refresh_expires_at=_seconds(answer.credentials.refresh_token_expire_time),
        ),
    )


def _answered(region: str, error: grpc.aio.AioRpcError) -> ParleyError:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        status = None
    refusal = error_from_status(status) if status is not None else None
    if refusal is not None:
        return refusal
    log.warning("region_call_failed", region=region, code=error.code().name)
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return region_unavailable(region, "no answer in time")
    return region_unavailable(region, error.code().name.lower())


class RegionPeerClient:
    """Implements ports.RegionPeers over gRPC, one channel per peer address."""

    def __init__(
        self,
        topology: Callable[[], Topology | None],
        *,
        credential: ServiceCredential | None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        timeout_seconds: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        self._topology = topology
        self._credential = credential
        self._interceptors = list(interceptors) or None
        self._timeout = timeout_seconds
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._breaker = RegionBreaker(down_seconds=DOWN_SECONDS, clock=time.monotonic)

    def _refusal(self, region: str, error: grpc.aio.AioRpcError) -> ParleyError:
        refusal = _answered(region, error)
        if refusal.reason == Reason.REGION_UNAVAILABLE and refusal.metadata.get("region") == region:
            self._breaker.failed(region)
        return refusal

    def _channel(self, region: str) -> grpc.aio.Channel:
        if self._breaker.is_down(region):
            raise region_unavailable(region, "it did not answer a moment ago")
        topology = self._topology()
        endpoints = topology.regions.get(region) if topology is not None else None
        address = endpoints.peer_address("keys") if endpoints is not None else None
        if address is None:
            raise region_unavailable(region, "the topology names no peer endpoint for it")
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                address, options=CHANNEL_OPTIONS, interceptors=self._interceptors
            )
            self._channels[address] = channel
        return channel

    async def sign_up(self, region: str, forward: SignUpForward) -> DeviceSession:
        stub = accounts_pb2_grpc.AccountServiceStub(self._channel(region))
        request = accounts_pb2.SignUpRequest(
            request_id=forward.request_id,
            handle=forward.handle,
            display_name=forward.display_name,
            device=accounts_pb2.NewDevice(
                name=forward.device_name,
                platform=common_pb2.Platform.ValueType(forward.platform),
            ),
            home_region=region,
        )
        metadata = ((REGION_FORWARDED, "1"), (FORWARDED_FOR, forward.client_address))
        try:
            answer = await stub.SignUp(request, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise self._refusal(region, error) from None
        return session_of(answer)

    async def reserve_handle(
        self, region: str, *, handle: str, account_id: str, home_region: str, request_id: str
    ) -> Reservation:
        if self._credential is None:
            raise region_unavailable(region, "no service credential is configured")
        stub = regions_pb2_grpc.AccountRegionServiceStub(self._channel(region))
        request = regions_pb2.ReserveHandleRequest(
            handle=handle, account_id=account_id, home_region=home_region, request_id=request_id
        )
        try:
            answer = await stub.ReserveHandle(
                request, metadata=self._credential.metadata(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise self._refusal(region, error) from None
        return Reservation(
            account_id=answer.account_id, home_region=answer.home_region, request_id=request_id
        )

    async def lookup_handle(self, region: str, handle: str) -> Reservation | None:
        if self._credential is None:
            raise region_unavailable(region, "no service credential is configured")
        stub = regions_pb2_grpc.AccountRegionServiceStub(self._channel(region))
        try:
            answer = await stub.LookupHandle(
                regions_pb2.LookupHandleRequest(handle=handle),
                metadata=self._credential.metadata(),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._refusal(region, error) from None
        return Reservation(
            account_id=answer.account_id, home_region=answer.home_region, request_id=""
        )

    async def get_account(self, region: str, account_id: str, *, bearer_token: str) -> Account:
        stub = accounts_pb2_grpc.AccountServiceStub(self._channel(region))
        try:
            answer = await stub.GetAccount(
                accounts_pb2.GetAccountRequest(account_id=account_id),
                metadata=(("authorization", f"Bearer {bearer_token}"), (REGION_FORWARDED, "1")),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise self._refusal(region, error) from None
        return _account(answer)

    async def release_handle(
        self, region: str, handle_key: str, *, account_id: str, until: datetime
    ) -> None:
        if self._credential is None:
            raise region_unavailable(region, "no service credential is configured")
        stub = regions_pb2_grpc.AccountRegionServiceStub(self._channel(region))
        release_time = Timestamp()
        release_time.FromDatetime(until)
        try:
            await stub.ReleaseHandle(
                regions_pb2.ReleaseHandleRequest(
                    handle=handle_key, account_id=account_id, release_time=release_time
                ),
                metadata=self._credential.metadata(),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise self._refusal(region, error) from None

    async def apply_revocations(self, region: str, revocations: Sequence[Revocation]) -> None:
        if self._credential is None:
            raise region_unavailable(region, "no service credential is configured")
        stub = regions_pb2_grpc.AccountRegionServiceStub(self._channel(region))
        request = regions_pb2.ApplyRevocationsRequest(source_region=self._self_region())
        for revocation in revocations:
            revoke_time = Timestamp()
            revoke_time.FromNanoseconds(round(revocation.revoked_at * 1e9))
            request.revocations.add(device_id=revocation.device_id, revoke_time=revoke_time)
        try:
            await stub.ApplyRevocations(
                request, metadata=self._credential.metadata(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise self._refusal(region, error) from None

    def _self_region(self) -> str:
        topology = self._topology()
        return topology.region if topology is not None else ""

    async def forward_call(
        self, region: str, method: str, request: bytes, *, bearer_token: str | None
    ) -> bytes:
        # No (de)serializers: the request and the answer pass as bytes.
        call = self._channel(region).unary_unary(
            method, request_serializer=None, response_deserializer=None
        )
        metadata: tuple[tuple[str, str], ...] = ((REGION_FORWARDED, "1"),)
        if bearer_token is not None:
            metadata += (("authorization", f"Bearer {bearer_token}"),)
        try:
            answer: bytes = await call(request, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise self._refusal(region, error) from None
        return answer

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()
