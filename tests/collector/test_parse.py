"""Reading OTLP bodies: one unreadable span is rejected, the others are kept."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from meterline.collector.parse import MalformedRequest, read_json, read_protobuf

T0 = 1_767_225_600_000_000_000
MARK = "MARK"  # replaced by b"\xffARK" in the serialized body: invalid UTF-8, same length


def kv(key: str, value: str = "v") -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span(i: int, **fields: Any) -> Span:
    base: dict[str, Any] = {
        "trace_id": (i + 1).to_bytes(16, "big"), "span_id": (i + 1).to_bytes(8, "big"),
        "name": f"s{i}", "start_time_unix_nano": T0, "end_time_unix_nano": T0 + 1,
        "attributes": [kv("gen_ai.provider.name", "openai")],
    }  # fmt: skip
    base.update(fields)
    return Span(**base)


def body(*resources: ResourceSpans) -> bytes:
    raw = ExportTraceServiceRequest(resource_spans=resources).SerializeToString()
    return raw.replace(MARK.encode(), b"\xff" + MARK[1:].encode())


def names(parsed: Any) -> list[str]:
    return [
        s.name for rs in parsed.request.resource_spans for ss in rs.scope_spans for s in ss.spans
    ]


def one_scope(*spans: Span, **scope: Any) -> ResourceSpans:
    return ResourceSpans(scope_spans=[ScopeSpans(spans=spans, **scope)])


BAD_PLACES: dict[str, dict[str, Any]] = {
    "name": {"name": MARK},
    "attribute key": {"attributes": [kv("gen_ai.provider.name"), kv(MARK)]},
    "attribute value": {"attributes": [kv("gen_ai.provider.name", MARK)]},
    "nested array": {"attributes": [kv("gen_ai.x"), KeyValue(key="a", value=AnyValue(
        array_value={"values": [AnyValue(string_value="ok"), AnyValue(string_value=MARK)]}))]},
    "kvlist key": {"attributes": [kv("gen_ai.x"), KeyValue(key="k", value=AnyValue(
        kvlist_value={"values": [kv(MARK)]}))]},
    "trace state": {"trace_state": MARK},
    "event name": {"events": [Span.Event(time_unix_nano=T0, name=MARK)]},
    "event attribute": {"events": [Span.Event(time_unix_nano=T0, attributes=[kv("e", MARK)])]},
    "link trace state": {"links": [Span.Link(trace_id=b"\x01" * 16, span_id=b"\x01" * 8,
                                             trace_state=MARK)]},
    "status message": {"status": Status(code=2, message=MARK)},
}  # fmt: skip


@pytest.mark.parametrize("place", BAD_PLACES)
def test_invalid_utf8_rejects_only_that_span(place: str) -> None:
    raw = body(one_scope(span(0), span(1, **BAD_PLACES[place]), span(2)))
    with pytest.raises(DecodeError, match="UTF-8"):  # upb refuses the whole body
        ExportTraceServiceRequest.FromString(raw)
    parsed = read_protobuf(raw)
    assert names(parsed) == ["s0", "s2"]
    [unreadable] = parsed.unreadable
    assert unreadable.genai and "not valid UTF-8" in unreadable.reason
    assert parsed.rejected(keep_all=False) == [unreadable.reason]
    # what the native path inserts: the kept spans only, valid protobuf
    assert ExportTraceServiceRequest.FromString(parsed.body) == parsed.request


def test_bad_resource_or_scope_rejects_its_spans_only() -> None:
    bad_resource = ResourceSpans(resource=Resource(attributes=[kv("service.name", MARK)]),
                                 scope_spans=[ScopeSpans(spans=[span(0), span(1)])])  # fmt: skip
    bad_scope = ResourceSpans(scope_spans=[
        ScopeSpans(scope=InstrumentationScope(name=MARK), spans=[span(2)]),
        ScopeSpans(spans=[span(3)]),
    ])  # fmt: skip
    parsed = read_protobuf(body(bad_resource, bad_scope, one_scope(span(4))))
    assert names(parsed) == ["s3", "s4"]
    reasons = [u.reason for u in parsed.unreadable]
    assert reasons == [
        "span 's0': its resource cannot be read: a string is not valid UTF-8",
        "span 's1': its resource cannot be read: a string is not valid UTF-8",
        "span 's2': its instrumentation scope cannot be read: a string is not valid UTF-8",
    ]


def test_a_non_genai_unreadable_span_is_filtered_not_rejected() -> None:
    plain = span(1, name=MARK, attributes=[kv("http.method", "GET")])
    parsed = read_protobuf(body(one_scope(span(0), plain)))
    assert names(parsed) == ["s0"]
    assert parsed.rejected(keep_all=False) == []
    assert len(parsed.rejected(keep_all=True)) == 1


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    n, out = len(payload), bytearray([field << 3 | 2])
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + payload


def deep_value(depth: int) -> bytes:
    """An AnyValue nested ``depth`` arrays deep (upb cannot even build it in Python)."""
    value = _ld(1, b"x")  # string_value
    for _ in range(depth):
        value = _ld(5, _ld(1, value))  # array_value { values: [value] }
    return value


@pytest.mark.parametrize("depth", [60, 200, 5000])
def test_deep_protobuf_values_reject_only_that_span(depth: int) -> None:
    deep_span = span(1).SerializeToString() + _ld(9, _ld(1, b"deep") + _ld(2, deep_value(depth)))
    scope = (
        _ld(2, span(0).SerializeToString())
        + _ld(2, deep_span)
        + _ld(2, span(2).SerializeToString())
    )
    raw = _ld(1, _ld(2, scope))
    parsed = read_protobuf(raw)
    assert names(parsed) == ["s0", "s2"]
    assert [u.reason for u in parsed.unreadable] == ["span 's1': values nested too deeply"]


def test_shallow_nesting_is_kept() -> None:
    shallow = span(1).SerializeToString() + _ld(9, _ld(1, b"a") + _ld(2, deep_value(40)))
    parsed = read_protobuf(_ld(1, _ld(2, _ld(2, shallow))))
    assert names(parsed) == ["s1"] and parsed.unreadable == []
    assert parsed.body == _ld(1, _ld(2, _ld(2, shallow)))  # the fast path keeps the bytes


def test_broken_wire_format_is_still_a_400() -> None:
    for raw in (b"\xff\xff\xff", _ld(1, b"\xff\xff"), b"\x0a\x05ab"):
        with pytest.raises(MalformedRequest, match="protobuf"):
            read_protobuf(raw)


# ---- JSON --------------------------------------------------------------------------


def json_span(i: int, **fields: Any) -> dict[str, Any]:
    return {
        "traceId": f"{i + 1:032x}", "spanId": f"{i + 1:016x}", "name": f"s{i}",
        "startTimeUnixNano": str(T0), "endTimeUnixNano": str(T0 + 1),
        "attributes": [{"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}}],
        **fields,
    }  # fmt: skip


def json_body(*spans: dict[str, Any], resource: Any = None) -> bytes:
    rs: dict[str, Any] = {"scopeSpans": [{"spans": list(spans)}]}
    if resource is not None:
        rs["resource"] = resource
    return json.dumps({"resourceSpans": [rs]}).encode()


def nested_json(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"stringValue": "x"}
    for _ in range(depth):
        value = {"arrayValue": {"values": [value]}}
    return value


JSON_BAD: dict[str, dict[str, Any]] = {
    "deep": {"attributes": [{"key": "gen_ai.x", "value": nested_json(300)}]},
    "lone surrogate": {"name": "\ud800"},
    "bad hex id": {"traceId": "zz"},
    "wrong type": {"startTimeUnixNano": {"not": "a number"}},
    "not an object": None,
}


@pytest.mark.parametrize("case", JSON_BAD)
def test_json_rejects_only_the_unreadable_span(case: str) -> None:
    bad = json_span(1, **JSON_BAD[case]) if JSON_BAD[case] is not None else 42
    parsed = read_json(json_body(json_span(0), bad, json_span(2)))
    assert names(parsed) == ["s0", "s2"]
    [unreadable] = parsed.unreadable
    assert unreadable.reason.startswith("span "), unreadable.reason
    if case == "deep":
        assert unreadable.reason == "span 's1': values nested too deeply"
    if case != "not an object":
        assert unreadable.genai


def test_json_too_deep_for_the_parser_is_a_400() -> None:
    for raw in (b"[" * 100_000, b'{"resourceSpans": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
        with pytest.raises(MalformedRequest):
            read_json(raw)


def test_json_resource_that_cannot_be_read_rejects_its_spans() -> None:
    resource = {"attributes": [{"key": "k", "value": nested_json(300)}]}
    parsed = read_json(json_body(json_span(0), resource=resource))
    assert names(parsed) == []
    assert [u.reason for u in parsed.unreadable] == [
        "span 's0': its resource cannot be read: values nested too deeply"
    ]


def test_json_snake_case_and_camel_case_give_the_same_request() -> None:
    camel = read_json(json_body(json_span(0)))
    snake = json.dumps({"resource_spans": [{"scope_spans": [{"spans": [json_span(0)]}]}]})
    assert read_json(snake.encode()).request == camel.request
