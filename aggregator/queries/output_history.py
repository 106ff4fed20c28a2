"""Output tokens of a consumer's past calls: how many, and their p50 / p95.

Reads counted usage (each response once, :func:`~.usage.counted_usage`), only calls whose
usage can be trusted as a sample of what this model answers: valid (no ``UsageError``),
successful (``Billable = 1``) and reported by the provider (``Estimated = 0``: a stream
cut short is not a typical answer). ``quantilesExact`` returns members of the sample, so
the figures are whole token counts.
"""

from __future__ import annotations

from typing import Any

from meterline.aggregator.queries.usage import UsageFilter, counted_usage


def output_history_sql(f: UsageFilter) -> tuple[str, dict[str, Any]]:
    """SQL and parameters: one row ``(calls, [p50, p95])`` over ``f``."""
    source, where, params = counted_usage(f)
    sql = (
        "SELECT count() AS calls, quantilesExact(0.5, 0.95)(OutputTokens) AS q "
        f"FROM {source} WHERE {where} "
        "AND UsageError = '' AND Billable = 1 AND Estimated = 0"
    )
    return sql, params
