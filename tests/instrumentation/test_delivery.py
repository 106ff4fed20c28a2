"""Delivery: retry, spool while the collector is down, flush exactly once, read every answer."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import httpx2
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from typer.testing import CliRunner

from meterline.instrumentation import MeterlineInstrumentor, MeterlineSpanExporter, Spool
from meterline.instrumentation.delivery.flush import flush_spool
from meterline.instrumentation.delivery.records import to_request
from meterline.instrumentation.delivery.sender import OtlpHttpSender, Status

from .fakes import FakeLLM, OTLPReceiver, free_port
from .otlp import make_spans, partial_success, payload, put, rpc_status, span_ids

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


def meterline_ids(receiver: OTLPReceiver) -> list[bytes]:
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
        assert "0 remaining" in result.output
        again = runner.invoke(app, ["spool", "flush", "--endpoint", receiver.url], env=env)
        assert again.exit_code == 0 and again.output.startswith("delivered 0 batches")
    ids = meterline_ids(receiver)
    assert len(ids) == n and len(set(ids)) == n  # all N, each once
    assert not Spool(tmp_path).pending() and not Spool(tmp_path).has_pending()


def test_cli_flush_exits_1_while_the_collector_is_down(tmp_path: Path) -> None:
    Spool(tmp_path).write(payload(2))
    from meterline.cli import app

    dead = f"http://127.0.0.1:{free_port()}/v1/traces"
    result = CliRunner().invoke(
        app, ["spool", "flush", "--endpoint", dead], env={"METERLINE_SPOOL_DIR": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert "1 remaining" in result.output
    assert len(Spool(tmp_path).pending()) == 1


def test_next_start_delivers_the_spool(tmp_path: Path) -> None:
    with OTLPReceiver() as receiver:
        dead = f"http://127.0.0.1:{free_port()}/v1/traces"
        make_calls(MeterlineSpanExporter(dead, spool=Spool(tmp_path), retry_seconds=0), 3)
        MeterlineSpanExporter(receiver.url, spool=Spool(tmp_path))  # a new process starting
        deadline = time.monotonic() + 5
        while len(meterline_ids(receiver)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(meterline_ids(receiver)) == 3
        assert not Spool(tmp_path).has_pending()


def test_only_an_ack_deletes_a_spooled_batch_and_files_go_in_one_request(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = payload(2), payload(3)
    put(spool, first, second)
    with OTLPReceiver() as receiver:
        receiver.statuses = [503]
        exporter = MeterlineSpanExporter(
            receiver.url, spool=spool, retry_seconds=0, flush_on_start=False
        )
        assert exporter.flush_spool() == (0, 2)
        claimed = [spool.claim(max_files=1)[0] for _ in range(2)]
        assert [to_request(c.records) for c in claimed] == [first, second]
        for path in tmp_path.glob("*.sending"):
            path.rename(path.with_name(path.name.rsplit(".", 2)[0]))  # back to the queue
        assert exporter.flush_spool() == (2, 0)
    # One POST carrying both requests: concatenated, they are one request with all 5 spans.
    assert receiver.bodies == [first + second]
    assert span_ids(receiver.bodies) == span_ids([first]) + span_ids([second])


def test_retryable_status_is_retried_not_spooled(tmp_path: Path) -> None:
    with OTLPReceiver() as receiver:
        receiver.statuses = [503, 429]
        spool = Spool(tmp_path)
        make_calls(MeterlineSpanExporter(receiver.url, spool=spool, retry_seconds=5), 2)
        assert len(meterline_ids(receiver)) == 2
        assert not spool.pending()


def test_partial_success_is_logged_with_the_count_and_not_resent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "meterline")
    spans = make_spans(3)
    spool = Spool(tmp_path)
    with OTLPReceiver() as receiver:
        answer = (200, partial_success(1, "span 2: token count 'abc' is not an integer"), {})
        receiver.responses = [answer]
        exporter = MeterlineSpanExporter(receiver.url, spool=spool, flush_on_start=False)
        assert exporter.export(spans).name == "SUCCESS"
        # The same answer to a spooled batch: deleted, counted, logged.
        spool.write(payload(2))
        receiver.responses = [(200, partial_success(2, "bad timestamps"), {})]
        report = flush_spool(spool, OtlpHttpSender(receiver.url))
    assert len(receiver.attempts) == 2  # nothing resent
    assert report.rejected_spans == 2 and report.sent_files == 1 and not spool.has_pending()
    text = caplog.text
    assert "stored 2 span(s) but rejected 1 as invalid" in text and "'abc'" in text
    assert "rejected 2 span(s)" in text and "bad timestamps" in text


def test_partial_success_in_json_is_read() -> None:
    with OTLPReceiver() as receiver:
        body = json.dumps({"partialSuccess": {"rejectedSpans": "4", "errorMessage": "m"}})
        receiver.responses = [(200, body.encode(), {"content-type": "application/json"})]
        outcome = OtlpHttpSender(receiver.url).post(payload(1))
    assert outcome.acked and (outcome.rejected_spans, outcome.message) == (4, "m")


def test_a_400_is_logged_clearly_kept_aside_and_not_resent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "meterline")
    spool = Spool(tmp_path)
    with OTLPReceiver() as receiver:
        receiver.responses = [(400, rpc_status("cannot parse the request"), {})]
        exporter = MeterlineSpanExporter(receiver.url, spool=spool, flush_on_start=False)
        assert exporter.export(make_spans(2)).name == "FAILURE"
        assert exporter.flush_spool() == (0, 0)
    assert len(receiver.attempts) == 1
    assert "refused 2 spans (400: cannot parse the request)" in caplog.text
    assert not spool.pending() and spool.status().rejected == 1


def test_a_refused_file_in_a_merged_request_is_isolated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    good1, bad, good2 = payload(1), payload(2), payload(3)
    put(spool, good1, bad, good2)
    with OTLPReceiver() as receiver:
        refused = (400, rpc_status("invalid span"), {})
        receiver.responses = [refused, (200, b"", {}), refused, (200, b"", {})]
        report = flush_spool(spool, OtlpHttpSender(receiver.url))
    assert (report.sent_files, report.rejected_files, report.remaining) == (2, 1, 0)
    assert receiver.bodies == [good1, good2]
    [aside] = tmp_path.glob("*.rejected")
    assert aside.read_bytes().endswith(bad)
    assert "invalid span" in caplog.text and "will not be resent" in caplog.text


def test_a_refused_request_inside_a_file_is_isolated(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    good1, bad, good2 = payload(1), payload(2), payload(3)
    for p in (good1, bad, good2):
        spool.write(p)  # three requests in one segment file
    with OTLPReceiver() as receiver:
        refused = (400, rpc_status("invalid span"), {})
        ok = (200, b"", {})
        receiver.responses = [refused, ok, refused, ok]
        report = flush_spool(spool, OtlpHttpSender(receiver.url))
    assert (report.sent_files, report.rejected_files, report.remaining) == (1, 1, 0)
    assert receiver.bodies == [good1, good2]
    [aside] = tmp_path.glob("*.rejected")
    assert aside.read_bytes().endswith(bad)


@pytest.mark.parametrize("status", [401, 404, 500, 503])
def test_other_failures_keep_the_usage_for_later(tmp_path: Path, status: int) -> None:
    spool = Spool(tmp_path)
    spool.write(payload(1))
    with OTLPReceiver() as receiver:
        receiver.statuses = [status]
        report = flush_spool(spool, OtlpHttpSender(receiver.url))
        assert report.failure is not None and report.failure.http_status == status
        assert report.failure.status is Status.FAILED and report.remaining == 1
        assert flush_spool(spool, OtlpHttpSender(receiver.url)).sent_files == 1
    assert not os.listdir(tmp_path) or all(n.endswith(".owner") for n in os.listdir(tmp_path))


def test_sender_retries_a_kept_alive_connection_the_server_closed() -> None:
    with OTLPReceiver() as receiver:
        receiver.drop_connections = True  # as a collector's idle timeout does
        sender = OtlpHttpSender(receiver.url)
        for _ in range(3):
            assert sender.post(payload(1)).acked
    assert len(receiver.bodies) == 3


def test_deadline_bounds_a_flush_against_a_hanging_collector(tmp_path: Path) -> None:
    import socket

    spool = Spool(tmp_path)
    spool.write(payload(1))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts (in the backlog) and never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/traces"
        start = time.monotonic()
        report = flush_spool(spool, OtlpHttpSender(url), deadline=time.monotonic() + 0.5)
        took = time.monotonic() - start
    assert took < 2.0
    assert report.failure is not None and report.remaining == 1


def test_cli_flush_says_when_the_endpoint_is_not_a_url(tmp_path: Path) -> None:
    from meterline.cli import app

    result = CliRunner().invoke(app, ["spool", "flush", "--endpoint", "collector:4318"])
    assert result.exit_code == 2
    assert "is not an http(s) OTLP endpoint URL" in result.output


# --- `meterline spool flush`: the endpoint as `instrument` takes it, and why nothing went --


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://h:4318", "http://h:4318/v1/traces"),
        ("http://h:4318/", "http://h:4318/v1/traces"),
        ("https://h/otlp", "https://h/otlp/v1/traces"),
        ("https://h/otlp/", "https://h/otlp/v1/traces"),
        ("http://h:4318/v1/traces", "http://h:4318/v1/traces"),  # a full URL is kept
        ("http://h:4318/v1/traces/", "http://h:4318/v1/traces/"),
    ],
)
def test_traces_url_reads_a_base_url_as_the_otel_exporter_does(base: str, url: str) -> None:
    from meterline.instrumentation.delivery.sender import traces_url

    assert traces_url(base) == url


def _flush(tmp_path: Path, *args: str):
    from meterline.cli import app

    return CliRunner().invoke(
        app, ["spool", "flush", *args], env={"METERLINE_SPOOL_DIR": str(tmp_path)}
    )


@pytest.mark.parametrize("suffix", ["", "/"])
def test_cli_flush_takes_the_base_url_instrument_takes(tmp_path: Path, suffix: str) -> None:
    put(Spool(tmp_path), payload(2), payload(3))
    with OTLPReceiver() as receiver:
        result = _flush(tmp_path, "--endpoint", receiver.base + suffix)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"delivered 2 batches to {receiver.url}; 0 remaining")
        assert len(span_ids(receiver.bodies)) == 5


def test_cli_flush_says_the_spool_is_empty(tmp_path: Path) -> None:
    with OTLPReceiver() as receiver:
        result = _flush(tmp_path, "--endpoint", receiver.base)
    assert result.exit_code == 0
    assert f"nothing delivered: the spool at {tmp_path} is empty" in result.stdout
    assert receiver.attempts == []


@pytest.mark.parametrize(
    ("status", "why"),
    [
        (None, "did not answer ("),
        (401, "refused the credentials (401): set OTEL_EXPORTER_OTLP_HEADERS="),
        (403, "refused the credentials (403)"),
        (
            404,
            "is not an OTLP/HTTP traces endpoint (404): --endpoint takes the collector's base URL",
        ),
        (415, "is not an OTLP/HTTP traces endpoint (415)"),
        (503, "is busy or unavailable (503"),
        (500, "failed (500"),
    ],
)
def test_cli_flush_says_why_nothing_was_delivered(
    tmp_path: Path, status: int | None, why: str
) -> None:
    put(Spool(tmp_path), payload(2))
    if status is None:
        result = _flush(tmp_path, "--endpoint", f"http://127.0.0.1:{free_port()}")
    else:
        with OTLPReceiver() as receiver:
            receiver.statuses = [status]
            result = _flush(tmp_path, "--endpoint", receiver.base)
    assert result.exit_code == 1
    assert "nothing delivered: " in result.stderr and why in result.stderr, result.stderr
    assert f"usage kept in {tmp_path} for the next flush" in result.stderr
    assert len(Spool(tmp_path).pending()) == 1


def test_cli_flush_says_every_batch_was_refused(tmp_path: Path) -> None:
    put(Spool(tmp_path), payload(1))
    with OTLPReceiver() as receiver:
        receiver.statuses = [400]
        result = _flush(tmp_path, "--endpoint", receiver.base)
    assert result.exit_code == 0, result.output
    assert "nothing delivered: the collector refused every batch as malformed" in result.stdout
