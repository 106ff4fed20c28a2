"""The writer: acks only after the write, back-pressure, failed inserts, flush on close."""

from __future__ import annotations

import threading

import pytest

from meterline.collector.decode import COLUMNS, Rows
from meterline.collector.writer import Closed, Overloaded, Writer
from meterline.store import Store

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
    return store.query("SELECT count() FROM {db}.llm_usage FINAL")[1][0][0]


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

    from meterline.collector.decode import parse_protobuf
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
    futures = [writer.submit(writer.decode(parse_protobuf(b), b, keep_all=False)) for b in bodies]
    assert [f.result(30) for f in futures] == [10] * 8
    writer.close()
    assert sum(inserts) == 80 and len(inserts) <= 2  # lingering merged the requests
    assert count(store) == 80
