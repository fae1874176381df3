"""Tracing across processes: a stack of its own with tracing on, exporting
OTLP to a small collector run by the test.

One trace must follow a message from SendMessage on one svc_message process
to its "deliver" span on another (the span context travels in the Redis
doorbell payload), and svc_message's call to svc_keys must join the trace of
the RPC that made it. The spans arrive when the stack stops: each process
flushes its exporter on the way out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc
from parley_dev.stack import LocalStack
from tests.conftest import TEST_SHUTDOWN_GRACE_SECONDS
from tests.users import direct, open_stream, send, sign_up, synced

SEND = "/parley.message.v1.MessageService/SendMessage"
CREATE_DIRECT = "/parley.message.v1.MessageService/CreateDirectConversation"
GET_ACCOUNT = "/parley.keys.v1.AccountService/GetAccount"


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    instance: str
    name: str
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    kind: int
    status_code: int
    attributes: dict[str, Any]


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


class OtlpCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ExportedSpan(
                            service=resource["service.name"],
                            instance=resource["service.instance.id"],
                            name=span.name,
                            trace_id=span.trace_id,
                            span_id=span.span_id,
                            parent_span_id=span.parent_span_id,
                            kind=span.kind,
                            status_code=span.status.code,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[ExportedSpan]:
        return [s for s in self.spans if s.name == name]


async def test_one_trace_from_send_to_delivery_on_another_process(tmp_path: Path) -> None:
    collector = OtlpCollector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tracing = {"enabled": True, "otlp_endpoint": f"http://127.0.0.1:{port}"}
    try:
        async with LocalStack.with_free_ports(
            root=tmp_path / "stack",
            message_instances=2,
            shutdown_grace_seconds=TEST_SHUTDOWN_GRACE_SECONDS,
            extra_config={"telemetry": {"tracing": tracing}},
        ) as stack:
            channels = [
                grpc.aio.insecure_channel(t) for t in (stack.keys_target, *stack.message_targets)
            ]
            keys = accounts_pb2_grpc.AccountServiceStub(channels[0])
            on_a = messages_pb2_grpc.MessageServiceStub(channels[1])
            on_b = messages_pb2_grpc.MessageServiceStub(channels[2])
            alice, bob = await sign_up(keys), await sign_up(keys)
            conversation = await direct(on_a, alice, bob)
            stream = await open_stream(on_b, bob)
            try:
                await stream.wait_for(synced)
                sent = await send(on_a, alice, conversation, b"traced")
                await stream.wait_for(lambda s: len(s.messages(conversation)) == 1)
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await on_a.GetConversation(
                        mpb.GetConversationRequest(conversation_id=str(uuid.uuid4())),
                        metadata=alice.md,
                    )
                assert failed.value.code() == grpc.StatusCode.NOT_FOUND
            finally:
                await stream.close()
                for channel in channels:
                    await channel.close()
        # Stopped: every process has flushed its spans.
    finally:
        await server.stop(None)

    # Alice sent through process A. When B owns the conversation, A forwards
    # the call and B's server span (the one that commits) is a child of A's
    # client span: one trace either way.
    sends = [s for s in collector.named(SEND) if s.kind == 2]  # SPAN_KIND_SERVER
    assert {s.service for s in sends} == {"svc_message"}
    assert len({s.trace_id for s in sends}) == 1
    client_spans = {s.span_id for s in collector.named(SEND) if s.kind == 3}
    (send_span,) = [s for s in sends if s.parent_span_id not in client_spans]
    forwarded = [s for s in sends if s.parent_span_id in client_spans]
    assert len(forwarded) <= 1
    committed = forwarded[0] if forwarded else send_span
    deliveries = [s for s in collector.named("deliver") if s.trace_id == send_span.trace_id]
    # Bob's stream, on the other process, wrote it; alice had no stream.
    (deliver,) = deliveries
    assert deliver.parent_span_id == committed.span_id
    assert deliver.service == "svc_message"
    assert deliver.instance != send_span.instance
    assert deliver.attributes["parley.conversation_id"] == conversation
    assert deliver.attributes["parley.seq"] == sent.seq
    assert deliver.attributes["parley.device_id"] == bob.device_id

    # svc_message asked svc_keys whether bob exists, inside the creating call's trace.
    (create,) = collector.named(CREATE_DIRECT)
    client = [s for s in collector.named(GET_ACCOUNT) if s.service == "svc_message" and s.kind == 3]
    (lookup,) = [s for s in client if s.trace_id == create.trace_id]
    assert lookup.parent_span_id == create.span_id
    (served,) = [
        s
        for s in collector.named(GET_ACCOUNT)
        if s.service == "svc_keys" and s.trace_id == create.trace_id
    ]
    assert served.parent_span_id == lookup.span_id
    # Unrelated calls are traces of their own.
    assert create.trace_id != send_span.trace_id
    # Parley's own error mapping reaches the span: the status code, and no
    # error mark for a caller's mistake.
    (missing,) = collector.named("/parley.message.v1.MessageService/GetConversation")
    assert missing.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.status_code != 2  # STATUS_CODE_ERROR
    assert send_span.attributes["rpc.grpc.status_code"] == 0
