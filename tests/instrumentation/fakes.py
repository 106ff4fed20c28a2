"""A fake LLM provider: realistic OpenAI, Anthropic and Gemini payloads, no network.

``FakeLLM.respond(method, path, body)`` returns ``(status, headers, chunks)``; adapters
serve it through ``httpx2.MockTransport`` / ``httpx.MockTransport`` (streams chunked into
small pieces so SSE events straddle chunk boundaries) or a loopback HTTP server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = 37  # bytes per streamed piece: events straddle pieces

CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0},
}
ANTHROPIC_USAGE = {
    "input_tokens": 50,
    "cache_creation_input_tokens": 2000,
    "cache_read_input_tokens": 3000,
    "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1500},
    "output_tokens": 120,
    "service_tier": "standard",
}
WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]


def sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = []
    for name, data in events:
        head = f"event: {name}\n" if name else ""
        payload = data if isinstance(data, str) else json.dumps(data)
        out.append(f"{head}data: {payload}\n\n")
    return "".join(out).encode()


def openai_chat(body: dict[str, Any]) -> tuple[str, bytes]:
    model = "gpt-4o-2024-08-06"
    if not body.get("stream"):
        return "application/json", json.dumps(
            {
                "id": "chatcmpl-abc123",
                "object": "chat.completion",
                "created": 1700000000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(WORDS)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": CHAT_USAGE,
                "system_fingerprint": "fp_1",
            }
        ).encode()
    include = (body.get("stream_options") or {}).get("include_usage") is True
    base = {"id": "chatcmpl-str1", "object": "chat.completion.chunk", "created": 1, "model": model}
    extra = {"usage": None} if include else {}
    events: list[tuple[str | None, Any]] = [
        (
            None,
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
                **extra,
            },
        )
    ]
    for word in WORDS:
        events.append(
            (
                None,
                {
                    **base,
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
                    **extra,
                },
            )
        )
    events.append(
        (None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra})
    )
    if include:
        usage = {**CHAT_USAGE, "completion_tokens": 10, "total_tokens": 1210}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0}
        events.append((None, {**base, "choices": [], "usage": usage}))
    events.append((None, "[DONE]"))
    return "text/event-stream", sse(events)


def openai_completion(body: dict[str, Any]) -> tuple[str, bytes]:
    return "application/json", json.dumps(
        {
            "id": "cmpl-legacy1",
            "object": "text_completion",
            "created": 1700000000,
            "model": "gpt-3.5-turbo-instruct",
            "choices": [
                {"text": "".join(WORDS), "index": 0, "logprobs": None, "finish_reason": "length"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21},
        }
    ).encode()


def anthropic_messages(body: dict[str, Any]) -> tuple[str, bytes]:
    model = "claude-sonnet-4-20250514"
    message = {
        "id": "msg_01XYZ",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(WORDS)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": ANTHROPIC_USAGE,
    }
    if not body.get("stream"):
        return "application/json", json.dumps(message).encode()
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**ANTHROPIC_USAGE, "output_tokens": 1},
    }
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for word in WORDS:
        events.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": word},
                },
            )
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 120},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "text/event-stream", sse(events)


def openai_responses(body: dict[str, Any]) -> tuple[str, bytes]:
    response = {
        "id": "resp_123",
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "model": "o4-mini-2025-04-16",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "".join(WORDS), "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 900,
            "input_tokens_details": {"cached_tokens": 512},
            "output_tokens": 700,
            "output_tokens_details": {"reasoning_tokens": 640},
            "total_tokens": 1600,
        },
    }
    if not body.get("stream"):
        return "application/json", json.dumps(response).encode()
    created = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[tuple[str | None, Any]] = [
        (
            "response.created",
            {"type": "response.created", "sequence_number": 0, "response": created},
        ),
    ]
    for i, word in enumerate(WORDS):
        events.append(
            (
                "response.output_text.delta",
                {
                    "type": "response.output_text.delta",
                    "sequence_number": i + 1,
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": word,
                    "logprobs": [],
                },
            )
        )
    events.append(
        (
            "response.completed",
            {"type": "response.completed", "sequence_number": 99, "response": response},
        )
    )
    return "text/event-stream", sse(events)


def openai_embeddings(body: dict[str, Any]) -> tuple[str, bytes]:
    inputs = body.get("input")
    count = len(inputs) if isinstance(inputs, list) else 1
    return "application/json", json.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.001 * j for j in range(8)]}
                for i in range(count)
            ],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8 * count, "total_tokens": 8 * count},
        }
    ).encode()


def gemini(body: dict[str, Any], stream: bool) -> tuple[str, bytes]:
    def chunk(text: str, final: bool) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if final:
            cand["finishReason"] = "STOP"
        return {
            "candidates": [cand],
            "usageMetadata": {
                "promptTokenCount": 400,
                "cachedContentTokenCount": 256,
                "candidatesTokenCount": 40 if final else 5,
                "thoughtsTokenCount": 100,
                "totalTokenCount": 540,
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": "gem-resp-1",
        }

    if not stream:
        return "application/json", json.dumps(chunk("".join(WORDS), True)).encode()
    events = [(None, chunk(w, i == len(WORDS) - 1)) for i, w in enumerate(WORDS)]
    return "text/event-stream", sse(events)


class FakeLLM:
    """Serves the payloads above; ``fail`` lists statuses returned first, one per request."""

    def __init__(self, fail: list[int] | None = None) -> None:
        self.fail = list(fail or [])
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def respond(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        body = json.loads(raw) if raw else {}
        with self.lock:
            self.requests.append({"path": path, "body": body})
            status = self.fail.pop(0) if self.fail else 200
        if status != 200:
            error = {
                "error": {
                    "type": "rate_limit_error" if status == 429 else "api_error",
                    "message": "try again",
                }
            }
            return (
                status,
                {
                    "content-type": "application/json",
                    "retry-after-ms": "5",
                    "x-should-retry": "true",
                },
                json.dumps(error).encode(),
            )
        if path.endswith("/chat/completions"):
            ctype, data = openai_chat(body)
        elif path.endswith("/completions"):
            ctype, data = openai_completion(body)
        elif path.endswith("/v1/messages"):
            ctype, data = anthropic_messages(body)
        elif path.endswith("/responses"):
            ctype, data = openai_responses(body)
        elif path.endswith("/embeddings"):
            ctype, data = openai_embeddings(body)
        elif ":streamGenerateContent" in path:
            ctype, data = gemini(body, True)
        elif ":generateContent" in path:
            ctype, data = gemini(body, False)
        else:
            return 404, {"content-type": "text/plain"}, b"not found"
        return 200, {"content-type": ctype}, data

    # -- adapters -----------------------------------------------------------------------

    def handler(self, lib: Any, *, cut_after: int | None = None, drop: bool = False) -> Any:
        """A MockTransport handler for ``lib`` (httpx or httpx2); streams come in pieces.

        ``cut_after``: end an SSE body after that many pieces (``drop``: by raising a
        transport error, as a dropped connection does).
        """

        def handle(request: Any) -> Any:
            status, headers, data = self.respond(request.method, request.url.path, request.read())
            if "event-stream" not in headers["content-type"]:
                return lib.Response(status, headers=headers, content=data)
            stream = _pieces_class(lib)(lib, data, cut_after, drop)
            return lib.Response(status, headers=headers, stream=stream)

        return handle


class Pieces:
    """A sync+async byte stream yielding ``data`` in ``CHUNK``-byte pieces."""

    def __init__(self, lib: Any, data: bytes, cut_after: int | None, drop: bool) -> None:
        self.lib = lib
        self.data = data
        self.cut_after = cut_after
        self.drop = drop
        self.closed = False

    def _pieces(self) -> Iterator[bytes]:
        for n, i in enumerate(range(0, len(self.data), CHUNK)):
            if self.cut_after is not None and n >= self.cut_after:
                if self.drop:
                    raise self.lib.RemoteProtocolError("peer closed connection")
                return
            yield self.data[i : i + CHUNK]

    def __iter__(self) -> Iterator[bytes]:
        yield from self._pieces()

    async def __aiter__(self) -> Any:
        for piece in self._pieces():
            yield piece

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


_PIECES: dict[str, type] = {}


def _pieces_class(lib: Any) -> type:
    """``Pieces`` as a subclass of ``lib``'s stream bases (httpx checks isinstance)."""
    if lib.__name__ not in _PIECES:
        _PIECES[lib.__name__] = type(
            "Pieces", (Pieces, lib.SyncByteStream, lib.AsyncByteStream), {}
        )
    return _PIECES[lib.__name__]


class LoopbackLLM:
    """The fake provider behind a real HTTP server on 127.0.0.1 (streams chunked)."""

    def __init__(self, fake: FakeLLM | None = None) -> None:
        self.fake = fake or FakeLLM()
        fake_ref = self.fake

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, headers, data = fake_ref.respond("POST", self.path.split("?")[0], raw)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "event-stream" in headers["content-type"]:
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(data), CHUNK):
                        piece = data[i : i + CHUNK]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class OTLPReceiver:
    """A loopback OTLP/HTTP receiver recording POSTs to /v1/traces.

    ``statuses`` (then ``responses``: ``(status, body, headers)``) are served first, one per
    request; then 200 with an empty body. ``bodies`` holds the acknowledged (2xx) bodies,
    ``attempts`` every body received. Keeps connections alive, like a real collector.
    """

    def __init__(self, port: int = 0) -> None:
        self.bodies: list[bytes] = []
        self.attempts: list[bytes] = []
        self.statuses: list[int] = []
        self.responses: list[tuple[int, bytes, dict[str, str]]] = []
        self.drop_connections = False  # close each connection silently after its answer
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.attempts.append(raw)
                    body, headers = b"", {"content-type": "application/x-protobuf"}
                    if receiver.statuses:
                        status = receiver.statuses.pop(0)
                    elif receiver.responses:
                        status, body, extra = receiver.responses.pop(0)
                        headers.update(extra)
                    else:
                        status = 200
                    if 200 <= status < 300 and self.path == "/v1/traces":
                        receiver.bodies.append(raw)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if receiver.drop_connections:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OTLPReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[Any]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        out = []
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = {kv.key: kv.value for kv in span.attributes}
                        out.append((ss.scope.name, span, attrs))
        return out


def free_port() -> int:
    """A loopback port nothing listens on (for a collector that is down)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
