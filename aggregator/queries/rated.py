"""SQL of the rated-usage table: what changed, the rating run, and the readers.

Tables: :mod:`meterline.store.rated_schema`. A month of ``llm_usage`` is rated in two
passes over its counted usage (``FINAL``, each response once):

1. :func:`scan_sql` — per hour, the counted responses and a fingerprint of them; per
   price cell (provider, models, price segment, time-of-day and tier bucket) one call's
   time, so the rater can look each cell's prices up once (``GROUPING SETS``: one scan);
2. :func:`insert_sql` — ``INSERT … SELECT``: the rating query's groups for the hours whose
   fingerprint (or pricing) changed, one row per token type, priced in the engine from
   the cells' prices (bound parameters): ``Decimal`` products, exact.

Readers (:func:`invoice_sql`, :func:`usage_cost_sql`) take, per hour, the rows of the
run named by the hour's newest marker in ``rated_hours``. Every value is a bound
parameter; group keys come from fixed tables.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from meterline.aggregator.pricing import TOKEN_TYPES, RatingGrid
from meterline.aggregator.queries.rating import (
    _INNER,
    _segment_expr,
    _tier_expr,
    _tod_expr,
    rating_sql,
    select_usage,
)
from meterline.aggregator.queries.usage import HOUR_EXPR, UsageFilter, counted_usage
from meterline.aggregator.tenancy import Scope
from meterline.store.rated_schema import (
    AMOUNT_SCALE,
    MARKUP_FRACTION_SCALE,
    PRICE_SCALE,
    RATED_USAGE_COLUMNS,
)

SIGNATURES_SQL = """
SELECT toUInt32(partition_id) AS month, max(max_block_number) AS block,
    min(min_block_number) AS first
FROM system.parts
WHERE database = {database:String} AND table = 'llm_usage' AND active
GROUP BY partition_id
"""
"""Per month partition of ``llm_usage``: the newest and the oldest block. Every insert
(new usage, late usage, a duplicate, a month-edge copy) makes a new block, numbered
above every block committed before it (plain MergeTree numbers blocks under its parts
lock, at commit); merges make none and keep the oldest. Parts removed (``TRUNCATE``,
``DROP PARTITION``) change the oldest, or the month disappears."""

MUTATIONS_SQL = """
SELECT max(arrayMax(arrayConcat([toInt64(0)], block_numbers.number)))
FROM system.mutations
WHERE database = {database:String} AND table = 'llm_usage'
"""
"""The newest mutation of ``llm_usage`` (a ``DELETE``, an ``UPDATE``): it can change any
month, so every month is rated again in full."""

NEW_PARTS_SQL = """
SELECT name FROM system.parts
WHERE database = {database:String} AND table = 'llm_usage' AND active
  AND partition_id = {partition:String} AND max_block_number > {block:Int64}
"""
"""Parts of a month holding a block newer than ``block`` (fresh, or merged with one)."""

KEY_HASH = "toUInt32(cityHash64(ConsumerId, DedupKey) % 4294967296)"
"""The 32-bit hash of a response's identity kept in ``Keys`` (a collision only makes a
run rate one more hour)."""

AFFECTED_HOURS_SQL = f"""
WITH fresh AS (
    SELECT ConsumerId, DedupKey FROM {{db}}.llm_usage
    WHERE Month = {{month:UInt32}} AND _part IN {{parts:Array(String)}}
      AND _block_number > {{block:UInt64}}
)
SELECT DISTINCT hour FROM (
    SELECT {HOUR_EXPR} AS hour FROM {{db}}.llm_usage
    WHERE Month = {{month:UInt32}} AND Home = 1
      AND (ConsumerId, DedupKey) IN (SELECT ConsumerId, DedupKey FROM fresh)
    UNION ALL
    SELECT Hour AS hour FROM {{db}}.rated_hours FINAL
    WHERE Hour >= {{start:DateTime64(0, 'UTC')}} AND Hour < {{end:DateTime64(0, 'UTC')}}
      AND bitmapHasAny(Keys, (SELECT groupBitmapState({KEY_HASH}) FROM fresh))
)
"""
"""The hours a month's rows newer than ``block`` can change: the hours of every report
in the month of each response they belong to (the one counted before, and the one that
counts now, both among them while the old one is stored), and the hours whose rated
responses include one of them (the counted report may be gone: a merge drops a report a
higher-ranked one displaced)."""

FRESH_KEYS_SQL = f"""
WITH fresh AS (
    SELECT DISTINCT ConsumerId, DedupKey FROM {{db}}.llm_usage
    WHERE Month = {{month:UInt32}} AND _part IN {{parts:Array(String)}}
      AND _block_number > {{block:UInt64}}
)
SELECT ConsumerId, DedupKey,
    (ConsumerId, DedupKey) IN (
        SELECT ConsumerId, DedupKey FROM {{db}}.llm_usage
        WHERE Month = {{month:UInt32}} AND _block_number <= {{block:UInt64}}
          AND (ConsumerId, DedupKey) IN (SELECT ConsumerId, DedupKey FROM fresh)) AS old,
    bitmapContains((SELECT groupBitmapMergeState(Keys) FROM {{db}}.rated_hours FINAL
                    WHERE Hour >= {{start:DateTime64(0, 'UTC')}}
                      AND Hour < {{end:DateTime64(0, 'UTC')}}), {KEY_HASH}) AS counted
FROM fresh
LIMIT {{limit:UInt64}}
"""
"""The responses of a month with a report newer than ``block``: whether one of their
reports is older (``old``) and whether a marker of the month holds their hash
(``counted``: rated before — a merge may have dropped the report that was). A response
with neither is new to the month: what it adds is its own rows (a delta)."""

AFFECTED_BY_KEYS_SQL = f"""
SELECT DISTINCT hour FROM (
    SELECT {HOUR_EXPR} AS hour FROM {{db}}.llm_usage
    WHERE Month = {{month:UInt32}} AND Home = 1
      AND (ConsumerId, DedupKey) IN {{keys:Array(Tuple(String, String))}}
    UNION ALL
    SELECT Hour AS hour FROM {{db}}.rated_hours FINAL
    WHERE Hour >= {{start:DateTime64(0, 'UTC')}} AND Hour < {{end:DateTime64(0, 'UTC')}}
      AND bitmapHasAny(Keys, (SELECT groupBitmapState({KEY_HASH}) FROM (
          SELECT k.1 AS ConsumerId, k.2 AS DedupKey
          FROM (SELECT arrayJoin({{keys:Array(Tuple(String, String))}}) AS k))))
)
"""
""":data:`AFFECTED_HOURS_SQL` for the given responses."""

CROWDED_HOURS_SQL = f"""
SELECT Hour FROM {{db}}.rated_hours FINAL
WHERE Hour IN (SELECT DISTINCT {HOUR_EXPR} FROM {{db}}.llm_usage
               WHERE Month = {{month:UInt32}} AND Home = 1
                 AND (ConsumerId, DedupKey) IN {{keys:Array(Tuple(String, String))}})
  AND length(Runs) >= {{max_runs:UInt64}}
"""
"""Hours of the given responses whose marker names ``max_runs`` runs already: rated whole
instead (one run again), so readers' run lists stay short."""

MONTHS_SQL = """
SELECT Month, Run, Signature, ConfigVersion, RatedAt, Seconds
FROM {db}.rated_months FINAL
"""
"""The newest completed rating of each month."""

RUN_HOURS_SQL = """
SELECT DISTINCT Hour FROM {db}.rated_usage
WHERE Run = {run:UInt64}
  AND Hour >= {start:DateTime64(0, 'UTC')} AND Hour < {end:DateTime64(0, 'UTC')}
"""
"""The hours a run wrote rows in."""

HOURS_SQL = """
SELECT Hour, Run, Responses, Fingerprint, ConfigVersion
FROM {db}.rated_hours FINAL
WHERE Hour >= {start:DateTime64(0, 'UTC')} AND Hour < {end:DateTime64(0, 'UTC')}
"""
"""The run in force for each hour of a range, and what it rated."""

BUSY_HOURS_SQL = """
SELECT Hour FROM {db}.rated_hours FINAL
WHERE Hour IN {hours:Array(DateTime64(0, 'UTC'))} AND Responses > 0
"""
"""Which of ``hours`` hold counted usage (by their markers)."""

MARKERS_SQL = """
INSERT INTO {db}.rated_hours (Hour, Run, Runs, Responses, Fingerprint, ConfigVersion, RatedAt,
    Keys)
SELECT Hour, {run:UInt64}, arrayPushBack(arrayDistinct(arrayFlatten(groupArray(runs))),
        {run:UInt64}),
    sum(responses), groupBitXor(fingerprint), {config_version:String},
    {rated_at:DateTime64(3, 'UTC')}, groupBitmapMergeState(keys)
FROM (
    SELECT arrayJoin(arrayConcat({hours:Array(DateTime64(0, 'UTC'))},
                                 {delta_hours:Array(DateTime64(0, 'UTC'))})) AS Hour,
        CAST([], 'Array(UInt64)') AS runs, toUInt64(0) AS responses,
        toUInt64(0) AS fingerprint, arrayReduce('groupBitmapState', CAST([], 'Array(UInt32)'))
        AS keys, 0 AS old
    UNION ALL
    SELECT Hour, [], Requests, Fingerprint, Keys, 0 FROM {db}.rated_usage
    WHERE Run = {run:UInt64} AND TokenType = 'input'
      AND Hour IN arrayConcat({hours:Array(DateTime64(0, 'UTC'))},
                              {delta_hours:Array(DateTime64(0, 'UTC'))})
    UNION ALL
    SELECT Hour, Runs, Responses, Fingerprint, Keys, 1 FROM {db}.rated_hours FINAL
    WHERE Hour IN {delta_hours:Array(DateTime64(0, 'UTC'))}
)
GROUP BY Hour
HAVING throwIf(bitmapAndCardinality(
        groupBitmapMergeState(if(old = 1, keys, {empty_keys})),
        groupBitmapMergeState(if(old = 1, {empty_keys}, keys))) > 0,
    'rated_usage: another run rated these responses already') = 0
""".replace("{empty_keys}", "arrayReduce('groupBitmapState', CAST([], 'Array(UInt32)'))")
"""The markers of a run's hours (one insert: one part, all or nothing), made from the rows
it wrote — so what a marker says was rated (responses, fingerprint, keys) is what its
rows hold, whatever arrived while the run read the usage. ``hours``: hours the run rated
whole (its rows alone are in force; an hour without rows — its usage moved away — gets
a marker with none); ``delta_hours``: hours it added responses new to the month to (its
rows join those of the runs in force: responses summed, fingerprints xor-ed, key sets
united). A delta whose responses the hour's marker already holds (another process's
run added them first) fails the insert: the run is retried and rates those hours whole."""

HOURS_COLUMNS = ("Hour", "Run", "Responses", "Fingerprint", "ConfigVersion", "RatedAt")
MONTHS_COLUMNS = ("Month", "Run", "Signature", "ConfigVersion", "RatedAt", "Seconds", "HoursRated")

DAYS_SQL = """
SELECT h.day, h.hours_run, d.HoursRun
FROM (
    SELECT toDate32(Hour) AS day, max(Run) AS hours_run
    FROM {db}.rated_hours FINAL
    WHERE Hour >= {start:DateTime64(0, 'UTC')} AND Hour < {end:DateTime64(0, 'UTC')}
    GROUP BY day
) AS h
LEFT JOIN (
    SELECT Day, HoursRun FROM {db}.rated_days FINAL
    WHERE Day >= toDate32({start:DateTime64(0, 'UTC')})
      AND Day < toDate32({end:DateTime64(0, 'UTC')})
) AS d ON d.Day = h.day
"""
"""Per day of a range: the newest run among its hours' markers, and the one its daily
sums were built from (a day whose two differ is rebuilt)."""

DAILY_SQL = """
INSERT INTO {db}.rated_daily (Day, Run, ConsumerId, Status, Billable, Provider, Model,
    TokenType, UnitPricePerMillion, UnitPrice, UsageError, Quantity, Requests, Amount,
    MarkupAmount)
SELECT toDate32(Hour) AS day, {run:UInt64}, ConsumerId, Status, Billable, Provider, Model,
    TokenType, UnitPricePerMillion, any(UnitPrice), UsageError, sum(Quantity),
    sum(Requests), sum(Amount), sum(MarkupAmount)
FROM {db}.rated_usage
WHERE Hour >= {start:DateTime64(0, 'UTC')} AND Hour < {end:DateTime64(0, 'UTC')}
  AND toDate32(Hour) IN {days:Array(Date32)}
  AND (Hour, Run) IN (SELECT Hour, arrayJoin(Runs) FROM {db}.rated_hours FINAL
                      WHERE Hour >= {start:DateTime64(0, 'UTC')}
                        AND Hour < {end:DateTime64(0, 'UTC')})
GROUP BY day, ConsumerId, Status, Billable, Provider, Model, TokenType, UnitPricePerMillion,
    UsageError
"""
"""Rebuild the daily sums of ``days`` from the hours' rows in force."""

DAYS_COLUMNS = ("Day", "Run", "HoursRun", "RatedAt")

MONTHLY_STATE_SQL = """
SELECT d.month, d.newest, m.DaysRun
FROM (
    SELECT toUInt32(toYYYYMM(Day)) AS month, max(Run) AS newest
    FROM {db}.rated_days FINAL
    WHERE Day >= toDate32({start:DateTime64(0, 'UTC')})
      AND Day < toDate32({end:DateTime64(0, 'UTC')})
    GROUP BY month
) AS d
LEFT JOIN (
    SELECT Month, DaysRun FROM {db}.rated_monthly_marks FINAL
    WHERE Month >= toYYYYMM({start:DateTime64(0, 'UTC')})
      AND Month < toYYYYMM({end:DateTime64(0, 'UTC')})
) AS m ON m.Month = d.month
SETTINGS join_use_nulls = 1
"""
"""Per month of a range that has daily sums: the newest run among its days' markers, and
the one its monthly sums were built from (NULL: none). A month whose two differ is
rebuilt by the rating run, and read from its daily sums until then."""

MONTHLY_SQL = """
INSERT INTO {db}.rated_monthly (Month, Run, ConsumerId, Status, Billable, Provider, Model,
    TokenType, UnitPricePerMillion, UnitPrice, UsageError, Quantity, Requests, Amount,
    MarkupAmount)
SELECT {month:UInt32}, {run:UInt64}, ConsumerId, Status, Billable, Provider, Model,
    TokenType, UnitPricePerMillion, any(UnitPrice), UsageError, sum(Quantity),
    sum(Requests), sum(Amount), sum(MarkupAmount)
FROM {db}.rated_daily
WHERE Day >= toDate32({start:DateTime64(0, 'UTC')}) AND Day < toDate32({end:DateTime64(0, 'UTC')})
  AND (Day, Run) IN (SELECT Day, Run FROM {db}.rated_days FINAL
                     WHERE Day >= toDate32({start:DateTime64(0, 'UTC')})
                       AND Day < toDate32({end:DateTime64(0, 'UTC')}))
GROUP BY ConsumerId, Status, Billable, Provider, Model, TokenType, UnitPricePerMillion,
    UsageError
"""
"""Rebuild the sums of a month (``[start, end)``) from its daily sums in force."""

MONTHLY_MARKS_COLUMNS = ("Month", "Run", "DaysRun", "RatedAt")

MONTHLY_CLEANUP_SQL = """
DELETE FROM {db}.rated_monthly WHERE Month = {month:UInt32} AND Run < {run:UInt64}
"""

DAILY_CLEANUP_SQL = """
DELETE FROM {db}.rated_daily WHERE Day IN {days:Array(Date32)} AND Run < {run:UInt64}
"""

CLEANUP_SQL = """
DELETE FROM {db}.rated_usage
WHERE Hour IN {hours:Array(DateTime64(0, 'UTC'))} AND Run < {run:UInt64}
"""
"""Rows of hours a run replaced (older runs, and runs killed before their marker)."""


_FINGERPRINTED = (
    "ConsumerId, DedupKey, Version, Timestamp, Feature, Provider, ResponseModel, RequestModel,"
    " Billable, InputTokens, OutputTokens, CacheReadInputTokens, CacheCreationInputTokens,"
    " CacheCreation1hInputTokens, ReasoningOutputTokens, UsageError"
)
"""What a counted response's fingerprint covers: its identity, its rank and everything the
rating reads (rows written around the view, e.g. by tests, may reuse a rank)."""


def scan_sql(
    f: UsageFilter,
    grid: RatingGrid,
    *,
    hours: list[datetime] | None = None,
    keys: list[tuple[str, str]] | None = None,
    cells_only: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Pass 1 over the counted usage selected by ``f`` (one scan, two grouping sets);
    ``hours``, ``keys``: only those UTC hours and responses (:func:`select_usage`).
    ``cells_only``: the price cells of every stored report (no ``FINAL``: a superset of
    the counted reports' cells, for a run that rates every hour and needs no
    fingerprints — the month is read ``FINAL`` once, by the insert).

    Rows with ``by_cell = 0``: ``hour``, ``responses``, ``fingerprint``. Rows with
    ``by_cell = 1``: ``provider``, ``response_model``, ``request_model``, ``segment``,
    ``tod``, ``tier``, ``first_at``.
    """
    source, where, params = counted_usage(f)
    if cells_only:
        assert " FINAL\n" in source
        source = source.replace(" FINAL\n", "\n", 1)
    where = select_usage(where, params, hours=hours, keys=keys)
    points = [
        p
        for p in grid.change_points
        if (f.start is None or p > f.start) and (f.end is None or p < f.end)
    ]
    hour = "toDateTime64(0, 0, 'UTC')" if cells_only else HOUR_EXPR
    fingerprint = "toUInt64(0)" if cells_only else f"groupBitXor(cityHash64({_FINGERPRINTED}))"
    cell = "provider, response_model, request_model, segment, tod, tier"
    sql = f"""SELECT
    {hour} AS hour,
    Provider AS provider,
    ResponseModel AS response_model,
    RequestModel AS request_model,
    toUInt64({_segment_expr(points, params)}) AS segment,
    toUInt64({_tod_expr(grid, params)}) AS tod,
    toUInt64({_tier_expr(grid.thresholds, params)}) AS tier,
    count() AS responses,
    {fingerprint} AS fingerprint,
    min(Timestamp) AS first_at,
    {"1" if cells_only else "grouping(hour)"} AS by_cell
FROM ({_INNER.format(source=source, where=where)}
)
GROUP BY {cell if cells_only else f"GROUPING SETS ((hour), ({cell}))"}"""
    return sql, params


_SPILL_BYTES = 2 << 30
"""A month's groups beyond this much memory spill to disk (a month of 100M calls has
tens of millions of hour × consumer × feature × model groups)."""


def _array(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def insert_sql(
    f: UsageFilter,
    grid: RatingGrid,
    *,
    hours: list[datetime] | None,
    params: dict[str, Any],
    keys: list[tuple[str, str]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Pass 2: rate the usage of ``hours`` (``None``: all of ``f``'s) and of the
    responses ``keys`` outside them into ``rated_usage``.

    ``params`` carries the run and the pricing (see ``meterline.aggregator.rated``):
    ``run``, ``currency``, ``config_version``, ``rated_at``; the cells (``cell_keys``,
    ``cell_matched``, ``cell_source``, ``cell_text`` — price per million as configured,
    ``''`` without a price — and ``cell_per_token``); the plans (``plan_consumers``,
    ``plan_bills_failed``, ``plan_markups``, ``default_bills_failed``,
    ``default_markup``, markups as ``markup_percent / 100``).

    A group whose cell is missing (usage that arrived after pass 1 in a cell pass 1 did
    not see) fails the insert: the run leaves no marker and is retried.
    """
    inner, inner_params = rating_sql(
        f,
        grid,
        extra_keys=("utc_hour", "feature"),
        hours=hours,
        keys=keys,
        metrics=(
            f"groupBitXor(cityHash64({_FINGERPRINTED})) AS fingerprint",
            f"groupBitmapState({KEY_HASH}) AS keys",
        ),
    )
    types = _array(list(TOKEN_TYPES))
    n = len(TOKEN_TYPES)
    empty = _array([""] * n)
    zeros = "[" + ", ".join(["toUInt128(0)"] * n) + "]"
    columns = ", ".join(RATED_USAGE_COLUMNS)
    sql = f"""INSERT INTO {{db}}.rated_usage ({columns})
SELECT
    k_utc_hour, {{run:UInt64}}, consumer, k_feature, provider, response_model, request_model,
    if(response_model != '', response_model, request_model),
    billable, status, invalid,
    tt.1 AS token_type,
    tt.2,
    if(token_type = 'input', requests, 0),
    if(no_price, '', tt.3),
    if(no_price OR tt.3 = '', NULL, toDecimal256(tt.3, {PRICE_SCALE})) AS unit_price,
    if(no_price OR tt.4 = '', NULL,
       toDecimal256(tt.2, 0) * toDecimal256(tt.4, {AMOUNT_SCALE})) AS amount,
    if(amount IS NULL, NULL,
       amount * toDecimal256(markup_fraction, {MARKUP_FRACTION_SCALE})),
    {{currency:String}}, source, {{config_version:String}}, {{rated_at:DateTime64(3, 'UTC')}},
    toDecimal128(markup_fraction, {MARKUP_FRACTION_SCALE}),
    -- the engine may evaluate a branch on rows the condition excludes: never parse ''
    if(no_price OR per_token[1] = '' OR NOT has({_array(list(TOKEN_TYPES[:4]))}, token_type),
       NULL, toDecimal256(tt.2, 0)
           * toDecimal256(if(per_token[1] = '', '0', per_token[1]), {AMOUNT_SCALE})),
    if(token_type = 'input', fingerprint, 0),
    if(token_type = 'input', keys, arrayReduce('groupBitmapState', CAST([], 'Array(UInt32)')))
FROM (
    SELECT *,
        indexOf({{cell_keys:Array(Tuple(String, String, String, UInt64, UInt64, UInt64))}},
                (toString(provider), toString(response_model), toString(request_model),
                 toUInt64(segment), toUInt64(tod), toUInt64(tier))) AS cell,
        if(cell = 0 AND throwIf(invalid = '',
                                'rated_usage: usage in a price cell the run did not look up') = 0,
           {empty}, {{cell_text:Array(Array(String))}}[cell]) AS texts,
        if(cell = 0, {empty}, {{cell_per_token:Array(Array(String))}}[cell]) AS per_token,
        if(cell = 0, '', {{cell_source:Array(String)}}[cell]) AS source,
        [input, cache_read, cache_write, cache_write_1h, output, reasoning] AS qs,
        cell = 0 OR NOT {{cell_matched:Array(UInt8)}}[cell]
            OR arrayExists((q, t) -> q > 0 AND t = '', qs, texts) AS unpriced,
        indexOf({{plan_consumers:Array(String)}}, toString(consumer)) AS plan,
        if(plan = 0, {{default_bills_failed:UInt8}},
           {{plan_bills_failed:Array(UInt8)}}[plan]) AS bills_failed,
        if(plan = 0, {{default_markup:String}}, {{plan_markups:Array(String)}}[plan])
            AS markup_fraction,
        multiIf(invalid != '', 'invalid', billable = 0 AND bills_failed = 0, 'failed',
                unpriced, 'unpriced', 'billed') AS status,
        unpriced OR invalid != '' AS no_price
    FROM ({inner})
)
ARRAY JOIN arrayFilter(x -> x.2 > 0 OR x.1 = 'input',
    arrayZip({types}, if(invalid != '', {zeros}, qs), texts, per_token)) AS tt
SETTINGS max_bytes_before_external_group_by = {_SPILL_BYTES}"""
    return sql, {**inner_params, **params}


def _range(start: datetime, end: datetime, params: dict[str, Any]) -> str:
    params["start"], params["end"] = start, end
    return (
        "Hour >= {start:DateTime64(0, 'UTC')} AND Hour < {end:DateTime64(0, 'UTC')}"
        " AND (Hour, Run) IN (SELECT Hour, arrayJoin(Runs) FROM {db}.rated_hours FINAL"
        " WHERE Hour >= {start:DateTime64(0, 'UTC')} AND Hour < {end:DateTime64(0, 'UTC')})"
    )


def _days(start: datetime, end: datetime, params: dict[str, Any]) -> str:
    params["start"], params["end"] = start, end
    lo = "toDate32({start:DateTime64(0, 'UTC')})"
    hi = "toDate32({end:DateTime64(0, 'UTC')})"
    return (
        f"Day >= {lo} AND Day < {hi} AND (Day, Run) IN (SELECT Day, Run FROM"
        f" {{db}}.rated_days FINAL WHERE Day >= {lo} AND Day < {hi})"
    )


def _months(months: list[int], params: dict[str, Any]) -> str:
    params["months"] = months
    return (
        "Month IN {months:Array(UInt32)} AND (Month, Run) IN (SELECT Month, Run FROM"
        " {db}.rated_monthly_marks FINAL WHERE Month IN {months:Array(UInt32)})"
    )


def _yyyymmdd(at: datetime) -> int:
    return at.year * 10000 + at.month * 100 + at.day


def months_of(start: datetime, end: datetime) -> list[int]:
    """The whole UTC months (``YYYYMM``) inside ``[start, end)``."""
    out = []
    year, m = start.year, start.month
    if (start.day, start.hour, start.minute, start.second, start.microsecond) != (1, 0, 0, 0, 0):
        year, m = year + (m == 12), m % 12 + 1
    while True:
        nxt = (year + (m == 12), m % 12 + 1)
        if datetime(*nxt, 1, tzinfo=start.tzinfo) > end:
            return out
        out.append(year * 100 + m)
        year, m = nxt


_INVOICE_COLUMNS = """ConsumerId, Status, Billable, Provider, Model, TokenType, UnitPrice,
    UsageError"""


def invoice_sql(
    start: datetime,
    end: datetime,
    consumer: str | None,
    *,
    scope: Scope,
    daily: bool = False,
    feature: str | None = None,
    months: list[int] | None = None,
) -> tuple[str, dict[str, Any]]:
    """What invoices need from ``[start, end)`` (whole hours; with ``daily``, whole UTC
    days, read from ``rated_daily``; with ``months`` too, those of its months — whole
    months whose sums are current — from ``rated_monthly`` and its other days from
    ``rated_daily``), per consumer, status, provider, model, token type and price (as
    configured, text: cheaper to group and to fetch than the Decimal; equal prices
    written differently are one line again in Python): quantities (as text: a UInt128
    fetched is slow) and requests. Rows of the two tables are not summed together in
    SQL: the reader adds them up. ``feature``: that feature's calls only (hourly rows:
    the daily sums have no feature)."""
    if daily and feature is not None:
        raise ValueError("rated_daily has no Feature: read the hourly rows for a feature")
    params: dict[str, Any] = {}
    common = scope.condition(params)
    if consumer is not None:
        common = f"ConsumerId = {{consumer:String}} AND {common}"
        params["consumer"] = consumer
    if feature is not None:
        common = f"Feature = {{feature:String}} AND {common}"
        params["feature"] = feature
    if not daily:
        parts = [("rated_usage", _range(start, end, params))]
    elif months:
        parts = [("rated_monthly", _months(months, params))]
        whole = months_of(start, end)
        exact = whole and whole[0] * 100 + 1 == _yyyymmdd(start) and _yyyymmdd(end) % 100 == 1
        if len(months) < len(whole) or not exact:
            days = _days(start, end, params) + " AND toYYYYMM(Day) NOT IN {months:Array(UInt32)}"
            parts.append(("rated_daily", days))
    else:
        parts = [("rated_daily", _days(start, end, params))]
    sql = "\nUNION ALL\n".join(
        f"""SELECT {_INVOICE_COLUMNS}, toString(sum(Quantity)), sum(Requests)
FROM {{db}}.{table}
WHERE {common} AND {where}
GROUP BY {_INVOICE_COLUMNS}"""
        for table, where in parts
    )
    return sql, params


SPEND_KEYS: dict[str, str] = {
    "consumer": "ConsumerId",
    "model": "concat(Provider, '/', Model)",
}
"""Daily spend group key → expression over ``rated_daily``."""


def daily_spend_sql(
    start: datetime, end: datetime, *, by: tuple[str, ...], scope: Scope
) -> tuple[str, dict[str, Any]]:
    """Billed money (amount + markup, exact, as text) per UTC day of ``[start, end)``
    (whole days) and each key of ``by`` (:data:`SPEND_KEYS`), from the daily sums in
    force — one scan, a grouping set per key. Rows: ``day``, ``key`` (the index in
    ``by``), ``name``, ``billed``."""
    params: dict[str, Any] = {}
    where = f"{scope.condition(params)} AND {_days(start, end, params)}"
    names = ", ".join(f"{SPEND_KEYS[k]} AS k{i}" for i, k in enumerate(by))
    sets = ", ".join(f"(day, k{i})" for i in range(len(by)))
    flags = ", ".join(f"grouping(k{i}) AS g{i}" for i in range(len(by)))
    which = " + ".join(f"{i} * (g{i} = 0)" for i in range(len(by)))
    chosen = "multiIf(" + "".join(f"g{i} = 0, k{i}, " for i in range(len(by))) + "'')"
    sql = f"""SELECT day, {which} AS key, {chosen} AS name, toString(billed) FROM (
SELECT toString(Day) AS day, {names}, {flags},
    sumIf(Amount + MarkupAmount, Status = 'billed') AS billed
FROM {{db}}.rated_daily
WHERE {where}
GROUP BY GROUPING SETS ({sets})
HAVING countIf(Status = 'billed') > 0)"""
    return sql, params


COST_KEYS: dict[str, str] = {
    "consumer": "ConsumerId",
    "feature": "Feature",
    "provider": "Provider",
    "model": "ResponseModel",
    "day": "toStartOfDay(Hour, 'UTC')",  # the same clamping as /v1/usage's day key
    "hour": "toStartOfHour(Hour, 'UTC')",
}
"""``/v1/usage`` group key → column of ``rated_usage``."""


def usage_cost_sql(f: UsageFilter) -> tuple[str, dict[str, Any]]:
    """Cost (amount + markup of billed rows, exact) and unpriced requests per
    ``f.group_by`` key, for ``[f.start, f.end)`` in whole hours."""
    assert f.start is not None and f.end is not None
    params: dict[str, Any] = {}
    conditions = [f.scope.condition(params), _range(f.start, f.end, params)]
    for name, column in (("consumer", "ConsumerId"), ("feature", "Feature")):
        value = getattr(f, name)
        if value is not None:
            conditions.append(f"{column} = {{{name}:String}}")
            params[name] = value
    if f.provider is not None:
        conditions.append("Provider = {provider:String}")
        params["provider"] = f.provider
    if f.model is not None:
        conditions.append("(ResponseModel = {model:String} OR RequestModel = {model:String})")
        params["model"] = f.model
    keys = [f"{COST_KEYS[g]} AS `k_{g}`" for g in f.group_by]
    sql = (
        f"SELECT {', '.join([*keys, ''])}"
        "sumIf(Amount + MarkupAmount, Status = 'billed') AS cost,"
        " sumIf(Requests, Status = 'unpriced') AS unpriced\n"
        f"FROM {{db}}.rated_usage\nWHERE {' AND '.join(conditions)}"
    )
    if f.group_by:
        sql += "\nGROUP BY " + ", ".join(f"`k_{g}`" for g in f.group_by)
    return sql, params
