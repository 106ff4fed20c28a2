"""The consumer detail dashboard: one consumer's spend, tokens by type, features, models,
budgets and the projected month-end spend.

Budgets: each budget of the consumer (``budgets``, as ``/v1/budgets`` defines them) with
what it has spent in its current period — the rated money (billed, markup included,
exact) or the input + output tokens its plan bills — in the budget's current period in
its own time zone, the same ``period_start`` / ``period_end`` as ``/v1/budgets``
(:mod:`._periods`, computed by the engine from its time zone database). Known limits:
money is hourly, so in a zone whose offset is not whole hours (Asia/Kolkata) the period
counts the rated hours that *start* in it; ``/v1/budgets`` rounds money as the invoice
does and adds open reservations, the panel shows the exact billed amount. Budgets of the
configuration file are not in the ``budgets`` table: the deployment's dashboards carry them
in the panel's SQL (:func:`budgets_sql`), so they change when the dashboards are pushed.

Projected month-end spend: the month-to-date spend scaled to the whole UTC month — a
straight-line estimate, not an amount anyone is billed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from meterline.aggregator.grafana._panels import (
    BILLED,
    CACHE_SAVINGS,
    COUNTED,
    RATED,
    Layout,
    counted_filter,
    dashboard,
    filter_variables,
    rated_filter,
)
from meterline.aggregator.grafana._periods import period_columns

if TYPE_CHECKING:
    from meterline.aggregator.budgets import Budget

UID = "meterline-consumer"

_IN_BUDGET = (
    "r.hour >= b.period_start AND (b.period_end IS NULL OR r.hour < b.period_end)"
    " AND (b.HasFeature = 0 OR r.feature = b.Feature)"
)

_BUDGETS_SQL = """SELECT if(b.HasFeature = 1, b.Feature, '(all)') AS feature,
       b.Period AS period, b.zone AS timezone, b.period_start AS period_start,
       b.period_end AS period_end, b.unit AS unit,
       toDecimal256(b.limit_text, 20) AS limit,
       if(b.unit = 'tokens', toDecimal256(sumIf(r.tokens, {in_budget}), 40),
          toDecimal256(sumIf(r.amount, {in_budget}), 40)) AS spent,
       toFloat64(spent) / greatest(toFloat64(limit), 1e-12) AS used
FROM (
    SELECT ConsumerId, Feature, HasFeature, Period,
           JSONExtractString(Definition, 'limit') AS limit_text,
           JSONExtractString(Definition, 'unit') AS unit,
           if(JSONExtractString(Definition, 'timezone') = '', 'UTC',
              JSONExtractString(Definition, 'timezone')) AS zone,
           {periods}
    FROM {source}
    WHERE {defined}ConsumerId = ${{consumer:singlequote}}
) AS b
LEFT JOIN (
    SELECT ConsumerId, Feature AS feature, Hour AS hour, {billed} AS amount,
           sumIf(Quantity, Status = 'billed' OR Status = 'unpriced') AS tokens
    FROM {rated}
    WHERE ConsumerId = ${{consumer:singlequote}}
    GROUP BY ConsumerId, feature, hour
) AS r ON r.ConsumerId = b.ConsumerId
GROUP BY feature, period, timezone, period_start, period_end, unit, limit, b.HasFeature,
         b.Feature
ORDER BY feature, period"""


def budgets_sql(configured: Sequence[Budget] = ()) -> str:
    """The Budgets panel's SQL: the ``budgets`` table's budgets and, when given, those of
    the configuration file (``configured``, which take the place of a stored budget of
    the same consumer, feature and period, as in ``/v1/budgets``), their text quoted by
    clickhouse-connect's ``format_str``."""
    source, defined = "${database}.budgets FINAL", "Deleted = 0 AND "
    if configured:
        from clickhouse_connect.driver.binding import format_str

        keys = ", ".join(
            f"({format_str(b.consumer)}, {format_str(b.feature or '')}, {format_str(b.period)})"
            for b in configured
        )
        rows = "\n        UNION ALL ".join(
            f"SELECT {format_str(b.consumer)} AS ConsumerId, {format_str(b.feature or '')}"
            f" AS Feature, toUInt8({int(b.feature is not None)}) AS HasFeature,"
            f" {format_str(b.period)} AS Period,"
            f" {format_str(json.dumps({k: v for k, v in b.to_dict().items() if k != 'source'}))}"
            " AS Definition"
            for b in configured
        )
        source = (
            "(\n        SELECT ConsumerId, Feature, HasFeature, Period, Definition\n"
            "        FROM ${database}.budgets FINAL\n"
            f"        WHERE Deleted = 0 AND (ConsumerId, Feature, Period) NOT IN ({keys})\n"
            f"        UNION ALL {rows}\n    ) AS defined"
        )
        defined = ""
    return _BUDGETS_SQL.format(
        in_budget=_IN_BUDGET,
        periods=period_columns("Period", "zone"),
        billed=BILLED,
        rated=RATED,
        source=source,
        defined=defined,
    )


BUDGETS_SQL = budgets_sql()

_MONTH = "toDateTime(toStartOfMonth(now(), 'UTC'), 'UTC')"

PROJECTED_SQL = f"""SELECT {BILLED} AS month_to_date,
       month_to_date
           * toUInt32(dateDiff('second', {_MONTH}, {_MONTH} + INTERVAL 1 MONTH))
           / greatest(toUInt32(dateDiff('second', {_MONTH}, now())), 1) AS projected
FROM {RATED}
WHERE ConsumerId = ${{consumer:singlequote}} AND Hour >= {_MONTH}"""


def build(
    *,
    datasource_uid: str | None,
    database: str,
    money: str,
    minor_units: int,
    budgets: Sequence[Budget] = (),
) -> dict[str, Any]:
    where = rated_filter(consumer="single")
    bucket = "toStartOfInterval(Hour, INTERVAL greatest($__interval_s, 3600) second)"
    layout = Layout()
    layout.add("stat", "Spend", f"SELECT {BILLED} AS spend FROM {RATED} WHERE {where}",
               unit=money, decimals=2, w=6, h=5)  # fmt: skip
    layout.add("stat", "Projected month-end spend", PROJECTED_SQL, unit=money, decimals=2,
               w=6, h=5, description="This UTC month so far, scaled to the whole month "
               "(an estimate).")  # fmt: skip
    layout.add("stat", "Cache savings",
               f"SELECT {CACHE_SAVINGS} AS savings FROM {RATED} WHERE {where}",
               unit=money, decimals=2, w=6, h=5)  # fmt: skip
    layout.add("stat", "Calls", f"SELECT sum(Requests) AS calls FROM {RATED} WHERE {where}",
               unit="short", w=6, h=5)  # fmt: skip
    layout.add("timeseries", "Spend by feature",
               f"SELECT {bucket} AS time, if(Feature = '', '(none)', Feature) AS feature,"
               f" {BILLED} AS spend\nFROM {RATED}\nWHERE {where}\n"
               "GROUP BY time, feature\nORDER BY time",
               unit=money, w=12, h=8)  # fmt: skip
    layout.add("timeseries", "Tokens by type",
               f"SELECT {bucket} AS time, TokenType AS type, sum(Quantity) AS tokens\n"
               f"FROM {RATED}\nWHERE {where} AND Status != 'invalid'\n"
               "GROUP BY time, type\nORDER BY time",
               unit="short", w=12, h=8)  # fmt: skip
    for by, column in (("feature", "if(Feature = '', '(none)', Feature)"), ("model", "Model")):
        layout.add("table", f"By {by}",
                   f"SELECT {column} AS {by}, sum(Requests) AS requests,"
                   f" sumIf(Quantity, Status != 'invalid') AS tokens, {BILLED} AS spend,"
                   " sumIf(Requests, Status = 'unpriced') AS unpriced\n"
                   f"FROM {RATED}\nWHERE {where}\nGROUP BY {by}\nORDER BY spend DESC",
                   unit="short", w=12, h=8, overrides={"spend": money})  # fmt: skip
    layout.add("table", "Budgets", budgets_sql(budgets), unit="short", w=24, h=7,
               overrides={"used": "percentunit", "period_start": "dateTimeAsIso",
                          "period_end": "dateTimeAsIso"},
               description="Each budget's spend in its current period in its own time "
               "zone (period_start and period_end as /v1/budgets; exact, before the "
               "invoice's rounding and without open reservations). Money budgets: limit "
               "and spent in the pricing currency.")  # fmt: skip
    layout.add("table", "Calls by token counts (counted usage)",
               "SELECT count() AS requests, sumIf(InputTokens, UsageError = '') AS input,"
               " sumIf(CacheReadInputTokens, UsageError = '') AS cache_read,"
               " sumIf(CacheCreationInputTokens, UsageError = '') AS cache_write,"
               " sumIf(OutputTokens, UsageError = '') AS output,"
               " sumIf(ReasoningOutputTokens, UsageError = '') AS reasoning,"
               " countIf(Estimated = 1) AS estimated\n"
               f"FROM {COUNTED}\nWHERE {counted_filter(consumer='single')}",
               unit="short", w=24, h=5)  # fmt: skip
    return dashboard(
        uid=UID,
        title="meterline — consumer detail",
        description="One consumer's spend, tokens, features, models and budgets (meterline).",
        variables=filter_variables(consumer="single"),
        layout=layout,
        datasource_uid=datasource_uid,
        database=database,
    )
