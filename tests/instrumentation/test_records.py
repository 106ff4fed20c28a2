"""Span records: spooled and sent, a span is byte for byte what the OTLP exporter sends."""

from __future__ import annotations

from pathlib import Path

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState

from meterline.instrumentation.delivery.flush import flush_spool
from meterline.instrumentation.delivery.records import encode_records, span_record, to_request
from meterline.instrumentation.delivery.sender import OtlpHttpSender
from meterline.instrumentation.delivery.spool import OTLP, SPAN, Spool

from .fakes import OTLPReceiver
from .otlp import payload, span_ids


def rich_spans() -> list:  # type: ignore[type-arg]
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "svc", "deployment.environment": "prod"}),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("meterline.instrumentation", "0.1.0", "https://schema/1.26")
    other = provider.get_tracer("app")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "v1"), ("x", "y")]),
    )
    ctx = trace.set_span_in_context(NonRecordingSpan(remote))
    attrs = {
        "gen_ai.response.id": "chatcmpl-1", "gen_ai.usage.input_tokens": 2**40, "f": 0.25,
        "b": False, "strs": ("a", "ü €"), "ints": (1, -2), "floats": (1.5,), "empty": "",
    }  # fmt: skip
    span = tracer.start_span("chat gpt-4o", ctx, kind=SpanKind.CLIENT, attributes=attrs,
                             links=[Link(remote, {"k": "v"})])  # fmt: skip
    span.add_event("gen_ai.choice", {"index": 0}, timestamp=1_700_000_000_000_000_123)
    span.set_status(Status(StatusCode.ERROR, "429"))
    span.end()
    with other.start_as_current_span("plain"):
        pass
    return list(exporter.get_finished_spans())


def test_records_encode_to_the_exporters_bytes() -> None:
    spans = rich_spans()
    assert encode_records(span_record(s) for s in spans) == encode_spans(spans).SerializeToString()
    # Resent, the same bytes: the collector sees the same identity.
    records = [span_record(s) for s in spans]
    assert encode_records(records) == encode_records(records)


def test_otlp_and_span_records_go_in_one_request() -> None:
    spans = rich_spans()
    other = payload(2)
    request = to_request([(OTLP, other), (SPAN, span_record(spans[0]))])
    assert span_ids([request]) == [*span_ids([other]), spans[0].context.span_id.to_bytes(8, "big")]


def test_an_intact_record_that_is_not_ours_is_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    good = span_record(rich_spans()[0])
    spool.write_many([good, b'[99, "from a future version"]', b"{not json"])
    with OTLPReceiver() as receiver:
        report = flush_spool(spool, OtlpHttpSender(receiver.url))
    assert report.sent_files == 1 and report.remaining == 0
    assert receiver.bodies == [encode_records([good])]
    assert spool.status().corrupt == 1
