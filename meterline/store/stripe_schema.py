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
- ``stripe_invoice_pushes``: the invoice mode (``meterline stripe push-invoices``): every
  draft invoice and invoice item meterline created or means to create in Stripe, one
  logical row per (period, consumer, key), each state change a new version (read with
  ``FINAL``). Written ``pending`` before the request leaves; Stripe's id once it answered.
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

STRIPE_INVOICE_PUSHES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.stripe_invoice_pushes (
    Period String,
    ConsumerId String,
    Key String,
    Kind LowCardinality(String),
    Revision UInt32,
    CustomerId String,
    Currency LowCardinality(String),
    Amount Int64,
    Description String,
    StripeInvoice String,
    StripeId String,
    Attempt UInt32,
    State LowCardinality(String),
    Answer String CODEC(ZSTD(1)),
    CreatedAt DateTime64(3, 'UTC'),
    UpdatedAt DateTime64(3, 'UTC'),
    Version UInt64
) ENGINE = ReplacingMergeTree(Version)
ORDER BY (Period, ConsumerId, Key)
"""
"""``Kind``: ``draft`` (a Stripe draft invoice; ``StripeId`` is ``in_…``), ``line``,
``markup``, ``adjustment`` (items of ``Revision``) or ``credit`` (minus an item of an
older revision, ``Key`` ``credit/<its key>``). ``Amount``: Stripe's minor units.
``Attempt`` is part of the idempotency key: it moves on only when Stripe, listed, does
not hold the item and the old key cannot be used again."""

INVOICE_PUSH_COLUMNS: tuple[str, ...] = (
    "Period",
    "ConsumerId",
    "Key",
    "Kind",
    "Revision",
    "CustomerId",
    "Currency",
    "Amount",
    "Description",
    "StripeInvoice",
    "StripeId",
    "Attempt",
    "State",
    "Answer",
    "CreatedAt",
    "UpdatedAt",
    "Version",
)
