"""Fixtures: an in-memory SDK with meterline instrumented into it, and fake providers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meterline.instrumentation import MeterlineInstrumentor, attribution

from .fakes import FakeLLM

SCOPE = "meterline.instrumentation"


class Recorded:
    """The in-memory exporter, with helpers to read meterline's spans."""

    def __init__(self, exporter: InMemorySpanExporter, provider: TracerProvider) -> None:
        self.exporter = exporter
        self.provider = provider

    def spans(self) -> list[ReadableSpan]:
        return [
            s
            for s in self.exporter.get_finished_spans()
            if s.instrumentation_scope is not None and s.instrumentation_scope.name == SCOPE
        ]

    def one(self) -> dict[str, Any]:
        spans = self.spans()
        assert len(spans) == 1, [s.name for s in spans]
        return dict(spans[0].attributes or {})

    def clear(self) -> None:
        self.exporter.clear()


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    monkeypatch.delenv("METERLINE_CONSUMER_ID", raising=False)
    monkeypatch.delenv("METERLINE_FEATURE", raising=False)
    monkeypatch.delenv("METERLINE_PROVIDER_HOSTS", raising=False)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = MeterlineInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield Recorded(exporter, provider)
    finally:
        instrumentor.uninstrument()
        attribution.load_defaults()
        provider.shutdown()


@pytest.fixture
def fake() -> FakeLLM:
    return FakeLLM()
