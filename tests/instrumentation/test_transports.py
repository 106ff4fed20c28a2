"""httpx and httpx2, sync and async, MockTransport and a real loopback server; Gemini."""

from __future__ import annotations

import asyncio
import json

import httpx
import httpx2
import openai
import pytest

from .conftest import Recorded
from .fakes import FakeLLM, LoopbackLLM

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("lib", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_raw_clients_sync_and_async(recorded: Recorded, fake: FakeLLM, lib: object) -> None:
    transport = lib.MockTransport(fake.handler(lib))  # type: ignore[attr-defined]
    with lib.Client(transport=transport) as c:  # type: ignore[attr-defined]
        r = c.post("https://api.openai.com/v1/chat/completions", json=CHAT)
        assert r.json()["usage"]["prompt_tokens"] == 1200

    async def run() -> bytes:
        atransport = lib.MockTransport(fake.handler(lib))  # type: ignore[attr-defined]
        async with lib.AsyncClient(transport=atransport) as c:  # type: ignore[attr-defined]
            body = {**CHAT, "stream": True}
            url = "https://api.openai.com/v1/chat/completions"
            async with c.stream("POST", url, json=body) as r:
                return b"".join([chunk async for chunk in r.aiter_bytes()])

    raw = asyncio.run(run())
    assert b'"choices": []' not in raw and raw.endswith(b"data: [DONE]\n\n")
    spans = recorded.spans()
    assert [s.attributes["gen_ai.usage.input_tokens"] for s in spans] == [1200, 1200]


def test_client_created_before_instrumenting(fake: FakeLLM) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from meterline.instrumentation import MeterlineInstrumentor

    early = httpx2.Client(transport=httpx2.MockTransport(fake.handler(httpx2)))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = MeterlineInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        early.post("https://api.openai.com/v1/chat/completions", json=CHAT)
        assert len(exporter.get_finished_spans()) == 1
    finally:
        instrumentor.uninstrument()
    early.post("https://api.openai.com/v1/chat/completions", json=CHAT)
    assert len(exporter.get_finished_spans()) == 1  # uninstrumented: no new span


@pytest.mark.parametrize("lib", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_loopback_server_real_transport(recorded: Recorded, lib: object) -> None:
    with LoopbackLLM() as server:
        oc_http = lib.Client()  # type: ignore[attr-defined]
        url = f"{server.url}/v1/chat/completions"
        r = oc_http.post(url, json=CHAT)
        assert r.json()["id"] == "chatcmpl-abc123"
        with oc_http.stream("POST", url, json={**CHAT, "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: {")]
        assert all(json.loads(line[6:])["choices"] for line in lines)
        url = f"{server.url}/v1/messages"
        with oc_http.stream("POST", url, json={**CHAT, "stream": True}) as r:
            r.read()
        oc_http.close()
    spans = sorted(recorded.spans(), key=lambda s: s.start_time or 0)
    assert [s.attributes["gen_ai.usage.input_tokens"] for s in spans] == [1200, 1200, 5050]
    assert [s.attributes["gen_ai.provider.name"] for s in spans] == ["openai"] * 2 + ["anthropic"]
    assert all("meterline.usage.estimated" not in s.attributes for s in spans)


def test_openai_sdk_over_loopback(recorded: Recorded) -> None:
    with LoopbackLLM() as server:
        oc = openai.OpenAI(api_key="k", base_url=f"{server.url}/v1")
        stream = oc.chat.completions.create(model="gpt-4o", messages=CHAT["messages"], stream=True)
        chunks = list(stream)
        assert all(c.choices for c in chunks)
    attrs = recorded.one()
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["gen_ai.usage.output_tokens"] == 10


def test_gemini_generate_and_stream(recorded: Recorded, fake: FakeLLM) -> None:
    c = httpx2.Client(transport=httpx2.MockTransport(fake.handler(httpx2)))
    base = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
    body = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 64}}
    c.post(f"{base}:generateContent", json=body)
    with c.stream("POST", f"{base}:streamGenerateContent?alt=sse", json=body) as r:
        r.read()
    spans = sorted(recorded.spans(), key=lambda s: s.start_time or 0)
    assert [s.name for s in spans] == ["generate_content gemini-2.5-flash"] * 2
    for span in spans:
        attrs = span.attributes
        assert attrs["gen_ai.provider.name"] == "gcp.gemini"
        assert attrs["gen_ai.usage.input_tokens"] == 400
        assert attrs["gen_ai.usage.cache_read.input_tokens"] == 256
        assert attrs["gen_ai.usage.output_tokens"] == 140  # candidates 40 + thoughts 100
        assert attrs["gen_ai.usage.reasoning.output_tokens"] == 100
        assert attrs["gen_ai.request.max_tokens"] == 64
        assert attrs["gen_ai.response.id"] == "gem-resp-1"
        assert "meterline.usage.estimated" not in attrs
    assert [s.attributes["meterline.request.stream"] for s in spans] == [False, True]


def test_non_llm_and_non_json_are_left_alone(recorded: Recorded) -> None:
    seen = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.content)
        return httpx2.Response(
            200, content=b"<html>ok</html>", headers={"content-type": "text/html"}
        )

    c = httpx2.Client(transport=httpx2.MockTransport(handler))
    assert c.get("https://example.com/v1/chat/completions").text == "<html>ok</html>"
    assert c.post("https://example.com/upload", content=b"x" * 100).text == "<html>ok</html>"
    r = c.post("https://example.com/v1/chat/completions", content=b"not json {")
    assert r.text == "<html>ok</html>"
    assert seen[-1] == b"not json {"
    assert recorded.spans() == []


def test_gzip_json_response(recorded: Recorded) -> None:
    import gzip

    from .fakes import openai_chat

    _, data = openai_chat(CHAT)
    packed = gzip.compress(data)

    class Once(httpx2.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield packed[:50]
            yield packed[50:]

    def handler(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "application/json", "content-encoding": "gzip"}
        return httpx2.Response(200, headers=headers, stream=Once())

    c = httpx2.Client(transport=httpx2.MockTransport(handler))
    assert c.post("https://api.openai.com/v1/chat/completions", json=CHAT).json()["id"]
    assert recorded.one()["gen_ai.usage.input_tokens"] == 1200


def test_internal_error_never_reaches_the_app(
    recorded: Recorded, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meterline.instrumentation.shapes.openai_chat import ChatCompletions

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("meterline bug")

    monkeypatch.setattr(ChatCompletions, "on_json", boom)
    monkeypatch.setattr(ChatCompletions, "on_event", boom)
    c = httpx2.Client(transport=httpx2.MockTransport(fake.handler(httpx2)))
    r = c.post("https://api.openai.com/v1/chat/completions", json=CHAT)
    assert r.json()["id"] == "chatcmpl-abc123"
    with c.stream(
        "POST", "https://api.openai.com/v1/chat/completions", json={**CHAT, "stream": True}
    ) as r:
        body = r.read()
    assert body.count(b"data: ") >= 12  # every event passed through, untouched
    assert len(recorded.spans()) == 2
