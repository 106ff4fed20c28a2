"""``meterline serve``: one bad span or request costs nothing else, on HTTP and gRPC.

The valid requests are sent by the official OTLP exporters; the bad ones are built
from what the SDK encodes and then broken the way no exporter would (invalid UTF-8,
nesting, times), so they are posted raw.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from meterline.launcher import RunningServer, start_server
from tests.e2e.spans import chat, make_spans

pytestmark = pytest.mark.e2e

DAY = 86_400 * 10**9
MARK = b"MARKER"


@pytest.fixture(scope="module", params=["native", "python"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {"METERLINE_NATIVE_INGEST": str(request.param == "native").lower()}
    with start_server(tmp_path_factory.mktemp("bad-input"), env=env) as running:
        yield running


def unique() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


def requests_of(server: RunningServer, consumer: str) -> int:
    response = httpx.get(f"{server.api_url}/v1/usage", params={"consumer": consumer})
    response.raise_for_status()
    return sum(row["requests"] for row in response.json()["rows"])


def encoded(consumer: str, n: int, **extra: object) -> ExportTraceServiceRequest:
    return encode_spans(
        make_spans([chat(consumer, input_tokens=1, output_tokens=1, **extra) for _ in range(n)])
    )


def post(server: RunningServer, body: bytes, content_type: str = "application/x-protobuf"):
    return httpx.post(
        server.otlp_http_url, content=body, headers={"content-type": content_type}, timeout=60
    )


def grpc_export(server: RunningServer, body: bytes) -> ExportTraceServiceResponse:
    with grpc.insecure_channel(server.otlp_grpc_address) as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        return export(body, timeout=60)


def with_invalid_utf8(request: ExportTraceServiceRequest, index: int) -> bytes:
    """The request's bytes with span ``index``'s model attribute made invalid UTF-8."""
    span = request.resource_spans[0].scope_spans[0].spans[index]
    for kv in span.attributes:
        if kv.key == "gen_ai.request.model":
            kv.value.string_value = MARK.decode()
    return request.SerializeToString().replace(MARK, b"\xff" + MARK[1:])


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_invalid_utf8_rejects_only_that_span(server: RunningServer, transport: str) -> None:
    consumer = unique()
    body = with_invalid_utf8(encoded(consumer, 4), 2)
    if transport == "http":
        response = post(server, body)
        assert response.status_code == 200, response.content  # was a 400: all 4 lost
        parsed = ExportTraceServiceResponse.FromString(response.content)
    else:
        parsed = grpc_export(server, body)  # was INVALID_ARGUMENT: all 4 lost
    assert parsed.partial_success.rejected_spans == 1
    assert "not valid UTF-8" in parsed.partial_success.error_message
    assert requests_of(server, consumer) == 3


def _ld(field: int, payload: bytes) -> bytes:
    n, out = len(payload), bytearray([field << 3 | 2])
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + payload


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_deeply_nested_protobuf_value_rejects_only_that_span(
    server: RunningServer, transport: str
) -> None:
    consumer = unique()
    request = encoded(consumer, 3)
    spans = request.resource_spans[0].scope_spans[0].spans
    value = _ld(1, b"x")
    for _ in range(500):
        value = _ld(5, _ld(1, value))  # array_value { values: [value] }
    deep = spans[1].SerializeToString() + _ld(9, _ld(1, b"deep") + _ld(2, value))
    scope = b"".join(
        _ld(2, s) for s in (spans[0].SerializeToString(), deep, spans[2].SerializeToString())
    )
    resource = request.resource_spans[0].resource.SerializeToString()
    body = _ld(1, _ld(1, resource) + _ld(2, scope))
    if transport == "http":
        response = post(server, body)
        assert response.status_code == 200, response.content
        parsed = ExportTraceServiceResponse.FromString(response.content)
    else:
        parsed = grpc_export(server, body)
    assert parsed.partial_success.rejected_spans == 1
    assert "nested too deeply" in parsed.partial_success.error_message
    assert requests_of(server, consumer) == 2


def test_deeply_nested_json_is_a_rejection_or_a_400_never_a_500(server: RunningServer) -> None:
    consumer = unique()
    spans = json.loads(post_json_body(consumer, 3))
    value: dict = {"stringValue": "x"}
    for _ in range(300):
        value = {"arrayValue": {"values": [value]}}
    target = spans["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    target["attributes"].append({"key": "deep", "value": value})
    response = post(server, json.dumps(spans).encode(), "application/json")
    assert response.status_code == 200, response.text  # was a 400: all 3 lost
    assert int(response.json()["partialSuccess"]["rejectedSpans"]) == 1  # int64: a JSON string
    assert requests_of(server, consumer) == 2
    for too_deep in (b"[" * 100_000, b'{"resourceSpans": [' + b"{" * 50_000 + b"]}"):
        response = post(server, too_deep, "application/json")
        assert response.status_code == 400, response.text  # was a 500 (RecursionError)


def post_json_body(consumer: str, n: int) -> str:
    """The OTLP/JSON form of ``n`` SDK spans (protobuf's JSON mapping, hex ids)."""
    document = json_format.MessageToDict(encoded(consumer, n))
    for rs in document["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(document)


def test_times_beyond_the_table_are_rejected_not_wrapped(server: RunningServer) -> None:
    consumer = unique()
    request = encoded(consumer, 4)
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].start_time_unix_nano = spans[0].end_time_unix_nano = 2**63  # was stored as 1677
    spans[1].end_time_unix_nano = 2**64 - 1
    spans[2].events.add(time_unix_nano=2**63, name="late")
    response = post(server, request.SerializeToString())
    assert response.status_code == 200, response.content
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 3
    assert "2106-02-07" in parsed.partial_success.error_message
    assert requests_of(server, consumer) == 1


def test_a_request_over_many_days_costs_the_concurrent_ones_nothing(server: RunningServer) -> None:
    """300 days in one request exceed the engine's 100 partitions per insert: merged with
    concurrent requests, it failed them all, again on every retry."""
    consumer, others = unique(), unique()
    request = encoded(consumer, 300)
    base = request.resource_spans[0].scope_spans[0].spans[0].start_time_unix_nano
    for i, span in enumerate(request.resource_spans[0].scope_spans[0].spans):
        span.start_time_unix_nano = base - i * DAY
        span.end_time_unix_nano = span.start_time_unix_nano + 1000
    results: dict[str, object] = {}

    def send_many_days() -> None:
        results["many"] = post(server, request.SerializeToString()).status_code

    def send_http(i: int) -> None:
        spans = make_spans([chat(others, input_tokens=1, output_tokens=1) for _ in range(5)])
        results[f"http{i}"] = HTTPExporter(endpoint=server.otlp_http_url).export(spans)

    def send_grpc(i: int) -> None:
        spans = make_spans([chat(others, input_tokens=1, output_tokens=1) for _ in range(5)])
        exporter = GRPCExporter(endpoint=server.otlp_grpc_address, insecure=True)
        results[f"grpc{i}"] = exporter.export(spans)

    threads = [threading.Thread(target=send_many_days)]
    threads += [threading.Thread(target=send_http, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=send_grpc, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results.pop("many") == 200
    assert set(results.values()) == {SpanExportResult.SUCCESS}
    assert requests_of(server, others) == 40
    history = httpx.get(
        f"{server.api_url}/v1/usage",
        params={"consumer": consumer, "from": "2000-01-01T00:00:00Z", "group_by": "day"},
    ).json()["rows"]
    assert len(history) == 300 and sum(row["requests"] for row in history) == 300
