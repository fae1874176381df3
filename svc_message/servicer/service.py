"""MessageService as registered with gRPC: the unary servicer plus the stream.

Registered by hand rather than with the generated ``add_..._to_server`` so that
ListMessages may answer with bytes it encoded itself: pages served from the
recent cache are already in wire form and are sent without a parse and a
re-serialization.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from parley.message.v1 import messages_pb2 as pb
from svc_message.servicer.messages import MessageUnaryServicer
from svc_message.servicer.stream import StreamServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MessageService"].full_name


def _serialize(message_type: Any) -> Callable[[Any], bytes]:
    def serialize(response: Any) -> bytes:
        if isinstance(response, bytes):
            return response
        encoded: bytes = message_type.SerializeToString(response)
        return encoded

    return serialize


def register(server: grpc.aio.Server, unary: MessageUnaryServicer, stream: StreamServicer) -> None:
    def method(behavior: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=request.FromString,
            response_serializer=_serialize(response),
        )

    handlers = {
        "CreateDirectConversation": method(
            unary.CreateDirectConversation,
            pb.CreateDirectConversationRequest,
            pb.ConversationView,
        ),
        "GetConversation": method(
            unary.GetConversation, pb.GetConversationRequest, pb.ConversationView
        ),
        "ListConversations": method(
            unary.ListConversations, pb.ListConversationsRequest, pb.ListConversationsResponse
        ),
        "SendMessage": method(unary.SendMessage, pb.SendMessageRequest, pb.SendMessageResponse),
        "ListMessages": method(unary.ListMessages, pb.ListMessagesRequest, pb.ListMessagesResponse),
        "MarkDelivered": method(unary.MarkDelivered, pb.MarkDeliveredRequest, pb.Watermarks),
        "MarkRead": method(unary.MarkRead, pb.MarkReadRequest, pb.Watermarks),
        "Connect": grpc.stream_stream_rpc_method_handler(
            stream.Connect,
            request_deserializer=pb.ClientEvent.FromString,
            response_serializer=pb.ServerEvent.SerializeToString,
        ),
    }
    declared = {m.name for m in pb.DESCRIPTOR.services_by_name["MessageService"].methods}
    assert declared == set(handlers), (
        f"handlers out of step with the proto: {declared ^ set(handlers)}"
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
