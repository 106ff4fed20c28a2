"""The alert tables (issue 11 §5; docs/alerts.md).

- ``alerts``: one row per alert — a budget threshold crossed in one period, a rolling
  window passed, … — under a deterministic ``Id`` (the kind and what it is about), so
  recording the same crossing again (another check, a restart, a second replica) changes
  nothing: ``ReplacingMergeTree`` keeps one row per id, read with ``FINAL``.
  ``Webhooks`` names the webhooks its deliveries were planned for when it was recorded
  (the outbox's plan: a crash between the two inserts is repaired from it).
- ``alert_deliveries``: the outbox — every state of one delivery of an alert to one
  webhook (``pending`` → ``delivered`` | ``failed``), newest ``Version`` wins. A pending
  row is written before the first attempt, so a restart resumes what was not sent.
- ``rate_limit_refusals``: one row per refusal of a rate limit, until that limit's
  ``rate_limit.repeated`` alert of the hour is recorded — the count every replica and a
  restarted process share (the Redis ledger counts in Redis instead). Kept 2 days
  after they were written.
- ``alert_delivery_claims``: which process makes attempt N of a delivery — one row per
  (delivery, attempt, round), inserted with a deduplication token so the engine keeps
  the first; a claim older than the lease (its process died) is followed by a new round.
  Several aggregators on one ClickHouse server thus send each attempt once.
"""

from __future__ import annotations

ALERTS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.alerts (
    Id String,
    Kind LowCardinality(String),
    ConsumerId String,
    Feature String,
    Period LowCardinality(String),
    PeriodStart DateTime64(3, 'UTC'),
    PeriodEnd DateTime64(3, 'UTC'),
    Threshold String,
    LimitAmount String,
    Unit LowCardinality(String),
    Spent String,
    Data String,
    Webhooks Array(String),
    CreatedAt DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree
ORDER BY Id
"""

ALERT_DELIVERIES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.alert_deliveries (
    Id String,
    AlertId String,
    Url String,
    Version UInt64,
    State LowCardinality(String),
    Attempts UInt32,
    NextAt DateTime64(6, 'UTC'),
    LastError String,
    Payload String,
    ChangedAt DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(Version)
ORDER BY Id
"""

RATE_LIMIT_REFUSALS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.rate_limit_refusals (
    LimitKey String,
    Hour DateTime('UTC'),
    Id String,
    At DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(Hour)
ORDER BY (LimitKey, Hour, Id)
TTL toDateTime(At) + INTERVAL 2 DAY
"""

ALERT_DELIVERY_CLAIMS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.alert_delivery_claims (
    DeliveryId String,
    Attempt UInt32,
    Round UInt32,
    Owner String,
    ClaimedAt DateTime64(6, 'UTC')
) ENGINE = MergeTree
ORDER BY (DeliveryId, Attempt, Round)
TTL toDateTime(ClaimedAt) + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 100000
"""
