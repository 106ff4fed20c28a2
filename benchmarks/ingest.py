"""Ingest benchmark: GenAI spans/s through OTLP/HTTP protobuf into the embedded store.

Runs side by side, in one process and one run:

1. **raw insert**: the same rows inserted straight into ``otel_traces`` (the
   engine's own rate, materialized view included) — the baseline;
2. per ingest path (``--path python``, ``native`` or ``both``):
   - **decode**: the Python work per request (python: protobuf → rows with
     ``decode.to_rows``; native: protobuf parse + ``native.scan``), no store;
   - **insert** (native only): :func:`meterline.collector.native.insert` of the
     bodies in writer-sized batches, the engine decoding the protobuf itself;
   - **end to end**: concurrent OTLP/HTTP exporter-shaped POSTs (the body the
     official exporter sends) to the real receiver under uvicorn, each acked only
     after its durable write. For ``native`` the receiver and writer are wired as
     proposed for the collector (scan instead of ``to_rows``, ``native.insert``
     instead of ``insert_columns``); see :func:`_native_receiver`.

Prints spans/s for each and the ratio to (1). Target: ≥ 100k spans/s end to end on
2 cores. Run: ``python benchmarks/ingest.py [--spans N] [--batch 512] [--clients 4]
[--path both]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from meterline.collector import native, otlp_http
from meterline.collector.decode import COLUMNS, Rows, parse_protobuf, to_rows
from meterline.collector.otlp_http import OTLPHTTPApp
from meterline.collector.writer import Writer
from meterline.store import Store, open_store

BATCH_MAX = 50_000
"""Spans per insert, as the collector's writer batches them."""


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def make_body(batch: int, seed: int) -> bytes:
    """One export request of ``batch`` GenAI spans with 14 attributes each, as the SDK sends."""
    rng = random.Random(seed)
    spans = []
    now = time.time_ns()
    for i in range(batch):
        model = rng.choice(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-20250514"])
        attrs = [
            _kv("gen_ai.provider.name", "anthropic" if model.startswith("claude") else "openai"),
            _kv("gen_ai.operation.name", "chat"),
            _kv("gen_ai.request.model", model),
            _kv("gen_ai.response.model", model),
            _kv("gen_ai.response.id", f"resp-{seed}-{i}"),
            _kv("gen_ai.usage.input_tokens", rng.randint(10, 5000)),
            _kv("gen_ai.usage.output_tokens", rng.randint(1, 800)),
            _kv("gen_ai.usage.cache_read.input_tokens", rng.randint(0, 10)),
            _kv("gen_ai.usage.reasoning.output_tokens", 0),
            _kv("meterline.consumer.id", f"consumer-{rng.randint(1, 200)}"),
            _kv("meterline.feature", rng.choice(["chat", "search", "summarize"])),
            _kv("server.address", "api.openai.com"),
            _kv("http.response.status_code", 200),
            _kv("meterline.request.stream", "false"),
        ]
        spans.append(
            Span(
                trace_id=rng.randbytes(16),
                span_id=rng.randbytes(8),
                name=f"chat {model}",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=now - 1_000_000,
                end_time_unix_nano=now,
                attributes=attrs,
            )
        )
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource={"attributes": [_kv("service.name", "bench")]},
                scope_spans=[ScopeSpans(scope={"name": "meterline"}, spans=spans)],
            )
        ]
    )
    return request.SerializeToString()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _post_all(url: str, bodies: list[bytes], clients: int) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"content-type": "application/x-protobuf"}

    async def worker() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            while not queue.empty():
                body = queue.get_nowait()
                while True:
                    response = await client.post(url, content=body, headers=headers)
                    if response.status_code == 503:
                        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                        continue
                    response.raise_for_status()
                    break

    await asyncio.gather(*(worker() for _ in range(clients)))


class _NativeWriter(Writer):
    """The writer with the proposed native insert (``native.insert`` of the batch)."""

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            scans: list[Any] = [item for item, _ in batch]
            n = sum(len(item) for item in scans)
            started = time.perf_counter()
            try:
                native.insert(self._store, scans)
            except Exception as exc:
                for _, future in batch:
                    future.set_exception(exc)
            else:
                elapsed = max(time.perf_counter() - started, 1e-6)
                self._rate = 0.8 * self._rate + 0.2 * (n / elapsed)
                self.written += n
                for item, future in batch:
                    future.set_result(len(item))
            finally:
                with self._cond:
                    self._pending -= n


@contextlib.contextmanager
def _native_receiver() -> Iterator[None]:
    """Make the receiver scan instead of ``to_rows``, as proposed for the collector.

    ``_handle`` calls ``parse_protobuf(body)`` then ``to_rows(request)`` with no
    ``await`` between them, so the body seen by the first is the one the second needs.
    """
    local = threading.local()

    def parse(body: bytes) -> ExportTraceServiceRequest:
        local.body = body
        return parse_protobuf(body)

    def scan(request: ExportTraceServiceRequest, *, keep_all: bool = False) -> Any:
        return native.scan(request, local.body, keep_all=keep_all)

    saved = otlp_http.parse_protobuf, otlp_http.to_rows
    otlp_http.parse_protobuf, otlp_http.to_rows = parse, scan  # type: ignore[assignment]
    try:
        yield
    finally:
        otlp_http.parse_protobuf, otlp_http.to_rows = saved


def _end_to_end(writer: Writer, bodies: list[bytes], clients: int) -> float:
    """Seconds to POST every body to a live receiver, each acked after its write."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            OTLPHTTPApp(writer),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    t0 = time.perf_counter()
    asyncio.run(_post_all(f"http://127.0.0.1:{port}/v1/traces", bodies, clients))
    seconds = time.perf_counter() - t0
    server.should_exit = True
    thread.join()
    writer.close()
    return seconds


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def _check(store: Store, total: int) -> None:
    _, [(count,)] = store.query("SELECT count() FROM {db}.llm_usage FINAL")
    assert count == total, f"{store.database}: expected {total} usage rows, found {count}"


def _merge(decoded: list[Rows]) -> Rows:
    merged = Rows()
    for rows in decoded:
        merged.extend(rows)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=512, help="spans per OTLP request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent senders")
    parser.add_argument("--path", choices=("python", "native", "both"), default="both",
                        help="ingest path(s) to measure next to the raw insert")  # fmt: skip
    args = parser.parse_args()
    paths = ("python", "native") if args.path == "both" else (args.path,)

    n_requests = max(1, args.spans // args.batch)
    total = n_requests * args.batch
    bodies = [make_body(args.batch, seed) for seed in range(n_requests)]
    print(f"{total} GenAI spans in {n_requests} requests of {args.batch}, {args.clients} senders")

    data_dir = tempfile.mkdtemp(prefix="meterline-bench-")
    stores = {name: open_store(data_dir=data_dir, database=f"bench_{name}")
              for name in ("raw", *(f"{p}_e2e" for p in paths), "native_insert")}  # fmt: skip
    for store in stores.values():
        store.migrate()
    results: list[tuple[str, float]] = []

    decoded, decode_s = _timed(lambda: [to_rows(parse_protobuf(b)) for b in bodies])
    merged = _merge(decoded)

    def raw_insert() -> None:
        for start in range(0, total, BATCH_MAX):
            chunk = [col[start : start + BATCH_MAX] for col in merged.columns]
            stores["raw"].insert_columns("otel_traces", chunk, COLUMNS)

    _, raw_s = _timed(raw_insert)
    _check(stores["raw"], total)
    raw_rate = total / raw_s
    results.append(("raw insert (baseline)", raw_rate))

    if "python" in paths:
        results.append(("python: decode (parse + to_rows)", total / decode_s))
        e2e_s = _end_to_end(Writer(stores["python_e2e"], max_pending=400_000,
                                   batch_max=BATCH_MAX), bodies, args.clients)  # fmt: skip
        _check(stores["python_e2e"], total)
        results.append(("python: OTLP/HTTP → durable store", total / e2e_s))

    if "native" in paths:
        scans, scan_s = _timed(lambda: [native.scan_body(b) for b in bodies])
        results.append(("native: decode (parse + scan)", total / scan_s))
        per_insert = max(1, BATCH_MAX // args.batch)

        def native_insert() -> None:
            for start in range(0, len(scans), per_insert):
                native.insert(stores["native_insert"], scans[start : start + per_insert])

        _, insert_s = _timed(native_insert)
        _check(stores["native_insert"], total)
        results.append(("native: insert (engine decodes)", total / insert_s))
        writer = _NativeWriter(stores["native_e2e"], max_pending=400_000, batch_max=BATCH_MAX)
        with _native_receiver():
            e2e_s = _end_to_end(writer, bodies, args.clients)
        _check(stores["native_e2e"], total)
        results.append(("native: OTLP/HTTP → durable store", total / e2e_s))

    for label, rate in results:
        print(f"{label:36s} {rate:>10,.0f} spans/s  = {rate / raw_rate:5.2f}× raw insert")
    print("target: ≥ 100,000 spans/s end to end")


if __name__ == "__main__":
    main()
