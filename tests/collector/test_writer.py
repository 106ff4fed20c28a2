"""The writer: acks only after the write, back-pressure, failed inserts, flush on close."""

from __future__ import annotations

import threading

import pytest

from meterline.collector.decode import COLUMNS, Rows
from meterline.collector.writer import Closed, Overloaded, Writer
from meterline.store import Store
from meterline.store.usage_schema import COUNTED_ALL

_NEXT = 0


def rows(n: int, consumer: str = "w") -> Rows:
    global _NEXT
    r = Rows()
    start, _NEXT = _NEXT, _NEXT + n
    for i in range(start, start + n):
        values = {
            "Timestamp": 1_700_000_000_000_000_000 + i, "TraceId": f"{i:032x}",
            "SpanId": f"{i:016x}", "ParentSpanId": "", "TraceState": "", "SpanName": "chat",
            "SpanKind": "SPAN_KIND_CLIENT", "ServiceName": "s", "ResourceAttributes": {},
            "ScopeName": "", "ScopeVersion": "",
            "SpanAttributes": {"gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": "1",
                               "meterline.consumer.id": consumer},
            "Duration": 1, "StatusCode": "STATUS_CODE_UNSET", "StatusMessage": "",
            "Events.Timestamp": [], "Events.Name": [], "Events.Attributes": [],
            "Links.TraceId": [], "Links.SpanId": [], "Links.TraceState": [], "Links.Attributes": [],
        }  # fmt: skip
        for column, name in zip(r.columns, COLUMNS, strict=True):
            column.append(values[name])
    return r


def count(store: Store) -> int:
    return store.query(f"SELECT count() FROM {COUNTED_ALL}")[1][0][0]


def test_ack_after_write_and_batching_across_requests(store: Store) -> None:
    gate = threading.Event()
    real_insert = store.insert_columns
    inserts: list[int] = []

    def slow_insert(table, columns, names):
        gate.wait(10)
        inserts.append(len(columns[0]))
        real_insert(table, columns, names)

    store.insert_columns = slow_insert  # type: ignore[method-assign]
    writer = Writer(store, max_pending=100, batch_max=100)
    first = writer.submit(rows(10))
    futures = [writer.submit(rows(10)) for _ in range(3)]
    assert not first.done() and count(store) == 0  # nothing acknowledged before the write
    with pytest.raises(Overloaded) as excinfo:
        writer.submit(rows(80))  # 40 pending + 80 > 100
    assert excinfo.value.retry_after >= 1
    gate.set()
    assert first.result(10) == 10 and [f.result(10) for f in futures] == [10, 10, 10]
    assert sum(inserts) == 40 and len(inserts) <= 2  # concurrent requests share inserts
    writer.close()
    assert count(store) == 40


def test_failed_insert_fails_the_ack(store: Store) -> None:
    def broken(*args):
        raise RuntimeError("disk full")

    store.insert_columns = broken  # type: ignore[method-assign]
    writer = Writer(store)
    with pytest.raises(RuntimeError, match="disk full"):
        writer.submit(rows(3)).result(10)
    writer.close()


def test_close_flushes_everything_queued_then_refuses(store: Store) -> None:
    writer = Writer(store, batch_max=7)
    futures = [writer.submit(rows(5)) for _ in range(20)]
    writer.close()
    assert all(f.done() and f.result() == 5 for f in futures)
    assert count(store) == 100
    with pytest.raises(Closed):
        writer.submit(rows(1))


def test_native_writer_lingers_batches_and_counts_exactly(store: Store) -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from meterline.collector.parse import read_protobuf
    from tests.e2e.spans import chat, make_spans

    inserts: list[int] = []
    writer = Writer(store, native=True, threads=2, linger=0.5, batch_min=40)
    real = writer._insert
    writer._insert = lambda items: (inserts.append(sum(map(len, items))), real(items))[1]  # type: ignore[method-assign]
    bodies = [
        encode_spans(
            make_spans([chat(f"n{i}", input_tokens=1, output_tokens=1)] * 10)
        ).SerializeToString()
        for i in range(8)
    ]
    futures = [writer.submit(writer.decode(read_protobuf(b), keep_all=False)) for b in bodies]
    assert [f.result(30) for f in futures] == [10] * 8
    writer.close()
    assert sum(inserts) == 80 and len(inserts) <= 2  # lingering merged the requests
    assert count(store) == 80


# ---- one bad request, one bad span, costs nothing else ------------------------------

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
DAY = 86_400 * 10**9
_SPAN = 0


def body(starts: list[int], names: list[str] | None = None, consumer: str = "b") -> bytes:
    """A protobuf export request with one GenAI span per start time."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    global _SPAN
    spans = []
    for i, start in enumerate(starts):
        _SPAN += 1
        attrs = {"gen_ai.provider.name": "openai", "gen_ai.response.id": f"r{_SPAN}",
                 "meterline.consumer.id": consumer}  # fmt: skip
        spans.append(Span(
            trace_id=_SPAN.to_bytes(16, "big"), span_id=_SPAN.to_bytes(8, "big"),
            name=names[i] if names else f"chat {_SPAN}", start_time_unix_nano=start,
            end_time_unix_nano=start + 1,
            attributes=[KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attrs.items()]
            + [KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=1))],
        ))  # fmt: skip
    request = ExportTraceServiceRequest(resource_spans=[{"scope_spans": [{"spans": spans}]}])
    return request.SerializeToString()


@pytest.fixture(params=["native", "python"])
def native(request: pytest.FixtureRequest) -> bool:
    return request.param == "native"


def submit_all(writer: Writer, bodies: list[bytes]) -> list[tuple[object, int | Exception]]:
    """Submit every body at once (so the writer merges them); each item and its outcome."""
    from meterline.collector.parse import read_protobuf

    items = [writer.decode(read_protobuf(b), keep_all=False) for b in bodies]
    futures = [writer.submit(item) for item in items]
    outcomes: list[tuple[object, int | Exception]] = []
    for item, future in zip(items, futures, strict=True):
        try:
            outcomes.append((item, future.result(60)))
        except Exception as exc:
            outcomes.append((item, exc))
    return outcomes


def traces(store: Store) -> int:
    return store.query("SELECT count() FROM {db}.otel_traces")[1][0][0]


def lingering(store: Store, native: bool, **kwargs: object) -> Writer:
    """A writer that merges everything submitted within a second into one insert."""
    return Writer(store, native=native, linger=1.0, batch_min=10**6, **kwargs)  # type: ignore[arg-type]


def test_a_request_over_many_days_is_written_and_costs_the_others_nothing(
    store: Store, native: bool
) -> None:
    """300 days in one request: the engine refuses more than 100 partitions in one insert
    block, which failed every request merged with it, on every retry."""
    writer = lingering(store, native)
    many_days = body([T0 + i * DAY for i in range(300)])
    outcomes = submit_all(writer, [body([T0] * 5), many_days, body([T0 - 400 * DAY] * 3)])
    writer.close()
    assert [result for _, result in outcomes] == [5, 300, 3]
    assert traces(store) == count(store) == 308


def test_the_engine_refusing_a_block_isolates_the_request(store: Store, native: bool) -> None:
    """Without the partition window (as for an engine limit we do not know of), the
    engine's own TOO_MANY_PARTS is met by retrying in halves: all spans get written."""
    writer = lingering(store, native)
    writer.days_per_insert = 1 << 62
    inserts: list[int] = []
    real = writer._insert
    writer._insert = lambda items: (inserts.append(sum(map(len, items))), real(items))[1]  # type: ignore[method-assign]
    outcomes = submit_all(writer, [body([T0] * 4), body([T0 + i * DAY for i in range(150)])])
    writer.close()
    assert [result for _, result in outcomes] == [4, 150]
    assert inserts[0] == 154 and len(inserts) > 2  # the merged insert failed, then halves
    assert traces(store) == count(store) == 154


def test_a_span_the_engine_refuses_is_rejected_and_the_rest_written(
    store: Store, native: bool
) -> None:
    store.command(
        "ALTER TABLE {db}.otel_traces ADD CONSTRAINT no_poison CHECK SpanName != 'poison'"
    )
    writer = lingering(store, native)
    names = ["a"] * 20
    names[13] = "poison"
    outcomes = submit_all(writer, [body([T0] * 10), body([T0] * 20, names=names), body([T0] * 3)])
    writer.close()
    assert [result for _, result in outcomes] == [10, 19, 3]
    poisoned = outcomes[1][0]
    assert poisoned.rejected == 1  # type: ignore[attr-defined]
    [reason] = poisoned.errors  # type: ignore[attr-defined]
    assert (
        reason.startswith("span 'poison' refused by the store: ")
        and "VIOLATED_CONSTRAINT" in reason
    )
    assert traces(store) == count(store) == 32
    assert writer.refused == 1


def test_a_store_failure_fails_every_request_for_retry(store: Store, native: bool) -> None:
    store.command("DROP TABLE {db}.llm_usage_mv")
    store.command("DROP TABLE {db}.otel_traces")
    writer = lingering(store, native)
    outcomes = submit_all(writer, [body([T0] * 2), body([T0] * 3)])
    writer.close()
    for item, result in outcomes:
        assert isinstance(result, Exception) and "UNKNOWN_TABLE" in str(result)
        assert item.rejected == 0  # type: ignore[attr-defined]


def test_an_unknown_error_isolates_the_request_and_answers_it_retry(store: Store) -> None:
    """A stand-in raises an error name the writer does not know for inserts holding
    one request's span (the engine has no such error on demand); the store is real."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    writer = lingering(store, False)
    real = writer._insert

    def insert(items):
        if any("odd" in name for item in items for name in item.names()):
            raise DatabaseError("Code: 36. DB::Exception: odd (BAD_ARGUMENTS)", code=36,
                                name="BAD_ARGUMENTS")  # fmt: skip
        real(items)

    writer._insert = insert  # type: ignore[method-assign]
    outcomes = submit_all(writer, [body([T0] * 4), body([T0] * 3, names=["x", "odd", "y"]),
                                   body([T0] * 2)])  # fmt: skip
    writer.close()
    assert outcomes[0][1] == 4 and outcomes[2][1] == 2
    item, result = outcomes[1]
    assert isinstance(result, DatabaseError) and item.rejected == 0  # type: ignore[attr-defined]
    assert traces(store) == 6


def test_out_of_range_times_cost_nothing_else(store: Store, native: bool) -> None:
    """A 2^63 ns start was acked and stored as 1677 (native) or failed the whole insert
    (Python); it is rejected at decode and the rest of the insert is written."""
    writer = lingering(store, native)
    outcomes = submit_all(writer, [body([T0, 2**63, T0]), body([T0] * 2)])
    writer.close()
    assert [result for _, result in outcomes] == [2, 2]
    assert outcomes[0][0].rejected == 1  # type: ignore[attr-defined]
    _, [(low, high)] = store.query("SELECT min(Timestamp), max(Timestamp) FROM {db}.otel_traces")
    assert low.year == high.year == 2026


def test_sparse_days_over_decades_take_few_inserts(store: Store, native: bool) -> None:
    """200 spans on 200 days spread over 55 years: pieces of at most 50 distinct days
    (one UTC day falls on at most two dates of any server time zone), not one insert
    per 99-day range (200 of them), and one parse of the body for all the pieces."""
    writer = lingering(store, native)
    inserts: list[int] = []
    real = writer._insert
    writer._insert = lambda items: (inserts.append(sum(map(len, items))), real(items))[1]  # type: ignore[method-assign]
    starts = [DAY + i * 100 * DAY for i in range(200)]
    outcomes = submit_all(writer, [body(starts), body([T0] * 3)])
    writer.close()
    assert [result for _, result in outcomes] == [200, 3]
    assert len(inserts) <= 5 and sum(inserts) == 203
    assert traces(store) == count(store) == 203
