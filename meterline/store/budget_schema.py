"""The budget tables (migration 7): budgets and reservations (issue 11); rate limits
(migration 10).

- ``budgets``: the budgets defined through the API, one row per change
  (``ReplacingMergeTree(Version)``, ``Deleted`` marks a deletion); read with ``FINAL``.
- ``budget_reservations``: every state a reservation goes through (``reserved`` →
  ``settled`` | ``released`` | ``expired`` → ``counted``), the newest ``Version`` wins.
  Amounts are decimal strings, exact whatever their scale. The process keeps the live
  ones in memory (the source of truth for the atomic check) and reloads them from here
  at start, so a restart keeps them.
- ``rate_limits``: the rate limits defined through the API, as ``budgets``.
"""

from __future__ import annotations

BUDGETS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.budgets (
    ConsumerId String,
    Feature String,
    HasFeature UInt8,
    Period LowCardinality(String),
    Version UInt64,
    Deleted UInt8,
    Definition String,
    ChangedAt DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(Version)
ORDER BY (ConsumerId, HasFeature, Feature, Period)
"""

RESERVATIONS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.budget_reservations (
    Id String,
    Version UInt64,
    Status LowCardinality(String),
    ConsumerId String,
    Feature String,
    HasFeature UInt8,
    Provider LowCardinality(String),
    Model String,
    Amount Nullable(String),
    Tokens UInt64,
    CreatedAt DateTime64(6, 'UTC'),
    ExpiresAt DateTime64(6, 'UTC'),
    ChangedAt DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(Version)
ORDER BY Id
"""

RATE_LIMITS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.rate_limits (
    ConsumerId String,
    Provider String,
    Model String,
    Unit LowCardinality(String),
    Per LowCardinality(String),
    Version UInt64,
    Deleted UInt8,
    Definition String,
    ChangedAt DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(Version)
ORDER BY (ConsumerId, Provider, Model, Unit, Per)
"""
