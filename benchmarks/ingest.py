"""Ingest benchmark: GenAI spans/s through OTLP/HTTP protobuf into the embedded store.

Runs side by side, in one process and one run:

1. **raw insert**: the same rows inserted straight into ``otel_traces`` (the
   engine's own rate, materialized view included) — the baseline;
2. per ingest path (``--path python``, ``native`` or ``both``):
   - **decode**: the Python work per request (python: protobuf → rows with
     ``decode.to_rows``; native: protobuf parse + ``native.scan``), no store;
   - **insert** (native only): :func:`meterline.collector.native.insert` of the
     bodies in writer-sized batches, the engine decoding the protobuf itself;
   - **end to end**: a fresh ``meterline serve`` process (``METERLINE_NATIVE_INGEST``
     on or off) takes concurrent OTLP/HTTP protobuf POSTs (the body the official
     exporter sends) from a lean raw-HTTP sender in this process, each acked only
     after its durable write; every span is then checked in ``/v1/usage``. Run first,
     ``--repeat`` times (median reported), while this process runs nothing else. The
     server's CPU per span is printed by thread group (Python main and writer
     threads, the engine's pipeline pool, background merges).

The default 1M spans make a sustained run (about 10 s), so background merges, which
a short burst would leave for later, are paid for inside the measurement.

Prints spans/s for each and the ratio to (1). Target: ≥ 100k spans/s end to end on
2 cores, shared with the sender. Run: ``python benchmarks/ingest.py [--spans N]
[--batch 512] [--clients 64] [--repeat 3] [--path both]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from meterline.collector import native
from meterline.collector.decode import COLUMNS, Rows, parse_protobuf, to_rows
from meterline.launcher import start_server
from meterline.store import Store, open_store
from meterline.store.usage_schema import COUNTED_ALL

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


async def _send_all(port: int, bodies: list[bytes], clients: int) -> None:
    """POST every body over ``clients`` keep-alive connections; retry 503s.

    A raw HTTP/1.1 sender (requests prebuilt, as wrk would) so the load generator costs
    little of the two cores the server also runs on.
    """
    queue = list(range(len(bodies)))
    head = "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
    requests = [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            request = requests[queue.pop()]
            while True:
                writer.write(request)
                await writer.drain()
                response = await reader.readuntil(b"\r\n\r\n")
                status = int(response.split(b" ", 2)[1])
                length = int(response.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if status == 200:
                    break
                if status != 503:
                    raise RuntimeError(f"the collector answered {status}")
                await asyncio.sleep(0.2)
        writer.close()

    await asyncio.gather(*(worker() for _ in range(clients)))


def _end_to_end(bodies: list[bytes], clients: int, env: dict[str, str]) -> tuple[float, dict]:
    """Seconds to POST every body to a fresh ``meterline serve`` process, each acked after
    its durable write, and the server's CPU seconds by thread group; checks every span
    was counted."""
    data_dir = tempfile.mkdtemp(prefix="meterline-bench-")
    _DATA_DIRS.append(data_dir)  # removed at the end: see main()
    os.sync()  # the previous run's writeback would otherwise take CPU from this one
    return _run_server(data_dir, bodies, clients, env)


_DATA_DIRS: list[str] = []


def _run_server(
    data_dir: str, bodies: list[bytes], clients: int, env: dict[str, str]
) -> tuple[float, dict]:
    with start_server(data_dir, env=env) as server:
        pid = server.process.pid
        cpu0 = _thread_cpu(pid)
        t0 = time.perf_counter()
        asyncio.run(_send_all(server.endpoints["otlp_http_port"], bodies, clients))
        seconds = time.perf_counter() - t0
        cpu1 = _thread_cpu(pid)
        rows = httpx.get(f"{server.api_url}/v1/usage").json()["rows"]
    cpu = {group: cpu1.get(group, 0.0) - cpu0.get(group, 0.0) for group in cpu1}
    total = sum(len(parse_protobuf(b).resource_spans[0].scope_spans[0].spans) for b in bodies)
    assert rows and rows[0]["requests"] == total, f"expected {total} usage rows, found {rows}"
    return seconds, cpu


_THREAD_GROUPS = {"MergeMutate": "merges", "ThreadPool": "engine pool"}


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process by thread group: the Python threads (main: the event
    loop; writers: the insert threads, where the engine analyses each insert), the
    engine's pipeline pool, and background merges."""
    groups: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the thread ended
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        if stat.parent.name == str(pid):
            group = "python main"
        else:
            group = _THREAD_GROUPS.get(name, "python writers" if name == "python" else "other")
        groups[group] = groups.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return groups


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def _check(store: Store, total: int) -> None:
    _, [(count,)] = store.query(f"SELECT count() FROM {COUNTED_ALL}")
    assert count == total, f"{store.database}: expected {total} usage rows, found {count}"


def _merge(decoded: list[Rows]) -> Rows:
    merged = Rows()
    for rows in decoded:
        merged.extend(rows)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000,
                        help="spans per run (a sustained run: merges included)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=512, help="spans per OTLP request")
    parser.add_argument("--clients", type=int, default=64,
                        help="concurrent senders (keep-alive connections)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3,
                        help="end-to-end runs per path; the median is reported")  # fmt: skip
    parser.add_argument("--path", choices=("python", "native", "both"), default="both",
                        help="ingest path(s) to measure next to the raw insert")  # fmt: skip
    args = parser.parse_args()
    paths = ("native", "python") if args.path == "both" else (args.path,)

    n_requests = max(1, args.spans // args.batch)
    total = n_requests * args.batch
    bodies = [make_body(args.batch, seed) for seed in range(n_requests)]
    print(f"{total} GenAI spans in {n_requests} requests of {args.batch}, {args.clients} senders")

    # End to end first, while this process runs nothing but the sender (the in-process
    # stores below would go on merging in the background and take CPU from the server);
    # native first: the Python path's inserts create and delete a temporary file each,
    # and ext4 then scans those recently deleted inodes whenever the next run writes a part.
    e2e: dict[str, float] = {}
    for path in paths:
        env = {"METERLINE_NATIVE_INGEST": "true" if path == "native" else "false"}
        rates = []
        for run in range(args.repeat):
            seconds, cpu = _end_to_end(bodies, args.clients, env)
            rates.append(total / seconds)
            groups = ", ".join(f"{g} {c / total * 1e6:.1f}" for g, c in sorted(cpu.items()) if c)
            print(f"{path} run {run + 1}: {total / seconds:,.0f} spans/s; server CPU "
                  f"{sum(cpu.values()) / total * 1e6:.1f} µs/span ({groups})")  # fmt: skip
        e2e[path] = statistics.median(rates)

    data_dir = tempfile.mkdtemp(prefix="meterline-bench-")
    stores = {name: open_store(data_dir=data_dir, database=f"bench_{name}")
              for name in ("raw", "native_insert")}  # fmt: skip
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
        results.append(("python: OTLP/HTTP → durable store", e2e["python"]))

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
        results.append(("native: OTLP/HTTP → durable store", e2e["native"]))

    for store in stores.values():
        store.close()
    # Only now: ext4 scans recently deleted inodes when it allocates new ones, so
    # deleting a run's many part files just before the next run would slow that run.
    for path in (*_DATA_DIRS, data_dir):
        shutil.rmtree(path, ignore_errors=True)
    for label, rate in results:
        print(f"{label:36s} {rate:>10,.0f} spans/s  = {rate / raw_rate:5.2f}× raw insert")
    print(f"end to end: median of {args.repeat} runs; target: ≥ 100,000 spans/s")


if __name__ == "__main__":
    main()
