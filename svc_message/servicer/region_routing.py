"""Writes to a conversation owned by another region go to that region.

Feed changes (svc_message/servicer/routing.py's ROUTED_METHODS) and the
watermarks other members see (MarkRead, MarkDelivered) are forwarded to the
region the conversation id names; creations to the region that will own the
new conversation (domain/region_routing.py). The owner region's answer, or
its status with details, is relayed unchanged. A request already forwarded
once is never forwarded again. Per-member inbox settings (mute, pin,
archive, unread mark) are the member's own data and stay where they are
written (docs/design/regions.md). Without regions every request is local and
this adds one dictionary lookup.
"""

from __future__ import annotations

from typing import Any

from parley_core.auth.caller import current_caller
from parley_core.errors import Code, ParleyError, Reason, Unavailable
from parley_core.regions import region_forwarded
from parley_core.rpc.interceptor import bearer_token
from svc_message.domain.region_routing import RegionRouter
from svc_message.model.ownership import OwnerRefused
from svc_message.servicer.routing import ROUTED_METHODS, Behavior, relayed_status

BY_CONVERSATION = ROUTED_METHODS | {"MarkRead", "MarkDelivered"}
# Reads are served by this region's replica; one the replica cannot answer
# yet (a conversation created elsewhere a moment ago, a member just added)
# is asked of the owner region instead.
READS = frozenset({"GetConversation", "ListMessages", "ListReactions", "ListMessageReceipts"})
# Who is a member decides whose sender keys a device accepts: asked of the
# owner, which a replica may trail; the replica answers only while the owner
# cannot be reached.
OWNER_READS = frozenset({"ListMembers"})
NOT_YET_REPLICATED = (Code.NOT_FOUND, Code.PERMISSION_DENIED)
BY_CREATOR = frozenset({"CreateGroup", "CreateChannel"})
BY_PAIR = frozenset({"CreateDirectConversation"})


class RegionRouting:
    def __init__(self, router: RegionRouter) -> None:
        self._router = router

    def _region_of(self, method: str, request: Any) -> str | None:
        router = self._router
        if method in BY_CONVERSATION:
            conversation_id: str = request.conversation_id
            return router.owner_of(conversation_id) if conversation_id else None
        caller = current_caller().account_id
        if method in BY_CREATOR:
            return router.creator_home(caller)
        peer: str = request.peer_account_id
        return router.direct_owner(caller, peer) if peer else None

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        if method in READS:
            return self._wrap_read(method, behavior)
        if method in OWNER_READS:
            return self._wrap_owner_read(method, behavior)
        if method not in BY_CONVERSATION | BY_CREATOR | BY_PAIR:
            return behavior
        router = self._router

        async def routed(request: Any, context: Any) -> Any:
            region = self._region_of(method, request)
            if region is None or router.is_local(region):
                return await behavior(request, context)
            metadata = context.invocation_metadata()
            try:
                return await router.forward(
                    region,
                    method,
                    request.SerializeToString(),
                    bearer_token=bearer_token(metadata),
                    timeout=context.time_remaining(),
                    forwarded=region_forwarded(metadata),
                )
            except OwnerRefused as refused:
                await context.abort_with_status(relayed_status(refused))
                raise  # pragma: no cover - abort raised

        return routed

    def _wrap_owner_read(self, method: str, behavior: Behavior) -> Behavior:
        router = self._router

        async def read(request: Any, context: Any) -> Any:
            conversation_id: str = request.conversation_id
            metadata = context.invocation_metadata()
            region = router.owner_of(conversation_id) if conversation_id else None
            if region is None or router.is_local(region) or region_forwarded(metadata):
                return await behavior(request, context)
            try:
                return await router.forward(
                    region,
                    method,
                    request.SerializeToString(),
                    bearer_token=bearer_token(metadata),
                    timeout=context.time_remaining(),
                    forwarded=False,
                )
            except OwnerRefused as refused:
                await context.abort_with_status(relayed_status(refused))
                raise  # pragma: no cover - abort raised
            except Unavailable as error:
                if error.reason != Reason.REGION_UNAVAILABLE:
                    raise
            return await behavior(request, context)

        return read

    def _wrap_read(self, method: str, behavior: Behavior) -> Behavior:
        router = self._router

        async def read(request: Any, context: Any) -> Any:
            try:
                return await behavior(request, context)
            except ParleyError as error:
                conversation_id: str = request.conversation_id
                metadata = context.invocation_metadata()
                if (
                    error.code not in NOT_YET_REPLICATED
                    or not conversation_id
                    or region_forwarded(metadata)
                ):
                    raise
                region = router.owner_of(conversation_id)
                if router.is_local(region):
                    raise
            try:
                return await router.forward(
                    region,
                    method,
                    request.SerializeToString(),
                    bearer_token=bearer_token(metadata),
                    timeout=context.time_remaining(),
                    forwarded=False,
                )
            except OwnerRefused as refused:
                await context.abort_with_status(relayed_status(refused))
                raise  # pragma: no cover - abort raised

        return read
