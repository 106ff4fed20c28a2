"""SQL over the budget tables (:mod:`meterline.store.budget_schema`)."""

from __future__ import annotations

BUDGET_COLUMNS = (
    "ConsumerId", "Feature", "HasFeature", "Period", "Version", "Deleted", "Definition",
    "ChangedAt",
)  # fmt: skip

RESERVATION_COLUMNS = (
    "Id", "Version", "Status", "ConsumerId", "Feature", "HasFeature", "Provider", "Model",
    "Amount", "Tokens", "CreatedAt", "ExpiresAt", "ChangedAt",
)  # fmt: skip

SELECT_BUDGETS = """
SELECT Definition FROM {db}.budgets FINAL WHERE Deleted = 0
ORDER BY ConsumerId, HasFeature, Feature, Period
"""

RATE_LIMIT_COLUMNS = (
    "ConsumerId", "Provider", "Model", "Unit", "Per", "Version", "Deleted", "Definition",
    "ChangedAt",
)  # fmt: skip

SELECT_RATE_LIMITS = """
SELECT Definition FROM {db}.rate_limits FINAL WHERE Deleted = 0
ORDER BY ConsumerId, Provider, Model, Unit, Per
"""

SELECT_RECENT_RESERVATIONS = """
SELECT Id, Version, Status, ConsumerId, Feature, HasFeature, Provider, Model, Amount,
       Tokens, CreatedAt, ExpiresAt, ChangedAt
FROM {db}.budget_reservations FINAL
WHERE CreatedAt > {since:DateTime64(6, 'UTC')} AND Status != 'released'
"""
"""The reservations still in a rate window (reloaded at start)."""

SELECT_LIVE_RESERVATIONS = """
SELECT Id, Version, Status, ConsumerId, Feature, HasFeature, Provider, Model, Amount,
       Tokens, CreatedAt, ExpiresAt, ChangedAt
FROM {db}.budget_reservations FINAL
WHERE Status IN ('reserved', 'settled')
"""

SELECT_RESERVATION = """
SELECT Status, ConsumerId FROM {db}.budget_reservations FINAL WHERE Id = {id:String}
"""

STORED_IDS = """
SELECT DISTINCT Id FROM {db}.budget_reservations WHERE Id IN {ids:Array(String)}
"""
"""Which of these reservation ids were ever written (a lease's calls reported before)."""

COUNTED_RESERVATIONS = """
SELECT DISTINCT SpanAttributes['meterline.budget.reservation_id']
FROM {db}.otel_traces
WHERE Timestamp >= {since:DateTime64(6)}
  AND SpanAttributes['meterline.budget.reservation_id'] IN {ids:Array(String)}
"""
"""Which of these reservations have a stored span (the usage is then in ``spent``)."""
