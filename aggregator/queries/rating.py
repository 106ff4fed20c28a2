"""The rating query: usage grouped so that every group has exactly one price.

Reads :func:`~meterline.aggregator.queries.usage.counted_usage` (each response once,
at its winning report). Groups by consumer, provider,
response and request model, billability, *price segment* (between two change points of
the involved prices), *time-of-day bucket* (only for models with time-of-day prices)
and *tier bucket* (how many tier thresholds the call's own input tokens exceed) — tiers
are per call, so calls on either side of a threshold never share a group. Token
quantities come out disjoint and clamped per call (a subset larger than its total is
cut to the total, so unsigned arithmetic never wraps): ``input`` net of cache reads and
writes, ``cache_write`` the 5-minute writes, ``output`` net of reasoning.

Every value, threshold and instant is a bound parameter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from meterline.aggregator.pricing import RatingGrid
from meterline.aggregator.queries.usage import GROUP_KEYS, HOUR_EXPR, UsageFilter, counted_usage

RATING_KEYS: tuple[str, ...] = (
    "consumer",
    "provider",
    "response_model",
    "request_model",
    "billable",
    "segment",
    "tod",
    "tier",
)
"""Group columns every rating row starts with; extra usage keys follow them."""

INSTANT_NS_EXPR = "toUnixTimestamp64Nano(Timestamp)"
"""The call's instant in integer nanoseconds (group key ``instant_ns``: one group per
instant, so each call's own money; rolling-window alerts read it)."""

METRIC_COLUMNS: tuple[str, ...] = ("requests", "first_at", "input_tokens", "output_tokens")
"""Per-group metrics between the keys and the quantities."""

_INNER = """
    SELECT *,
        least(CacheReadInputTokens, InputTokens) AS _cr,
        least(CacheCreationInputTokens, InputTokens - _cr) AS _cw,
        least(CacheCreation1hInputTokens, _cw) AS _cw1h,
        least(ReasoningOutputTokens, OutputTokens) AS _rs
    FROM {source}
    WHERE {where}"""

_AGGREGATES = """count() AS requests,
    min(Timestamp) AS first_at,
    sum(toUInt128(InputTokens)) AS input_tokens,
    sum(toUInt128(OutputTokens)) AS output_tokens,
    sum(toUInt128(InputTokens - _cr - _cw)) AS input,
    sum(toUInt128(_cr)) AS cache_read,
    sum(toUInt128(_cw - _cw1h)) AS cache_write,
    sum(toUInt128(_cw1h)) AS cache_write_1h,
    sum(toUInt128(OutputTokens - _rs)) AS output,
    sum(toUInt128(_rs)) AS reasoning,
    UsageError AS invalid"""


def _segment_expr(points: list[datetime], params: dict[str, Any]) -> str:
    if not points:
        return "0"
    branches = []
    for i, point in enumerate(points):
        params[f"cp{i}"] = point
        branches.append(f"Timestamp < {{cp{i}:DateTime64(9, 'UTC')}}, {i}")
    return f"multiIf({', '.join(branches)}, {len(points)})"


def _tier_expr(thresholds: tuple[int, ...], params: dict[str, Any]) -> str:
    if not thresholds:
        return "0"
    branches = []
    for i in reversed(range(len(thresholds))):
        params[f"tt{i}"] = thresholds[i]
        branches.append(f"InputTokens > {{tt{i}:UInt64}}, {i + 1}")
    return f"multiIf({', '.join(branches)}, 0)"


def _tod_expr(grid: RatingGrid, params: dict[str, Any]) -> str:
    keys, bounds = grid.time_of_day
    if not keys or not bounds:
        return "0"
    params["tod_keys"] = [tuple(k) for k in keys]
    params["tod_bounds"] = list(bounds)
    seconds = (
        "(toHour(Timestamp, 'UTC') * 3600 + toMinute(Timestamp, 'UTC') * 60"
        " + toSecond(Timestamp, 'UTC'))"
    )
    return (
        "if(has({tod_keys:Array(Tuple(String, String, String))}, "
        "(toString(Provider), toString(ResponseModel), toString(RequestModel))), "
        f"arrayCount(b -> {seconds} >= b, {{tod_bounds:Array(UInt32)}}), 0)"
    )


def select_usage(
    where: str,
    params: dict[str, Any],
    *,
    hours: list[datetime] | None,
    keys: list[tuple[str, str]] | None,
) -> str:
    """``where`` narrowed to the usage in ``hours`` and, with ``keys``, to the counted
    reports of those responses outside ``hours`` (a look-up by the sorting key, which
    ClickHouse applies before ``FINAL``)."""
    hour = f"{HOUR_EXPR} IN {{hours:Array(DateTime64(0, 'UTC'))}}"
    key = "(ConsumerId, DedupKey) IN {keys:Array(Tuple(String, String))}"
    if hours is not None:
        params["hours"] = hours
    if keys is not None:
        params["keys"] = keys
    if hours is not None and keys is not None:
        return f"({where}) AND ({hour} OR ({key} AND NOT {hour}))"
    if hours is not None:
        return f"({where}) AND {hour}"
    if keys is not None:
        return f"({where}) AND {key}"
    return where


def rating_sql(
    f: UsageFilter,
    grid: RatingGrid,
    *,
    extra_keys: tuple[str, ...] = (),
    hours: list[datetime] | None = None,
    metrics: tuple[str, ...] = (),
    keys: list[tuple[str, str]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """SQL and parameters of the rating query.

    Args:
        f: which usage (time range, consumer, …); its ``group_by`` is ignored.
        grid: the price change points, tier thresholds and time-of-day splits.
        extra_keys: further group keys of :data:`GROUP_KEYS` (``feature``, ``day``…)
            or ``utc_hour`` (:data:`HOUR_EXPR`) or ``instant_ns`` (:data:`INSTANT_NS_EXPR`),
            returned after :data:`RATING_KEYS` as
            ``k_<key>``.
        hours: only usage in these UTC hours (applied to the counted usage).
        keys: only these responses (``ConsumerId``, ``DedupKey``; with ``hours``: also
            these responses outside ``hours``) — see :func:`select_usage`.
        metrics: further aggregates (``expr AS name``), after the quantities.

    Raises:
        ValueError: an unknown extra key.
    """
    exprs = {**GROUP_KEYS, "utc_hour": HOUR_EXPR, "instant_ns": INSTANT_NS_EXPR}
    unknown = [k for k in extra_keys if k not in exprs]
    if unknown:
        raise ValueError(f"unknown group key {unknown[0]!r}, allowed: {', '.join(GROUP_KEYS)}")
    source, where, params = counted_usage(f)
    where = select_usage(where, params, hours=hours, keys=keys)
    points = [
        p
        for p in grid.change_points
        if (f.start is None or p > f.start) and (f.end is None or p < f.end)
    ]
    keys = [
        "ConsumerId AS consumer",
        "Provider AS provider",
        "ResponseModel AS response_model",
        "RequestModel AS request_model",
        "Billable AS billable",
        f"{_segment_expr(points, params)} AS segment",
        f"{_tod_expr(grid, params)} AS tod",
        f"{_tier_expr(grid.thresholds, params)} AS tier",
        *(f"{exprs[k]} AS k_{k}" for k in extra_keys),
    ]
    names = [*RATING_KEYS, *(f"k_{k}" for k in extra_keys)]
    sql = (
        f"SELECT {', '.join(keys)},\n    {', '.join([_AGGREGATES, *metrics])}\n"
        f"FROM ({_INNER.format(source=source, where=where)}\n)\n"
        f"GROUP BY {', '.join(names)}, invalid"
    )
    return sql, params
