"""Tables of the Stripe export (issue 10 §2-§3; docs/stripe.md).

- ``stripe_customers``: consumer → Stripe customer set through the API
  (``PUT /v1/consumers/{consumer}``); the newest row per consumer wins (``FINAL``); an
  empty ``CustomerId`` clears the override (the configuration file applies again).
- ``stripe_ledger``: every meter event, correction, cancellation and reported credit of
  the sync, one logical row per (consumer, meter, window, seq), each state change a new
  version (``ReplacingMergeTree(Version)``, read with ``FINAL``). A row is written
  ``pending`` *before* its request is sent; the answer moves it to ``accepted``,
  ``rejected`` or ``sent-unknown`` (no answer); a cancelled event becomes ``canceled``;
  ``reported`` rows were never sent (a credit to grant by hand, an unknown outcome past
  Stripe's 24 h de-duplication). The ledger, not Stripe, says what was sent once.
- ``stripe_runs``: one summary per sync run (``GET /v1/stripe/status``).
"""

from __future__ import annotations

STRIPE_CUSTOMERS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.stripe_customers (
    ConsumerId String,
    CustomerId String,
    UpdatedAt DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(UpdatedAt)
ORDER BY ConsumerId
"""

STRIPE_LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS {db}.stripe_ledger (
    ConsumerId String,
    EventName String,
    WindowStart DateTime64(0, 'UTC'),
    WindowSeconds UInt32,
    Seq UInt32,
    Kind LowCardinality(String),
    Identifier String,
    CustomerId String,
    Value Int128,
    Target String,
    State LowCardinality(String),
    Api LowCardinality(String),
    Answer String CODEC(ZSTD(1)),
    CreatedAt DateTime64(3, 'UTC'),
    UpdatedAt DateTime64(3, 'UTC'),
    Version UInt64
) ENGINE = ReplacingMergeTree(Version)
PARTITION BY toYYYYMM(WindowStart, 'UTC')
ORDER BY (ConsumerId, EventName, WindowStart, Seq)
"""
"""``Kind``: ``event`` (a window's first value), ``correction`` (a later positive delta),
``cancel`` (an adjustment cancelling ``Target``; ``Value`` is minus the cancelled value),
``credit`` (a negative delta Stripe can no longer take: reported for a manual credit).
``Value`` is what the row adds to the window in Stripe once accepted."""

STRIPE_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.stripe_runs (
    StartedAt DateTime64(3, 'UTC'),
    FinishedAt DateTime64(3, 'UTC'),
    Api LowCardinality(String),
    DryRun UInt8,
    Summary String CODEC(ZSTD(3))
) ENGINE = MergeTree
ORDER BY StartedAt
"""

LEDGER_COLUMNS: tuple[str, ...] = (
    "ConsumerId",
    "EventName",
    "WindowStart",
    "WindowSeconds",
    "Seq",
    "Kind",
    "Identifier",
    "CustomerId",
    "Value",
    "Target",
    "State",
    "Api",
    "Answer",
    "CreatedAt",
    "UpdatedAt",
    "Version",
)
