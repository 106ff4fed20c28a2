"""Consumer and feature: context manager, decorator, baggage, environment; sampling."""

from __future__ import annotations

import asyncio

import httpx2
import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from meterline.instrumentation import MeterlineInstrumentor, consumer

from .conftest import Recorded
from .fakes import FakeLLM

URL = "https://api.openai.com/v1/chat/completions"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def post(fake: FakeLLM) -> None:
    httpx2.Client(transport=httpx2.MockTransport(fake.handler(httpx2))).post(URL, json=CHAT)


def who(recorded: Recorded) -> list[tuple[object, object]]:
    spans = sorted(recorded.spans(), key=lambda s: s.start_time or 0)
    return [
        (s.attributes.get("meterline.consumer.id"), s.attributes.get("meterline.feature"))
        for s in spans
    ]


def test_context_manager_nesting_and_decorators(recorded: Recorded, fake: FakeLLM) -> None:
    with consumer("acme", feature="summarize"):
        post(fake)
        with consumer("acme"):
            post(fake)  # same consumer: keeps the outer feature
        with consumer("globex"):
            post(fake)  # another consumer: no feature
    post(fake)

    @consumer("initech", feature="search")
    def sync_work() -> None:
        post(fake)

    @consumer("umbrella", feature="chat")
    async def async_work() -> None:
        transport = httpx2.MockTransport(fake.handler(httpx2))
        async with httpx2.AsyncClient(transport=transport) as c:
            await c.post(URL, json=CHAT)

    sync_work()
    asyncio.run(async_work())
    assert who(recorded) == [
        ("acme", "summarize"),
        ("acme", "summarize"),
        ("globex", None),
        (None, None),
        ("initech", "search"),
        ("umbrella", "chat"),
    ]


def test_baggage_then_environment(
    recorded: Recorded, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = baggage.set_baggage("meterline.consumer.id", "from-gateway")
    ctx = baggage.set_baggage("meterline.feature", "rag", context=ctx)
    token = context.attach(ctx)
    try:
        post(fake)
        with consumer("explicit"):
            post(fake)  # explicit consumer wins; the feature still comes from baggage
    finally:
        context.detach(token)
    monkeypatch.setenv("METERLINE_CONSUMER_ID", "default-tenant")
    from meterline.instrumentation import attribution

    attribution.load_defaults()
    post(fake)
    assert who(recorded) == [
        ("from-gateway", "rag"),
        ("explicit", "rag"),
        ("default-tenant", None),
    ]


def test_consumer_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="consumer_id must be a str"):
        consumer(42)  # type: ignore[arg-type]


def test_usage_exported_whatever_the_app_samples(fake: FakeLLM) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = MeterlineInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        app_tracer = provider.get_tracer("app")
        for _ in range(40):
            with app_tracer.start_as_current_span("handle request"):
                post(fake)
    finally:
        instrumentor.uninstrument()
    spans = exporter.get_finished_spans()
    ours = [s for s in spans if s.instrumentation_scope.name == "meterline.instrumentation"]
    assert len(ours) == 40
    assert all(s.attributes["gen_ai.usage.input_tokens"] == 1200 for s in ours)
    app_spans = [s for s in spans if s.instrumentation_scope.name == "app"]
    assert len(app_spans) < 10  # the app's own sampling is untouched
    # Our spans belong to the app's traces.
    assert all(s.parent is not None for s in ours)
    assert trace.get_current_span() is trace.INVALID_SPAN
