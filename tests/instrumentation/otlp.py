"""Real OTLP payloads for the delivery tests, and reading them back."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meterline.instrumentation.delivery.spool import Spool


def make_spans(n: int, name: str = "chat gpt-4o") -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    for i in range(n):
        with tracer.start_as_current_span(name, attributes={"i": i}):
            pass
    provider.shutdown()
    return list(exporter.get_finished_spans())


def payload(n: int) -> bytes:
    return encode_spans(make_spans(n)).SerializeToString()


def span_ids(bodies: Iterable[bytes]) -> list[bytes]:
    """Every span id in the bodies, in order (a span sent twice appears twice)."""
    out = []
    for body in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                out.extend(span.span_id for span in ss.spans)
    return out


def put(spool: Spool, *payloads: bytes) -> None:
    """Spool each payload as a sealed file of its own."""
    for p in payloads:
        spool.write(p)
        spool.seal()


def partial_success(rejected: int, message: str) -> bytes:
    response = ExportTraceServiceResponse()
    response.partial_success.rejected_spans = rejected
    response.partial_success.error_message = message
    return response.SerializeToString()


def rpc_status(message: str, code: int = 3) -> bytes:
    from google.rpc import status_pb2

    return status_pb2.Status(code=code, message=message).SerializeToString()
