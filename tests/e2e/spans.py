"""Build GenAI spans with the real OpenTelemetry SDK and send them with its OTLP exporters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode


def make_spans(
    calls: Sequence[dict[str, Any]], *, resource: dict[str, Any] | None = None
) -> list[ReadableSpan]:
    """One finished CLIENT span per call dict (attributes; ``_error`` marks a failure)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "e2e", **(resource or {})}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    for call in calls:
        attrs = {k: v for k, v in call.items() if not k.startswith("_")}
        span = tracer.start_span(
            f"chat {attrs.get('gen_ai.request.model', '')}", kind=SpanKind.CLIENT, attributes=attrs
        )
        if call.get("_error"):
            span.set_status(Status(StatusCode.ERROR, call["_error"]))
        span.end()
    provider.shutdown()
    return list(memory.get_finished_spans())


def chat(
    consumer: str,
    *,
    input_tokens: int,
    output_tokens: int,
    model: str = "gpt-4o",
    provider: str = "openai",
    response_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.provider.name": provider,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        "meterline.consumer.id": consumer,
    }
    if response_id:
        attrs["gen_ai.response.id"] = response_id
    attrs.update(extra)
    return attrs
