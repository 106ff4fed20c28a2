"""API shapes and the call state on their own: edge cases of bodies and streams."""

from __future__ import annotations

import json
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meterline.instrumentation._call import Call
from meterline.instrumentation.shapes import route
from meterline.instrumentation.shapes.anthropic_messages import MESSAGES
from meterline.instrumentation.shapes.openai_chat import CHAT
from meterline.instrumentation.shapes.openai_embeddings import EMBEDDINGS
from meterline.instrumentation.shapes.openai_responses import RESPONSES


def run(shape: Any, body: bytes, *, strip: bool = False, ctype: str = "text/event-stream",
        pieces: int = 5) -> tuple[bytes, dict[str, Any]]:  # fmt: skip
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    call = Call(shape, provider.get_tracer("t").start_span("x"), 400, strip)
    assert call.on_headers(200, ctype, "", None)
    out = b""
    for i in range(0, len(body), pieces):
        out += call.feed(body[i : i + pieces])
    out += call.end_of_body()
    call.finish(complete=True)
    return out, dict(exporter.get_finished_spans()[0].attributes or {})


def test_routes() -> None:
    assert route("/v1/chat/completions")[0] is CHAT  # type: ignore[index]
    assert route("/openai/deployments/prod-4o/chat/completions") == (CHAT, "prod-4o")
    assert route("/v1/threads/t1/messages") is None  # Assistants API, not Anthropic
    assert route("/v1/messages")[0] is MESSAGES  # type: ignore[index]
    shape, model = route(
        "/v1/projects/p/locations/l/publishers/google/models/gemini-2.0:generateContent"
    )  # type: ignore[misc]
    assert model == "gemini-2.0" and shape.operation == "generate_content"
    assert route("/v1/models") is None and route("/health") is None


def test_stream_options_merged_and_large_bodies_injected() -> None:
    body = {"model": "m", "stream": True, "stream_options": {"include_obfuscation": False}}
    facts = CHAT.request(body, json.dumps(body).encode(), None)
    assert json.loads(facts.body)["stream_options"] == {  # type: ignore[arg-type]
        "include_obfuscation": False,
        "include_usage": True,
    }
    assert facts.strip
    big = json.dumps(
        {"model": "big-model", "messages": [{"content": "x" * 2_000_000}], "stream": True}
    )
    facts = CHAT.request(None, big.encode(), None)
    assert facts.model == "big-model" and facts.stream and facts.strip
    assert json.loads(facts.body)["stream_options"] == {"include_usage": True}  # type: ignore[arg-type]
    asked = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    facts = CHAT.request(asked, json.dumps(asked).encode(), None)
    assert facts.body is None and not facts.strip


def test_crlf_events_and_usage_chunk_stripped() -> None:
    events = [
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            "id": "c",
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
        },
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)
    body += b"data: [DONE]\r\n\r\n"
    out, attrs = run(CHAT, body, strip=True)
    assert b'"usage"' not in out and out.endswith(b"data: [DONE]\r\n\r\n")
    assert out.count(b"data: ") == 3
    assert attrs["gen_ai.usage.input_tokens"] == 7 and attrs["gen_ai.usage.output_tokens"] == 2
    out, _ = run(CHAT, body, strip=False)
    assert out == body


def test_anthropic_error_event_and_responses_failure() -> None:
    body = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
        b'"model":"claude","usage":{"input_tokens":10,"cache_read_input_tokens":5,'
        b'"output_tokens":1}}}\n\n'
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n'
    )
    _, attrs = run(MESSAGES, body)
    assert attrs["error.type"] == "overloaded_error"
    assert attrs["gen_ai.usage.input_tokens"] == 15 and attrs["meterline.usage.estimated"]
    failed = {"type": "response.failed", "response": {"id": "r", "status": "failed", "model": "o3",
              "error": {"code": "server_error"}, "usage": None}}  # fmt: skip
    _, attrs = run(
        RESPONSES, b"event: response.failed\ndata: " + json.dumps(failed).encode() + b"\n\n"
    )
    assert attrs["error.type"] == "server_error"


def test_large_embeddings_read_from_the_tail() -> None:
    data = [{"object": "embedding", "index": i, "embedding": [0.1] * 1536} for i in range(200)]
    body = json.dumps({"object": "list", "data": data, "model": "text-embedding-3-large",
                       "usage": {"prompt_tokens": 812, "total_tokens": 812}}).encode()  # fmt: skip
    assert len(body) > 1 << 20
    _, attrs = run(EMBEDDINGS, body, ctype="application/json", pieces=65536)
    assert attrs["gen_ai.usage.input_tokens"] == 812
    assert attrs["gen_ai.response.model"] == "text-embedding-3-large"


def test_non_json_stream_data_is_ignored() -> None:
    out, attrs = run(CHAT, b"data: hello\n\n: comment\n\ndata: {broken\n\n")
    assert out == b"data: hello\n\n: comment\n\ndata: {broken\n\n"
    assert attrs["meterline.usage.estimated"] is True
