"""The native path writes exactly the rows of the Python path (decode + insert_columns)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from meterline.collector import native
from meterline.collector.decode import COLUMNS, MAX_TIME_NS, parse_protobuf, to_rows

if TYPE_CHECKING:
    from meterline.store import Store

pytest.importorskip("chdb")

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns


def av(value: Any) -> AnyValue:
    """An AnyValue of the Python value's kind (tuples are arrays, dicts kvlists)."""
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, tuple):
        return AnyValue(array_value=ArrayValue(values=[av(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=kvs(value)))
    return AnyValue(string_value=value)


def kvs(attrs: dict[str, Any] | list[tuple[str, Any]]) -> list[KeyValue]:
    items = attrs.items() if isinstance(attrs, dict) else attrs
    return [KeyValue(key=k, value=av(v)) for k, v in items]


DOUBLES = [0.7, 1e-05, 0.0001, 1e16, 1e21, 1.5e22, -0.0, 3.0, -2.5, 123456789.125,
           1.7976931348623157e308, 5e-324, math.inf, -math.inf, math.nan, 0.1 + 0.2]  # fmt: skip

EXOTIC: dict[str, Any] = {
    "gen_ai.request.temperature": 0.7,
    "gen_ai.response.finish_reasons": ("stop", "length"),
    "x.doubles": tuple(DOUBLES),
    "x.empty_array": (),
    "x.mixed": ("é ☃ 😀", 1, True, 2.5, b"\x00\xff", None, ("nested",), {"k": "v"}),
    "x.kvlist": {"a": 1, "b": {"c": (1.0, 'q"uote\\')}, "é": None},
    "x.bytes": b"\x00\x01binary\xff",
    "x.empty_bytes": b"",
    "x.unset": None,
    "x.int.min": -(2**63),
    "x.int.max": 2**63 - 1,
    "x.false": False,
    "x.true": True,
    "x.text": "tab\tnew\nline 'quote' \"dq\" back\\slash é ☃ 😀",
    "": "empty key",
    "ключ": "значение",
}
EXOTIC.update({f"x.double.{i}": d for i, d in enumerate(DOUBLES)})


def usage(i: int, **extra: Any) -> list[KeyValue]:
    attrs: list[tuple[str, Any]] = [
        ("gen_ai.provider.name", "openai" if i % 2 else "anthropic"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "gpt-4o"),
        ("gen_ai.response.id", f"resp-{i}"),
        ("gen_ai.usage.input_tokens", 100 + i),
        ("gen_ai.usage.output_tokens", 10 + i),
        ("meterline.consumer.id", f"c{i % 3}"),
    ]
    attrs += list(extra.items())
    return kvs(attrs)


def tid(i: int) -> bytes:
    return (i + 1).to_bytes(16, "big")


def sid(i: int) -> bytes:
    return (i + 1).to_bytes(8, "big")


def varied_spans(base: int) -> list[Span]:
    spans: list[Span] = []
    for kind in (*range(6), 7, -1):
        i = base + len(spans)
        spans.append(Span(trace_id=tid(i), span_id=sid(i), name=f"chat {i}", kind=kind,  # type: ignore[arg-type]
                          start_time_unix_nano=T0 + i, end_time_unix_nano=T0 + i + 1_000_000,
                          attributes=usage(i)))  # fmt: skip
    for code in (0, 1, 2, 5):
        i = base + len(spans)
        spans.append(Span(trace_id=tid(i), span_id=sid(i), parent_span_id=sid(i + 1000),
                          trace_state="vendor=x", name=f"status {code}",
                          start_time_unix_nano=T0, end_time_unix_nano=T0,
                          status=Status(code=code, message=f"m{code}"),  # type: ignore[arg-type]
                          attributes=usage(i, **{"error.type": "timeout"} if code == 2 else {})))  # fmt: skip
    i = base + len(spans)
    spans.append(Span(trace_id=tid(i), span_id=sid(i), name="exotic", kind=Span.SPAN_KIND_CLIENT,
                      start_time_unix_nano=T0, end_time_unix_nano=T0 + 5,
                      attributes=usage(i) + kvs(EXOTIC),
                      events=[Span.Event(time_unix_nano=T0 + 1, name="gen_ai.choice",
                                         attributes=kvs([("index", 0), ("d", 1.25), ("a", ("x",)), ("index", 1), ("dup", "event"),
                                                         ("text", 'é ☃ 😀 "q" \\ \t\n\x00'), ("", b"\xff")])),
                              Span.Event(time_unix_nano=T0 + 2, name="empty")],
                      links=[Span.Link(trace_id=tid(9999), span_id=sid(9999), trace_state="l=1",
                                       attributes=kvs([("link.d", 0.5), ("link.kv", {"z": b"z"}), ("link.d", "again"),
                                                       ("ключ", "😀\\u0000")])),
                             Span.Link(trace_id=b"\x01\x02", span_id=b"")]))  # fmt: skip
    i = base + len(spans)
    dup = kvs([("gen_ai.usage.input_tokens", 1), ("gen_ai.system", "openai"), ("dup", "first"),
               ("gen_ai.usage.input_tokens", 2), ("dup", 3.5), ("gen_ai.response.id", f"r{i}")])  # fmt: skip
    spans.append(Span(trace_id=tid(i), span_id=sid(i), name="duplicate keys",
                      start_time_unix_nano=T0, end_time_unix_nano=T0 + 1, attributes=dup))  # fmt: skip
    # The latest times otel_traces holds: kept.
    i = base + len(spans)
    spans.append(Span(trace_id=tid(i), span_id=sid(i), name="latest",
                      start_time_unix_nano=MAX_TIME_NS, end_time_unix_nano=MAX_TIME_NS,
                      events=[Span.Event(time_unix_nano=MAX_TIME_NS, name="e")],
                      attributes=usage(i)))  # fmt: skip
    # Not GenAI: kept only with keep_all; never rejected when filtered out.
    i = base + len(spans)
    spans.append(Span(trace_id=tid(i), span_id=sid(i), name="GET /",
                      start_time_unix_nano=T0, end_time_unix_nano=T0 + 1,
                      attributes=kvs({"http.method": "GET", "x.d": 2.0})))  # fmt: skip
    spans.append(Span(trace_id=bytes(16), span_id=sid(i), name="invalid, not GenAI",
                      start_time_unix_nano=T0, end_time_unix_nano=T0 + 1))  # fmt: skip
    # Invalid GenAI spans: rejected.
    invalid = [
        {"trace_id": bytes(16), "span_id": sid(1)},
        {"trace_id": b"\x01" * 15, "span_id": sid(2)},
        {"trace_id": b"", "span_id": sid(3)},
        {"trace_id": tid(4), "span_id": bytes(8)},
        {"trace_id": tid(5), "span_id": b"\x01" * 9},
        {"trace_id": tid(6), "span_id": sid(6), "start_time_unix_nano": 0},
        {"trace_id": tid(7), "span_id": sid(7), "end_time_unix_nano": T0 - 1},
        # beyond what otel_traces can sort and partition (2^63 wrapped to 1677 natively)
        {
            "trace_id": tid(8),
            "span_id": sid(8),
            "start_time_unix_nano": 2**63,
            "end_time_unix_nano": 2**63,
        },
        {"trace_id": tid(9), "span_id": sid(9), "end_time_unix_nano": 2**64 - 1},
        {"trace_id": tid(10), "span_id": sid(10), "end_time_unix_nano": MAX_TIME_NS + 1},
        {
            "trace_id": tid(11),
            "span_id": sid(11),
            "events": [Span.Event(time_unix_nano=T0), Span.Event(time_unix_nano=2**63)],
        },
    ]
    for n, fields in enumerate(invalid):
        args: dict[str, Any] = {"name": f"invalid {n}", "start_time_unix_nano": T0,
                                "end_time_unix_nano": T0 + 1, **fields}  # fmt: skip
        spans.append(Span(attributes=usage(base + 500 + n), **args))
    return spans


def varied_requests() -> list[bytes]:
    resource = Resource(attributes=kvs([("service.name", "svc-a"), ("host.d", 1e-07),
                                        ("meterline.feature", "res-feature"),
                                        ("tags", ("a", "b")), ("service.name", "svc-last")]))  # fmt: skip
    first = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=resource, scope_spans=[
            ScopeSpans(scope=InstrumentationScope(name="meterline", version="1.2"),
                       spans=varied_spans(0)),
            ScopeSpans(spans=varied_spans(100)),
        ]),
        ResourceSpans(scope_spans=[ScopeSpans(scope=InstrumentationScope(name="bare"),
                                              spans=varied_spans(200))]),
    ])  # fmt: skip
    nothing_kept = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[
        ScopeSpans(spans=[Span(trace_id=tid(1), span_id=sid(1), name="plain",
                               start_time_unix_nano=T0, end_time_unix_nano=T0)])])])  # fmt: skip
    small = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=kvs({"service.name": "svc-b"})),
        scope_spans=[ScopeSpans(spans=varied_spans(300)[:3])])])  # fmt: skip
    empty = ExportTraceServiceRequest()
    return [r.SerializeToString() for r in (first, nothing_kept, small, empty)]


_MAPS = ("ResourceAttributes", "SpanAttributes", "`Events.Attributes`", "`Links.Attributes`")


def table(store: Store, name: str, order: str) -> list[tuple[Any, ...]]:
    # toString of the maps pins their entry order too (dict equality would not).
    as_text = ", ".join(f"toString({m})" for m in _MAPS) if name == "otel_traces" else "1"
    _, rows = store.query(f"SELECT *, {as_text} FROM {{db}}.{name} ORDER BY {order}")
    return rows


@pytest.fixture
def other(store: Store) -> Iterator[Store]:
    """A second database on the same engine, for the Python path."""
    from meterline.store import open_store

    assert store.data_dir is not None
    second = open_store(data_dir=store.data_dir, database=f"{store.database}_py")
    second.migrate()
    yield second
    second.command("DROP DATABASE IF EXISTS {db}")


@pytest.mark.parametrize("keep_all", [False, True])
def test_rows_match_the_python_path(store: Store, other: Store, keep_all: bool) -> None:
    bodies = varied_requests()

    counts = native.insert_requests(store, bodies, keep_all=keep_all)

    expected = []
    for body in bodies:
        rows = to_rows(parse_protobuf(body), keep_all=keep_all)
        expected.append((len(rows), rows.rejected))
        if len(rows):
            other.insert_columns("otel_traces", rows.columns, COLUMNS)
    assert counts == expected
    # 11 invalid GenAI spans in each of 3 groups, and 1 invalid plain span each with keep_all
    assert counts[0][1] == (36 if keep_all else 33)
    traces = table(store, "otel_traces", "TraceId, SpanId, SpanName, ServiceName")
    assert len(traces) == sum(written for written, _ in counts)
    assert traces == table(other, "otel_traces", "TraceId, SpanId, SpanName, ServiceName")
    usage_rows = table(store, "llm_usage", "ConsumerId, DedupKey, TraceId, SpanId, Month")
    assert usage_rows
    assert usage_rows == table(other, "llm_usage", "ConsumerId, DedupKey, TraceId, SpanId, Month")


def test_scan_matches_decode() -> None:
    for keep_all in (False, True):
        for body in varied_requests():
            scanned = native.scan_body(body, keep_all=keep_all)
            rows = to_rows(parse_protobuf(body), keep_all=keep_all)
            assert (len(scanned), scanned.rejected, scanned.errors) == (
                len(rows), rows.rejected, rows.errors,
            )  # fmt: skip


def test_scan_drops_what_is_not_written() -> None:
    """The body handed to the engine holds exactly the spans decode writes, so the
    insert needs no filter; a request with nothing to drop keeps its own bytes."""
    for keep_all in (False, True):
        for body in varied_requests():
            scanned = native.scan_body(body, keep_all=keep_all)
            rows = to_rows(parse_protobuf(body), keep_all=keep_all)
            kept = [
                span.span_id.hex()
                for resource_spans in parse_protobuf(scanned.body).resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            ]
            assert kept == rows.columns[COLUMNS.index("SpanId")]
    all_kept = varied_requests()[2]
    assert native.scan_body(all_kept, keep_all=True).body is all_kept


def test_rendered_values(store: Store) -> None:
    body = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[
        Span(trace_id=tid(1), span_id=sid(1), name="v", start_time_unix_nano=T0,
             end_time_unix_nano=T0 + 7, kind=Span.SPAN_KIND_CLIENT,
             attributes=kvs({"gen_ai.x": 1, "d": 0.5, "i": 3.0, "a": ("é", 1), "b": b"hi"}))
    ])])]).SerializeToString()  # fmt: skip

    assert native.insert_requests(store, [body]) == [(1, 0)]

    _, rows = store.query(
        "SELECT TraceId, SpanId, SpanKind, Duration, SpanAttributes FROM {db}.otel_traces"
    )
    assert rows == [(
        "00000000000000000000000000000002", "0000000000000002", "SPAN_KIND_CLIENT", 7,
        {"gen_ai.x": "1", "d": "0.5", "i": "3", "a": '["\\u00e9",1]', "b": "aGk="},
    )]  # fmt: skip


def test_several_inserts_batch_into_one(store: Store) -> None:
    bodies = [varied_requests()[2]] * 3  # the same request three times: one insert
    assert native.insert_requests(store, bodies) == [(3, 0)] * 3
    _, [(count,)] = store.query("SELECT count() FROM {db}.otel_traces")
    assert count == 9


def test_malformed_body_writes_nothing(store: Store) -> None:
    from meterline.collector.decode import MalformedRequest

    with pytest.raises(MalformedRequest):
        native.insert_requests(store, [varied_requests()[2], b"\xff\xff\xff"])
    _, [(count,)] = store.query("SELECT count() FROM {db}.otel_traces")
    assert count == 0


def test_server_store_is_refused() -> None:
    class FakeServer:
        kind = "server"

    with pytest.raises(ValueError, match="embedded store"):
        native.insert(FakeServer(), [native.Scan(body=b"", spans=1)])  # type: ignore[arg-type]
