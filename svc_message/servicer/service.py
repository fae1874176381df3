"""MessageService as registered with gRPC: the unary servicer plus the stream."""

from __future__ import annotations

from typing import cast

import grpc

from parley.message.v1 import messages_pb2, messages_pb2_grpc
from svc_message.servicer.messages import MessageUnaryServicer
from svc_message.servicer.stream import StreamServicer

SERVICE_NAME = messages_pb2.DESCRIPTOR.services_by_name["MessageService"].full_name


def register(server: grpc.aio.Server, unary: MessageUnaryServicer, stream: StreamServicer) -> None:
    """gRPC looks the handlers up by name; the two halves are kept in their own
    modules and presented as one servicer here."""

    class _MessageService:
        CreateDirectConversation = unary.CreateDirectConversation
        GetConversation = unary.GetConversation
        ListConversations = unary.ListConversations
        SendMessage = unary.SendMessage
        ListMessages = unary.ListMessages
        MarkDelivered = unary.MarkDelivered
        MarkRead = unary.MarkRead
        Connect = stream.Connect

    messages_pb2_grpc.add_MessageServiceServicer_to_server(
        cast(messages_pb2_grpc.MessageServiceServicer, _MessageService()), server
    )
