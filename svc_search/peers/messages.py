"""svc_message's internal service as svc_search sees it: one
CheckSearchMessages call per IndexMessage and per page of a Search, with
the deployment's service credential."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import structlog

from parley.message.v1 import internal_pb2, internal_pb2_grpc
from parley_core.auth.credentials import ServiceCredential
from parley_core.errors import Reason, Unavailable
from svc_search.model import Check, ConversationState, MessageState

log = structlog.get_logger(__name__)

CALL_TIMEOUT_SECONDS = 5.0


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

    async def check(
        self, account_id: str, conversation_ids: Sequence[str], message_ids: Sequence[str]
    ) -> Check:
        try:
            reply = await self._stub.CheckSearchMessages(
                internal_pb2.CheckSearchMessagesRequest(
                    account_id=account_id,
                    conversation_ids=list(conversation_ids),
                    message_ids=list(message_ids),
                ),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("message_peer_failed", code=exc.code().name, details=exc.details())
            raise Unavailable(
                "svc_message did not answer a search check; retry",
                reason=Reason.DEPENDENCY_UNAVAILABLE,
                retry_after_seconds=1.0,
            ) from None
        asked_conversations = set(conversation_ids)
        asked_messages = set(message_ids)
        return Check(
            conversations={
                c.conversation_id: ConversationState(
                    conversation_id=c.conversation_id,
                    server_search=c.server_search,
                    searchable=c.searchable,
                )
                for c in reply.conversations
                if c.conversation_id in asked_conversations
            },
            messages={
                m.message_id: MessageState(
                    message_id=m.message_id,
                    conversation_id=m.conversation_id,
                    sender_account_id=m.sender_account_id,
                    seq=m.seq,
                    at_ms=m.send_time.seconds * 1000 + m.send_time.nanos // 1_000_000,
                    deleted=m.deleted,
                    readable=m.readable,
                )
                for m in reply.messages
                if m.message_id in asked_messages
            },
        )

    async def close(self) -> None:
        await self._channel.close(grace=None)
