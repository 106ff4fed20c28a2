"""What the overview page shows for one month, read through the invoices' own code.

Contract: every amount in the tables is an invoice's (:func:`get_invoices`, the function
``/v1/invoices`` and the export use), so the page equals the invoices to the cent; a
finalised month shows its stored invoices. The charts' daily series are the exact sums
of ``rated_daily`` (the rows invoices are built from) — before rounding, and for a
finalised month the rating now, which may differ from the stored invoices by what a
re-price would adjust. Budgets are shown in their current period (not the month picked).
Everything is scoped by the caller's :class:`Scope`: a consumer key reads its own rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from meterline.aggregator.budgets import BudgetError, BudgetState
from meterline.aggregator.invoices import InvoiceView, get_invoices
from meterline.aggregator.invoices._period import Period
from meterline.aggregator.pricing import Pricing
from meterline.aggregator.queries import READ_SETTINGS
from meterline.aggregator.queries.rated import SPEND_KEYS, daily_spend_sql
from meterline.aggregator.tenancy import Scope
from meterline.store import Store

logger = logging.getLogger(__name__)


@dataclass
class Overview:
    """One month's overview: invoices, daily spend series, budgets."""

    period: Period
    currency: str
    views: dict[str, InvoiceView]
    days: list[str]
    """``YYYY-MM-DD`` of every day of the month (the charts' x axis)."""
    series: dict[str, dict[str, list[str]]]
    """``consumer``/``model`` → key → one decimal string per day (exact)."""
    budgets: list[BudgetState] = field(default_factory=list)
    budget_error: str | None = None

    def chart_data(self) -> dict[str, Any]:
        return {"currency": self.currency, "days": self.days, "series": self.series}


def _day_labels(period: Period) -> list[str]:
    first = period.start.date()
    count = (period.end.date() - first).days
    return [date.fromordinal(first.toordinal() + i).isoformat() for i in range(count)]


def _series(
    store: Store, period: Period, key: str, scope: Scope, days: list[str]
) -> dict[str, list[str]]:
    sql, params = daily_spend_sql(period.start, period.end, key, scope=scope)
    _, rows = store.query(sql, params, settings=READ_SETTINGS)
    index = {d: i for i, d in enumerate(days)}
    out: dict[str, list[Decimal]] = {}
    for day, name, amount in rows:
        label = day.isoformat() if isinstance(day, date | datetime) else str(day)[:10]
        values = out.setdefault(str(name), [Decimal(0)] * len(days))
        values[index[label[:10]]] += Decimal(amount)
    return {name: [format(v, "f") for v in values] for name, values in out.items()}


def build_overview(
    store: Store, pricing: Pricing, period: Period, *, scope: Scope, budgets: Any = None
) -> Overview:
    """The month's overview for ``scope`` (``budgets``: the app's budget service)."""
    from meterline.aggregator.rated import ensure_rated

    ensure_rated(store, pricing, period.start, period.end)
    views = get_invoices(store, pricing, period, scope=scope)
    days = _day_labels(period)
    series = {key: _series(store, period, key, scope, days) for key in SPEND_KEYS}
    overview = Overview(period, pricing.config.currency, views, days, series)
    if budgets is not None:
        try:
            visible = [b for b in budgets.registry.all() if scope.admits(b.consumer)]
            overview.budgets = budgets.states(pricing, visible)
        except BudgetError as exc:
            overview.budget_error = str(exc)
    return overview
