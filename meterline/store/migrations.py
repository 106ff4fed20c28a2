"""Versioned, idempotent schema migrations, the same SQL on chdb and on a server.

Contract:
- ``otel_traces`` has exactly the columns of the otelcol-contrib ``clickhouse``
  exporter's default traces table, so a production Collector can write to it.
- ``llm_usage`` is filled by the materialized view ``llm_usage_mv`` on every insert
  into ``otel_traces`` (whoever inserts: meterline's collector or otelcol). It is a
  ``ReplacingMergeTree`` keyed by ``(ConsumerId, DedupKey)``; every read goes through
  ``FINAL`` (see :mod:`meterline.store.usage_sql`), so a response reported twice
  (a retried OTLP batch, two instrumentations of one call) counts once.
  ``DedupKey`` is ``provider/response id`` when the response has an id, otherwise
  ``trace id/span id``.
- Known limit: two reports of one response under *different* consumers are kept
  apart (the consumer leads the key so one consumer's month is a range read). The
  instrumentation stamps the consumer on every GenAI span of the process, so this
  only happens across processes that disagree about who the consumer is.

Each migration runs once; ``schema_migrations`` records it. Statements use
``IF NOT EXISTS`` so a migration interrupted half-way can simply run again.
"""

from __future__ import annotations

from dataclasses import dataclass

TRACES_TABLE = "otel_traces"
USAGE_TABLE = "llm_usage"

# Operations that aggregate their children's usage (agents, tools, workflows):
# counting them as well would bill the same tokens twice.
AGGREGATE_OPERATIONS = ("invoke_agent", "create_agent", "execute_tool", "invoke_workflow")

_TRUE = "('true', 'True', 'TRUE', '1')"

SCOPE = "meterline.instrumentation"
"""The instrumentation scope of meterline's spans: the preferred report of a response.
Spans marked ``meterline.superseded`` (the span enclosing a metered call: an SDK's own
GenAI span, an agent's) are not counted."""


def _first_set(lookups: list[str]) -> str:
    """SQL for the first non-empty of ``lookups`` ('' when all are).

    One subscript per key (a missing key reads as ''), rather than ``mapContains`` and
    then a subscript: the view's analysis time on each insert fell from ~24 to ~8 ms
    (its per-span cost measured about the same). An attribute set to '' counts as not
    set.
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


def _tokens(*keys: str) -> str:
    return f"toUInt64OrZero({_span(*keys)})"


def _has_any(*keys: str) -> str:
    return " OR ".join(f"mapContains(SpanAttributes, '{k}')" for k in keys)


_INPUT_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
_OUTPUT_KEYS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
_PROVIDER = _span_or_resource("gen_ai.provider.name", "gen_ai.system")
_RESPONSE_ID = _span("gen_ai.response.id")
_ERROR_TYPE = _span("error.type")
_HTTP_STATUS = f"toUInt16OrZero({_span('http.response.status_code', 'http.status_code')})"

TRACES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.otel_traces (
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1
) ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp), Timestamp)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1
"""

USAGE_DDL = """
CREATE TABLE IF NOT EXISTS {db}.llm_usage (
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
    InputTokens UInt64,
    OutputTokens UInt64,
    CacheReadInputTokens UInt64,
    CacheCreationInputTokens UInt64,
    CacheCreation1hInputTokens UInt64,
    ReasoningOutputTokens UInt64,
    DedupKey String,
    Version UInt8
) ENGINE = ReplacingMergeTree(Version)
PARTITION BY toYYYYMM(Timestamp)
ORDER BY (ConsumerId, DedupKey)
"""

USAGE_MV_QUERY = f"""
SELECT
    Timestamp,
    {_span_or_resource("meterline.consumer.id")} AS ConsumerId,
    {_span_or_resource("meterline.feature")} AS Feature,
    ServiceName,
    {_PROVIDER} AS Provider,
    {_span("gen_ai.operation.name")} AS Operation,
    {_span("gen_ai.request.model")} AS RequestModel,
    {_span("gen_ai.response.model", "gen_ai.request.model")} AS ResponseModel,
    {_RESPONSE_ID} AS ResponseId,
    TraceId,
    SpanId,
    StatusCode,
    {_ERROR_TYPE} AS ErrorType,
    {_HTTP_STATUS} AS HttpStatus,
    toUInt8(StatusCode != 'STATUS_CODE_ERROR' AND ErrorType = ''
            AND (HttpStatus = 0 OR HttpStatus < 400)) AS Billable,
    toUInt8({
    _span(
        "meterline.request.stream",
        "gen_ai.request.stream",
        "gen_ai.request.is_stream",
        "llm.is_streaming",
    )
} IN {_TRUE}) AS Streamed,
    toUInt8({_span("meterline.usage.estimated")} IN {_TRUE}) AS Estimated,
    {_tokens(*_INPUT_KEYS)} AS InputTokens,
    {_tokens(*_OUTPUT_KEYS)} AS OutputTokens,
    {_tokens("gen_ai.usage.cache_read.input_tokens")} AS CacheReadInputTokens,
    {_tokens("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_write.input_tokens")}
        AS CacheCreationInputTokens,
    {_tokens("meterline.usage.cache_creation_1h.input_tokens")} AS CacheCreation1hInputTokens,
    {_tokens("gen_ai.usage.reasoning.output_tokens")} AS ReasoningOutputTokens,
    if(ResponseId != '', concat(Provider, '/', ResponseId), concat(TraceId, '/', SpanId))
        AS DedupKey,
    -- Which report of a response wins: meterline's own span, then exact over estimated.
    toUInt8((ScopeName = '{SCOPE}') * 2 + (1 - Estimated)) AS Version
FROM {{db}}.otel_traces
WHERE ({_has_any(*_INPUT_KEYS, *_OUTPUT_KEYS)}
       OR ((StatusCode = 'STATUS_CODE_ERROR' OR mapContains(SpanAttributes, 'error.type'))
           AND ({_has_any("gen_ai.provider.name", "gen_ai.system")})))
  AND {_span("gen_ai.operation.name")} NOT IN {AGGREGATE_OPERATIONS!r}
  AND {_span("meterline.superseded")} NOT IN {_TRUE}
"""
"""What ``llm_usage_mv`` selects from each block inserted into ``otel_traces``."""

USAGE_MV_DDL = (
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.llm_usage_mv TO {db}.llm_usage AS" + USAGE_MV_QUERY
)

MIGRATIONS_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    Version UInt32,
    Name String,
    AppliedAt DateTime64(3) DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
ORDER BY Version
"""


@dataclass(frozen=True)
class Migration:
    """One schema step; its statements are idempotent."""

    version: int
    """Monotonic number; applied in order, each once."""
    name: str
    """What the step does, recorded in ``schema_migrations``."""
    statements: tuple[str, ...]
    """SQL with ``{db}`` for the (already quoted) database name."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "otel_traces, llm_usage and its view", (TRACES_DDL, USAGE_DDL, USAGE_MV_DDL)),
)

# Pricing and invoices (issue 4): finalised invoices are stored as issued, revisions
# and adjustments are appended, never rewritten; money columns are Decimal.
INVOICES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.billing_periods (
    Period String,
    Revision UInt32,
    FinalizedAt DateTime64(3, 'UTC'),
    Currency LowCardinality(String),
    CatalogueSource String
) ENGINE = ReplacingMergeTree(Revision)
ORDER BY Period
"""

INVOICE_DOCUMENTS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.invoices (
    Period String,
    ConsumerId String,
    Revision UInt32,
    IssuedAt DateTime64(3, 'UTC'),
    Currency LowCardinality(String),
    Subtotal Decimal(38, 9),
    Markup Decimal(38, 9),
    Total Decimal(38, 9),
    FailedRequests UInt64,
    UnpricedRequests UInt64,
    Document String CODEC(ZSTD(3))
) ENGINE = ReplacingMergeTree
ORDER BY (Period, ConsumerId, Revision)
"""

INVOICE_ADJUSTMENTS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.invoice_adjustments (
    Period String,
    ConsumerId String,
    Revision UInt32,
    CreatedAt DateTime64(3, 'UTC'),
    Currency LowCardinality(String),
    Amount Decimal(38, 9),
    Reason String,
    Document String CODEC(ZSTD(3))
) ENGINE = MergeTree
ORDER BY (Period, ConsumerId, CreatedAt)
"""

PRICE_CATALOGUE_DDL = """
CREATE TABLE IF NOT EXISTS {db}.price_catalogue (
    FetchedAt DateTime64(3, 'UTC'),
    Source String,
    Data String CODEC(ZSTD(3))
) ENGINE = MergeTree
ORDER BY FetchedAt
"""

MIGRATIONS += (
    Migration(
        2,
        "billing periods, finalised invoices, adjustments, price catalogue snapshots",
        (INVOICES_DDL, INVOICE_DOCUMENTS_DDL, INVOICE_ADJUSTMENTS_DDL, PRICE_CATALOGUE_DDL),
    ),
)

# The view's first version looked each attribute up twice (mapContains, then a
# subscript); new databases get the current query from migration 1, older ones here.
# MODIFY QUERY swaps it atomically: no insert runs without the view.
MIGRATIONS += (
    Migration(
        3,
        "llm_usage_mv: one lookup per attribute",
        ("ALTER TABLE {db}.llm_usage_mv MODIFY QUERY" + USAGE_MV_QUERY,),
    ),
)

EMBEDDED_TUNING: tuple[str, ...] = (
    f"ALTER TABLE {{db}}.{TRACES_TABLE} MODIFY SETTING merge_selector_base = 20, "
    "min_bytes_for_wide_part = 33554432",
    f"ALTER TABLE {{db}}.{USAGE_TABLE} MODIFY SETTING merge_selector_base = 20",
)
"""Applied on every start of the embedded store (idempotent), not on a server.

The ingest tables take many small parts (one per writer insert) on a machine whose
two cores also run the collector:

- with ClickHouse's default merge selector base (5), merges took ~8 µs of CPU per
  ingested span in a sustained 1M-span run, more than the insert's own pipeline.
  Base 20 merges wider sets of parts less often (less write amplification, ~3 µs/span)
  at the cost of more active parts between merges;
- an insert's ``otel_traces`` part (~15k spans, ~10 MiB uncompressed) was written in
  the Wide format, 129 files (a pair per stream: map keys, values and sizes, string
  sizes, dictionaries); creating them took kernel time (ext4 inode allocation) that
  varied from run to run. Up to 32 MiB a part is Compact (all columns in one file,
  ~20 files), which cut the engine's CPU per span ~10 % end to end.

A ClickHouse server is left to its operator's settings (older servers lack the first).
"""
