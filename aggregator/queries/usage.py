"""The usage query behind ``GET /v1/usage``, and the source every total reads.

Every total reads :func:`counted_usage`: the store's counted usage (the SELECT of the
view ``llm_usage_counted``, :data:`~meterline.store.usage_schema.COUNTED_SELECT`),
which yields each response once, at its winning report, wherever its reports' timestamps
fall (docs/counting.md); filters apply to that winning report. Invalid usage (a
``UsageError``) is counted in ``invalid_requests`` and in no token total; sums are
``UInt128``, so they cannot wrap. Every read is scoped (``UsageFilter.scope``, required):
a consumer key's scope is a condition of the query itself. Filters and the time range are
bound parameters; group keys come from a fixed table, so no user text reaches the SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from meterline.aggregator.tenancy import Scope
from meterline.store.usage_schema import COUNTED_SELECT

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
"""The earliest instant ``DateTime64(9)`` holds (an open ``start``)."""
LATEST = datetime(2262, 4, 11, tzinfo=UTC)
"""An instant near the latest ``DateTime64(9)`` holds (an open ``end``)."""

GROUP_KEYS: dict[str, str] = {
    "consumer": "ConsumerId",
    "feature": "Feature",
    "provider": "Provider",
    "model": "ResponseModel",
    "day": "toStartOfDay(Timestamp, 'UTC')",
    "hour": "toStartOfHour(Timestamp, 'UTC')",
}
"""Public group key → SQL expression."""

HOUR_EXPR = (
    "toDateTime64(fromUnixTimestamp64Nano(toUnixTimestamp64Nano(Timestamp)"
    " - positiveModulo(toUnixTimestamp64Nano(Timestamp), 3600000000000), 'UTC'), 0, 'UTC')"
)
"""The UTC hour of ``Timestamp`` as ``DateTime64(0)``, right over the store's whole range
(1900-2262; ``toStartOfHour`` clamps to 1970-2106)."""


def _tokens(column: str) -> str:
    return f"sumIf(toUInt128({column}), UsageError = '')"


METRICS: dict[str, str] = {
    "requests": "count()",
    "failed_requests": "countIf(Billable = 0 AND UsageError = '')",
    "invalid_requests": "countIf(UsageError != '')",
    "input_tokens": _tokens("InputTokens"),
    "output_tokens": _tokens("OutputTokens"),
    "cache_read_input_tokens": _tokens("CacheReadInputTokens"),
    "cache_creation_input_tokens": _tokens("CacheCreationInputTokens"),
    "reasoning_output_tokens": _tokens("ReasoningOutputTokens"),
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
    scope: Scope = field(kw_only=True)
    """Whose usage may be read at all (required: :mod:`meterline.aggregator.tenancy`);
    ANDed with ``consumer``, so a filter outside the scope selects nothing."""


def counted_usage(f: UsageFilter) -> tuple[str, str, dict[str, Any]]:
    """The source (each response once, in ``[f.start, f.end)``), the WHERE clause
    of ``f``'s scope and other filters, and their parameters."""
    params: dict[str, Any] = {"start": f.start or EARLIEST, "end": f.end or LATEST}
    source = f"(\n{COUNTED_SELECT}\n)"
    conditions: list[str] = []
    if f.scope.consumer is not None:
        conditions.append(f.scope.condition(params))
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
    return source, (" AND ".join(conditions) or "1"), params


def usage_sql(f: UsageFilter) -> tuple[str, dict[str, Any]]:
    """SQL and parameters for usage totals grouped by ``f.group_by``."""
    unknown = [g for g in f.group_by if g not in GROUP_KEYS]
    if unknown:
        raise ValueError(f"unknown group_by {unknown[0]!r}, allowed: {', '.join(GROUP_KEYS)}")
    source, where, params = counted_usage(f)
    keys = [f"{GROUP_KEYS[g]} AS `{g}`" for g in f.group_by]
    metrics = [f"{expr} AS `{name}`" for name, expr in METRICS.items()]
    sql = f"SELECT {', '.join([*keys, *metrics])}\nFROM {source}\nWHERE {where}"
    if f.group_by:
        names = ", ".join(f"`{g}`" for g in f.group_by)
        sql += f"\nGROUP BY {names}\nORDER BY {names}"
    else:
        sql += "\nHAVING count() > 0"
    return sql, params
