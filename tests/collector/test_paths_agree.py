"""Property: for any request, the native and the Python paths store the same rows.

Generated requests cover the edges where two encoders could differ or a value could
wrap: times around every bound (0, the latest time ``otel_traces`` holds, 2^63, 2^64-1),
out-of-range enums, ids of every length, any AnyValue (NUL and non-BMP text, extreme
ints, NaN/inf, bytes, nested arrays and kvlists, repeated keys) on spans, resources,
events and links.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from meterline.collector import native
from meterline.collector.decode import COLUMNS, MAX_TIME_NS, to_rows
from meterline.collector.parse import read_protobuf
from tests.collector.test_native import table

if TYPE_CHECKING:
    from meterline.store import Store

pytest.importorskip("chdb")

T0 = 1_767_225_600_000_000_000
TIMES = [0, 1, T0, MAX_TIME_NS - 1, MAX_TIME_NS, MAX_TIME_NS + 1, 2**63 - 1, 2**63, 2**64 - 1]

text = st.text(st.characters(codec="utf-8"), max_size=12)
keys = st.one_of(st.sampled_from(["gen_ai.usage.input_tokens", "gen_ai.provider.name",
                                  "gen_ai.response.id", "meterline.consumer.id", "k"]), text)  # fmt: skip
scalars = st.one_of(
    st.builds(lambda v: AnyValue(string_value=v), text),
    st.builds(lambda v: AnyValue(int_value=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: AnyValue(double_value=v), st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
    st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=8)),
    st.just(AnyValue()),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.builds(
            lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(inner, max_size=3)
        ),
        st.builds(
            lambda kvs: AnyValue(kvlist_value=KeyValueList(values=kvs)),
            st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), keys, inner), max_size=3),
        ),
    ),
    max_leaves=6,
)
attributes = st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), keys, values), max_size=6)
# Mostly valid values (so most examples write rows), often exactly on a bound.
valid_times = st.integers(1, MAX_TIME_NS)
times = st.one_of(st.sampled_from(TIMES), valid_times, valid_times, st.integers(0, 2**64 - 1))
valid_ids, valid_span_ids = st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8)
ids = st.one_of(valid_ids, valid_ids, valid_ids, st.binary(max_size=17))
span_ids = st.one_of(valid_span_ids, valid_span_ids, valid_span_ids, st.binary(max_size=9))


@st.composite
def spans(draw: st.DrawFn) -> Span:
    start = draw(times)
    end = draw(st.one_of(times, st.just(start), st.integers(start, start + 10**12)))
    return Span(
        trace_id=draw(ids), span_id=draw(span_ids), parent_span_id=draw(span_ids),
        trace_state=draw(text), name=draw(text), kind=draw(st.integers(-2, 8)),  # type: ignore[arg-type]
        start_time_unix_nano=start, end_time_unix_nano=min(end, 2**64 - 1),
        attributes=[KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value="chat")),
                    *draw(attributes)],
        events=draw(st.lists(st.builds(lambda t, n, a: Span.Event(time_unix_nano=t, name=n, attributes=a),
                                       times, text, attributes), max_size=2)),
        links=draw(st.lists(st.builds(lambda t, s, st_, a: Span.Link(trace_id=t, span_id=s, trace_state=st_, attributes=a),
                                      ids, span_ids, text, attributes), max_size=2)),
        status=Status(code=draw(st.integers(-1, 4)), message=draw(text)),  # type: ignore[arg-type]
    )  # fmt: skip


requests = st.builds(
    lambda groups: ExportTraceServiceRequest(resource_spans=groups),
    st.lists(
        st.builds(
            lambda attrs, scopes: ResourceSpans(resource=Resource(attributes=attrs), scope_spans=scopes),
            attributes,
            st.lists(st.builds(lambda ss: ScopeSpans(spans=ss), st.lists(spans(), min_size=1, max_size=3)),
                     min_size=1, max_size=2),
        ),
        min_size=1, max_size=2,
    ),
)  # fmt: skip


@pytest.fixture
def pair(store: Store) -> Iterator[tuple[Store, Store]]:
    """The store (native path) and a second database on the same engine (Python path)."""
    from meterline.store import open_store

    assert store.data_dir is not None
    other = open_store(data_dir=store.data_dir, database=f"{store.database}_py")
    other.migrate()
    yield store, other
    other.command("DROP DATABASE IF EXISTS {db}")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=requests, keep_all=st.booleans())
def test_both_paths_store_the_same_rows(
    pair: tuple[Store, Store], request: ExportTraceServiceRequest, keep_all: bool
) -> None:
    native_store, python_store = pair
    for s in pair:
        for name in ("otel_traces", "llm_usage"):
            s.command(f"TRUNCATE TABLE {{db}}.{name}")
    parsed = read_protobuf(request.SerializeToString())
    scanned = native.scan(parsed.request, parsed.body or b"", keep_all=keep_all)
    native.insert(native_store, [scanned])
    rows = to_rows(read_protobuf(request.SerializeToString()).request, keep_all=keep_all)
    if len(rows):
        python_store.insert_columns("otel_traces", rows.columns, COLUMNS)
    assert (len(scanned), scanned.rejected, scanned.errors) == (
        len(rows),
        rows.rejected,
        rows.errors,
    )
    order = "TraceId, SpanId, SpanName, Timestamp, Duration, toString(SpanAttributes)"
    stored = table(native_store, "otel_traces", order)
    assert stored == table(python_store, "otel_traces", order)
    assert len(stored) == len(rows)
    event(f"rows written: {min(len(rows), 3)}")
    for row in stored:
        assert 1970 <= row[0].year <= 2106  # nothing wrapped
    usage_order = "ConsumerId, DedupKey, TraceId, SpanId, Timestamp, Month"
    assert table(native_store, "llm_usage", usage_order) == table(
        python_store, "llm_usage", usage_order
    )
