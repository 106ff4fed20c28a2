"""Tables of rated usage: money per UTC hour, one source for every reader (issue 10 §1).

- ``rated_usage``: per hour, consumer, feature, provider, models, billability and token
  type — the quantity, the unit price and the exact amount (``Decimal``), the plan's
  markup in its own column, and the row's ``Status`` (``billed``, ``unpriced``,
  ``failed``: a failed call the plan does not bill, ``invalid``). Rows are written by
  *runs* (``Run``); an hour's current rows are those of the run its latest marker names.
- ``rated_hours``: one marker per hour and run, written only after that run's rows: a
  reader takes, per hour, the rows of the runs the newest marker names (``FINAL``,
  ``Runs``: one, or a whole-hour run and the delta runs that added new responses since),
  so a run killed half-way leaves the old rows in force, never half of the new ones.
- ``rated_daily``/``rated_days`` and ``rated_monthly``/``rated_monthly_marks``: the
  rows in force summed per day and per month (what invoices of whole days and months
  read), with the same run/marker scheme.
- ``rated_months``: what each month was rated from (``Signature`` of ``llm_usage``'s
  parts, the pricing's ``ConfigVersion``); a month whose signature or pricing changed is
  rated again.

Exactness: a price per million tokens has at most 24 decimals and ``markup_percent`` at
most 8 (the rater refuses others), so ``quantity × price / 10^6`` has at most 30
decimals (``Amount``, Decimal(76, 30)) and ``× markup_percent / 100`` at most 40
(``MarkupAmount``, Decimal(76, 40)): ClickHouse multiplies Decimals exactly (scales add)
and fails on overflow, so every stored amount is the exact product — 46 and 36 integer
digits are far beyond any bill. Sums of these columns are exact too.
"""

from __future__ import annotations

PRICE_SCALE = 24
"""Decimals of ``UnitPricePerMillion`` (the most a price may have)."""
AMOUNT_SCALE = 30
"""Decimals of ``Amount`` = price scale + 6 (per million → per token)."""
MARKUP_FRACTION_SCALE = 10
"""Decimals of ``markup_percent / 100`` (``markup_percent`` has at most 8)."""
MARKUP_SCALE = AMOUNT_SCALE + MARKUP_FRACTION_SCALE
"""Decimals of ``MarkupAmount``."""

RATED_USAGE_DDL = f"""
CREATE TABLE IF NOT EXISTS {{db}}.rated_usage (
    Hour DateTime64(0, 'UTC'),
    Run UInt64,
    ConsumerId LowCardinality(String),
    Feature LowCardinality(String),
    Provider LowCardinality(String),
    ResponseModel LowCardinality(String),
    RequestModel LowCardinality(String),
    Model LowCardinality(String),
    Billable UInt8,
    Status LowCardinality(String),
    UsageError LowCardinality(String),
    TokenType LowCardinality(String),
    Quantity UInt128,
    Requests UInt64,
    UnitPrice LowCardinality(String),
    UnitPricePerMillion Nullable(Decimal(76, {PRICE_SCALE})),
    Amount Nullable(Decimal(76, {AMOUNT_SCALE})),
    MarkupAmount Nullable(Decimal(76, {MARKUP_SCALE})),
    Currency LowCardinality(String),
    PriceSource LowCardinality(String),
    ConfigVersion LowCardinality(String),
    RatedAt DateTime64(3, 'UTC')
) ENGINE = MergeTree
PARTITION BY toYYYYMM(Hour, 'UTC')
ORDER BY (ConsumerId, Hour, Run)
"""
"""Rated usage. ``Model`` is the response model, else the request model (invoice lines);
``Requests`` is on the group's ``input`` row only (0 on its other rows), so
``sum(Requests)`` counts calls; ``UnitPrice`` is the price per million as configured
(text); ``Amount``/``MarkupAmount``/``UnitPricePerMillion`` are NULL for unpriced and
invalid usage — never 0."""

RATED_DAILY_DDL = f"""
CREATE TABLE IF NOT EXISTS {{db}}.rated_daily (
    Day Date32,
    Run UInt64,
    ConsumerId LowCardinality(String),
    Status LowCardinality(String),
    Billable UInt8,
    Provider LowCardinality(String),
    Model LowCardinality(String),
    TokenType LowCardinality(String),
    UnitPricePerMillion Nullable(Decimal(76, {PRICE_SCALE})),
    UnitPrice LowCardinality(String),
    UsageError LowCardinality(String),
    Quantity UInt128,
    Requests UInt64,
    Amount Nullable(Decimal(76, {AMOUNT_SCALE})),
    MarkupAmount Nullable(Decimal(76, {MARKUP_SCALE}))
) ENGINE = MergeTree
PARTITION BY toYYYYMM(Day)
ORDER BY (ConsumerId, Day, Run)
"""
"""``rated_usage`` summed per UTC day at the grain of invoice lines (no feature, one
model column): what invoices of whole days (every month) read. Rebuilt, under a run id,
for each day one of whose hours got a new run; ``rated_days`` names the run in force."""

RATED_DAYS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.rated_days (
    Day Date32,
    Run UInt64,
    HoursRun UInt64,
    RatedAt DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(Run)
PARTITION BY toYYYYMM(Day)
ORDER BY Day
"""
"""The run in force per day of ``rated_daily``, and the newest hour run it summed."""

RATED_HOURS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.rated_hours (
    Hour DateTime64(0, 'UTC'),
    Run UInt64,
    Responses UInt64,
    Fingerprint UInt64,
    ConfigVersion LowCardinality(String),
    RatedAt DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(Run)
PARTITION BY toYYYYMM(Hour, 'UTC')
ORDER BY Hour
"""
"""The run in force per hour (the newest marker), and the counted usage it rated:
``Responses`` and ``Fingerprint`` (xor of a hash of each counted report's identity and
rank)."""

RATED_MONTHS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.rated_months (
    Month UInt32,
    Run UInt64,
    Signature String,
    ConfigVersion LowCardinality(String),
    RatedAt DateTime64(3, 'UTC'),
    Seconds Float64,
    HoursRated UInt32
) ENGINE = ReplacingMergeTree(Run)
ORDER BY Month
"""
"""The newest completed rating of each month of ``llm_usage``."""

RATED_CURRENT_VIEW_DDL = """
CREATE OR REPLACE VIEW {db}.rated_usage_current AS
SELECT * FROM {db}.rated_usage
WHERE (Hour, Run) IN (SELECT Hour, Run FROM {db}.rated_hours FINAL)
"""
"""Migrations 9 and 11 (before an hour's marker could name several runs)."""

RATED_CURRENT_RUNS_VIEW_DDL = """
CREATE OR REPLACE VIEW {db}.rated_usage_current AS
SELECT * FROM {db}.rated_usage
WHERE (Hour, Run) IN (SELECT Hour, arrayJoin(Runs) FROM {db}.rated_hours FINAL)
"""
"""The rows in force (each hour's newest completed run): what SQL readers such as Grafana
should query. Money billed: ``sumIf(Amount + MarkupAmount, Status = 'billed')``."""

RATED_USAGE_DASHBOARD_DDL = (
    f"ALTER TABLE {{db}}.rated_usage"
    f" ADD COLUMN IF NOT EXISTS MarkupFraction Decimal(38, {MARKUP_FRACTION_SCALE}),"
    f" ADD COLUMN IF NOT EXISTS AtInputPrice Nullable(Decimal(76, {AMOUNT_SCALE}))"
)
"""Migration 11 (issue 12, what the dashboards need that invoices did not):

- ``MarkupFraction``: ``markup_percent / 100`` of the consumer's plan, so SQL can round
  the markup of an invoice's subtotal as the invoice does (``round(subtotal ×
  MarkupFraction, 2)``);
- ``AtInputPrice``: what the row's tokens would have cost at the group's *input* price
  (``Quantity × input price``, exact), on rows of the input-side token types (``input``,
  ``cache_read``, ``cache_write``, ``cache_write_1h``) of priced usage; NULL elsewhere.
  Cache savings = ``sumIf(AtInputPrice - Amount, TokenType = 'cache_read' AND Status =
  'billed')``, before the plan's markup.

Rows rated before the migration have 0 / NULL there: the rating version
(``meterline.aggregator.rated.config_version``) names the table's layout, so every month
is rated again once after the upgrade."""

KEYS_TYPE = "AggregateFunction(groupBitmap, UInt32)"
"""A set of 32-bit hashes of counted responses' identities (``ConsumerId``, ``DedupKey``)."""

INCREMENTAL_DDL: tuple[str, ...] = (
    "ALTER TABLE {db}.llm_usage MODIFY SETTING enable_block_number_column = 1",
    "ALTER TABLE {db}.rated_usage ADD COLUMN IF NOT EXISTS Fingerprint UInt64,"
    f" ADD COLUMN IF NOT EXISTS Keys {KEYS_TYPE}",
    f"ALTER TABLE {{db}}.rated_hours ADD COLUMN IF NOT EXISTS Keys {KEYS_TYPE}",
)
"""Migration 15 (incremental rating, docs/rated-usage.md):

- ``llm_usage`` keeps each row's insert block number through merges (``_block_number``),
  so a run finds the rows inserted since the last one without reading the month;
- each rated group's ``input`` row carries the fingerprint and the set of key hashes of
  its counted responses (``Fingerprint``, ``Keys``; other rows: 0 and empty), and each
  hour's marker their union: where every response was counted, even after a merge
  dropped the report that was counted (a later duplicate displaced it)."""

RATED_MONTHLY_DDL = f"""
CREATE TABLE IF NOT EXISTS {{db}}.rated_monthly (
    Month UInt32,
    Run UInt64,
    ConsumerId LowCardinality(String),
    Status LowCardinality(String),
    Billable UInt8,
    Provider LowCardinality(String),
    Model LowCardinality(String),
    TokenType LowCardinality(String),
    UnitPricePerMillion Nullable(Decimal(76, {PRICE_SCALE})),
    UnitPrice LowCardinality(String),
    UsageError LowCardinality(String),
    Quantity UInt128,
    Requests UInt64,
    Amount Nullable(Decimal(76, {AMOUNT_SCALE})),
    MarkupAmount Nullable(Decimal(76, {MARKUP_SCALE}))
) ENGINE = MergeTree
PARTITION BY intDiv(Month, 100)
ORDER BY (ConsumerId, Month, Run)
"""
"""``rated_daily`` summed per UTC month (``YYYYMM``) at the same grain: what invoices of
whole months read (tens of thousands of rows a month instead of a million daily ones).
Rebuilt, under a run id, when one of its days got new sums; ``rated_monthly_marks``
names the run in force."""

RATED_MONTHLY_MARKS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.rated_monthly_marks (
    Month UInt32,
    Run UInt64,
    DaysRun UInt64,
    RatedAt DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(Run)
ORDER BY Month
"""
"""The run in force per month of ``rated_monthly``, and the newest day run it summed
(readers use a month's sums only while that is still its days' newest run)."""

DELTA_RUNS_DDL: tuple[str, ...] = (
    "ALTER TABLE {db}.rated_hours ADD COLUMN IF NOT EXISTS Runs Array(UInt64) DEFAULT [Run]",
    RATED_CURRENT_RUNS_VIEW_DDL,
)
"""Migration 19 (delta runs, docs/rated-usage.md): an hour's marker names the runs whose
rows are in force together (``Runs``; markers written before: ``[Run]``) — a run that only
adds responses new to the month writes their rows alone and appends itself."""

RATED_USAGE_COLUMNS: tuple[str, ...] = (
    "Hour",
    "Run",
    "ConsumerId",
    "Feature",
    "Provider",
    "ResponseModel",
    "RequestModel",
    "Model",
    "Billable",
    "Status",
    "UsageError",
    "TokenType",
    "Quantity",
    "Requests",
    "UnitPrice",
    "UnitPricePerMillion",
    "Amount",
    "MarkupAmount",
    "Currency",
    "PriceSource",
    "ConfigVersion",
    "RatedAt",
    "MarkupFraction",
    "AtInputPrice",
    "Fingerprint",
    "Keys",
)
