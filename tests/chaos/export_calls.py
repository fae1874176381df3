"""The history export RPCs of MessageService, for the auth matrix
(tests/chaos/test_export_auth.py) and the main matrix, which leaves them to it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from tests.helpers import Metadata
from tests.users import rid

Call = Callable[[Metadata], Awaitable[Any]]

EXPORT_RPCS = frozenset(
    {"RequestHistoryExport", "GetHistoryExport", "ListHistoryExports", "CancelHistoryExport"}
)


def export_calls(
    messages: mgrpc.MessageServiceStub, *, conversation_id: str, export_id: str
) -> dict[str, Call]:
    """Every history export RPC, aimed at the victim's conversation and export."""
    return {
        "RequestHistoryExport": lambda md: messages.RequestHistoryExport(
            mpb.RequestHistoryExportRequest(request_id=rid(), conversation_id=conversation_id),
            metadata=md,
        ),
        "GetHistoryExport": lambda md: messages.GetHistoryExport(
            mpb.GetHistoryExportRequest(export_id=export_id), metadata=md
        ),
        "ListHistoryExports": lambda md: messages.ListHistoryExports(
            mpb.ListHistoryExportsRequest(), metadata=md
        ),
        "CancelHistoryExport": lambda md: messages.CancelHistoryExport(
            mpb.CancelHistoryExportRequest(export_id=export_id), metadata=md
        ),
    }
