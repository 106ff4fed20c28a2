"""``meterline serve`` end to end: real OTLP exporters in, exact sums out of /v1/usage."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from meterline.launcher import RunningServer, start_server
from tests.e2e.spans import chat, make_spans

pytestmark = pytest.mark.e2e

TOKEN = "ingest-secret"
ADMIN = "admin-secret"


@pytest.fixture(scope="module", params=["native", "python"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The server on each ingest path: the engine decoding protobuf, or Python rows."""
    env = {"METERLINE_NATIVE_INGEST": str(request.param == "native").lower()}
    with start_server(tmp_path_factory.mktemp("serve"), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"METERLINE_INGEST_TOKEN": TOKEN, "METERLINE_ADMIN_KEY": ADMIN}
    with start_server(tmp_path_factory.mktemp("secured"), env=env) as running:
        yield running


def usage(server: RunningServer, headers: dict[str, str] | None = None, **params: str) -> list:
    response = httpx.get(f"{server.api_url}/v1/usage", params=params, headers=headers)
    response.raise_for_status()
    return response.json()["rows"]


def unique() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


def test_http_and_grpc_exporters_give_exact_sums(server: RunningServer) -> None:
    consumer = unique()
    spans_http = make_spans(
        [chat(consumer, input_tokens=100, output_tokens=7, response_id=f"{consumer}-1"),
         chat(consumer, input_tokens=250, output_tokens=30, response_id=f"{consumer}-2",
              **{"gen_ai.usage.cache_read.input_tokens": 200,
                 "gen_ai.usage.reasoning.output_tokens": 12})]
    )  # fmt: skip
    spans_grpc = make_spans(
        [chat(consumer, input_tokens=1000, output_tokens=1, model="claude-sonnet-4",
              provider="anthropic", response_id=f"{consumer}-3",
              **{"gen_ai.usage.cache_creation.input_tokens": 400})]
    )  # fmt: skip
    http_exporter = HTTPExporter(endpoint=server.otlp_http_url)
    assert http_exporter.export(spans_http) is SpanExportResult.SUCCESS
    grpc_exporter = GRPCExporter(endpoint=server.otlp_grpc_address, insecure=True)
    assert grpc_exporter.export(spans_grpc) is SpanExportResult.SUCCESS
    rows = usage(server, consumer=consumer, group_by="provider,model")
    assert rows == [
        {"provider": "anthropic", "model": "claude-sonnet-4", "requests": 1, "failed_requests": 0, "invalid_requests": 0,
         "input_tokens": 1000, "output_tokens": 1, "cache_read_input_tokens": 0,
         "cache_creation_input_tokens": 400, "reasoning_output_tokens": 0,
         # (600 × 3.00 + 400 cache writes × 3.75 + 1 × 15.00) / 1M, genai-prices' bundled data
         "cost": "0.003315", "currency": "USD", "unpriced_requests": 0},
        {"provider": "openai", "model": "gpt-4o", "requests": 2, "failed_requests": 0, "invalid_requests": 0,
         "input_tokens": 350, "output_tokens": 37, "cache_read_input_tokens": 200,
         "cache_creation_input_tokens": 0, "reasoning_output_tokens": 12,
         # (150 × 2.50 + 200 cached × 1.25 + 37 × 10.00) / 1M
         "cost": "0.000995", "currency": "USD", "unpriced_requests": 0},
    ]  # fmt: skip


def test_same_batch_three_times_and_two_reports_count_once(server: RunningServer) -> None:
    consumer = unique()
    spans = make_spans(
        [chat(consumer, input_tokens=10, output_tokens=1, response_id=f"{consumer}-a"),
         chat(consumer, input_tokens=20, output_tokens=2)]  # no response id: trace/span dedupe
    )  # fmt: skip
    exporter = HTTPExporter(endpoint=server.otlp_http_url)
    for _ in range(3):
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    grpc_exporter = GRPCExporter(endpoint=server.otlp_grpc_address, insecure=True)
    assert grpc_exporter.export(spans) is SpanExportResult.SUCCESS
    # A second instrumentation (a parent span, say) reports the same response again.
    echo = make_spans(
        [chat(consumer, input_tokens=10, output_tokens=1, response_id=f"{consumer}-a",
              **{"gen_ai.system": "openai"})]
    )  # fmt: skip
    assert exporter.export(echo) is SpanExportResult.SUCCESS
    [row] = usage(server, consumer=consumer)
    assert (row["requests"], row["input_tokens"], row["output_tokens"]) == (2, 30, 3)


def test_attribution_resource_fallback_deprecated_names_and_failures(
    server: RunningServer,
) -> None:
    consumer = unique()
    legacy = {
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.prompt_tokens": 40,
        "gen_ai.usage.completion_tokens": 4,
        "meterline.feature": "search",
    }
    failed = {**chat("", input_tokens=0, output_tokens=0), "error.type": "429",
              "http.response.status_code": 429, "_error": "rate limited"}  # fmt: skip
    del failed["meterline.consumer.id"]
    spans = make_spans([legacy, failed], resource={"meterline.consumer.id": consumer})
    assert HTTPExporter(endpoint=server.otlp_http_url).export(spans) is SpanExportResult.SUCCESS
    rows = usage(server, consumer=consumer, group_by="feature,model")
    for row in rows:
        assert row.pop("currency") == "USD" and row.pop("unpriced_requests") == 0
        assert row.pop("cost") == (
            "0" if row["failed_requests"] else "0.0000084"
        )  # (40 × 0.15 + 4 × 0.60) / 1M
    assert rows == [
        {"feature": "", "model": "gpt-4o", "requests": 1, "failed_requests": 1, "invalid_requests": 0,
         "input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0,
         "cache_creation_input_tokens": 0, "reasoning_output_tokens": 0},
        {"feature": "search", "model": "gpt-4o-mini", "requests": 1, "failed_requests": 0, "invalid_requests": 0,
         "input_tokens": 40, "output_tokens": 4, "cache_read_input_tokens": 0,
         "cache_creation_input_tokens": 0, "reasoning_output_tokens": 0},
    ]  # fmt: skip


def test_non_genai_spans_are_filtered_and_group_by_day(server: RunningServer) -> None:
    consumer = unique()
    spans = make_spans(
        [{"http.request.method": "GET", "meterline.consumer.id": consumer},
         chat(consumer, input_tokens=5, output_tokens=5)]
    )  # fmt: skip
    assert HTTPExporter(endpoint=server.otlp_http_url).export(spans) is SpanExportResult.SUCCESS
    today = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime())
    rows = usage(server, consumer=consumer, group_by="day")
    assert [(r["day"], r["requests"]) for r in rows] == [(today, 1)]
    assert usage(server, consumer=consumer, **{"from": "2000-01-01", "to": "2000-01-02"}) == []


def _post(server: RunningServer, body: bytes, content_type: str, **headers: str):
    return httpx.post(
        server.otlp_http_url, content=body, headers={"content-type": content_type, **headers}
    )


def test_partial_success_json_gzip_and_bad_input(server: RunningServer) -> None:
    consumer = unique()
    spans = make_spans([chat(consumer, input_tokens=3, output_tokens=1) for _ in range(3)])
    request = encode_spans(spans)
    bad = request.resource_spans[0].scope_spans[0].spans[1]
    bad.trace_id = b"\x01\x02"  # invalid: not 16 bytes
    response = _post(server, gzip.compress(request.SerializeToString()),
                     "application/x-protobuf", **{"content-encoding": "gzip"})  # fmt: skip
    assert response.status_code == 200
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 1
    assert "trace id" in parsed.partial_success.error_message
    [row] = usage(server, consumer=consumer)
    assert row["requests"] == 2 and row["input_tokens"] == 6

    # OTLP/JSON with hex ids.
    json_consumer = unique()
    body = {
        "resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "name": "chat gpt-4o", "kind": 3,
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000",
            "attributes": [
                {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "11"}},
                {"key": "meterline.consumer.id", "value": {"stringValue": json_consumer}},
            ]}]}]}]
    }  # fmt: skip
    response = _post(server, json.dumps(body).encode(), "application/json")
    assert response.status_code == 200, response.text
    assert response.json() == {}
    [row] = usage(server, consumer=json_consumer)
    assert row["input_tokens"] == 11

    # Malformed bodies: 400 with a google.rpc.Status message.
    response = _post(server, b"\xff\xff\xff not protobuf", "application/x-protobuf")
    assert response.status_code == 400
    assert "protobuf" in status_pb2.Status.FromString(response.content).message
    response = _post(server, b"{not json", "application/json")
    assert response.status_code == 400 and "JSON" in response.json()["message"]
    assert _post(server, b"x", "text/plain").status_code == 415
    assert httpx.get(server.otlp_http_url).status_code == 405
    too_big = gzip.compress(b"\0" * (21 * 1024 * 1024))
    response = _post(server, too_big, "application/x-protobuf", **{"content-encoding": "gzip"})
    assert response.status_code == 413


def test_usage_api_rejects_bad_parameters(server: RunningServer) -> None:
    api = server.api_url
    assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}
    for params in ({"group_by": "colour"}, {"from": "yesterday"}, {"bogus": "1"},
                   {"from": "2026-02-01", "to": "2026-01-01"}):  # fmt: skip
        response = httpx.get(f"{api}/v1/usage", params=params)
        assert response.status_code == 422, params
        assert response.json()["detail"]


def test_auth_on_ingest_and_api(secured: RunningServer) -> None:
    consumer = unique()
    spans = make_spans([chat(consumer, input_tokens=9, output_tokens=9)])
    assert HTTPExporter(endpoint=secured.otlp_http_url).export(spans) is SpanExportResult.FAILURE
    grpc_bad = GRPCExporter(endpoint=secured.otlp_grpc_address, insecure=True)
    assert grpc_bad.export(spans) is SpanExportResult.FAILURE
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert (
        HTTPExporter(endpoint=secured.otlp_http_url, headers=auth).export(spans)
        is SpanExportResult.SUCCESS
    )
    assert httpx.get(f"{secured.api_url}/v1/usage").status_code == 401
    wrong = {"authorization": "Bearer nope"}
    assert httpx.get(f"{secured.api_url}/v1/usage", headers=wrong).status_code == 401
    rows = usage(secured, headers={"authorization": f"Bearer {ADMIN}"}, consumer=consumer)
    assert rows[0]["input_tokens"] == 9
    assert httpx.get(f"{secured.api_url}/healthz").status_code == 200


def test_data_survives_restart_and_shutdown_flushes(tmp_path: Path) -> None:
    consumer = unique()
    with start_server(tmp_path) as first:
        spans = make_spans([chat(consumer, input_tokens=i + 1, output_tokens=1) for i in range(50)])
        assert HTTPExporter(endpoint=first.otlp_http_url).export(spans) is SpanExportResult.SUCCESS
        assert first.stop() == 0
        assert "all acknowledged spans written" in first.log()
    with start_server(tmp_path) as second:
        [row] = usage(second, consumer=consumer)
        assert (row["requests"], row["input_tokens"]) == (50, sum(range(1, 51)))


def test_grpc_bad_input_and_message_limit(server: RunningServer) -> None:
    import grpc

    channel = grpc.insecure_channel(server.otlp_grpc_address)
    export = channel.unary_unary(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        request_serializer=None,
        response_deserializer=ExportTraceServiceResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as bad:
        export(b"\xff\xff\xff not protobuf", timeout=10)
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "protobuf" in bad.value.details()
    with pytest.raises(grpc.RpcError) as big:
        export(b"\n" + b"\x80\x80\x80\x02" + b"\0" * (4 * 1024 * 1024 + 10), timeout=10)
    assert big.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    consumer = unique()
    spans = make_spans([chat(consumer, input_tokens=1, output_tokens=1) for _ in range(2)])
    request = encode_spans(spans)
    request.resource_spans[0].scope_spans[0].spans[0].span_id = b""
    response = export(request.SerializeToString(), timeout=10)
    assert response.partial_success.rejected_spans == 1
    assert usage(server, consumer=consumer)[0]["requests"] == 1
    channel.close()
