"""Requests that change a conversation's feed go to the conversation's owner.

The methods below are the ones that commit to a feed (sends, edits, deletes,
reactions, membership and info changes). Handled here when this process owns
the conversation (always, with one process) or when the request was already
forwarded once; otherwise the domain's Router forwards it and the owner's
answer, or its status with details, is relayed unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from parley_core.rpc.interceptor import bearer_token
from svc_message.domain.routing import OwnerRouter
from svc_message.model.ownership import FORWARDED_METADATA, OwnerRefused

ROUTED_METHODS = frozenset(
    {
        "SendMessage",
        "EditMessage",
        "DeleteMessage",
        "ReactToMessage",
        "UpdateConversationInfo",
        "SetServerSearch",
        "AddMembers",
        "RemoveMember",
        "LeaveConversation",
        "SetMemberRole",
        "SubscribeChannel",
    }
)

Behavior = Callable[[Any, Any], Awaitable[Any]]


def _forwarded(context: Any) -> bool:
    return any(key == FORWARDED_METADATA for key, _ in context.invocation_metadata() or ())


def relayed_status(refused: OwnerRefused) -> grpc.Status:
    status = (
        status_pb2.Status.FromString(refused.status)
        if refused.status
        else status_pb2.Status(code=refused.code, message=refused.message)
    )
    return rpc_status.to_status(status)


class OwnerRouting:
    def __init__(self, router: OwnerRouter) -> None:
        self._router = router

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        if method not in ROUTED_METHODS:
            return behavior
        router = self._router

        async def routed(request: Any, context: Any) -> Any:
            conversation_id: str = request.conversation_id
            if not conversation_id or router.is_local(conversation_id) or _forwarded(context):
                return await behavior(request, context)
            try:
                answer = await router.forward(
                    conversation_id,
                    method,
                    request.SerializeToString(),
                    bearer_token=bearer_token(context.invocation_metadata()),
                    timeout=context.time_remaining(),
                )
            except OwnerRefused as refused:
                await context.abort_with_status(relayed_status(refused))
                raise  # pragma: no cover - abort raised
            if answer is None:
                return await behavior(request, context)
            return answer

        return routed
