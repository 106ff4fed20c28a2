"""The real openai SDK (httpx2) against a fake provider: exact usage, app unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import openai
import pytest

from meterline.instrumentation import MeterlineInstrumentor

from .conftest import Recorded
from .fakes import FakeLLM

MESSAGES = [{"role": "user", "content": "Say something about foxes."}]


def client(fake: FakeLLM, **handler: Any) -> openai.OpenAI:
    transport = httpx2.MockTransport(fake.handler(httpx2, **handler))
    return openai.OpenAI(
        api_key="sk-test",
        base_url="https://api.openai.com/v1",
        http_client=httpx2.Client(transport=transport),
    )


def async_client(fake: FakeLLM, **handler: Any) -> openai.AsyncOpenAI:
    transport = httpx2.MockTransport(fake.handler(httpx2, **handler))
    return openai.AsyncOpenAI(
        api_key="sk-test",
        base_url="https://api.openai.com/v1",
        http_client=httpx2.AsyncClient(transport=transport),
    )


def dump_stream(stream: Any) -> list[dict[str, Any]]:
    return [chunk.model_dump() for chunk in stream]


_PROVIDERS: dict[int, Any] = {}


@pytest.fixture(autouse=True)
def _remember_provider(recorded: Recorded) -> None:
    _PROVIDERS[0] = recorded.provider


def without_meterline(fn: Any) -> Any:
    """Run ``fn`` with meterline uninstrumented (the app's reference behaviour)."""
    instrumentor = MeterlineInstrumentor()
    instrumentor.uninstrument()
    try:
        return fn()
    finally:
        instrumentor.instrument(tracer_provider=_PROVIDERS[0])


def test_chat_non_streamed(recorded: Recorded, fake: FakeLLM) -> None:
    response = client(fake).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=500
    )
    assert response.choices[0].message.content == "The quick brown fox jumps over the lazy dog."
    span = recorded.spans()[0]
    assert span.name == "chat gpt-4o"
    assert span.kind.name == "CLIENT"
    assert recorded.one() == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.request.max_tokens": 500,
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.response.id": "chatcmpl-abc123",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 1024,
        "gen_ai.usage.reasoning.output_tokens": 192,
        "meterline.request.stream": False,
        "server.address": "api.openai.com",
        "server.port": 443,
        "http.response.status_code": 200,
    }


def test_stream_injects_usage_and_hides_its_chunk(recorded: Recorded, fake: FakeLLM) -> None:
    def run() -> list[dict[str, Any]]:
        stream = client(fake).chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True
        )
        return dump_stream(stream)

    reference = without_meterline(run)
    assert "stream_options" not in fake.requests[-1]["body"]
    chunks = run()
    assert fake.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    # The app reads what it would have read without meterline: no usage-only chunk.
    assert chunks == reference
    assert all(c["choices"] for c in chunks)
    attrs = recorded.one()
    assert attrs["gen_ai.usage.input_tokens"] == 1200
    assert attrs["gen_ai.usage.output_tokens"] == 10
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 1024
    assert attrs["meterline.request.stream"] is True
    assert attrs["gen_ai.response.id"] == "chatcmpl-str1"
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert "meterline.usage.estimated" not in attrs


def test_stream_app_that_asked_keeps_usage_chunk(recorded: Recorded, fake: FakeLLM) -> None:
    def run() -> list[dict[str, Any]]:
        stream = client(fake).chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        return dump_stream(stream)

    reference = without_meterline(run)
    chunks = run()
    assert chunks == reference
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 1200
    assert recorded.one()["gen_ai.usage.output_tokens"] == 10


def test_async_stream_and_non_stream(recorded: Recorded, fake: FakeLLM) -> None:
    async def run() -> tuple[str, list[Any]]:
        ac = async_client(fake)
        response = await ac.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        stream = await ac.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
        return response.choices[0].message.content or "", chunks

    content, chunks = asyncio.run(run())
    assert content.startswith("The quick")
    assert all(c.choices for c in chunks)
    spans = sorted(recorded.spans(), key=lambda s: s.start_time or 0)
    assert [s.attributes["gen_ai.usage.input_tokens"] for s in spans] == [1200, 1200]
    assert [s.attributes["meterline.request.stream"] for s in spans] == [False, True]


def test_stream_closed_early_is_estimated(recorded: Recorded, fake: FakeLLM) -> None:
    stream = client(fake).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    seen = []
    for chunk in stream:
        seen.append(chunk)
        if len(seen) == 4:
            break
    stream.close()
    attrs = recorded.one()
    assert attrs["meterline.usage.estimated"] is True
    assert attrs["gen_ai.usage.output_tokens"] >= 3  # one token per delta event at least
    assert attrs["gen_ai.usage.input_tokens"] > 0  # from the request size
    assert "error.type" not in attrs
    assert len(recorded.spans()) == 1  # ended once


def test_connection_drop_mid_stream(recorded: Recorded, fake: FakeLLM) -> None:
    def run() -> tuple[int, str]:
        stream = client(fake, cut_after=10, drop=True).chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True
        )
        count = 0
        try:
            for _ in stream:
                count += 1
        except Exception as exc:
            return count, type(exc).__name__
        return count, ""

    reference = without_meterline(run)
    assert run() == reference and reference[1]
    attrs = recorded.one()
    assert attrs["error.type"] == "httpx2.RemoteProtocolError"
    assert attrs["meterline.usage.estimated"] is True


def test_retries_each_attempt_is_a_span(recorded: Recorded) -> None:
    fake = FakeLLM(fail=[429, 500])
    response = client(fake).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert response.usage is not None and response.usage.prompt_tokens == 1200
    spans = sorted(recorded.spans(), key=lambda s: s.start_time or 0)
    assert [s.attributes.get("error.type") for s in spans] == ["429", "500", None]
    assert [s.attributes["http.response.status_code"] for s in spans] == [429, 500, 200]
    assert spans[0].status.status_code.name == "ERROR"
    assert spans[0].attributes["gen_ai.usage.input_tokens"] == 0


def test_exhausted_retries_raise_the_same_error(recorded: Recorded) -> None:
    def run() -> str:
        try:
            client(FakeLLM(fail=[429, 429, 429])).chat.completions.create(
                model="gpt-4o", messages=MESSAGES
            )
        except openai.RateLimitError as exc:
            return f"{type(exc).__name__} {exc.status_code} {exc.body}"
        return "no error"

    reference = without_meterline(run)
    assert run() == reference
    assert [s.attributes["error.type"] for s in recorded.spans()] == ["429"] * 3


def test_transport_error(recorded: Recorded) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    oc = openai.OpenAI(
        api_key="k",
        base_url="https://api.openai.com/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    with pytest.raises(openai.APIConnectionError):
        oc.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    attrs = recorded.one()
    assert attrs["error.type"] == "httpx2.ConnectError"
    assert "http.response.status_code" not in attrs


def test_responses_api(recorded: Recorded, fake: FakeLLM) -> None:
    oc = client(fake)
    response = oc.responses.create(model="o4-mini", input="hi")
    assert response.output_text.startswith("The quick")
    stream = oc.responses.create(model="o4-mini", input="hi", stream=True)
    events = [e.type for e in stream]
    assert events[-1] == "response.completed"
    for span in recorded.spans():
        attrs = span.attributes
        assert attrs["gen_ai.usage.input_tokens"] == 900
        assert attrs["gen_ai.usage.output_tokens"] == 700
        assert attrs["gen_ai.usage.cache_read.input_tokens"] == 512
        assert attrs["gen_ai.usage.reasoning.output_tokens"] == 640
        assert attrs["gen_ai.response.id"] == "resp_123"
        assert "meterline.usage.estimated" not in attrs
    assert len(recorded.spans()) == 2


def test_embeddings_and_legacy_completions(recorded: Recorded, fake: FakeLLM) -> None:
    oc = client(fake)
    result = oc.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2
    attrs = recorded.one()
    assert attrs["gen_ai.operation.name"] == "embeddings"
    assert attrs["gen_ai.usage.input_tokens"] == 16
    assert attrs["gen_ai.usage.output_tokens"] == 0
    recorded.clear()
    oc.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
    attrs = recorded.one()
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.usage.input_tokens"] == 5
    assert attrs["gen_ai.usage.output_tokens"] == 16
    assert attrs["gen_ai.response.finish_reasons"] == ("length",)


def test_azure_deployment_and_compatible_hosts(
    recorded: Recorded, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = httpx2.MockTransport(fake.handler(httpx2))
    azure = openai.AzureOpenAI(
        api_key="k",
        api_version="2024-10-21",
        azure_endpoint="https://myres.openai.azure.com",
        azure_deployment="prod-4o",
        http_client=httpx2.Client(transport=transport),
    )
    azure.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    attrs = recorded.one()
    assert attrs["gen_ai.provider.name"] == "azure.ai.openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o"
    recorded.clear()
    for base, provider in [
        ("https://api.groq.com/openai/v1", "groq"),
        ("http://localhost:8000/v1", "openai"),  # vLLM: provider from the API shape
    ]:
        oc = openai.OpenAI(
            api_key="k", base_url=base, http_client=httpx2.Client(transport=transport)
        )
        oc.chat.completions.create(model="llama", messages=MESSAGES)
        assert recorded.one()["gen_ai.provider.name"] == provider
        recorded.clear()


def test_provider_hosts_override(fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    instrumentor = MeterlineInstrumentor()
    instrumentor.uninstrument()
    monkeypatch.setenv(
        "METERLINE_PROVIDER_HOSTS", "localhost:11434=ollama, llm.internal=mistral_ai"
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor.instrument(tracer_provider=provider)
    try:
        transport = httpx2.MockTransport(fake.handler(httpx2))
        for base in ("http://localhost:11434/v1", "https://llm.internal/v1"):
            oc = openai.OpenAI(
                api_key="k", base_url=base, http_client=httpx2.Client(transport=transport)
            )
            oc.chat.completions.create(model="m", messages=MESSAGES)
        names = [s.attributes["gen_ai.provider.name"] for s in exporter.get_finished_spans()]
        assert names == ["ollama", "mistral_ai"]
    finally:
        instrumentor.uninstrument()
        instrumentor.instrument(tracer_provider=_PROVIDERS[0])
