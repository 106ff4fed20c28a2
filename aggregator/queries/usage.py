"""The usage query behind ``GET /v1/usage``.

Reads ``llm_usage FINAL`` so every response counts once (DESIGN invariant 1).
Filters and the time range are bound parameters; group keys come from a fixed
table, so no user text reaches the SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

GROUP_KEYS: dict[str, str] = {
    "consumer": "ConsumerId",
    "feature": "Feature",
    "provider": "Provider",
    "model": "ResponseModel",
    "day": "toStartOfDay(Timestamp, 'UTC')",
    "hour": "toStartOfHour(Timestamp, 'UTC')",
}
"""Public group key → SQL expression."""

METRICS: dict[str, str] = {
    "requests": "count()",
    "failed_requests": "countIf(Billable = 0)",
    "input_tokens": "sum(InputTokens)",
    "output_tokens": "sum(OutputTokens)",
    "cache_read_input_tokens": "sum(CacheReadInputTokens)",
    "cache_creation_input_tokens": "sum(CacheCreationInputTokens)",
    "reasoning_output_tokens": "sum(ReasoningOutputTokens)",
}
"""Public metric → SQL aggregate, in output order."""


@dataclass(frozen=True)
class UsageFilter:
    """Which usage rows to read; ``None`` means no condition."""

    start: datetime | None = None
    """Inclusive lower bound of the call's start time (UTC)."""
    end: datetime | None = None
    """Exclusive upper bound."""
    consumer: str | None = None
    feature: str | None = None
    provider: str | None = None
    model: str | None = None
    """Matches the response model or, failing that, the request model."""
    group_by: tuple[str, ...] = field(default=())


def where_clause(f: UsageFilter) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (possibly ``1``) and its parameters."""
    conditions: list[str] = []
    params: dict[str, Any] = {}
    if f.start is not None:
        conditions.append("Timestamp >= {start:DateTime64(9, 'UTC')}")
        params["start"] = f.start
    if f.end is not None:
        conditions.append("Timestamp < {end:DateTime64(9, 'UTC')}")
        params["end"] = f.end
    for name, column in (
        ("consumer", "ConsumerId"),
        ("feature", "Feature"),
        ("provider", "Provider"),
    ):
        value = getattr(f, name)
        if value is not None:
            conditions.append(f"{column} = {{{name}:String}}")
            params[name] = value
    if f.model is not None:
        conditions.append("(ResponseModel = {model:String} OR RequestModel = {model:String})")
        params["model"] = f.model
    return (" AND ".join(conditions) or "1"), params


def usage_sql(f: UsageFilter) -> tuple[str, dict[str, Any]]:
    """SQL and parameters for usage totals grouped by ``f.group_by``."""
    unknown = [g for g in f.group_by if g not in GROUP_KEYS]
    if unknown:
        raise ValueError(f"unknown group_by {unknown[0]!r}, allowed: {', '.join(GROUP_KEYS)}")
    where, params = where_clause(f)
    keys = [f"{GROUP_KEYS[g]} AS `{g}`" for g in f.group_by]
    metrics = [f"{expr} AS `{name}`" for name, expr in METRICS.items()]
    sql = f"SELECT {', '.join([*keys, *metrics])}\nFROM {{db}}.llm_usage FINAL\nWHERE {where}"
    if f.group_by:
        names = ", ".join(f"`{g}`" for g in f.group_by)
        sql += f"\nGROUP BY {names}\nORDER BY {names}"
    else:
        sql += "\nHAVING count() > 0"
    return sql, params
