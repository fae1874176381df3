"""svc_media as seen from svc_message: the reference bookkeeping of the media
that messages name (parley.media.v1.MediaReferenceService), called with the
deployment's service credential, never a user's token.

svc_media's refusals a client can act on (an id it may not use, a
quarantined object, a malformed id) are raised as the same ParleyError, so
the sender gets svc_media's code, reason and field. Anything else (svc_media
down, slow, refusing our credential, failing) is UNAVAILABLE with
DEPENDENCY_UNAVAILABLE: the send is not the client's mistake, and a retry
with the same request_id may pass.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import structlog
from grpc_status import rpc_status

from parley.media.v1 import references_pb2 as pb
from parley.media.v1 import references_pb2_grpc
from parley_core.auth.credentials import ServiceCredential
from parley_core.errors import Code, ParleyError, Reason, Unavailable
from parley_core.rpc.status import error_from_status

log = structlog.get_logger(__name__)

CALL_TIMEOUT_SECONDS = 3.0
# Passed on to the sender as svc_media answered them.
CLIENT_CODES = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.PERMISSION_DENIED,
        Code.RESOURCE_EXHAUSTED,
    }
)
# A restarted svc_media is dialled again within this, instead of gRPC's
# default backoff of up to two minutes during which sends with media fail.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def media_unavailable(why: str) -> Unavailable:
    return Unavailable(
        f"media service unavailable ({why}); messages with media cannot be sent now, "
        "retry with the same request_id",
        reason=Reason.DEPENDENCY_UNAVAILABLE,
        retry_after_seconds=1.0,
    )


def answered(error: grpc.aio.AioRpcError) -> ParleyError:
    """What a failed call means for svc_message's own caller."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        status = None  # details that contradict the call's code: not ours
    refusal = error_from_status(status) if status is not None else None
    if refusal is not None and refusal.code in CLIENT_CODES:
        return refusal
    code = error.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        # A deployment mistake: the services were given different tokens.
        log.error("media_refused_service_credential", details=error.details())
        return media_unavailable("it refused this deployment's service credential")
    log.warning("media_call_failed", code=code.name, details=error.details())
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return media_unavailable("no answer in time")
    if code == grpc.StatusCode.UNAVAILABLE:
        return media_unavailable("unreachable")
    return media_unavailable(f"it answered {code.name}")


class MediaReferenceClient:
    """Implements ports.MediaReferences over gRPC."""

    def __init__(
        self,
        target: str,
        *,
        credential: ServiceCredential | None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        timeout_seconds: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        # Interceptors: tracing's, when it is on (client spans, context sent along).
        self._channel = grpc.aio.insecure_channel(
            target, options=CHANNEL_OPTIONS, interceptors=list(interceptors) or None
        )
        self._stub = references_pb2_grpc.MediaReferenceServiceStub(self._channel)
        self._metadata = None if credential is None else credential.metadata()
        self._timeout = timeout_seconds

    async def reserve(
        self,
        *,
        account_id: str,
        conversation_id: str,
        media_ids: Sequence[str],
        readable_media_ids: Sequence[str],
    ) -> None:
        await self._call(
            self._stub.ReserveReferences,
            pb.ReserveReferencesRequest(
                account_id=account_id,
                conversation_id=conversation_id,
                media_ids=media_ids,
                readable_media_ids=readable_media_ids,
            ),
        )

    async def release(self, media_ids: Sequence[str]) -> None:
        await self._call(
            self._stub.ReleaseReferences, pb.ReleaseReferencesRequest(media_ids=media_ids)
        )

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any) -> None:
        if self._metadata is None:
            raise media_unavailable(
                "svc_message has no service credential to call it with (auth.service_token_file)"
            )
        try:
            await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise answered(error) from None

    async def close(self) -> None:
        await self._channel.close(grace=None)
