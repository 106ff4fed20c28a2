"""Delivery cost and durability: meterline's write-ahead spool vs the stock OTLP pipeline.

Run: ``.venv/bin/python benchmarks/delivery_overhead.py [--calls N] [--rounds R]``

``benchmarks/instrumentation_overhead.py`` measures the instrumentation with a pipeline
that encodes spans and drops them; this one measures what *delivering* costs the app, in one
run: a loopback OTLP collector (its own process, acknowledging every POST on kept-alive
connections; its CPU is not counted) and a loopback provider (its own process) serve one
client process, which measures its own ``time.process_time()`` (every thread: the writer,
the sender and the batch processor count) per non-streamed chat completion through the real
``openai`` SDK, in interleaved rotating rounds (medians reported):

* ``bare`` — no OpenTelemetry;
* ``otel-otlp`` — the plain ``HTTPX2ClientInstrumentor`` span, ``BatchSpanProcessor`` and
  the official ``OTLPSpanExporter`` (HTTP/protobuf) — what any OTel user pays to deliver;
* ``meterline-batch`` — meterline's span, ``BatchSpanProcessor`` + ``MeterlineSpanExporter``
  (the delivery before the spool);
* ``meterline-spool`` — meterline's span and its own ``SpoolingSpanProcessor`` (every span
  written ahead to the spool as it ends, delivered from there, deleted on the ack).

Each block runs back to back (``tight``: a call every ~3 ms) and ``paced`` (a pause of
``--pause-ms`` between calls, so each call is alone in its write and its POST: the worst
case per call).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "gpt-4o-2024-08-06"


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
                    "message": {"role": "assistant", "content": "Hello there."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500},
        }
    ).encode()


def serve(port_file: str, kind: str) -> None:
    """A loopback provider (``chat``) or OTLP collector (``otlp``), in its own process."""
    chat = _chat_body()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = chat if kind == "chat" else b""
            self.send_response(200)
            kind_type = "application/json" if kind == "chat" else "application/x-protobuf"
            self.send_header("content-type", kind_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass

    server = Server(("127.0.0.1", 0), Handler)
    with open(port_file, "w") as fh:
        fh.write(str(server.server_address[1]))
    server.serve_forever()


def _config(name: str, otlp_url: str, spool_dir: str) -> tuple[Any, Any, Any]:
    """``(provider, enable, disable)`` for one configuration (each has its own provider)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if name == "bare":
        return None, lambda: None, lambda: None
    provider = TracerProvider(shutdown_on_exit=False)
    if name == "otel-otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_url)))
        inst: Any = HTTPX2ClientInstrumentor()
    else:
        from meterline.instrumentation import (
            MeterlineInstrumentor,
            MeterlineSpanExporter,
            Spool,
            SpoolingSpanProcessor,
        )

        spool = Spool(os.path.join(spool_dir, name))
        if name == "meterline-batch":
            exporter = MeterlineSpanExporter(otlp_url, spool=spool, flush_on_start=False)
            provider.add_span_processor(BatchSpanProcessor(exporter))
        else:
            provider.add_span_processor(SpoolingSpanProcessor(otlp_url, spool=spool))
        inst = MeterlineInstrumentor()
    return (
        provider,
        lambda: inst.instrument(tracer_provider=provider),
        lambda: inst.uninstrument(),
    )


def measure(chat_port: int, otlp_url: str, calls: int, rounds: int, pause: float) -> Any:
    import openai

    spool_dir = tempfile.mkdtemp(prefix="meterline-bench-spool-")
    names = ["bare", "otel-otlp", "meterline-batch", "meterline-spool"]
    configs = {n: _config(n, otlp_url, spool_dir) for n in names}
    client = openai.OpenAI(api_key="k", base_url=f"http://127.0.0.1:{chat_port}/v1", max_retries=0)
    messages: Any = [{"role": "user", "content": "Say hello."}]

    def block(name: str, n: int, gap: float) -> float:
        provider, enable, disable = configs[name]
        enable()
        try:
            if provider is not None:
                provider.force_flush()
            start = time.process_time()
            for _ in range(n):
                client.chat.completions.create(model="gpt-4o", messages=messages)
                if gap:
                    time.sleep(gap)
            if provider is not None:
                provider.force_flush()  # the delivery is part of the cost
            return (time.process_time() - start) / n * 1e6
        finally:
            disable()

    for name in names:  # warm-up: imports, connections, every code path
        block(name, 20, 0)
    results: dict[str, dict[str, list[float]]] = {n: {"tight": [], "paced": []} for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name]["tight"].append(block(name, calls, 0))
            results[name]["paced"].append(block(name, max(5, calls // 10), pause))
    medians = {n: {k: statistics.median(v) for k, v in m.items()} for n, m in results.items()}
    return {"per_call_us": medians}


def _start(kind: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = os.path.join(tempfile.mkdtemp(), "port")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", port_file, "--kind", kind])
    deadline = time.monotonic() + 10
    while True:
        try:
            with open(port_file) as fh:
                text = fh.read().strip()
            if text:
                return proc, int(text)
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the loopback {kind} server did not start")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="back-to-back calls per block")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (median reported)")
    parser.add_argument("--pause-ms", type=float, default=60.0, help="pause of paced calls")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chat-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--otlp-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.kind)
        return
    if args.measure:
        out = measure(args.chat_port, args.otlp_url, args.calls, args.rounds, args.pause_ms / 1000)
        print(json.dumps(out))
        return
    chat, chat_port = _start("chat")
    otlp, otlp_port = _start("otlp")
    try:
        cmd = [sys.executable, __file__, "--measure", "--chat-port", str(chat_port)]
        cmd += ["--otlp-url", f"http://127.0.0.1:{otlp_port}/v1/traces"]
        cmd += ["--calls", str(args.calls), "--rounds", str(args.rounds)]
        cmd += ["--pause-ms", str(args.pause_ms)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METERLINE_"))}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"the measuring process failed:\n{out.stderr}")
        results = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for proc in (chat, otlp):
            proc.terminate()
            proc.wait()
    _report(results)


def _report(results: dict[str, Any]) -> None:
    per = results["per_call_us"]
    bare = per["bare"]
    print("client CPU per call (µs, median of rounds), delivered to a loopback OTLP collector")
    print(f"{'config':<16} {'tight':>8} {'added':>8} {'paced':>8} {'added':>8}")
    for name, r in per.items():
        print(
            f"{name:<16} {r['tight']:>8.0f} {r['tight'] - bare['tight']:>8.0f} "
            f"{r['paced']:>8.0f} {r['paced'] - bare['paced']:>8.0f}"
        )
    print()
    for mode in ("tight", "paced"):
        otel = per["otel-otlp"][mode] - bare[mode]
        ours = per["meterline-spool"][mode] - bare[mode]
        batch = per["meterline-batch"][mode] - bare[mode]
        print(
            f"{mode}: meterline-spool added / otel-otlp added: {ours / otel:.2f}x "
            f"(target <= 1.2x) {'OK' if ours <= 1.2 * otel else 'MISSED'}; "
            f"/ meterline-batch added: {ours / batch:.2f}x"
        )


if __name__ == "__main__":
    main()
