"""Client CPU per LLM call and per streamed chunk: bare SDK, plain OTel span, meterline, OpenLIT.

Run: ``.venv/bin/python benchmarks/instrumentation_overhead.py [--calls N] [--rounds R]``
(``--skip-openlit`` for the project environment alone, ``--openlit-only`` for the other).

One command, two measuring processes against one loopback provider (its own process, its
CPU not counted):

1. the project's environment (the current ``openai`` SDK, sending through httpx2):
   ``bare`` (no OpenTelemetry), ``otel-httpx2`` (the plain ``HTTPX2ClientInstrumentor``
   span), ``meterline``, and ``openai-v2`` when importable;
2. OpenLIT's own environment (:mod:`_openlit_venv`: OpenLIT 1.45, openai 2.x, which sends
   through httpx, and meterline's core from this checkout): ``bare``, ``otel-httpx``,
   ``meterline``, ``openlit`` (its openai instrumentor, at its lightest: see
   :mod:`_openlit_switch`) and ``openlit+httpx`` (plus the OTel httpx span that
   ``openlit.init()`` turns on by default).

Each process measures its own ``time.process_time()`` (all threads, so the batch
processor's OTLP encoding counts) in blocks, each configuration switched on for its block
and off after it, the blocks interleaved over rotating rounds so load and drift hit every
configuration alike; a configuration's added cost is the median over rounds of its block
minus that round's ``bare`` block:

* per call   — non-streamed chat completions through the real ``openai`` SDK;
* per chunk  — streamed chat completions of ``SHORT`` and ``LONG`` chunks; the difference
  divided by the extra chunks (the provider paces events so each arrives in its own read,
  as from a real provider).

All configurations share one SDK pipeline: a ``BatchSpanProcessor`` whose exporter
OTLP-encodes each batch and drops it (no network), and a processor that counts spans per
instrumentation scope: a block whose configuration produced fewer spans than requests, or
spans of a configuration that should be off, stops the run. Each process also records the
token counts every GenAI configuration put on the same three calls (non-streamed,
streamed, streamed with ``include_usage``) next to the provider's; meterline's must match.

Targets (DESIGN.md): meterline's added CPU per call ≤ 1.2× the plain httpx(2) span's;
added CPU per streamed chunk ≤ 5 % of the SDK's own per-chunk cost.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SHORT = 10
LONG = 410
MODEL = "gpt-4o-2024-08-06"
INPUT, CACHED = 1200, 1024
OUTPUT, REASONING = 300, 192  # non-streamed
STREAM_REASONING = 64  # streamed: output = chunks + this


def truth(case: str) -> dict[str, int]:
    """The provider's usage for an accuracy case (what it bills, asked for or not)."""
    if case == "call":
        return {"input": INPUT, "cache_read": CACHED, "output": OUTPUT, "reasoning": REASONING}
    out = SHORT + STREAM_REASONING
    return {"input": INPUT, "cache_read": CACHED, "output": out, "reasoning": STREAM_REASONING}


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
                "prompt_tokens": INPUT,
                "completion_tokens": OUTPUT,
                "total_tokens": INPUT + OUTPUT,
                "prompt_tokens_details": {"cached_tokens": CACHED},
                "completion_tokens_details": {"reasoning_tokens": REASONING},
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
        output = chunks + STREAM_REASONING
        usage = {
            "prompt_tokens": INPUT,
            "completion_tokens": output,
            "total_tokens": INPUT + output,
            "prompt_tokens_details": {"cached_tokens": CACHED},
            "completion_tokens_details": {"reasoning_tokens": STREAM_REASONING},
        }
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


def _pipeline() -> tuple[Any, Any]:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class EncodingExporter(SpanExporter):
        """Encodes each batch as OTLP would send it, then drops it: no network."""

        def export(self, spans: Any) -> SpanExportResult:
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    class Spans(SpanProcessor):
        """Counts ended spans per instrumentation scope; keeps them while capturing."""

        def __init__(self) -> None:
            self.counts: Counter[str] = Counter()
            self.captured: list[Any] | None = None

        def on_end(self, span: Any) -> None:
            scope = span.instrumentation_scope
            self.counts[scope.name if scope is not None else ""] += 1
            if self.captured is not None:
                self.captured.append(span)

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(EncodingExporter()))
    spans = Spans()
    provider.add_span_processor(spans)
    return provider, spans


@dataclass
class _Config:
    enable: Callable[[], None]
    disable: Callable[[], None]
    scopes: tuple[str, ...]
    """Instrumentation scope prefixes it must produce spans under, one per request each."""


def _instrumentor(inst: Any, provider: Any, *scopes: str) -> _Config:
    return _Config(
        lambda: inst.instrument(tracer_provider=provider), lambda: inst.uninstrument(), scopes
    )


def _configs(provider: Any, lib: str) -> dict[str, _Config]:
    """Every configuration this environment can run; all share one SDK pipeline."""
    from opentelemetry.instrumentation import httpx as otel_httpx

    from meterline.instrumentation import MeterlineInstrumentor

    noop: Callable[[], None] = lambda: None  # noqa: E731
    plain_cls = (
        otel_httpx.HTTPX2ClientInstrumentor
        if lib == "httpx2"
        else otel_httpx.HTTPXClientInstrumentor
    )
    plain = _instrumentor(plain_cls(), provider, "opentelemetry.instrumentation.httpx")
    configs = {
        "bare": _Config(noop, noop, ()),
        f"otel-{lib}": plain,
        "meterline": _instrumentor(MeterlineInstrumentor(), provider, "meterline.instrumentation"),
    }
    if importlib.util.find_spec("opentelemetry.instrumentation.openai_v2") is not None:
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        configs["openai-v2"] = _instrumentor(
            OpenAIInstrumentor(), provider, "opentelemetry.instrumentation.openai_v2"
        )
    if importlib.util.find_spec("openlit") is not None:
        import _openlit_switch

        enable, disable = _openlit_switch.init(provider)
        configs["openlit"] = _Config(enable, disable, ("openlit",))

        def enable_both() -> None:
            enable()
            plain.enable()

        def disable_both() -> None:
            plain.disable()
            disable()

        configs["openlit+httpx"] = _Config(enable_both, disable_both, ("openlit", *plain.scopes))
    return configs


def _check(name: str, config: _Config, produced: Counter[str], requests: int) -> None:
    """Stops the run unless ``config`` (and nothing else) made a span per request."""
    for prefix in config.scopes:
        n = sum(c for scope, c in produced.items() if scope.startswith(prefix))
        if n < requests:
            raise SystemExit(
                f"{name}: {n} spans from {prefix}* for {requests} requests: "
                "it is not instrumenting the calls, its figures would mean nothing"
            )
    for scope, n in produced.items():
        if n and not any(scope.startswith(prefix) for prefix in config.scopes):
            raise SystemExit(f"{name}: {n} spans from {scope!r}: another configuration is on")


_FIELDS = {
    "input": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "cache_read": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
    ),
    "output": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "reasoning": ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens"),
}


def _usage(span: Any) -> dict[str, Any] | None:
    attrs = dict(span.attributes or {})
    if not any(key in attrs for keys in _FIELDS.values() for key in keys):
        return None
    found = {f: next((attrs[k] for k in keys if k in attrs), None) for f, keys in _FIELDS.items()}
    if "gen_ai.usage.cost" in attrs:
        found["cost"] = attrs["gen_ai.usage.cost"]
    return found


def measure(port: int, calls: int, streams: int, rounds: int) -> dict[str, Any]:
    """Per-round CPU per call and per chunk of each configuration, and their token counts."""
    import openai

    provider, spans = _pipeline()
    client = openai.OpenAI(api_key="k", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    lib = next(
        root
        for cls in type(client._client).__mro__
        if (root := cls.__module__.split(".")[0]) in ("httpx", "httpx2")
    )
    configs = _configs(provider, lib)
    messages: Any = [{"role": "user", "content": "Say hello."}]

    def one_call() -> None:
        client.chat.completions.create(model="gpt-4o", messages=messages)

    def one_stream(chunks: int, **extra: Any) -> None:
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=messages,
            stream=True,
            metadata={"chunks": str(chunks)},
            **extra,
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

    cases: dict[str, Callable[[], None]] = {
        "call": one_call,
        "stream": lambda: one_stream(SHORT),
        "stream+usage": lambda: one_stream(SHORT, stream_options={"include_usage": True}),
    }
    tokens: dict[str, dict[str, Any]] = {}
    for name, config in configs.items():  # warm-up (imports, connections, caches) + tokens
        config.enable()
        try:
            for _ in range(20):
                one_call()
            one_stream(SHORT)
            one_stream(LONG)
            recorded: dict[str, Any] = {}
            for case, run in cases.items():
                spans.captured = []
                run()
                provider.force_flush()
                usages = [u for s in spans.captured if (u := _usage(s)) is not None]
                recorded[case] = usages[0] if usages else None
            spans.captured = None
        finally:
            config.disable()
        if any(recorded.values()) and "+" not in name:  # a combination repeats its parts'
            tokens[name] = recorded

    results: dict[str, dict[str, list[float]]] = {
        c: {"per_call_us": [], "per_chunk_us": []} for c in configs
    }

    def block(name: str) -> None:
        config = configs[name]
        before = Counter(spans.counts)
        config.enable()
        try:
            per_call = cpu(one_call, calls)
            short = cpu(one_stream, streams, SHORT)
            long_ = cpu(one_stream, streams, LONG)
        finally:
            config.disable()
        _check(name, config, spans.counts - before, calls + 2 * streams)
        results[name]["per_call_us"].append(per_call * 1e6)
        results[name]["per_chunk_us"].append((long_ - short) / (LONG - SHORT) * 1e6)

    order = list(configs)
    for r in range(rounds):  # interleaved, rotating: drift and load hit every config alike
        for name in order[r % len(order) :] + order[: r % len(order)]:
            block(name)
    versions = {}
    for dist in ("openai", lib, "opentelemetry-sdk", "openlit"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return {"lib": lib, "versions": versions, "rounds": results, "tokens": tokens}


# -- the driver ------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="non-streamed calls per block")
    parser.add_argument("--streams", type=int, default=3, help="streams per block and length")
    parser.add_argument("--rounds", type=int, default=15, help="rounds (median reported)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--skip-openlit", action="store_true", help="project environment only")
    which.add_argument("--openlit-only", action="store_true", help="OpenLIT's environment only")
    parser.add_argument(
        "--rebuild-openlit-env", action="store_true", help="build OpenLIT's environment afresh"
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.measure:
        print(json.dumps(measure(args.port, args.calls, args.streams, args.rounds)))
        return

    import tempfile

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    port_file = os.path.join(tempfile.mkdtemp(), "port")
    server = subprocess.Popen([sys.executable, __file__, "--serve", port_file])
    failures = []
    try:
        deadline = time.monotonic() + 10
        while not _read(port_file):
            if time.monotonic() > deadline:
                raise SystemExit("the loopback provider did not start")
            time.sleep(0.05)
        port = _read(port_file)
        if not args.openlit_only:
            failures += _run("the project's environment", sys.executable, port, args)
        if not args.skip_openlit:
            import _openlit_venv

            python = _openlit_venv.python(rebuild=args.rebuild_openlit_env)
            failures += _run("OpenLIT's environment", str(python), port, args)
    finally:
        server.terminate()
        server.wait()
    if failures:
        raise SystemExit("; ".join(failures))


def _run(title: str, python: str, port: str, args: argparse.Namespace) -> list[str]:
    cmd = [python, __file__, "--measure", "--port", port, "--calls", str(args.calls)]
    cmd += ["--streams", str(args.streams), "--rounds", str(args.rounds)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"measuring in {title} failed (exit {out.returncode})")
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    versions = ", ".join(f"{k} {v}" for k, v in measured["versions"].items())
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n== {title} ({python}): {versions}; load average {load} ==")
    _report(measured["lib"], measured["rounds"])
    return _report_tokens(measured["tokens"])


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return ""


def _diffs(rounds: dict[str, dict[str, list[float]]], name: str, key: str) -> list[float]:
    """The configuration's block minus the same round's bare block, per round."""
    return [a - b for a, b in zip(rounds[name][key], rounds["bare"][key], strict=True)]


def _added(rounds: dict[str, dict[str, list[float]]], name: str, key: str) -> float:
    """Median over rounds of the configuration's block minus that round's bare block."""
    return statistics.median(_diffs(rounds, name, key))


def _spread(rounds: dict[str, dict[str, list[float]]], name: str, key: str) -> float:
    """Half the interquartile range of :func:`_diffs`: how much the rounds disagree."""
    diffs = _diffs(rounds, name, key)
    if len(diffs) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(diffs, n=4)
    return (q3 - q1) / 2


def _report(lib: str, rounds: dict[str, dict[str, list[float]]]) -> None:
    n = len(rounds["bare"]["per_call_us"])
    print(f"client CPU per call / per streamed chunk ({SHORT} vs {LONG} chunks), median of {n}")
    print("rounds; added = median of (config - same round's bare), ± half its IQR")
    print(
        f"{'config':<14} {'µs/call':>8} {'added':>6} {'±':>4} {'µs/chunk':>9} {'added':>6} {'±':>5}"
    )
    for name, r in rounds.items():
        print(
            f"{name:<14} {statistics.median(r['per_call_us']):>8.0f} "
            f"{_added(rounds, name, 'per_call_us'):>6.0f} "
            f"{_spread(rounds, name, 'per_call_us'):>4.0f} "
            f"{statistics.median(r['per_chunk_us']):>9.1f} "
            f"{_added(rounds, name, 'per_chunk_us'):>6.1f} "
            f"{_spread(rounds, name, 'per_chunk_us'):>5.1f}"
        )
    plain = f"otel-{lib}"
    ours = _added(rounds, "meterline", "per_call_us")
    call_ratio = ours / _added(rounds, plain, "per_call_us")
    sdk_chunk = statistics.median(rounds["bare"]["per_chunk_us"])
    chunk_ratio = _added(rounds, "meterline", "per_chunk_us") / sdk_chunk
    print()
    print(
        f"{f'meterline added per call / plain {lib} span added:':<50} {call_ratio:.2f}x "
        f"(target <= 1.2x) {'OK' if call_ratio <= 1.2 else 'MISSED'}"
    )
    print(
        f"{'meterline added per chunk / SDK own per chunk:':<50} {chunk_ratio:.1%} "
        f"(target <= 5%) {'OK' if chunk_ratio <= 0.05 else 'MISSED'}"
    )
    for peer in ("openlit", "openlit+httpx", "openai-v2"):
        if peer in rounds:
            theirs = _added(rounds, peer, "per_call_us")
            print(f"{f'meterline added / {peer} added per call:':<50} {ours / theirs:.2f}x")
    if "openlit" in rounds:
        chunk = _added(rounds, "openlit", "per_chunk_us")
        print(
            f"{'added per chunk, meterline vs openlit:':<50} "
            f"{_added(rounds, 'meterline', 'per_chunk_us'):.1f} vs {chunk:.1f} µs"
        )


def _report_tokens(tokens: dict[str, dict[str, Any]]) -> list[str]:
    """Prints who recorded what on the same calls; returns meterline's mismatches."""
    fields = ("input", "cache_read", "output", "reasoning")
    print()
    print("token counts recorded on the same calls (* = differs from the provider's)")
    print(f"{'case':<13} {'recorded by':<14}" + "".join(f"{f:>11}" for f in fields))
    failures = []
    for case in ("call", "stream", "stream+usage"):
        expected = truth(case)
        print(f"{case:<13} {'provider':<14}" + "".join(f"{expected[f]:>11}" for f in fields))
        for name, recorded in tokens.items():
            usage = recorded.get(case)
            if usage is None:
                print(f"{'':<13} {name:<14} no usage span")
                if name == "meterline":
                    failures.append(f"meterline recorded no usage for {case!r}")
                continue
            cells = []
            for f in fields:
                value = usage.get(f)
                mark = "" if value == expected[f] else "*"
                cells.append(f"{'-' if value is None else value}{mark}".rjust(11))
                if mark and name == "meterline":
                    failures.append(
                        f"meterline recorded {f}={value} for {case!r}, not {expected[f]}"
                    )
            print(f"{'':<13} {name:<14}" + "".join(cells))
    openlit = tokens.get("openlit", {}).get("call")
    if openlit and "cost" in openlit:
        import _openlit_switch

        p = _openlit_switch.PRICES
        right = (
            (INPUT - CACHED) * p["promptPrice"]
            + CACHED * p["cacheReadPrice"]
            + OUTPUT * p["completionPrice"]
        ) / 1000
        print(
            f"OpenLIT's cost for the non-streamed call: {openlit['cost']:.6f} USD; "
            f"at its own prices, with cached tokens priced once: {right:.6f} USD"
        )
    return failures


if __name__ == "__main__":
    main()
