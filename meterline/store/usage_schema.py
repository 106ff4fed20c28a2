"""``llm_usage``: what the view extracts from spans, how reports of one response meet,
which one counts, and when usage is invalid. The counting rules are in docs/counting.md.

Contract:
- ``llm_usage_mv`` runs :data:`USAGE_MV_QUERY` on every block inserted into
  ``otel_traces`` (by meterline's collector or by otelcol's exporter), so the store, not
  a receiver, decides what usage is valid and how it is counted.
- **Identity.** ``DedupKey`` is ``provider/response id`` (else ``trace id/span id``);
  reports of one response share it, and the ``ConsumerId`` that leads the key.
- **Rank.** ``Version`` (``UInt128``) orders every report of a key, totally: valid usage
  first, then meterline's own span, then exact over estimated, then the *earliest*
  timestamp, then a hash of (trace id, span id). The ReplacingMergeTree keeps the
  highest, and reads take the highest, so merges never change the winner.
- **Meeting.** Each report is stored in its UTC month (``Month``, ``Home = 1``) and, when
  it lies within :data:`SKEW` of that month's start or end, copied into the neighbouring
  month (``Home = 0``). ``Month`` leads the sorting key, so ``FINAL`` ranks reports per
  (month, consumer, key) — and any two reports of a response at most :data:`SKEW`
  apart both sit in the month that holds either one's home row.
- **Counting.** A response counts in ``[start, end)`` iff its winning report is a home
  row with ``start <= Timestamp < end`` — read through the parameterized view
  ``llm_usage_counted(start=…, end=…)`` (:data:`COUNTED_VIEW_DDL`), the one definition
  that the API, invoices, exports and dashboards all use. Totals over adjacent ranges
  add up to the total over their union.
- **Validity.** A token count is valid iff it is absent/empty (not reported: 0) or ASCII
  digits only with a value <= :data:`MAX_TOKENS`; a subset may not exceed its total
  (cache reads + writes <= input, 1-hour writes <= writes, reasoning <= output). Otherwise
  ``UsageError`` names the attribute and the kind of problem (never the raw value), the
  row's invalid counts are stored as 0, ``Billable = 0``, and every total shows the call
  as invalid; nothing is silently read as 0.

Known limits: reports of one response more than :data:`SKEW` apart *and* on either side
of a month boundary are both counted (each in its month); reports under different
consumers are different keys.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

SCOPE = "meterline.instrumentation"
"""The instrumentation scope of meterline's spans: the preferred report of a response.
Spans marked ``meterline.superseded`` (the span enclosing a metered call: an SDK's own
GenAI span, an agent's) are not counted."""

# Operations that aggregate their children's usage (agents, tools, workflows):
# counting them as well would bill the same tokens twice.
AGGREGATE_OPERATIONS = ("invoke_agent", "create_agent", "execute_tool", "invoke_workflow")

SKEW = timedelta(hours=24)
"""How far apart two reports of one response may be and still meet across a month
boundary. An SDK's span and the transport's differ by the call's retries and timeouts
(the openai/anthropic SDKs: 10 min timeout x 3 attempts, ~30 min worst case); clocks of
two reporting processes by seconds; a reporter that stamps local time as UTC by up to
14 h. 24 h covers all three; the cost is storage: rows of the first and last day of a
month are stored twice (~6.6 % more rows), nothing at read time."""

MAX_TOKENS = 1_000_000_000
"""The most tokens one count of one span may hold. The largest context windows are
~10M tokens and outputs ~100k, so 1e9 is 100x any real call, and no sum of valid
counts can wrap (reads also sum in UInt128)."""

_TRUE = "('true', 'True', 'TRUE', '1')"


def _first_set(lookups: list[str]) -> str:
    """SQL for the first non-empty of ``lookups`` ('' when all are).

    One subscript per key (a missing key reads as ''), rather than ``mapContains`` and
    then a subscript: the view's analysis time on each insert fell from ~24 to ~8 ms.
    An attribute set to '' counts as not set.
    """
    head, *rest = lookups
    return head if not rest else f"if({head} != '', {head}, {_first_set(rest)})"


def _span_or_resource(*keys: str) -> str:
    """SQL for the first of ``keys`` set on the span, then on the resource."""
    return _first_set(
        [f"{m}['{k}']" for m in ("SpanAttributes", "ResourceAttributes") for k in keys]
    )


def _span(*keys: str) -> str:
    """SQL for the first of ``keys`` set on the span."""
    return _first_set([f"SpanAttributes['{k}']" for k in keys])


def _has_any(*keys: str) -> str:
    return " OR ".join(f"mapContains(SpanAttributes, '{k}')" for k in keys)


_INPUT_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
_OUTPUT_KEYS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")

TOKEN_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("InputTokens", _INPUT_KEYS),
    ("OutputTokens", _OUTPUT_KEYS),
    ("CacheReadInputTokens", ("gen_ai.usage.cache_read.input_tokens",)),
    (
        "CacheCreationInputTokens",
        ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_write.input_tokens"),
    ),
    ("CacheCreation1hInputTokens", ("meterline.usage.cache_creation_1h.input_tokens",)),
    ("ReasoningOutputTokens", ("gen_ai.usage.reasoning.output_tokens",)),
)
"""Token column → the span attributes it is read from (the first set one wins; the
reason of an invalid count names the first, canonical, attribute)."""

_NOT_INTEGER = "not a non-negative integer"
_TOO_LARGE = f"above {MAX_TOKENS}"

SUBSET_ERRORS: tuple[tuple[str, str], ...] = (
    (
        "CacheReadInputTokens + CacheCreationInputTokens > InputTokens",
        "gen_ai.usage.cache_read + cache_creation.input_tokens: more than input_tokens",
    ),
    (
        "CacheCreation1hInputTokens > CacheCreationInputTokens",
        "meterline.usage.cache_creation_1h.input_tokens: more than cache_creation",
    ),
    (
        "ReasoningOutputTokens > OutputTokens",
        "gen_ai.usage.reasoning.output_tokens: more than output_tokens",
    ),
)
"""A subset larger than its total is flagged, not clamped: such a span breaks the token
contract (e.g. Anthropic's raw ``input_tokens``, which exclude the cache), and any
clamped number would be a guess billed as fact."""


def _raw_columns(raw: Callable[[str, tuple[str, ...]], str]) -> str:
    """The ``Raw<column>`` (String) token columns of an inner select."""
    return "".join(
        f"        {raw(column, keys)} AS Raw{column},\n" for column, keys in TOKEN_FIELDS
    )


def _parse(column: str) -> tuple[str, str]:
    """SQL of the parsed value and of the problem ('' when valid) of ``Raw<column>``."""
    raw = f"Raw{column}"
    ok = f"(match({raw}, '^0*[0-9]{{1,10}}$') AND toUInt64OrZero({raw}) <= {MAX_TOKENS})"
    name = dict(TOKEN_FIELDS)[column][0]
    problem = (
        f"multiIf({raw} = '', '', NOT match({raw}, '^[0-9]+$'), '{name}: {_NOT_INTEGER}', "
        f"NOT {ok}, '{name}: {_TOO_LARGE}', '')"
    )
    return f"if({ok}, toUInt64OrZero({raw}), 0)", problem


def _typed(inner: str) -> str:
    """The middle select: token counts parsed and checked, the first problem named."""
    values, checks = [], []
    for column, _ in TOKEN_FIELDS:
        value, problem = _parse(column)
        values.append(f"        {value} AS {column},\n")
        checks.append(f"{problem} AS _{column}Problem != '', _{column}Problem")
    checks += [f"{cond}, '{reason}'" for cond, reason in SUBSET_ERRORS]
    return (
        "    SELECT *,\n"
        + "".join(values)
        + "        multiIf(\n            "
        + ",\n            ".join(checks)
        + ",\n            '') AS UsageError\n"
        + f"    FROM ({inner}\n    )"
    )


# 2^127, 2^126, 2^125 and 2^61 (the rank's fields) and the Int64 -> UInt64 bias.
_BIT = {n: f"toUInt128('{2**n}')" for n in (127, 126, 125, 61)}
_RANK = f"""(toUInt128(UsageError = '') * {_BIT[127]}
            + toUInt128(Preferred) * {_BIT[126]}
            + toUInt128(1 - Estimated) * {_BIT[125]}
            + toUInt128(18446744073709551615 - toUInt64(
                toInt128(toUnixTimestamp64Nano(Timestamp)) + 9223372036854775808)) * {_BIT[61]}
            + toUInt128(bitShiftRight(cityHash64(TraceId, SpanId), 3)))"""
"""valid | meterline's span | exact | earliest | hash: bits 127, 126, 125, 61-124, 0-60."""

_SKEW_HOURS = int(SKEW.total_seconds() // 3600)
MONTHS_SQL = (
    f"arrayDistinct([toYYYYMM(Timestamp - toIntervalHour({_SKEW_HOURS}), 'UTC'), "
    f"toYYYYMM(Timestamp, 'UTC'), toYYYYMM(Timestamp + toIntervalHour({_SKEW_HOURS}), 'UTC')])"
)
"""The report's own UTC month, and the neighbouring one when within SKEW of it."""

USAGE_COLUMNS: tuple[str, ...] = (
    "Timestamp",
    "ConsumerId",
    "Feature",
    "ServiceName",
    "Provider",
    "Operation",
    "RequestModel",
    "ResponseModel",
    "ResponseId",
    "TraceId",
    "SpanId",
    "StatusCode",
    "ErrorType",
    "HttpStatus",
    "Billable",
    "Streamed",
    "Estimated",
    *(column for column, _ in TOKEN_FIELDS),
    "UsageError",
    "DedupKey",
    "Version",
    "Month",
    "Home",
)
"""``llm_usage``'s columns in order."""


def usage_rows_sql(inner: str) -> str:
    """The ``llm_usage`` rows (copies near month boundaries included) of ``inner``, a
    SELECT giving the report's fields, ``Succeeded``, ``Preferred`` and the ``Raw*``
    token strings; columns in :data:`USAGE_COLUMNS` order."""
    computed = {
        "Billable": "toUInt8(Succeeded AND UsageError = '') AS Billable",
        "Version": f"{_RANK} AS Version",
        "Month": f"arrayJoin({MONTHS_SQL}) AS Month",
        "Home": "toUInt8(Month = toYYYYMM(Timestamp, 'UTC')) AS Home",
    }
    columns = ",\n    ".join(computed.get(c, c) for c in USAGE_COLUMNS)
    return f"""
SELECT
    {columns}
FROM (
{_typed(inner)}
)"""


_SPANS = f"""
        SELECT
        Timestamp,
        {_span_or_resource("meterline.consumer.id")} AS ConsumerId,
        {_span_or_resource("meterline.feature")} AS Feature,
        ServiceName,
        {_span_or_resource("gen_ai.provider.name", "gen_ai.system")} AS Provider,
        {_span("gen_ai.operation.name")} AS Operation,
        {_span("gen_ai.request.model")} AS RequestModel,
        {_span("gen_ai.response.model", "gen_ai.request.model")} AS ResponseModel,
        {_span("gen_ai.response.id")} AS ResponseId,
        TraceId,
        SpanId,
        StatusCode,
        {_span("error.type")} AS ErrorType,
        toUInt16OrZero({_span("http.response.status_code", "http.status_code")}) AS HttpStatus,
        toUInt8(StatusCode != 'STATUS_CODE_ERROR' AND ErrorType = ''
                AND (HttpStatus = 0 OR HttpStatus < 400)) AS Succeeded,
        toUInt8({
    _span(
        "meterline.request.stream",
        "gen_ai.request.stream",
        "gen_ai.request.is_stream",
        "llm.is_streaming",
    )
} IN {_TRUE}) AS Streamed,
        toUInt8({_span("meterline.usage.estimated")} IN {_TRUE}) AS Estimated,
        toUInt8(ScopeName = '{SCOPE}') AS Preferred,
{
    _raw_columns(lambda _, keys: _span(*keys))
}        if(ResponseId != '', concat(Provider, '/', ResponseId), concat(TraceId, '/', SpanId))
            AS DedupKey
        FROM {{db}}.otel_traces
WHERE ({_has_any(*_INPUT_KEYS, *_OUTPUT_KEYS)}
       OR ((StatusCode = 'STATUS_CODE_ERROR' OR mapContains(SpanAttributes, 'error.type'))
           AND ({_has_any("gen_ai.provider.name", "gen_ai.system")})))
  AND {_span("gen_ai.operation.name")} NOT IN {AGGREGATE_OPERATIONS!r}
  AND {_span("meterline.superseded")} NOT IN {_TRUE}"""


USAGE_MV_QUERY = usage_rows_sql(_SPANS)
"""What ``llm_usage_mv`` selects from each block inserted into ``otel_traces``: the
``llm_usage`` rows of its usage spans (copies near month boundaries included)."""

_OLD_ROWS = f"""
        SELECT
        {", ".join(c for c in USAGE_COLUMNS[:17] if c != "Billable")},
        Billable AS Succeeded,
        toUInt8(Version >= 2) AS Preferred,
{_raw_columns(lambda column, _: f"toString({column})")}        DedupKey
        FROM {{db}}.{{source}}"""

CONVERT_QUERY = usage_rows_sql(_OLD_ROWS)
"""Rows of a migration-1 ``llm_usage`` (``{source}``) as rows of the current table:
ranked and copied like new ones. Counts stored as 0 from unparsable text by the old
view cannot be told from real zeros; too large ones and subsets larger than their
totals are flagged."""

_TOKEN_COLUMNS_DDL = "\n".join(f"    {column} UInt64," for column, _ in TOKEN_FIELDS)

USAGE_DDL = f"""
CREATE TABLE IF NOT EXISTS {{db}}.{{table}} (
    Timestamp DateTime64(9),
    ConsumerId LowCardinality(String),
    Feature LowCardinality(String),
    ServiceName LowCardinality(String),
    Provider LowCardinality(String),
    Operation LowCardinality(String),
    RequestModel LowCardinality(String),
    ResponseModel LowCardinality(String),
    ResponseId String,
    TraceId String,
    SpanId String,
    StatusCode LowCardinality(String),
    ErrorType LowCardinality(String),
    HttpStatus UInt16,
    Billable UInt8,
    Streamed UInt8,
    Estimated UInt8,
{_TOKEN_COLUMNS_DDL}
    UsageError LowCardinality(String),
    DedupKey String,
    Version UInt128,
    Month UInt32 DEFAULT toYYYYMM(Timestamp, 'UTC'),
    Home UInt8 DEFAULT 1
) ENGINE = ReplacingMergeTree(Version)
PARTITION BY Month
ORDER BY (Month, ConsumerId, DedupKey)
"""
"""``llm_usage`` (``{table}``). ``Month`` and ``Home`` default to a home row, for rows
written directly (tests, benchmarks); the view always sets them."""

COUNTED_VIEW = "llm_usage_counted"

COUNTED_SELECT = """SELECT * FROM {db}.llm_usage FINAL
WHERE Month >= toYYYYMM({start:DateTime64(9, 'UTC')}, 'UTC')
  AND Month <= toYYYYMM({end:DateTime64(9, 'UTC')} - toIntervalNanosecond(1), 'UTC')
  AND Home = 1
  AND Timestamp >= {start:DateTime64(9, 'UTC')}
  AND Timestamp < {end:DateTime64(9, 'UTC')}"""
"""The one definition of counted usage, with the query parameters ``start`` and
``end``: the body of the view ``llm_usage_counted`` and, inlined as a subquery, the
source of the aggregator's reads (chdb analyses a parameterized view called with bound
parameters ~30 ms slower than the same SELECT inlined; with literal arguments, as
Grafana's macros give, there is no difference)."""

COUNTED_VIEW_DDL = f"CREATE OR REPLACE VIEW {{db}}.{COUNTED_VIEW} AS\n{COUNTED_SELECT}\n"
"""Each response once, at its winning report: ``llm_usage_counted(start=…, end=…)``.

``FINAL`` keeps the highest-ranked row per (month, consumer, key); the conditions on
``Home`` and ``Timestamp`` apply to that row, after the merge (ClickHouse applies
``WHERE`` after ``FINAL``, and moves before it only conditions on sorting-key columns,
which all reports of a key share). ``Month`` is the leading sorting-key column, so the
month conditions prune partitions with or without
``do_not_merge_across_partitions_select_final``. Filters a caller adds on
``ConsumerId`` use the primary key; filters on other columns apply to the winner."""

COUNTED_ALL = f"{{db}}.{COUNTED_VIEW}(start = '1900-01-01 00:00:00', end = '2262-04-11 00:00:00')"
"""Every response once, at any time: ``SELECT … FROM`` this (``{db}`` for the database).
Reading ``llm_usage`` itself sees every report, and copies near month boundaries."""
