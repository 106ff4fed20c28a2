"""Client CPU per LLM call and per streamed chunk: bare SDK vs OTel httpx2 vs meterline.

Run: ``.venv/bin/python benchmarks/instrumentation_overhead.py [--calls N] [--rounds R]``

One command, one run: a loopback provider runs in its own process (its CPU is not
counted); one client process measures its own ``time.process_time()`` (all threads, so the
batch processor's OTLP encoding counts) in blocks, each configuration switched on for its
block and off after it, the blocks interleaved over rotating rounds so load and drift hit
every configuration alike (medians reported):

* per call   — non-streamed chat completions through the real ``openai`` SDK;
* per chunk  — streamed chat completions of ``SHORT`` and ``LONG`` chunks; the difference
  divided by the extra chunks (the provider paces events so each arrives in its own read,
  as from a real provider).

Configurations: ``bare`` (no OpenTelemetry), ``otel-httpx2`` (the plain
``HTTPX2ClientInstrumentor`` span), ``meterline``, and ``openai-v2`` / ``openlit`` when
importable (OpenLIT cannot be switched off, so its blocks run last). All share one SDK
pipeline: a ``BatchSpanProcessor`` whose exporter OTLP-encodes each batch and drops it.

Targets (DESIGN.md): meterline's added CPU per call ≤ 1.2× the plain httpx2 span's; added
CPU per streamed chunk ≤ 5 % of the SDK's own per-chunk cost.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SHORT = 10
LONG = 410
MODEL = "gpt-4o-2024-08-06"


# -- the loopback provider (its own process) --------------------------------------------


def _chat_body() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello there, how can I help?"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 1200,
                "completion_tokens": 300,
                "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "completion_tokens_details": {"reasoning_tokens": 192},
            },
        }
    ).encode()


def _events(chunks: int, include_usage: bool) -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    extra = {"usage": None} if include_usage else {}
    out = []
    for i in range(chunks):
        choice = {"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}
        out.append({**base, "choices": [choice], **extra})
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra})
    if include_usage:
        usage = {"prompt_tokens": 1200, "completion_tokens": chunks, "total_tokens": 1200 + chunks}
        out.append({**base, "choices": [], "usage": usage})
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in out] + [b"data: [DONE]\n\n"]


def serve(port_file: str) -> None:
    chat = _chat_body()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between events

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            if not body.get("stream"):
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(chat)))
                self.end_headers()
                self.wfile.write(chat)
                return
            include = (body.get("stream_options") or {}).get("include_usage") is True
            chunks = int(body.get("metadata", {}).get("chunks", SHORT))
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for event in _events(chunks, include):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                time.sleep(0.0002)  # one event per client read, like a real provider
            self.wfile.write(b"0\r\n\r\n")

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # clients closing keep-alive connections at exit

    server = Server(("127.0.0.1", 0), Handler)
    with open(port_file, "w") as fh:
        fh.write(str(server.server_address[1]))
    server.serve_forever()


# -- the client (its own process) ------------------------------------------------------


def _pipeline() -> Any:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class EncodingExporter(SpanExporter):
        """Encodes each batch as OTLP would send it, then drops it: no network."""

        def export(self, spans: Any) -> SpanExportResult:
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(EncodingExporter()))
    return provider


def _toggles(provider: Any, configs: list[str]) -> dict[str, tuple[Any, Any]]:
    """(enable, disable) per configuration; all share one SDK pipeline."""
    toggles: dict[str, tuple[Any, Any]] = {"bare": (lambda: None, lambda: None)}
    for config in configs:
        if config == "otel-httpx2":
            from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor

            inst: Any = HTTPX2ClientInstrumentor()
        elif config == "meterline":
            from meterline.instrumentation import MeterlineInstrumentor

            inst = MeterlineInstrumentor()
        elif config == "openai-v2":
            from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

            inst = OpenAIInstrumentor()
        elif config == "openlit":  # cannot be undone: measured alone, after the others
            import openlit

            def enable() -> None:
                openlit.init(tracer=provider.get_tracer("openlit"), disable_metrics=True)

            toggles[config] = (enable, lambda: None)
            continue
        else:
            continue
        toggles[config] = (
            lambda inst=inst: inst.instrument(tracer_provider=provider),
            lambda inst=inst: inst.uninstrument(),
        )
    return toggles


def measure(port: int, configs: list[str], calls: int, streams: int, rounds: int) -> Any:
    """Median CPU per call and per chunk for each configuration, interleaved in rounds."""
    import openai

    provider = _pipeline()
    toggles = _toggles(provider, configs)
    client = openai.OpenAI(api_key="k", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    messages: Any = [{"role": "user", "content": "Say hello."}]

    def one_call() -> None:
        client.chat.completions.create(model="gpt-4o", messages=messages)

    def one_stream(chunks: int) -> None:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, metadata={"chunks": str(chunks)}
        )
        for _ in stream:
            pass

    def cpu(fn: Any, n: int, *args: Any) -> float:
        provider.force_flush()
        start = time.process_time()
        for _ in range(n):
            fn(*args)
        provider.force_flush()  # the export (OTLP encoding) is part of the cost
        return (time.process_time() - start) / n

    results: dict[str, dict[str, list[float]]] = {
        c: {"per_call_us": [], "per_chunk_us": []} for c in toggles
    }
    order = [c for c in toggles if c != "openlit"]
    for config in order:  # warm-up: imports, connections, caches, every code path
        toggles[config][0]()
        for _ in range(20):
            one_call()
        one_stream(SHORT)
        toggles[config][1]()

    def block(config: str) -> None:
        enable, disable = toggles[config]
        enable()
        try:
            per_call = cpu(one_call, calls)
            short = cpu(one_stream, streams, SHORT)
            long_ = cpu(one_stream, streams, LONG)
        finally:
            disable()
        results[config]["per_call_us"].append(per_call * 1e6)
        results[config]["per_chunk_us"].append((long_ - short) / (LONG - SHORT) * 1e6)

    for r in range(rounds):  # interleaved, rotating: drift and load hit every config alike
        for config in order[r % len(order) :] + order[: r % len(order)]:
            block(config)
    if "openlit" in toggles:
        for _ in range(rounds):
            block("openlit")
    return {c: {k: statistics.median(v) for k, v in m.items()} for c, m in results.items()}


# -- the driver ------------------------------------------------------------------------


def _available() -> list[str]:
    configs = ["bare", "otel-httpx2", "meterline"]
    if importlib.util.find_spec("opentelemetry.instrumentation.openai_v2") is not None:
        configs.append("openai-v2")
    if importlib.util.find_spec("openlit") is not None:
        configs.append("openlit")
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="non-streamed calls per block")
    parser.add_argument("--streams", type=int, default=3, help="streams per block and length")
    parser.add_argument("--rounds", type=int, default=15, help="rounds (median reported)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.measure:
        configs = args.measure.split(",")
        print(json.dumps(measure(args.port, configs, args.calls, args.streams, args.rounds)))
        return

    import tempfile

    port_file = os.path.join(tempfile.mkdtemp(), "port")
    server = subprocess.Popen([sys.executable, __file__, "--serve", port_file])
    try:
        deadline = time.monotonic() + 10
        while not _read(port_file):
            if time.monotonic() > deadline:
                raise SystemExit("the loopback provider did not start")
            time.sleep(0.05)
        cmd = [sys.executable, __file__, "--measure", ",".join(_available())]
        cmd += ["--port", _read(port_file), "--calls", str(args.calls)]
        cmd += ["--streams", str(args.streams), "--rounds", str(args.rounds)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait()
    _report(results)


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return ""


def _report(results: dict[str, dict[str, Any]]) -> None:
    bare = results["bare"]
    print(f"client CPU per call / per streamed chunk ({SHORT} vs {LONG} chunks), median of rounds")
    print(f"{'config':<12} {'µs/call':>9} {'added':>9} {'µs/chunk':>9} {'added':>8}")
    for name, r in results.items():
        added = r["per_call_us"] - bare["per_call_us"]
        added_chunk = r["per_chunk_us"] - bare["per_chunk_us"]
        print(
            f"{name:<12} {r['per_call_us']:>9.0f} {added:>9.0f} "
            f"{r['per_chunk_us']:>9.1f} {added_chunk:>8.2f}"
        )
    otel_added = results["otel-httpx2"]["per_call_us"] - bare["per_call_us"]
    ours = results["meterline"]
    ours_added = ours["per_call_us"] - bare["per_call_us"]
    chunk_added = ours["per_chunk_us"] - bare["per_chunk_us"]
    call_ratio = ours_added / otel_added if otel_added > 0 else float("inf")
    chunk_ratio = chunk_added / bare["per_chunk_us"] if bare["per_chunk_us"] > 0 else 0.0
    print()
    print(
        f"meterline added per call / plain httpx2 span's: {call_ratio:.2f}x "
        f"(target <= 1.2x) {'OK' if call_ratio <= 1.2 else 'MISSED'}"
    )
    print(
        f"meterline added per chunk / SDK per chunk:       {chunk_ratio:.1%} "
        f"(target <= 5%) {'OK' if chunk_ratio <= 0.05 else 'MISSED'}"
    )
    if "openlit" in results:
        openlit_added = results["openlit"]["per_call_us"] - bare["per_call_us"]
        print(f"meterline added / OpenLIT added per call:       {ours_added / openlit_added:.2f}x")
    if "openai-v2" in results:
        v2_added = results["openai-v2"]["per_call_us"] - bare["per_call_us"]
        print(f"meterline added / openai-v2 added per call:     {ours_added / v2_added:.2f}x")


if __name__ == "__main__":
    main()
