"""Billing-grade delivery: retry, spool while the collector is down, flush exactly once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from typer.testing import CliRunner

from meterline.instrumentation import MeterlineInstrumentor, MeterlineSpanExporter, Spool

from .fakes import FakeLLM, OTLPReceiver, free_port

URL = "https://api.openai.com/v1/chat/completions"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def make_calls(exporter: MeterlineSpanExporter, n: int, *, batch: int = 5) -> None:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=batch))
    instrumentor = MeterlineInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        client = httpx2.Client(transport=httpx2.MockTransport(FakeLLM().handler(httpx2)))
        for _ in range(n):
            client.post(URL, json=CHAT)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def span_ids(receiver: OTLPReceiver) -> list[bytes]:
    return [span.span_id for scope, span, _ in receiver.spans() if scope.startswith("meterline")]


def test_collector_down_then_cli_flush_delivers_once(tmp_path: Path) -> None:
    n = 12
    dead = f"http://127.0.0.1:{free_port()}/v1/traces"
    spool = Spool(tmp_path)
    make_calls(MeterlineSpanExporter(dead, spool=spool, retry_seconds=0.2), n)
    assert spool.pending(), "nothing was spooled"

    with OTLPReceiver() as receiver:
        runner = CliRunner()
        from meterline.cli import app

        env = {"METERLINE_SPOOL_DIR": str(tmp_path)}
        result = runner.invoke(app, ["spool", "flush", "--endpoint", receiver.url], env=env)
        assert result.exit_code == 0, result.output
        assert "remaining" in result.output
        again = runner.invoke(app, ["spool", "flush", "--endpoint", receiver.url], env=env)
        assert again.exit_code == 0 and again.output.startswith("delivered 0 batches")
    ids = span_ids(receiver)
    assert len(ids) == n and len(set(ids)) == n  # all N, each once
    assert not os.listdir(tmp_path)


def test_next_start_delivers_the_spool(tmp_path: Path) -> None:
    with OTLPReceiver() as receiver:
        dead = f"http://127.0.0.1:{free_port()}/v1/traces"
        make_calls(MeterlineSpanExporter(dead, spool=Spool(tmp_path), retry_seconds=0), 3)
        MeterlineSpanExporter(receiver.url, spool=Spool(tmp_path))  # a new process starting
        deadline = time.monotonic() + 5
        while len(span_ids(receiver)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(span_ids(receiver)) == 3
        assert not Spool(tmp_path).has_pending()


def test_only_a_2xx_deletes_a_spooled_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put(b"first")
    spool.put(b"second")
    with OTLPReceiver() as receiver:
        receiver.statuses = [503]
        exporter = MeterlineSpanExporter(
            receiver.url, spool=spool, retry_seconds=0, flush_on_start=False
        )
        assert exporter.flush_spool() == (0, 2)
        assert [p.read_bytes() for p in spool.pending()] == [b"first", b"second"]
        assert exporter.flush_spool() == (2, 0)
    assert receiver.bodies == [b"first", b"second"]


def test_retryable_status_is_retried_not_spooled(tmp_path: Path) -> None:
    with OTLPReceiver() as receiver:
        receiver.statuses = [503, 429]
        spool = Spool(tmp_path)
        make_calls(MeterlineSpanExporter(receiver.url, spool=spool, retry_seconds=5), 2)
        assert len(span_ids(receiver)) == 2
        assert not spool.pending()


def test_spool_is_bounded_and_recovers_dead_claims(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    for i in range(10):
        spool.put(bytes([i]) * 300)
    pending = spool.pending()
    assert sum(p.stat().st_size for p in pending) <= 1000
    assert pending[-1].read_bytes() == bytes([9]) * 300  # the newest are kept
    stale = pending[0].with_name(pending[0].name + ".999999999.sending")
    pending[0].rename(stale)
    sent: list[bytes] = []
    assert spool.flush(lambda body: sent.append(body) or True) == (len(pending), 0)
    assert len(sent) == len(pending)
