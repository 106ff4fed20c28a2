"""The data quality dashboard: unpriced usage by model, estimated (cut-short) usage,
failed calls by ``error.type``, and usage the store flagged invalid.

Spans the collector *rejected* at ingest (counted in OTLP ``partial_success``) never reach
``otel_traces``: their count comes from ``ingest_stats`` (sampled by meterline's
collector; not by otelcol). What reaches the store but cannot be trusted is stored
flagged (``UsageError``) and shown as invalid usage.
"""

from __future__ import annotations

from typing import Any

from meterline.aggregator.grafana._panels import (
    CONSUMER,
    COUNTED,
    COUNTED_MODEL,
    RATED,
    Layout,
    counted_filter,
    dashboard,
    filter_variables,
    rated_filter,
)

UID = "meterline-data-quality"


def build(
    *, datasource_uid: str | None, database: str, money: str, minor_units: int
) -> dict[str, Any]:
    rated = rated_filter()
    counted = counted_filter()
    bucket = "toStartOfInterval(Hour, INTERVAL greatest($__interval_s, 3600) second)"
    layout = Layout()
    layout.add("stat", "Unpriced calls",
               f"SELECT sumIf(Requests, Status = 'unpriced') AS unpriced FROM {RATED}"
               f" WHERE {rated}", unit="short", w=6, h=5)  # fmt: skip
    layout.add("stat", "Estimated calls", f"SELECT countIf(Estimated = 1) AS estimated"
               f" FROM {COUNTED} WHERE {counted}", unit="short", w=6, h=5,
               description="Calls cut short (stream closed early, process stopping): their "
               "usage is an estimate.")  # fmt: skip
    layout.add("stat", "Failed calls", "SELECT countIf(Billable = 0 AND UsageError = '')"
               f" AS failed FROM {COUNTED} WHERE {counted}", unit="short", w=6, h=5)  # fmt: skip
    layout.add("stat", "Invalid usage", "SELECT countIf(UsageError != '') AS invalid"
               f" FROM {COUNTED} WHERE {counted}", unit="short", w=6, h=5,
               description="Reports whose counts cannot be trusted: stored, flagged, in no "
               "token total, never billed.")  # fmt: skip
    layout.add("stat", "Spans rejected at ingest",
               "SELECT sum(Rejected + Refused) AS rejected FROM ${database}.ingest_stats"
               " WHERE $__timeFilter(At)", unit="short", w=24, h=4,
               description="Spans the collector refused (unreadable, invalid times, refused "
               "by the engine): answered in partial_success, not stored.")  # fmt: skip
    layout.add("table", "Unpriced usage by model",
               "SELECT Provider AS provider, Model AS model, sum(Requests) AS requests,"
               " sum(Quantity) AS tokens, min(Hour) AS first_hour, max(Hour) AS last_hour\n"
               f"FROM {RATED}\nWHERE {rated} AND Status = 'unpriced'\n"
               "GROUP BY provider, model\nORDER BY requests DESC",
               unit="short", w=12, h=8,
               overrides={"first_hour": "dateTimeAsIso", "last_hour": "dateTimeAsIso"},
               description="Add a price (models: in the configuration, or prices update), "
               "and the next rating prices them.")  # fmt: skip
    layout.add("timeseries", "Unpriced calls over time",
               f"SELECT {bucket} AS time, Model AS model, sum(Requests) AS requests\n"
               f"FROM {RATED}\nWHERE {rated} AND Status = 'unpriced'\n"
               "GROUP BY time, model\nORDER BY time",
               unit="short", w=12, h=8)  # fmt: skip
    layout.add("table", "Estimated (cut-short) usage",
               f"SELECT {CONSUMER} AS consumer, {COUNTED_MODEL} AS model, count() AS requests,"
               " sum(InputTokens) AS input, sum(OutputTokens) AS output, max(Timestamp) AS last\n"
               f"FROM {COUNTED}\nWHERE {counted} AND Estimated = 1 AND UsageError = ''\n"
               "GROUP BY consumer, model\nORDER BY requests DESC",
               unit="short", w=12, h=8, overrides={"last": "dateTimeAsIso"})  # fmt: skip
    layout.add("table", "Failed calls by error.type",
               "SELECT if(ErrorType = '', '(none)', ErrorType) AS error_type,"
               " HttpStatus AS http_status, count() AS requests,"
               f" uniqExact(ConsumerId) AS consumers\nFROM {COUNTED}\n"
               f"WHERE {counted} AND Billable = 0 AND UsageError = ''\n"
               "GROUP BY error_type, http_status\nORDER BY requests DESC",
               unit="short", w=12, h=8)  # fmt: skip
    layout.add("table", "Invalid usage by reason",
               f"SELECT UsageError AS reason, {CONSUMER} AS consumer, {COUNTED_MODEL} AS model,"
               f" count() AS requests\nFROM {COUNTED}\nWHERE {counted} AND UsageError != ''\n"
               "GROUP BY reason, consumer, model\nORDER BY requests DESC",
               unit="short", w=12, h=8)  # fmt: skip
    layout.add("timeseries", "Failed calls over time",
               "SELECT $__timeInterval(Timestamp) AS time,"
               " if(ErrorType = '', '(none)', ErrorType) AS error_type, count() AS requests\n"
               f"FROM {COUNTED}\nWHERE {counted} AND Billable = 0 AND UsageError = ''\n"
               "GROUP BY time, error_type\nORDER BY time",
               unit="short", w=12, h=8)  # fmt: skip
    return dashboard(
        uid=UID,
        title="meterline — data quality",
        description="Unpriced, estimated, failed and invalid usage (meterline).",
        variables=filter_variables(),
        layout=layout,
        datasource_uid=datasource_uid,
        database=database,
    )
