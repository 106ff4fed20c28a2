"""Where crossings are found: budget thresholds and rolling windows, from the money of
the invoices.

- **Budget thresholds**: a budget's ``spent`` (:class:`~meterline.aggregator.budgets.
  BudgetState`: the invoice total of its period plus settled reservations whose span is
  not stored yet) at or above ``limit × threshold / 100``, and above 0, crosses that
  threshold for that period. The current period is checked, and the previous one (day,
  week, month) until a day after it ended, so usage that arrives late, or a check that
  falls just after midnight, still finds the crossing of the period it belongs to.
- **Rolling windows** (``alerts.rolling``): more than ``limit`` billed (plan markup
  included, exact ``Decimal``, from ``rated_usage_current``) in a window of ``window``
  whole UTC hours. The window ending with each hour of the last two days is summed; each
  hour whose window is above the limit while the window ending an hour earlier was not
  (a rising edge) is one alert. Windows are aligned on whole hours (the table is hourly):
  spend spread over ``window + 1`` partial hours can pass the limit in an unaligned
  window without any aligned one doing so.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from meterline.aggregator.alerts._model import BUDGET_THRESHOLD, ROLLING_THRESHOLD, Alert, digest_id
from meterline.aggregator.pricing import MONEY_CONTEXT, Pricing
from meterline.store import Store

ROLLING_LOOKBACK = timedelta(hours=48)
"""How far back rising edges of rolling windows are looked for."""
LATE_CHECK = timedelta(days=1)
"""How long after its end a budget's previous period is still checked."""

ROLLING_SQL = """
SELECT Hour, sumIf(Amount + MarkupAmount, Status = 'billed') AS money
FROM {db}.rated_usage_current
WHERE ConsumerId = {consumer:String} AND {feature_condition}
  AND Hour >= {start:DateTime64(0, 'UTC')} AND Hour < {end:DateTime64(0, 'UTC')}
GROUP BY Hour
"""


def _floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


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


def rolling_crossings(store: Store, pricing: Pricing, rules: Iterable[Any], now: datetime,
                      *, currency: str) -> list[Alert]:  # fmt: skip
    """Rising edges of every rolling rule over the last :data:`ROLLING_LOOKBACK`."""
    from meterline.aggregator.rated import ensure_rated

    rules = list(rules)
    if not rules:
        return []
    last = _floor_hour(now)
    first = last - ROLLING_LOOKBACK
    widest = max(r.hours for r in rules)
    scan_start = first - timedelta(hours=widest + 1)
    ensure_rated(store, pricing, scan_start, last + timedelta(hours=1))
    alerts: list[Alert] = []
    for rule in rules:
        params: dict[str, Any] = {"consumer": rule.consumer, "start": scan_start,
                                  "end": last + timedelta(hours=1)}  # fmt: skip
        condition = "1"
        if rule.feature is not None:
            params["feature"] = rule.feature
            condition = "Feature = {feature:String}"
        _, rows = store.query(ROLLING_SQL.replace("{feature_condition}", condition), params)
        money: dict[datetime, Decimal] = {}
        for hour, amount in rows:
            at = hour if isinstance(hour, datetime) else datetime.fromisoformat(str(hour))
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
            money[at] = Decimal(amount or 0)
        alerts += _edges(rule, money, first, last, now, currency)
    return alerts


def _window_sum(money: dict[datetime, Decimal], end_hour: datetime, hours: int) -> Decimal:
    with localcontext(MONEY_CONTEXT):
        return sum(
            (money.get(end_hour - timedelta(hours=i), Decimal(0)) for i in range(hours)),
            Decimal(0),
        )


def _edges(rule: Any, money: dict[datetime, Decimal], first: datetime, last: datetime,
           now: datetime, currency: str) -> list[Alert]:  # fmt: skip
    out: list[Alert] = []
    hour = first
    before = _window_sum(money, hour - timedelta(hours=1), rule.hours)
    while hour <= last:
        total = _window_sum(money, hour, rule.hours)
        if total > rule.limit >= before:
            start = hour - timedelta(hours=rule.hours - 1)
            out.append(Alert(
                id=digest_id("alt", ROLLING_THRESHOLD, rule.consumer, rule.feature or "",
                             rule.limit, rule.hours, hour.isoformat()),
                kind=ROLLING_THRESHOLD, consumer=rule.consumer, feature=rule.feature,
                period="rolling", period_start=start, period_end=hour + timedelta(hours=1),
                threshold="", limit=rule.limit, unit=currency, spent=total, created_at=now,
                data={"window_hours": rule.hours},
            ))  # fmt: skip
        before = total
        hour += timedelta(hours=1)
    return out
