"""Costs for ``/v1/usage`` rows: the usage groups, rated, summed per usage group.

``cost`` is what the consumer is charged before rounding (prices × the plan's markup),
exact: invoices round, usage rows do not. Failed calls add cost only when the plan
bills them; usage without a price adds to ``unpriced_requests``, never to ``cost``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

from meterline.aggregator.invoices._service import rate_usage
from meterline.aggregator.pricing import MONEY_CONTEXT, Pricing, UsageGroup, money_str
from meterline.aggregator.queries.usage import UsageFilter
from meterline.store import Store

_RATING_KEYS = {"consumer", "provider", "model"}


@dataclass
class UsageCosts:
    """Cost and unpriced requests per usage group key (the ``group_by`` values)."""

    currency: str
    by_key: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)

    def columns(self, key: Sequence[Any]) -> dict[str, Any]:
        cost, unpriced = self.by_key.get(tuple(_naive(k) for k in key), (Decimal(0), 0))
        return {
            "cost": money_str(cost.normalize() if cost else Decimal(0)),
            "currency": self.currency,
            "unpriced_requests": unpriced,
        }


def _naive(value: Any) -> Any:
    """Group keys compare as naive UTC datetimes whichever query produced them."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _value(group: UsageGroup, key: str, extra: dict[str, Any]) -> Any:
    if key == "consumer":
        return group.consumer
    if key == "provider":
        return group.provider
    if key == "model":
        return group.response_model
    return extra[key]


def usage_costs(store: Store, pricing: Pricing, f: UsageFilter) -> UsageCosts:
    """The cost of the usage selected by ``f``, per ``f.group_by`` key: from
    ``rated_usage`` when ``f``'s range is whole UTC hours of current months, else rated
    on the fly (:func:`usage_costs_on_the_fly`) — the same figures, never stale."""
    from meterline.aggregator.queries.usage import EARLIEST, LATEST
    from meterline.aggregator.rated import costs_from_table, stale_months, whole_hours

    if not whole_hours(f.start, f.end) or stale_months(store, pricing, f.start, f.end):
        return usage_costs_on_the_fly(store, pricing, f)
    bounded = replace(f, start=f.start or EARLIEST, end=f.end or LATEST)
    return UsageCosts(pricing.config.currency, costs_from_table(store, bounded))


def usage_costs_on_the_fly(store: Store, pricing: Pricing, f: UsageFilter) -> UsageCosts:
    """Rate the usage selected by ``f`` now and sum it per ``f.group_by`` key."""
    extra_keys = tuple(k for k in f.group_by if k not in _RATING_KEYS)
    _, rated = rate_usage(store, pricing, f, extra_keys=extra_keys)
    costs = UsageCosts(pricing.config.currency)
    with localcontext(MONEY_CONTEXT):
        for item in rated:
            g = item.group
            plan = pricing.config.plan_for(g.consumer)
            if not g.billable and not plan.bill_failed_requests:
                continue
            extra = dict(zip(extra_keys, g.extra, strict=True))
            key = tuple(_naive(_value(g, k, extra)) for k in f.group_by)
            slot = costs.by_key.setdefault(key, [Decimal(0), 0])
            cost = item.cost
            if cost is None:
                slot[1] += g.requests
            else:
                slot[0] += cost * (1 + plan.markup_percent / 100)
    return costs
