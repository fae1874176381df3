"""MessageService as registered with gRPC: the unary servicer plus the stream.

Registered by hand rather than with the generated ``add_..._to_server`` so that
ListMessages and Connect may answer with bytes encoded ahead: pages served from
the recent cache, and live events decoded once per process from the doorbell,
are already in wire form and are sent without a re-serialization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from parley.message.v1 import internal_pb2_grpc as igrpc
from parley.message.v1 import messages_pb2 as pb
from parley.message.v1 import replication_pb2_grpc as rgrpc
from svc_message.servicer.media import MessageInternalServicer
from svc_message.servicer.region_routing import RegionRouting
from svc_message.servicer.replication import RegionReplicationServicer
from svc_message.servicer.routing import OwnerRouting
from svc_message.servicer.stream import StreamServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MessageService"].full_name


def _serialize(message_type: Any) -> Callable[[Any], bytes]:
    def serialize(response: Any) -> bytes:
        if isinstance(response, bytes):
            return response
        encoded: bytes = message_type.SerializeToString(response)
        return encoded

    return serialize


def register(
    server: grpc.aio.Server,
    servicers: Sequence[object],
    stream: StreamServicer,
    routing: OwnerRouting | None = None,
    internal: MessageInternalServicer | None = None,
    region_routing: RegionRouting | None = None,
    replication: RegionReplicationServicer | None = None,
) -> None:
    """Each unary RPC is served by the first servicer with a method of its name;
    with ``routing``, feed changes of conversations owned elsewhere go there.
    ``internal`` serves MessageInternalService (svc_media's questions)."""
    if internal is not None:
        igrpc.add_MessageInternalServiceServicer_to_server(internal, server)
    if replication is not None:
        rgrpc.add_RegionReplicationServiceServicer_to_server(replication, server)

    def method(behavior: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=request.FromString,
            response_serializer=_serialize(response),
        )

    handlers: dict[str, grpc.RpcMethodHandler] = {  # type: ignore[type-arg]
        "Connect": grpc.stream_stream_rpc_method_handler(
            stream.Connect,
            request_deserializer=pb.ClientEvent.FromString,
            # Live events come framed: their ServerEvents are bytes already.
            response_serializer=_serialize(pb.ServerEvent),
        ),
    }
    for rpc in pb.DESCRIPTOR.services_by_name["MessageService"].methods:
        if rpc.name in handlers:
            continue
        behavior = next((getattr(s, rpc.name) for s in servicers if hasattr(s, rpc.name)), None)
        assert behavior is not None, f"no servicer implements {rpc.name}"
        if routing is not None:
            behavior = routing.wrap(rpc.name, behavior)
        # Outermost: a conversation of another region never reaches this
        # region's owner routing.
        if region_routing is not None:
            behavior = region_routing.wrap(rpc.name, behavior)
        handlers[rpc.name] = method(
            behavior, getattr(pb, rpc.input_type.name), getattr(pb, rpc.output_type.name)
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
