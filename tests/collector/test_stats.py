"""``ingest_stats``: the writer's counters sampled into the store, read by the pipeline
health and data quality dashboards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meterline.aggregator.grafana import build_dashboards
from meterline.collector.stats import IngestStats
from meterline.collector.writer import Writer
from meterline.store import Store
from tests.collector.test_writer import T0, body, submit_all
from tests.dashboards.grafana_expand import QueryContext, Variables, expand


def _panel(store: Store, uid: str, title: str) -> list[tuple[object, ...]]:
    [doc] = [d for d in build_dashboards(database=store.database) if d["uid"] == uid]
    [panel] = [p for p in doc["panels"] if p["title"] == title]
    now = datetime.now(UTC)
    ctx = QueryContext(now - timedelta(hours=1), now + timedelta(minutes=1), interval_s=60)
    variables = Variables(current={"database": store.database})
    return store.query(expand(panel["targets"][0]["rawSql"], variables, ctx))[1]


def test_samples_count_written_and_rejected_spans_the_queue_and_the_lag(store: Store) -> None:
    writer = Writer(store)
    stats = IngestStats(store, writer, interval=3600)
    # one span with a start the column cannot hold: rejected at decode, the rest written
    outcomes = submit_all(writer, [body([T0, 2**63, T0]), body([T0] * 2)])
    assert [n for _, n in outcomes] == [2, 2]
    assert stats.sample()
    assert stats.sample()  # nothing new: deltas of zero
    writer.close()
    _, rows = store.query(
        "SELECT Written, Rejected, Refused, Pending, LagMs FROM {db}.ingest_stats ORDER BY At"
    )
    assert rows[0][:4] == (4, 1, 0, 0)
    assert rows[0][4] > 0  # T0 is in the past: the write lagged the spans' start
    assert rows[1] == (0, 0, 0, 0, 0)
    assert _panel(store, "meterline-pipeline", "Spans rejected at ingest") == [(1,)]
    assert _panel(store, "meterline-data-quality", "Spans rejected at ingest") == [(1,)]
    [(_, written, rejected)] = _panel(store, "meterline-pipeline",
                                         "Spans written and rejected")  # fmt: skip
    assert (written, rejected) == (4 / 60, 1 / 60)


def test_stop_writes_a_last_sample(store: Store) -> None:
    writer = Writer(store)
    stats = IngestStats(store, writer, interval=3600).start()
    submit_all(writer, [body([T0] * 3)])
    stats.stop()
    writer.close()
    _, [(written,)] = store.query("SELECT sum(Written) FROM {db}.ingest_stats")
    assert written == 3
