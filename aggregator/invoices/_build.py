"""Rated usage groups → invoices.

Rounding (docs/pricing.md): a line is one (provider, reported model, token type, unit
price); its amount is the exact ``quantity × unit price / 1e6`` rounded half-up to the
currency's minor unit. ``subtotal`` is the sum of the rounded lines, ``markup`` is
``subtotal × markup_percent / 100`` rounded half-up, ``total = subtotal + markup``.
Failed calls count in ``failed_requests`` and are billed only when the consumer's plan
has ``bill_failed_requests`` (else they are listed in ``failed``); unpriced usage is
listed in ``unpriced``, never billed. Both lists keep the requests, the gross token
counts and the per-type quantities, so the billing export can show them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from meterline.aggregator.invoices._model import Invoice, InvoiceLine, UnbilledUsage
from meterline.aggregator.pricing import MONEY_CONTEXT, TOKEN_TYPES, PricingConfig, Rater
from meterline.aggregator.pricing._prices import MILLION


class _Draft:
    __slots__ = ("failed", "failed_usage", "lines", "unpriced")

    def __init__(self) -> None:
        self.lines: dict[tuple[str, str, int, Decimal], int] = {}
        self.unpriced: dict[tuple[str, str], list[int]] = {}
        """(provider, model) → [requests, input tokens, output tokens, *quantities]."""
        self.failed_usage: dict[tuple[str, str], list[int]] = {}
        """The same, for failed calls the plan does not bill."""
        self.failed = 0


def _count(
    into: dict[tuple[str, str], list[int]], key: tuple[str, str], totals: Sequence[int]
) -> None:
    counts = into.get(key)
    if counts is None:
        into[key] = list(totals)
    else:
        for i, value in enumerate(totals):
            counts[i] += value


def build_invoices(
    rows: Iterable[Sequence[Any]],
    rater: Rater,
    config: PricingConfig,
    *,
    period: str,
    consumers: Iterable[str] = (),
) -> dict[str, Invoice]:
    """One invoice per consumer with usage (and per consumer in ``consumers``).

    Args:
        rows: rating-query rows (:mod:`meterline.aggregator.queries.rating`): the
            rating keys, the metrics, then the quantities in :data:`TOKEN_TYPES` order.
        rater: prices for the query's grid.
    """
    drafts: dict[str, _Draft] = {c: _Draft() for c in consumers}
    bills_failed = {c: p.bill_failed_requests for c, p in config.consumer_plans.items()}
    default_bills_failed = config.default_plan.bill_failed_requests
    n_types = len(TOKEN_TYPES)
    for row in rows:
        consumer, provider, response_model, request_model, billable = row[:5]
        segment, tod, tier, requests, first_at, input_tokens, output_tokens = row[5:12]
        quantities = row[12 : 12 + n_types]
        draft = drafts.get(consumer)
        if draft is None:
            draft = drafts[consumer] = _Draft()
        model = response_model or request_model
        if not billable:
            draft.failed += requests
            if not bills_failed.get(consumer, default_bills_failed):
                totals = (requests, input_tokens, output_tokens, *quantities)
                _count(draft.failed_usage, (provider, model), totals)
                continue
        match, units = rater.cell(
            provider, response_model, request_model, segment, tod, tier, first_at
        )
        if match is None or any(
            q and price is None for q, price in zip(quantities, units, strict=True)
        ):
            totals = (requests, input_tokens, output_tokens, *quantities)
            _count(draft.unpriced, (provider, model), totals)
            continue
        lines = draft.lines
        for index in range(n_types):
            quantity = quantities[index]
            if quantity:
                key = (provider, model, index, units[index])
                lines[key] = lines.get(key, 0) + quantity
    with localcontext(MONEY_CONTEXT):
        return {c: _finish(c, d, config, period) for c, d in sorted(drafts.items())}


def _finish(consumer: str, draft: _Draft, config: PricingConfig, period: str) -> Invoice:
    quantum = Decimal(1).scaleb(-config.minor_units)
    lines = tuple(
        InvoiceLine(
            provider=provider,
            model=model,
            token_type=TOKEN_TYPES[index],
            quantity=quantity,
            unit_price_per_million=price,
            amount=(quantity * price / MILLION).quantize(quantum, rounding=ROUND_HALF_UP),
        )
        for (provider, model, index, price), quantity in sorted(draft.lines.items())
    )
    subtotal = sum((line.amount for line in lines), Decimal(0)).quantize(quantum)
    percent = config.plan_for(consumer).markup_percent
    markup = (subtotal * percent / 100).quantize(quantum, rounding=ROUND_HALF_UP)
    unpriced = _unbilled(draft.unpriced)
    failed = _unbilled(draft.failed_usage)
    return Invoice(
        consumer=consumer,
        period=period,
        currency=config.currency,
        lines=lines,
        subtotal=subtotal,
        markup=markup,
        total=subtotal + markup,
        unpriced=unpriced,
        failed_requests=draft.failed,
        failed=failed,
    )


def _unbilled(usage: dict[tuple[str, str], list[int]]) -> tuple[UnbilledUsage, ...]:
    return tuple(
        UnbilledUsage(
            provider,
            model,
            *counts[:3],
            quantities=tuple(zip(TOKEN_TYPES, counts[3:], strict=True)),
        )
        for (provider, model), counts in sorted(usage.items())
    )
