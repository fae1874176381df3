"""Tracing (parley_core.telemetry), the traced doorbell framing, and the
plain histograms behind the hot-path metrics."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from parley.message.v1 import messages_pb2 as pb
from parley_core.config import ConfigError, TracingSettings, load_settings
from parley_core.histogram import Histogram
from parley_core.telemetry import (
    SPAN_CONTEXT_BYTES,
    Tracing,
    build_tracing,
    pack_span_context,
    unpack_span_context,
)
from svc_keys.storage.notices import pre_keys_low_event
from svc_message.domain.streams import Hub, StreamSession
from svc_message.model import EventKind
from svc_message.model.broadcast import Broadcast
from svc_message.servicer.convert import ProtoEventCodec
from svc_message.storage.doorbell import (
    TRACED_MARK,
    framed,
    heard,
    inbox,
    topic,
    traced,
    untraced,
)

ON = TracingSettings(enabled=True, otlp_endpoint="http://127.0.0.1:4317")


def tracing_with(exporter: InMemorySpanExporter, *, ratio: float = 1.0) -> Tracing:
    settings = ON.model_copy(update={"sample_ratio": ratio})
    return build_tracing(settings, service="svc_test", region="eu", exporter=exporter)


def test_tracing_is_off_by_default_and_needs_an_endpoint_when_on() -> None:
    assert load_settings(environ={}).telemetry.tracing.enabled is False
    off = build_tracing(TracingSettings(), service="svc_test", region="eu")
    assert not off.enabled
    assert off.server_interceptors() == []
    assert off.client_interceptors() == []
    assert off.start_child("deliver", b"\x01" * SPAN_CONTEXT_BYTES) is None
    with pytest.raises(ConfigError, match="otlp_endpoint"):
        load_settings(environ={"PARLEY_TELEMETRY__TRACING__ENABLED": "true"})
    with pytest.raises(ConfigError, match="otlp_endpoint"):
        load_settings(environ={"PARLEY_TELEMETRY__TRACING__OTLP_ENDPOINT": "127.0.0.1:4317"})
    on = load_settings(
        environ={
            "PARLEY_TELEMETRY__TRACING__ENABLED": "true",
            "PARLEY_TELEMETRY__TRACING__OTLP_ENDPOINT": "http://jaeger:4317",
        }
    )
    assert on.telemetry.tracing.otlp_endpoint == "http://jaeger:4317"


def test_span_context_packs_into_25_bytes_and_back() -> None:
    context = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    packed = pack_span_context(context)
    assert len(packed) == SPAN_CONTEXT_BYTES
    back = unpack_span_context(packed)
    assert back is not None
    assert (back.trace_id, back.span_id, back.trace_flags) == (
        context.trace_id,
        context.span_id,
        context.trace_flags,
    )
    assert back.is_remote
    assert unpack_span_context(packed[:-1]) is None
    assert unpack_span_context(bytes(SPAN_CONTEXT_BYTES)) is None  # all-zero ids are invalid


async def test_a_child_continues_the_captured_trace() -> None:
    exporter = InMemorySpanExporter()
    tracing = tracing_with(exporter)
    assert tracing.capture() is None  # no current span
    tracer = tracing._provider.get_tracer("test")  # type: ignore[union-attr]
    with tracer.start_as_current_span("SendMessage") as send:
        carried = tracing.capture()
    assert carried is not None
    deliver = tracing.start_child("deliver", carried, attributes={"parley.seq": 7})
    assert deliver is not None
    deliver.end()
    assert tracing.start_child("deliver", b"short") is None
    await tracing.shutdown()  # flushes
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"SendMessage", "deliver"}
    child = spans["deliver"]
    assert child.context.trace_id == send.get_span_context().trace_id
    assert child.parent is not None
    assert child.parent.span_id == send.get_span_context().span_id
    assert child.kind == SpanKind.CONSUMER
    assert child.attributes == {"parley.seq": 7}
    assert child.resource.attributes["service.name"] == "svc_test"
    assert child.resource.attributes["cloud.region"] == "eu"


async def test_an_unsampled_trace_is_not_carried_on() -> None:
    exporter = InMemorySpanExporter()
    tracing = tracing_with(exporter, ratio=0.0)
    tracer = tracing._provider.get_tracer("test")  # type: ignore[union-attr]
    with tracer.start_as_current_span("SendMessage"):
        assert tracing.capture() is None
    await tracing.shutdown()
    assert exporter.get_finished_spans() == ()


def test_interceptors_exist_only_when_tracing_is_on() -> None:
    tracing = tracing_with(InMemorySpanExporter())
    assert len(tracing.server_interceptors()) == 1
    assert len(tracing.client_interceptors()) == 4  # one per call shape


# -- the doorbell framing ---------------------------------------------------


class Subscriptions:
    def __init__(self) -> None:
        self.followed: set[str] = set()

    async def subscribe(
        self, *, conversations: Iterable[str] = (), accounts: Iterable[str] = ()
    ) -> None:
        self.followed.update(conversations, accounts)

    async def unsubscribe(
        self, *, conversations: Iterable[str] = (), accounts: Iterable[str] = ()
    ) -> None:
        self.followed.difference_update(conversations, accounts)


def message_event(conversation_id: str, seq: int) -> bytes:
    message = pb.Message(conversation_id=conversation_id, seq=seq, version=seq, body=b"hi")
    message.create_time.FromMilliseconds(1_700_000_000_123)
    return pb.Event(message=message).SerializeToString()


def test_no_event_starts_with_the_traced_mark() -> None:
    codec = ProtoEventCodec()
    assert pre_keys_low_event(device_id="d", count=3)[0] != TRACED_MARK
    assert message_event("c", 1)[0] != TRACED_MARK
    assert codec.decode(bytes((TRACED_MARK,)) + message_event("c", 1)) is None
    context = b"\x01" * SPAN_CONTEXT_BYTES
    wrapped = traced(context, message_event("c", 1))
    assert wrapped[0] == TRACED_MARK
    assert untraced(wrapped) == (context, message_event("c", 1))


def test_the_doorbell_names_channels_and_frames_traces_itself() -> None:
    context = b"\x03" * SPAN_CONTEXT_BYTES
    sent = Broadcast(message_event("c1", 1), conversations=("c1",), trace=context)
    assert heard(topic("c1"), framed(sent)) == sent
    assert framed(Broadcast(b"plain", accounts=("a1",))) == b"plain"
    assert heard(inbox("a1"), b"plain") == Broadcast(b"plain", accounts=("a1",))
    assert heard("parley:elsewhere", b"plain") is None


def ring(channel: str, payload: bytes) -> Broadcast:
    broadcast = heard(channel, payload)
    assert broadcast is not None
    return broadcast


async def test_the_hub_reads_traced_and_plain_payloads() -> None:
    hub = Hub(Subscriptions(), ProtoEventCodec())
    session = StreamSession(
        account_id="a1", device_id="d1", expires_at=time.time() + 60, queue_limit=16
    )
    await hub.attach(session, ["c1"])
    context = b"\x02" * SPAN_CONTEXT_BYTES
    hub.dispatch(ring(topic("c1"), traced(context, message_event("c1", 1))))
    hub.dispatch(ring(topic("c1"), message_event("c1", 2)))
    # svc_keys publishes key notices without a frame: they still arrive.
    hub.dispatch(ring(inbox("a1"), pre_keys_low_event(device_id="d1", count=3)))
    hub.dispatch(ring(inbox("a1"), b"\xff\xff not an event"))
    batch = await session.next_batch(clock=time.time)
    assert [e.kind for e in batch] == [EventKind.MESSAGE, EventKind.MESSAGE, EventKind.KEY_NOTICE]
    assert [e.trace for e in batch] == [context, b"", b""]
    # Live messages carry their commit time, for the delivery lag.
    assert [e.committed_ms for e in batch] == [1_700_000_000_123, 1_700_000_000_123, 0]
    assert hub.fanout.count == 3  # the unreadable payload reached nobody


# -- plain histograms ---------------------------------------------------------


class One(Collector):
    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram

    def collect(self) -> Iterator[HistogramMetricFamily]:
        yield self._histogram.family("parley_test_seconds", "A test histogram.")


def test_histogram_buckets_count_values_up_to_their_bound() -> None:
    histogram = Histogram((0.1, 1, 10))
    for value in (0.05, 0.1, 0.5, 1.0, 3, 100):
        histogram.observe(value)
    registry = CollectorRegistry()
    registry.register(One(histogram))
    text = generate_latest(registry).decode()
    assert 'parley_test_seconds_bucket{le="0.1"} 2.0' in text
    assert 'parley_test_seconds_bucket{le="1.0"} 4.0' in text
    assert 'parley_test_seconds_bucket{le="10.0"} 5.0' in text
    assert 'parley_test_seconds_bucket{le="+Inf"} 6.0' in text
    assert "parley_test_seconds_count 6.0" in text
    assert "parley_test_seconds_sum 104.65" in text
