"""Rated usage: one source of money per UTC hour (issue 10 §1; docs/rated-usage.md).

- :func:`ensure_rated` — rate the months of a range whose usage or pricing changed
  (readers call it first; the loop in ``meterline serve`` calls it all the time).
- :class:`RatingLoop` — the background loop of ``meterline serve``.
- :func:`invoices_from_table`, :func:`costs_from_table` — what invoices and ``/v1/usage``
  read.

Tables: :mod:`meterline.store.rated_schema`; SQL: :mod:`meterline.aggregator.queries.rated`.
"""

from meterline.aggregator.rated._loop import RatingLoop
from meterline.aggregator.rated._prices import RatingError, config_version
from meterline.aggregator.rated._read import (
    costs_from_table,
    daily_spend,
    daily_spends,
    invoices_from_table,
    table_range,
    whole_hours,
)
from meterline.aggregator.rated._run import MonthRun, ensure_rated, rate_month, stale_months

__all__ = [
    "MonthRun",
    "RatingError",
    "RatingLoop",
    "config_version",
    "costs_from_table",
    "daily_spend",
    "daily_spends",
    "ensure_rated",
    "invoices_from_table",
    "rate_month",
    "stale_months",
    "table_range",
    "whole_hours",
]
