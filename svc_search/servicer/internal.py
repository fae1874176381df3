"""parley.search.v1.SearchInternalService: for svc_keys' account erasure job
only (the interceptor requires the service credential)."""

from __future__ import annotations

from typing import Any

from parley.search.v1 import internal_pb2 as pb
from parley.search.v1 import internal_pb2_grpc
from parley_core.validation import Check
from svc_search.domain.indexing import IndexHandler

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SearchInternalService"].full_name


class SearchInternalServicer(internal_pb2_grpc.SearchInternalServiceServicer):
    def __init__(self, indexing: IndexHandler) -> None:
        self._indexing = indexing

    async def EraseAccount(
        self, request: pb.EraseAccountRequest, context: Any
    ) -> pb.EraseAccountResponse:
        Check().id("account_id", request.account_id).done()
        return pb.EraseAccountResponse(done=await self._indexing.erase(request.account_id))
