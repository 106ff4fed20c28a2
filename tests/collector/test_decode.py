"""OTLP → otel_traces rows: stringification, validation, filtering, OTLP/JSON."""

from __future__ import annotations

import json

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue

from meterline.collector.decode import (
    COLUMNS,
    MalformedRequest,
    parse_json,
    parse_protobuf,
    to_rows,
)

TRACE = bytes(range(1, 17))
SPAN = bytes(range(1, 9))


def request(*spans: dict, resource: list[KeyValue] | None = None) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[{
            "resource": {"attributes": resource or [kv("service.name", "svc")]},
            "scope_spans": [{"scope": {"name": "sc", "version": "1"}, "spans": list(spans)}],
        }]
    )  # fmt: skip


def kv(key: str, value: AnyValue | str) -> KeyValue:
    return KeyValue(
        key=key, value=value if isinstance(value, AnyValue) else AnyValue(string_value=value)
    )


def span(**overrides: object) -> dict:
    base = {"trace_id": TRACE, "span_id": SPAN, "name": "chat m", "kind": 3,
            "start_time_unix_nano": 1_000, "end_time_unix_nano": 1_500,
            "attributes": [kv("gen_ai.provider.name", "openai")]}  # fmt: skip
    return {**base, **overrides}


def row(rows, i: int = 0) -> dict:
    return {name: col[i] for name, col in zip(COLUMNS, rows.columns, strict=True)}


def test_values_are_stringified_like_the_exporter() -> None:
    attrs = [
        kv("gen_ai.provider.name", "openai"),
        kv("i", AnyValue(int_value=42)),
        kv("b", AnyValue(bool_value=True)),
        kv("d", AnyValue(double_value=1.5)),
        kv("di", AnyValue(double_value=3.0)),
        kv("arr", AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="stop")]))),
        kv("bytes", AnyValue(bytes_value=b"\x00\x01")),
    ]
    rows = to_rows(request(span(attributes=attrs, parent_span_id=SPAN, status={"code": 2})))
    r = row(rows)
    assert r["SpanAttributes"] == {"gen_ai.provider.name": "openai", "i": "42", "b": "true",
                                   "d": "1.5", "di": "3", "arr": '["stop"]', "bytes": "AAE="}  # fmt: skip
    assert (r["TraceId"], r["SpanId"], r["ParentSpanId"]) == (TRACE.hex(), SPAN.hex(), SPAN.hex())
    assert (r["SpanKind"], r["StatusCode"], r["Duration"]) == (
        "SPAN_KIND_CLIENT",
        "STATUS_CODE_ERROR",
        500,
    )
    assert (r["ServiceName"], r["ScopeName"], r["ScopeVersion"]) == ("svc", "sc", "1")


@pytest.mark.parametrize(
    ("bad", "message"),
    [({"trace_id": b"\x01"}, "trace id"), ({"trace_id": bytes(16)}, "trace id"),
     ({"span_id": b""}, "span id"), ({"start_time_unix_nano": 0}, "start time"),
     ({"end_time_unix_nano": 10}, "start time")],
)  # fmt: skip
def test_invalid_spans_are_rejected_and_the_rest_kept(bad: dict, message: str) -> None:
    rows = to_rows(request(span(), span(**bad)))
    assert (len(rows), rows.rejected) == (1, 1)
    assert message in rows.errors[0]


def test_non_genai_spans_are_filtered_unless_keep_all() -> None:
    plain = span(attributes=[kv("http.request.method", "GET")])
    assert len(to_rows(request(plain, span()))) == 1
    assert len(to_rows(request(plain, span()), keep_all=True)) == 2
    assert to_rows(request(plain)).rejected == 0


def test_protobuf_and_json_errors_are_clear() -> None:
    with pytest.raises(MalformedRequest, match="protobuf"):
        parse_protobuf(b"\xff\xff\xff")
    with pytest.raises(MalformedRequest, match="JSON"):
        parse_json(b"[1, 2")
    with pytest.raises(MalformedRequest, match="object"):
        parse_json(b"[]")
    with pytest.raises(MalformedRequest, match="not hex"):
        parse_json(
            json.dumps(
                {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}
            ).encode()
        )


def test_json_with_hex_ids_matches_protobuf() -> None:
    proto = request(span())
    body = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
            "scopeSpans": [{"scope": {"name": "sc", "version": "1"}, "spans": [{
                "traceId": TRACE.hex(), "spanId": SPAN.hex(), "name": "chat m", "kind": 3,
                "startTimeUnixNano": "1000", "endTimeUnixNano": "1500",
                "attributes": [{"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}}]}]}]}]}  # fmt: skip
    assert row(to_rows(parse_json(json.dumps(body).encode()))) == row(to_rows(proto))
