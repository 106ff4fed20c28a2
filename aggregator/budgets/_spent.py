"""What a budget has spent in a period, from the same money as the invoices.

- currency budgets: the invoice total of the consumer over the period (``compute_invoices``:
  the same lines, rounding and plan markup as ``GET /v1/invoices``), restricted to the
  budget's feature when it has one; a budget and an invoice never disagree;
- token budgets: the input + output tokens of the consumer's counted, valid usage that its
  plan bills (failed calls only when the plan bills them), each response once.

Reservations whose span is stored are found by :func:`counted_reservations`: their usage
is then in these figures, and the ledger stops counting them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from meterline.aggregator.budgets._model import Budget
from meterline.aggregator.budgets._tables import COUNTED_RESERVATIONS
from meterline.aggregator.pricing import Pricing
from meterline.aggregator.queries import READ_SETTINGS
from meterline.aggregator.queries.usage import UsageFilter, counted_usage
from meterline.aggregator.tenancy import Scope
from meterline.store import Store

CLOCK_MARGIN = timedelta(days=1)
"""How far before its reservation a span's start may lie (the app's clock) and still be
found: bounds the scan of ``otel_traces`` to recent partitions."""


def money_spent(
    store: Store, pricing: Pricing, budget: Budget, start: datetime, end: datetime
) -> Decimal:
    """The invoice total of ``budget``'s consumer (and feature) over ``[start, end)``."""
    from meterline.aggregator.invoices import between, compute_invoices

    invoices = compute_invoices(
        store,
        pricing,
        between(start, end),
        scope=Scope.only(budget.consumer),
        consumer=budget.consumer,
        feature=budget.feature,
    )
    invoice = invoices.get(budget.consumer)
    return Decimal(0) if invoice is None else invoice.total


def tokens_spent(
    store: Store, pricing: Pricing, budget: Budget, start: datetime, end: datetime
) -> Decimal:
    """Billable input + output tokens of ``budget``'s consumer (and feature)."""
    f = UsageFilter(
        start=start,
        end=end,
        consumer=budget.consumer,
        feature=budget.feature,
        scope=Scope.only(budget.consumer),
    )
    source, where, params = counted_usage(f)
    bill_failed = pricing.config.plan_for(budget.consumer).bill_failed_requests
    billable = "1" if bill_failed else "Billable = 1"
    sql = (
        "SELECT sumIf(toUInt128(InputTokens) + toUInt128(OutputTokens), "
        f"UsageError = '' AND {billable}) FROM {source} WHERE {where}"
    )
    _, rows = store.query(sql, params, settings=READ_SETTINGS)
    return Decimal(int(rows[0][0] or 0)) if rows else Decimal(0)


def spent(
    store: Store, pricing: Pricing, budget: Budget, start: datetime, end: datetime
) -> Decimal:
    """``budget``'s spend over ``[start, end)`` in its unit."""
    if budget.in_tokens:
        return tokens_spent(store, pricing, budget, start, end)
    return money_spent(store, pricing, budget, start, end)


def counted_reservations(store: Store, ids: list[str], since: datetime) -> set[str]:
    """The reservation ids among ``ids`` whose call's span is stored."""
    if not ids:
        return set()
    params: dict[str, Any] = {"ids": ids, "since": since - CLOCK_MARGIN}
    _, rows = store.query(COUNTED_RESERVATIONS, params, settings=READ_SETTINGS)
    return {str(r[0]) for r in rows}
