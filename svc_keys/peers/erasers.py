"""The erasure RPCs of svc_message, svc_presence, svc_media and svc_search, called with
the deployment's service credential. Any failure is Unavailable: the job
keeps the step and tries again later."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import structlog

from parley.media.v1 import references_pb2, references_pb2_grpc
from parley.message.v1 import internal_pb2 as message_pb2
from parley.message.v1 import internal_pb2_grpc as message_grpc
from parley.presence.v1 import internal_pb2 as presence_pb2
from parley.presence.v1 import internal_pb2_grpc as presence_grpc
from parley.search.v1 import internal_pb2 as search_pb2
from parley.search.v1 import internal_pb2_grpc as search_grpc
from parley_core.auth.credentials import ServiceCredential
from parley_core.errors import Reason, Unavailable

log = structlog.get_logger(__name__)

CALL_TIMEOUT_SECONDS = 30.0
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def _unavailable(step: str, why: str) -> Unavailable:
    return Unavailable(
        f"erasure step {step}: {why}", reason=Reason.DEPENDENCY_UNAVAILABLE, retry_after_seconds=5
    )


class _Client:
    step = ""

    def __init__(
        self,
        target: str,
        *,
        credential: ServiceCredential | None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        step: str | None = None,
    ) -> None:
        """``step``: the job step's name when it is not the class's (the same
        service in another region)."""
        if step is not None:
            self.step = step
        self._channel = grpc.aio.insecure_channel(
            target, options=CHANNEL_OPTIONS, interceptors=list(interceptors) or None
        )
        self._metadata = None if credential is None else credential.metadata()

    async def _call(self, method: Any, request: Any) -> Any:
        if self._metadata is None:
            raise _unavailable(self.step, "no service credential (auth.service_token_file)")
        try:
            return await method(request, metadata=self._metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            log.warning(
                "erasure_call_failed",
                step=self.step,
                code=error.code().name,
                details=error.details(),
            )
            raise _unavailable(self.step, f"the service answered {error.code().name}") from None

    async def close(self) -> None:
        await self._channel.close(grace=None)


class MessageEraser(_Client):
    step = "message"

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = message_grpc.MessageInternalServiceStub(self._channel)

    async def erase(self, *, account_id: str, device_ids: Sequence[str], erasure_id: str) -> bool:
        response = await self._call(
            self._stub.EraseAccount,
            message_pb2.EraseAccountRequest(
                account_id=account_id, device_ids=list(device_ids), erasure_id=erasure_id
            ),
        )
        return bool(response.done)


class PresenceEraser(_Client):
    step = "presence"

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = presence_grpc.PresenceInternalServiceStub(self._channel)

    async def erase(self, *, account_id: str, device_ids: Sequence[str], erasure_id: str) -> bool:
        await self._call(
            self._stub.EraseAccount, presence_pb2.EraseAccountRequest(account_id=account_id)
        )
        return True


class MediaEraser(_Client):
    step = "media"

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = references_pb2_grpc.MediaReferenceServiceStub(self._channel)

    async def erase(self, *, account_id: str, device_ids: Sequence[str], erasure_id: str) -> bool:
        await self._call(
            self._stub.EraseUploader, references_pb2.EraseUploaderRequest(account_id=account_id)
        )
        return True


class SearchEraser(_Client):
    step = "search"

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = search_grpc.SearchInternalServiceStub(self._channel)

    async def erase(self, *, account_id: str, device_ids: Sequence[str], erasure_id: str) -> bool:
        response = await self._call(
            self._stub.EraseAccount, search_pb2.EraseAccountRequest(account_id=account_id)
        )
        return bool(response.done)
