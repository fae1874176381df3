"""parley.keys.v1.AccountRegionService over gRPC: what other regions' svc_keys ask this one."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

from parley.keys.v1 import regions_pb2, regions_pb2_grpc
from parley_core.auth.revocations import Revocation
from parley_core.errors import NotFound, Reason
from parley_core.validation import Check
from svc_keys.domain.regions import HandleRegistry
from svc_keys.domain.revocation_push import BATCH_LIMIT, RevocationPush

REGION_SERVICE_NAME = regions_pb2.DESCRIPTOR.services_by_name["AccountRegionService"].full_name
REGION_NAME_MAX = 32


class AccountRegionServicer(regions_pb2_grpc.AccountRegionServiceServicer):
    def __init__(
        self,
        handles: HandleRegistry,
        revocations: RevocationPush,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._handles = handles
        self._revocations = revocations
        self._clock = clock

    async def ReserveHandle(
        self, request: regions_pb2.ReserveHandleRequest, context: Any
    ) -> regions_pb2.ReserveHandleResponse:
        check = Check().request_id(request.request_id)
        check.text("handle", request.handle, min_len=1, max_len=64)
        check.id("account_id", request.account_id)
        check.text("home_region", request.home_region, min_len=1, max_len=REGION_NAME_MAX)
        check.done()
        reservation = await self._handles.reserve_here(
            handle=request.handle,
            account_id=request.account_id,
            home_region=request.home_region,
            request_id=request.request_id.lower(),
            now=self._clock(),
        )
        return regions_pb2.ReserveHandleResponse(
            account_id=reservation.account_id, home_region=reservation.home_region
        )

    async def ReleaseHandle(
        self, request: regions_pb2.ReleaseHandleRequest, context: Any
    ) -> regions_pb2.ReleaseHandleResponse:
        check = Check()
        check.text("handle", request.handle, min_len=1, max_len=64)
        check.id("account_id", request.account_id)
        if not request.HasField("release_time"):
            check.fail("release_time", "required")
        check.done()
        await self._handles.release_here(
            request.handle,
            account_id=request.account_id,
            until=request.release_time.ToDatetime(tzinfo=UTC),
        )
        return regions_pb2.ReleaseHandleResponse()

    async def LookupHandle(
        self, request: regions_pb2.LookupHandleRequest, context: Any
    ) -> regions_pb2.ReserveHandleResponse:
        Check().text("handle", request.handle, min_len=1, max_len=64).done()
        reservation = await self._handles.holder_here(request.handle)
        if reservation is None:
            raise NotFound("account not found", reason=Reason.ACCOUNT_NOT_FOUND)
        return regions_pb2.ReserveHandleResponse(
            account_id=reservation.account_id, home_region=reservation.home_region
        )

    async def ApplyRevocations(
        self, request: regions_pb2.ApplyRevocationsRequest, context: Any
    ) -> regions_pb2.ApplyRevocationsResponse:
        check = Check()
        check.text("source_region", request.source_region, min_len=1, max_len=REGION_NAME_MAX)
        if len(request.revocations) > BATCH_LIMIT:
            check.fail("revocations", f"at most {BATCH_LIMIT}")
        for i, revocation in enumerate(request.revocations):
            check.id(f"revocations[{i}].device_id", revocation.device_id)
            if not revocation.HasField("revoke_time"):
                check.fail(f"revocations[{i}].revoke_time", "required")
        check.done()
        await self._revocations.apply_from_peer(
            [
                Revocation(device_id=r.device_id, revoked_at=r.revoke_time.ToNanoseconds() / 1e9)
                for r in request.revocations
            ],
            source=request.source_region,
        )
        return regions_pb2.ApplyRevocationsResponse()
