"""OpenTelemetry tracing of one service process.

Each composition root builds one ``Tracing`` from the settings and hands it
to what needs it: the gRPC server (a server interceptor per process), the
gRPC channels to other services (client interceptors), and svc_message's
send and delivery paths, which carry a span context through the Redis
doorbell as 25 bytes (``pack_span_context``). No global tracer provider is
installed; only the W3C propagator that the OpenTelemetry API itself keeps
(the gRPC instrumentation reads metadata through it).

Off (the default) it costs nothing per call: no interceptor is installed,
``capture`` is not called (callers hold ``None`` instead of it), and
``start_child`` is never reached because nothing carries a span context.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from typing import Any, cast

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import AttributeValue

from parley_core.config import TracingSettings

# trace id (16 bytes), span id (8), trace flags (1): the binary form of a
# W3C traceparent without its version byte.
SPAN_CONTEXT_BYTES = 25
INSTRUMENTATION_NAME = "parley"


def pack_span_context(context: SpanContext) -> bytes:
    return (
        context.trace_id.to_bytes(16, "big")
        + context.span_id.to_bytes(8, "big")
        + bytes((int(context.trace_flags) & 0xFF,))
    )


def unpack_span_context(data: bytes) -> SpanContext | None:
    """The remote span context ``pack_span_context`` wrote; None if malformed."""
    if len(data) != SPAN_CONTEXT_BYTES:
        return None
    context = SpanContext(
        trace_id=int.from_bytes(data[:16], "big"),
        span_id=int.from_bytes(data[16:24], "big"),
        is_remote=True,
        trace_flags=TraceFlags(data[24]),
    )
    return context if context.is_valid else None


class Tracing:
    """The process's tracer provider, or nothing when tracing is off."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(INSTRUMENTATION_NAME) if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._provider is not None

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """To put before the service's own interceptor, so the server span
        covers authentication and error mapping too."""
        if self._provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        return [aio_server_interceptor(tracer_provider=self._provider)]  # type: ignore[no-untyped-call]

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """For ``grpc.aio`` channels to other services: client spans, and the
        trace context sent along in the call's metadata."""
        if self._provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        return cast(
            "list[grpc.aio.ClientInterceptor]",
            aio_client_interceptors(tracer_provider=self._provider),  # type: ignore[no-untyped-call]
        )

    def capture(self) -> bytes | None:
        """The current span's context, packed, when it is being recorded
        (an unsampled trace is not carried on: nothing downstream would keep it)."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid or not context.trace_flags.sampled:
            return None
        return pack_span_context(context)

    def start_child(
        self,
        name: str,
        parent: bytes,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        kind: SpanKind = SpanKind.CONSUMER,
    ) -> Span | None:
        """A span whose parent is the packed remote context ``parent``; the
        caller ends it. None when tracing is off or ``parent`` is unreadable."""
        if self._tracer is None:
            return None
        remote = unpack_span_context(parent)
        if remote is None:
            return None
        return self._tracer.start_span(
            name,
            context=trace.set_span_in_context(NonRecordingSpan(remote)),
            kind=kind,
            attributes=attributes,
        )

    async def shutdown(self) -> None:
        """Export what is buffered and stop (blocking I/O: off the event loop)."""
        if self._provider is not None:
            await asyncio.to_thread(self._provider.shutdown)


def build_tracing(
    settings: TracingSettings,
    *,
    service: str,
    region: str,
    exporter: SpanExporter | None = None,
    extra_resource: Mapping[str, str] | None = None,
) -> Tracing:
    """The process's tracing from the settings; ``exporter`` replaces the
    OTLP exporter (tests)."""
    if not settings.enabled:
        return Tracing()
    resource = Resource.create(
        {
            "service.name": settings.service_name or service,
            "service.namespace": "parley",
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
            "cloud.region": region,
            **(extra_resource or {}),
        }
    )
    provider = TracerProvider(
        resource=resource,
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=settings.otlp_endpoint, timeout=settings.export_timeout_seconds
        )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)
