"""parley.presence.v1.PresenceInternalService (called by svc_keys with the
service credential, which the interceptor checks)."""

from __future__ import annotations

from typing import Any

from parley.presence.v1 import internal_pb2 as pb
from parley.presence.v1 import internal_pb2_grpc
from parley_core.validation import Check
from svc_presence.domain.erasure import PresenceErasure

INTERNAL_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PresenceInternalService"].full_name


class PresenceInternalServicer(internal_pb2_grpc.PresenceInternalServiceServicer):
    def __init__(self, erasure: PresenceErasure) -> None:
        self._erasure = erasure

    async def EraseAccount(
        self, request: pb.EraseAccountRequest, context: Any
    ) -> pb.EraseAccountResponse:
        Check().id("account_id", request.account_id).done()
        await self._erasure.erase(account_id=request.account_id)
        return pb.EraseAccountResponse()
