"""svc_message's internal service as seen from svc_media: who may read media,
and how many messages still reference it. Called with the deployment's
service credential, never a user's token."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
import structlog

from parley.message.v1 import internal_pb2, internal_pb2_grpc, messages_pb2
from parley_core.auth.credentials import ServiceCredential
from parley_core.errors import Reason, Unavailable
from parley_core.rpc.convert import timestamp
from svc_media.model import Requester

log = structlog.get_logger(__name__)

CALL_TIMEOUT_SECONDS = 5.0
# The request limits MessageInternalService documents.
ACCESS_BATCH = 64
COUNT_BATCH = 256

MESSAGES_DOWN = "svc_message did not answer a media check; retry"
# Answers worth asking again; any other refusal of a notice is final.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


def _unavailable(exc: grpc.aio.AioRpcError) -> Unavailable:
    log.warning("message_peer_failed", code=exc.code().name, details=exc.details())
    return Unavailable(MESSAGES_DOWN, reason=Reason.DEPENDENCY_UNAVAILABLE, retry_after_seconds=1.0)


class MessagePeerClient:
    def __init__(
        self,
        target: str,
        credential: ServiceCredential | None,
        *,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self._channel = grpc.aio.insecure_channel(target, interceptors=list(interceptors) or None)
        self._stub = internal_pb2_grpc.MessageInternalServiceStub(self._channel)
        self._metadata = credential.metadata() if credential is not None else ()

    async def readable(self, account_id: str, media_ids: Sequence[str]) -> set[str]:
        readable: set[str] = set()
        for start in range(0, len(media_ids), ACCESS_BATCH):
            batch = list(media_ids[start : start + ACCESS_BATCH])
            try:
                reply = await self._stub.CheckMediaAccess(
                    internal_pb2.CheckMediaAccessRequest(account_id=account_id, media_ids=batch),
                    metadata=self._metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError as exc:
                raise _unavailable(exc) from None
            readable.update(set(reply.readable_media_ids) & set(batch))
        return readable

    async def references(self, media_ids: Sequence[str]) -> Mapping[str, int]:
        counts: dict[str, int] = {}
        for start in range(0, len(media_ids), COUNT_BATCH):
            batch = list(media_ids[start : start + COUNT_BATCH])
            try:
                reply = await self._stub.CountMediaReferences(
                    internal_pb2.CountMediaReferencesRequest(media_ids=batch),
                    metadata=self._metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError as exc:
                raise _unavailable(exc) from None
            answered = dict(reply.references)
            for media_id in batch:
                # An id svc_message left out is one it did not count: never
                # read as zero, or media could be collected by omission.
                if media_id not in answered:
                    raise Unavailable(
                        "svc_message left a media id out of its reference counts; retry",
                        reason=Reason.DEPENDENCY_UNAVAILABLE,
                    )
                counts[media_id] = int(answered[media_id])
        return counts

    async def restore_ready(
        self, requester: Requester, *, media_id: str, expires_at: float
    ) -> None:
        notice = messages_pb2.MediaNotice(
            kind=messages_pb2.MediaNotice.KIND_RESTORE_READY,
            media_id=media_id,
            expire_time=timestamp(expires_at),
            device_id=requester.device_id,
        )
        try:
            await self._stub.NotifyDevice(
                internal_pb2.NotifyDeviceRequest(
                    account_id=requester.account_id, device_id=requester.device_id, notice=notice
                ),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in RETRYABLE:
                raise _unavailable(exc) from None
            # A refusal of the request itself (a device id svc_message does not
            # take): telling it again would be refused again.
            log.warning(
                "restore_notice_refused",
                code=exc.code().name,
                details=exc.details(),
                media_id=media_id,
            )

    async def close(self) -> None:
        await self._channel.close(grace=None)
