"""The pipeline health dashboard: what the store shows of ingest, rating and the Stripe
sync.

- ingest: spans written and rejected per second as they arrive, the writer's queue and
  the ingest lag (``ingest_stats``, sampled by ``meterline serve`` every
  ``METERLINE_INGEST_STATS_INTERVAL_S``, default 10 s: meterline.collector.stats), spans
  stored per second by their own start time, usage reports against counted responses
  (duplicates), the age of the newest span, the active parts of the ingest tables (merges
  falling behind the writer show here first);
- rating: the age of the newest rating run and its duration (``rated_months``) — the lag
  from usage to ``rated_usage_current`` (docs/rated-usage.md);
- Stripe: the sync's runs (``stripe_runs``) and its ledger by state (``stripe_ledger``).

Known limits: ``ingest_stats`` is written by meterline's own collector; a deployment fed
by otelcol has none (those panels stay empty: otelcol reports its own metrics). Requests
refused whole (not OTLP: 400; back-pressure: 503) are not counted as rejected spans.
"""

from __future__ import annotations

from typing import Any

from meterline.aggregator.grafana._panels import Layout, dashboard

UID = "meterline-pipeline"

SPANS = "${database}.otel_traces"
STATS = "${database}.ingest_stats"


def build(
    *, datasource_uid: str | None, database: str, money: str, minor_units: int
) -> dict[str, Any]:
    layout = Layout()
    layout.add("timeseries", "Spans written and rejected",
               "SELECT $__timeInterval(At) AS time, sum(Written) / $__interval_s AS written,"
               " sum(Rejected + Refused) / $__interval_s AS rejected\n"
               f"FROM {STATS}\nWHERE $__timeFilter(At)\nGROUP BY time\nORDER BY time",
               unit="ops", w=12, h=8,
               description="Spans per second as they arrive (meterline's collector), and "
               "those rejected at ingest (answered in partial_success).")  # fmt: skip
    layout.add("stat", "Spans rejected at ingest",
               "SELECT sum(Rejected + Refused) AS rejected"
               f" FROM {STATS} WHERE $__timeFilter(At)",
               unit="short", w=4, h=8)  # fmt: skip
    layout.add("timeseries", "Writer queue",
               "SELECT $__timeInterval(At) AS time, max(Pending) AS spans\n"
               f"FROM {STATS}\nWHERE $__timeFilter(At)\nGROUP BY time\nORDER BY time",
               unit="short", w=4, h=8,
               description="Spans accepted and not yet written (back-pressure starts at "
               "METERLINE_MAX_PENDING_SPANS).")  # fmt: skip
    layout.add("timeseries", "Ingest lag",
               "SELECT $__timeInterval(At) AS time, max(LagMs) AS lag\n"
               f"FROM {STATS}\nWHERE $__timeFilter(At)\nGROUP BY time\nORDER BY time",
               unit="ms", w=4, h=8,
               description="Largest delay from a written batch's newest span start to its "
               "write (export interval, spool replays and the writer).")  # fmt: skip
    layout.add("timeseries", "Spans stored",
               "SELECT $__timeInterval(Timestamp) AS time, count() / $__interval_s AS spans\n"
               f"FROM {SPANS}\nWHERE $__timeFilter(Timestamp)\nGROUP BY time\nORDER BY time",
               unit="ops", w=12, h=8,
               description="Spans per second, by the spans' start time.")  # fmt: skip
    layout.add("timeseries", "Usage reports and counted responses",
               "SELECT $__timeInterval(Timestamp) AS time, count() AS reports,"
               " uniqExact(ConsumerId, DedupKey) AS responses\n"
               "FROM ${database}.llm_usage\n"
               "WHERE $__timeFilter(Timestamp) AND Home = 1\nGROUP BY time\nORDER BY time",
               unit="short", w=12, h=8,
               description="Reports stored (duplicates and retries included) against the "
               "responses they describe (each counted once).")  # fmt: skip
    layout.add("stat", "Newest span",
               f"SELECT dateDiff('second', max(Timestamp), now64(9)) AS age FROM {SPANS}"
               " WHERE $__timeFilter(Timestamp)",
               unit="s", w=6, h=5,
               description="Seconds since the newest span started.")  # fmt: skip
    layout.add("stat", "Rating lag",
               "SELECT dateDiff('second', max(RatedAt), now64(3)) AS lag"
               " FROM ${database}.rated_months FINAL",
               unit="s", w=6, h=5,
               description="Seconds since the newest rating run finished.")  # fmt: skip
    layout.add("stat", "Last rating run",
               "SELECT argMax(Seconds, RatedAt) AS seconds FROM ${database}.rated_months FINAL",
               unit="s", w=6, h=5)  # fmt: skip
    layout.add("stat", "Active parts",
               "SELECT table, count() AS parts FROM system.parts\n"
               "WHERE database = '${database}' AND active"
               " AND table IN ('otel_traces', 'llm_usage')\nGROUP BY table ORDER BY table",
               unit="short", w=6, h=5,
               description="Parts waiting to be merged; a count that keeps growing means "
               "merges are behind the writer.")  # fmt: skip
    layout.add("table", "Rated months",
               "SELECT toString(Month) AS month, RatedAt AS rated_at, Seconds AS seconds,"
               " HoursRated AS hours_rated\nFROM ${database}.rated_months FINAL\n"
               "ORDER BY Month DESC\nLIMIT 24",
               unit="short", w=12, h=8,
               overrides={"rated_at": "dateTimeAsIso", "seconds": "s"})  # fmt: skip
    layout.add("table", "Stripe sync runs",
               "SELECT StartedAt AS started, FinishedAt AS finished,"
               " dateDiff('millisecond', StartedAt, FinishedAt) / 1000 AS seconds,"
               " Api AS api, DryRun AS dry_run\nFROM ${database}.stripe_runs\n"
               "WHERE $__timeFilter(StartedAt)\nORDER BY StartedAt DESC\nLIMIT 20",
               unit="short", w=12, h=8,
               overrides={"started": "dateTimeAsIso", "finished": "dateTimeAsIso",
                          "seconds": "s"})  # fmt: skip
    layout.add("stat", "Stripe sync lag",
               "SELECT if(count() = 0, NULL, dateDiff('second', max(FinishedAt), now64(3)))"
               " AS lag FROM ${database}.stripe_runs WHERE DryRun = 0",
               unit="s", w=8, h=5,
               description="Seconds since the last sync run that was not a dry run "
               "(empty until the sync has run).")  # fmt: skip
    layout.add("table", "Stripe ledger by state",
               "SELECT State AS state, Kind AS kind, count() AS rows, sum(Value) AS value\n"
               "FROM ${database}.stripe_ledger FINAL\nWHERE $__timeFilter(WindowStart)\n"
               "GROUP BY state, kind\nORDER BY state, kind",
               unit="short", w=16, h=5,
               description="pending / sent-unknown rows are in flight or need a look; "
               "rejected rows were refused by Stripe.")  # fmt: skip
    return dashboard(
        uid=UID,
        title="meterline — pipeline health",
        description="Ingest, rating and Stripe sync as the store shows them (meterline).",
        variables=[],
        layout=layout,
        datasource_uid=datasource_uid,
        database=database,
        time_from="now-24h",
    )
