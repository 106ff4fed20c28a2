"""Versioned, idempotent schema migrations, the same SQL on chdb and on a server.

Contract:
- ``otel_traces`` has exactly the columns of the otelcol-contrib ``clickhouse``
  exporter's default traces table, so a production Collector can write to it.
- ``llm_usage`` is filled by the materialized view ``llm_usage_mv`` on every insert
  into ``otel_traces`` (whoever inserts: meterline's collector or otelcol). How reports
  of one response meet, which one counts and when usage is invalid:
  :mod:`meterline.store.usage_schema` and docs/counting.md. Every total reads
  ``llm_usage_counted(start=…, end=…)``.

Each migration runs once; ``schema_migrations`` records it. Statements use
``IF NOT EXISTS`` (and the steps of migration 4 look before they act) so a migration
interrupted half-way can simply run again. Released migrations never change: the SQL of
migrations 1 and 3 is frozen in :mod:`meterline.store._history`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meterline.store._history import V1_USAGE_DDL, V3_USAGE_MV_DDL, V3_USAGE_MV_QUERY
from meterline.store.alert_schema import (
    ALERT_DELIVERIES_DDL,
    ALERT_DELIVERY_CLAIMS_DDL,
    ALERTS_DDL,
    RATE_LIMIT_REFUSALS_DDL,
)
from meterline.store.budget_schema import BUDGETS_DDL, RATE_LIMITS_DDL, RESERVATIONS_DDL
from meterline.store.ingest_schema import INGEST_STATS_DDL
from meterline.store.rated_schema import (
    DELTA_RUNS_DDL,
    INCREMENTAL_DDL,
    RATED_CURRENT_VIEW_DDL,
    RATED_DAILY_DDL,
    RATED_DAYS_DDL,
    RATED_HOURS_DDL,
    RATED_MONTHLY_DDL,
    RATED_MONTHLY_MARKS_DDL,
    RATED_MONTHS_DDL,
    RATED_USAGE_DASHBOARD_DDL,
    RATED_USAGE_DDL,
)
from meterline.store.stripe_schema import (
    STRIPE_CUSTOMERS_DDL,
    STRIPE_INVOICE_PUSHES_DDL,
    STRIPE_LEDGER_DDL,
    STRIPE_RUNS_DDL,
)
from meterline.store.usage_schema import (
    AGGREGATE_OPERATIONS,
    CONVERT_QUERY,
    COUNTED_VIEW,
    COUNTED_VIEW_DDL,
    SCOPE,
    USAGE_COLUMNS,
    USAGE_DDL,
    USAGE_MV_QUERY,
)

if TYPE_CHECKING:
    from meterline.store.backend import Store

__all__ = [
    "AGGREGATE_OPERATIONS",
    "COUNTED_VIEW",
    "MIGRATIONS",
    "SCOPE",
    "TRACES_TABLE",
    "USAGE_MV_DDL",
    "USAGE_MV_QUERY",
    "USAGE_TABLE",
]

TRACES_TABLE = "otel_traces"
USAGE_TABLE = "llm_usage"

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

USAGE_MV_DDL = (
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.llm_usage_mv TO {db}.llm_usage AS" + USAGE_MV_QUERY
)
"""The current view (migration 4 swaps older databases to it)."""

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
    run: Callable[[Store], None] | None = None
    """A step that needs to look at the database first (runs after ``statements``)."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "otel_traces, llm_usage and its view", (TRACES_DDL, V1_USAGE_DDL, V3_USAGE_MV_DDL)
    ),
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
        ("ALTER TABLE {db}.llm_usage_mv MODIFY QUERY" + V3_USAGE_MV_QUERY,),
    ),
)

_NEXT = "llm_usage_next"


def _columns(store: Store, table: str) -> set[str]:
    _, rows = store.query(
        "SELECT name FROM system.columns WHERE database = {d:String} AND table = {t:String}",
        {"d": store.database, "t": table},
    )
    return {r[0] for r in rows}


def _copy(store: Store, source: str, into: str = USAGE_TABLE) -> None:
    """Convert the old-format rows of ``source`` (a table, optionally with a WHERE)."""
    select = CONVERT_QUERY.replace("{source}", source)
    store.command(f"INSERT INTO {{db}}.{into} ({', '.join(USAGE_COLUMNS)}) {select}")


def _rank_and_meet(store: Store) -> None:
    """Migration 4: ``llm_usage`` ranked, copied across month boundaries, validated.

    The partition and sorting keys and the version column's type change, so the table is
    rebuilt: a new table is filled from the old one (``INSERT … SELECT``), swapped in
    (``EXCHANGE TABLES``, atomic) and the view's query replaced (``MODIFY QUERY``); rows
    the old view wrote meanwhile are converted too (duplicates of converted rows are
    absorbed: the same report gets the same rank). Each step looks first, so an
    interrupted run can run again.
    """
    if "Home" not in _columns(store, USAGE_TABLE):
        store.command(f"DROP TABLE IF EXISTS {{db}}.{_NEXT}")
        store.command(USAGE_DDL.replace("{table}", _NEXT))
        _, parts = store.query(
            "SELECT name FROM system.parts WHERE database = {d:String} "
            "AND table = {t:String} AND active",
            {"d": store.database, "t": USAGE_TABLE},
        )
        _copy(store, USAGE_TABLE, into=_NEXT)
        store.command(f"EXCHANGE TABLES {{db}}.{USAGE_TABLE} AND {{db}}.{_NEXT}")
        copied = ", ".join("'" + p[0].replace("'", "") + "'" for p in parts) or "''"
    else:
        copied = "''"
    store.command("ALTER TABLE {db}.llm_usage_mv MODIFY QUERY" + USAGE_MV_QUERY)
    if "Home" not in _columns(store, _NEXT) and _columns(store, _NEXT):
        # rows the old view wrote into the old table after the copy started
        _copy(store, f"{_NEXT} WHERE _part NOT IN ({copied})")
        store.command(f"DROP TABLE {{db}}.{_NEXT}")
    # rows the old view wrote into the new table before its query was replaced: their
    # Version is the old one (< 4), below every rank the view computes
    _, [(stale,)] = store.query("SELECT count() FROM {db}.llm_usage WHERE Version < 4")
    if stale:
        _copy(store, "llm_usage WHERE Version < 4")
        store.command("DELETE FROM {db}.llm_usage WHERE Version < 4")
    store.command(COUNTED_VIEW_DDL)


MIGRATIONS += (
    Migration(
        4,
        "llm_usage: reports meet across month boundaries, total rank, validated counts",
        (),
        _rank_and_meet,
    ),
)

# Consumer-scoped API keys (issue 9): one row per key and state. A key is written once
# as active (Version 0) and at most once more as revoked (Version 1, terminal); reads use
# FINAL, so a revoke is seen by the next read on any replica that sees the insert.
API_KEYS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.api_keys (
    KeyId String,
    KeyHash String,
    ConsumerId String,
    Scopes Array(LowCardinality(String)),
    Name String,
    CreatedAt DateTime64(3, 'UTC'),
    ExpiresAt Nullable(DateTime64(3, 'UTC')),
    RevokedAt Nullable(DateTime64(3, 'UTC')),
    Version UInt8
) ENGINE = ReplacingMergeTree(Version)
ORDER BY KeyId
"""

MIGRATIONS += (Migration(5, "api_keys: consumer-scoped API keys (hashes only)", (API_KEYS_DDL,)),)

# One writer at a time per billing period (aggregator/invoices/_claims.py): the engine's
# insert deduplication (the window below; Keeper on a replicated table) picks one winner
# among claims that follow the same parent.
PERIOD_CLAIMS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.period_claims (
    Period String,
    Parent String,
    ClaimId String,
    Status LowCardinality(String),
    Action LowCardinality(String),
    ClaimedAt DateTime64(3, 'UTC')
) ENGINE = MergeTree
ORDER BY (Period, ClaimedAt)
SETTINGS non_replicated_deduplication_window = 100000
"""

MIGRATIONS += (
    Migration(6, "period_claims: one writer at a time per billing period", (PERIOD_CLAIMS_DDL,)),
)

# Budgets and reservations (issue 11): definitions changed through the API, and every
# state of a reservation (the live ones are reloaded at start).
MIGRATIONS += (
    Migration(
        7,
        "budgets, budget_reservations",
        (BUDGETS_DDL, RESERVATIONS_DDL),
    ),
)

MIGRATIONS += (
    Migration(
        8,
        "stripe: customers set through the API, the meter event ledger, sync runs",
        (STRIPE_CUSTOMERS_DDL, STRIPE_LEDGER_DDL, STRIPE_RUNS_DDL),
    ),
)

# Rated usage (issue 10 §1): money per hour, kept current by the aggregator.
MIGRATIONS += (
    Migration(
        9,
        "rated usage: money per hour (and per day for invoices), runs and their markers",
        (
            RATED_USAGE_DDL,
            RATED_HOURS_DDL,
            RATED_DAILY_DDL,
            RATED_DAYS_DDL,
            RATED_MONTHS_DDL,
            RATED_CURRENT_VIEW_DDL,
        ),
    ),
)

# Rate limits (issue 11 §4): definitions changed through the API.
MIGRATIONS += (Migration(10, "rate_limits", (RATE_LIMITS_DDL,)),)

# What the dashboards read that invoices did not (issue 12 §1): the plan's markup
# fraction and the amount at the input price (cache savings). The view is recreated so
# that ``SELECT *`` names the new columns.
MIGRATIONS += (
    Migration(
        11,
        "rated usage: markup fraction and amount at the input price (dashboards)",
        (RATED_USAGE_DASHBOARD_DDL, RATED_CURRENT_VIEW_DDL),
    ),
)

# Alerts (issue 11 §5): each alert once, and the outbox of its webhook deliveries.
MIGRATIONS += (
    Migration(
        12, "alerts, alert_deliveries (the webhook outbox)", (ALERTS_DDL, ALERT_DELIVERIES_DDL)
    ),
)

# The Stripe invoice mode (issue 10 §4): draft invoices and invoice items pushed.
MIGRATIONS += (
    Migration(
        13,
        "stripe_invoice_pushes: invoice items and drafts pushed to Stripe",
        (STRIPE_INVOICE_PUSHES_DDL,),
    ),
)

# The collector's counters, sampled for the pipeline health dashboard (issue 12 §2).
MIGRATIONS += (Migration(14, "ingest_stats: the writer's counters, sampled", (INGEST_STATS_DDL,)),)

# Incremental rating (issue 10 §1): rows since the last run by block number; where each
# response was counted, per hour.
MIGRATIONS += (
    Migration(
        15,
        "incremental rating: llm_usage block numbers kept; key sets per rated group and hour",
        INCREMENTAL_DDL,
    ),
)

# Monthly roll-up of the rated usage (issue 10 §1): invoices of whole months read a few
# rows per line and month.
MIGRATIONS += (
    Migration(
        16,
        "rated usage: sums per month (rated_monthly, rated_monthly_marks)",
        (RATED_MONTHLY_DDL, RATED_MONTHLY_MARKS_DDL),
    ),
)

# Rate limits hit repeatedly (issue 11 §5): refusals counted in the store, shared by
# replicas and kept across a restart.
MIGRATIONS += (
    Migration(
        17, "rate_limit_refusals: refusals counted per limit and hour", (RATE_LIMIT_REFUSALS_DDL,)
    ),
)

# Webhook attempts claimed (issue 11 §5): replicas on one server send each attempt once.
MIGRATIONS += (
    Migration(
        18, "alert_delivery_claims: one process per delivery attempt", (ALERT_DELIVERY_CLAIMS_DDL,)
    ),
)

# Delta rating runs (issue 10 §1): an hour's rows in force may come from several runs.
MIGRATIONS += (
    Migration(19, "rated usage: an hour's marker names several runs (delta runs)", DELTA_RUNS_DDL),
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
