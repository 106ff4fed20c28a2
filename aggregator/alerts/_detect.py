"""Where budget crossings are found, from the money of the invoices.

- **Budget thresholds**: a budget's ``spent`` (:class:`~meterline.aggregator.budgets.
  BudgetState`: the invoice total of its period plus settled reservations whose span is
  not stored yet) at or above ``limit × threshold / 100``, and above 0, crosses that
  threshold for that period. The current period is checked, and the previous one (day,
  week, month) until a day after it ended, so usage that arrives late, or a check that
  falls just after midnight, still finds the crossing of the period it belongs to.
- **Rolling windows**: :mod:`meterline.aggregator.alerts._rolling` (exact for any
  window, wherever it starts).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from meterline.aggregator.alerts._model import BUDGET_THRESHOLD, Alert, digest_id
from meterline.aggregator.pricing import MONEY_CONTEXT, Pricing

LATE_CHECK = timedelta(days=1)
"""How long after its end a budget's previous period is still checked."""


def budget_alert(budget: Any, start: datetime, end: datetime, threshold: int,
                 spent: Decimal, now: datetime) -> Alert:  # fmt: skip
    return Alert(
        id=digest_id(
            "alt",
            BUDGET_THRESHOLD,
            budget.consumer,
            budget.feature or "",
            budget.period,
            start.isoformat(),
            threshold,
        ),
        kind=BUDGET_THRESHOLD,
        consumer=budget.consumer,
        feature=budget.feature,
        period=budget.period,
        period_start=start,
        period_end=end,
        threshold=str(threshold),
        limit=budget.limit,
        unit=budget.unit,
        spent=spent,
        created_at=now,
        data={"mode": budget.mode, "timezone": budget.timezone},
    )


def crossed(budget: Any, spent: Decimal) -> list[int]:
    """The thresholds of ``budget`` that ``spent`` has reached (nothing spent: none)."""
    if spent <= 0:
        return []
    with localcontext(MONEY_CONTEXT):
        return [t for t in budget.thresholds if spent * 100 >= budget.limit * t]


def budget_crossings(service: Any, pricing: Pricing, *, consumers: set[str] | None = None
                     ) -> list[Alert]:  # fmt: skip
    """Every threshold crossed by the budgets of ``consumers`` (all: ``None``)."""
    from meterline.aggregator.budgets import window
    from meterline.aggregator.budgets._spent import spent as spent_in

    now = service.now()
    budgets = [b for b in service.registry.all() if consumers is None or b.consumer in consumers]
    if not budgets:
        return []
    alerts: list[Alert] = []
    for state in service.states(pricing, budgets):
        b = state.budget
        for t in crossed(b, state.spent):
            alerts.append(budget_alert(b, state.period_start, state.period_end, t,
                                       state.spent, now))  # fmt: skip
        if b.period == "total":
            continue
        start, end = window(b.period, state.period_start - timedelta(microseconds=1), b.timezone)
        if now - end > LATE_CHECK:
            continue
        before = spent_in(service.store, pricing, b, start, end)
        for t in crossed(b, before):
            alerts.append(budget_alert(b, start, end, t, before, now))
    return alerts
