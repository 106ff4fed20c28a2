"""OTLP bodies cannot take unbounded memory: compressed, large, or many at once.

Memory is the server process's peak resident set (``VmHWM``), read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from meterline.launcher import RunningServer, start_server

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def peak_mib(server: RunningServer) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
        // 1024
    )


def big_request(i: int, size: int) -> bytes:
    """One GenAI span carrying a ``size``-byte attribute (compresses to almost nothing)."""
    now = time.time_ns()
    span = Span(
        trace_id=(i + 1).to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"), name="big",
        start_time_unix_nano=now, end_time_unix_nano=now + 1,
        attributes=[KeyValue(key="gen_ai.provider.name", value=AnyValue(string_value="openai")),
                    KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=1)),
                    KeyValue(key="meterline.consumer.id", value=AnyValue(string_value="big")),
                    KeyValue(key="x", value=AnyValue(string_value="x" * size))],
    )  # fmt: skip
    return ExportTraceServiceRequest(
        resource_spans=[{"scope_spans": [{"spans": [span]}]}]
    ).SerializeToString()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    # A writer that waits 2 s before each insert: requests pile up the way they do when
    # the store is slow, which is when each one's memory counts.
    env = {"METERLINE_WRITER_LINGER_MS": "2000", "METERLINE_WRITER_BATCH_MIN_SPANS": "1000000"}
    with start_server(tmp_path, env=env) as running:
        yield running


def test_many_large_http_bodies_at_once_stay_bounded(server: RunningServer) -> None:
    """60 concurrent gzip bodies of 19 MiB each: on main each waiting request held its
    body and parsed message (~40 MB), 2.4 GB in all; now bodies being read share a
    budget, the writer holds at most 128 MiB, and the rest is told to retry."""
    bodies = [gzip.compress(big_request(i, 19 * MiB), 1) for i in range(60)]
    before = peak_mib(server)

    async def send() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            headers = {"content-type": "application/x-protobuf", "content-encoding": "gzip"}
            return await asyncio.gather(
                *(client.post(server.otlp_http_url, content=b, headers=headers) for b in bodies)
            )

    responses = asyncio.run(send())
    growth = peak_mib(server) - before
    assert growth < 1200, f"the server grew by {growth} MiB"
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 503} and statuses[503] and statuses[200], statuses
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 503)
    usage = httpx.get(f"{server.api_url}/v1/usage", params={"consumer": "big"}).json()["rows"]
    assert usage[0]["requests"] == statuses[200]  # every 200 was written


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_grpc_compression_bombs_are_refused_before_inflating(
    server: RunningServer, compression: grpc.Compression
) -> None:
    """256 MiB of zeros compressed to ~256 KiB: grpc applies the 4 MiB limit to the
    decompressed message and stops inflating there."""
    before = peak_mib(server)
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(server.otlp_grpc_address, compression=compression,
                               options=options) as channel:  # fmt: skip
        export = channel.unary_unary(
            EXPORT, request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )  # fmt: skip
        bomb = b"\x0a\x80\x80\x80\x80\x01" + bytes(256 * MiB)  # a 256 MiB length-delimited field
        with pytest.raises(grpc.RpcError) as refused:
            export(bomb, timeout=120)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert peak_mib(server) - before < 100


def test_many_concurrent_grpc_messages_stay_bounded(server: RunningServer) -> None:
    """120 concurrent 4 MiB messages over 8 connections: on main the server grew by
    4.7 GB; grpc now lets a connection have 16 calls in flight, and each message's bytes
    come from the shared budget until the writer takes it."""
    body = big_request(0, 4 * MiB - 300)
    before = peak_mib(server)

    async def send() -> Counter[str]:
        channels = [
            grpc.aio.insecure_channel(server.otlp_grpc_address, compression=grpc.Compression.Gzip)
            for _ in range(8)
        ]
        calls = [
            c.unary_unary(EXPORT, request_serializer=None,
                          response_deserializer=ExportTraceServiceResponse.FromString)
            for c in channels
        ]  # fmt: skip

        async def one(i: int) -> str:
            try:
                await calls[i % 8](body, timeout=120)
                return "OK"
            except grpc.aio.AioRpcError as exc:
                return exc.code().name

        try:
            return Counter(await asyncio.gather(*(one(i) for i in range(120))))
        finally:
            for channel in channels:
                await channel.close()

    outcomes = asyncio.run(send())
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
    growth = peak_mib(server) - before
    assert growth < 1000, f"the server grew by {growth} MiB"
