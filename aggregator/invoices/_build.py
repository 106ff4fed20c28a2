"""Rated usage groups → invoices.

Rounding (docs/pricing.md): a line is one (provider, reported model, token type, unit
price); its amount is the exact ``quantity × unit price / 1e6`` rounded half-up to the
currency's minor unit. ``subtotal`` is the sum of the rounded lines, ``markup`` is
``subtotal × markup_percent / 100`` rounded half-up, ``total = subtotal + markup``.
Failed calls count in ``failed_requests`` and are billed only when the consumer's plan
has ``bill_failed_requests``; unpriced usage is listed, never billed.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, localcontext

from meterline.aggregator.invoices._model import Invoice, InvoiceLine, UnpricedUsage
from meterline.aggregator.pricing import (
    MONEY_CONTEXT,
    TOKEN_TYPES,
    PricingConfig,
    RatedGroup,
    exact_amount,
    round_money,
)

_ORDER = {t: i for i, t in enumerate(TOKEN_TYPES)}


class _Draft:
    __slots__ = ("failed", "lines", "unpriced")

    def __init__(self) -> None:
        self.lines: dict[tuple[str, str, str, Decimal], int] = {}
        self.unpriced: dict[tuple[str, str], list[int]] = {}
        self.failed = 0


def build_invoices(
    rated: Iterable[RatedGroup],
    config: PricingConfig,
    *,
    period: str,
    consumers: Iterable[str] = (),
) -> dict[str, Invoice]:
    """One invoice per consumer with usage (and per consumer in ``consumers``)."""
    drafts: dict[str, _Draft] = {c: _Draft() for c in consumers}
    for item in rated:
        g = item.group
        draft = drafts.get(g.consumer)
        if draft is None:
            draft = drafts[g.consumer] = _Draft()
        if not g.billable:
            draft.failed += g.requests
            if not config.plan_for(g.consumer).bill_failed_requests:
                continue
        model = g.response_model or g.request_model
        if item.charges is None:
            counts = draft.unpriced.setdefault((g.provider, model), [0, 0, 0])
            counts[0] += g.requests
            counts[1] += g.input_tokens
            counts[2] += g.output_tokens
            continue
        for charge in item.charges:
            key = (g.provider, model, charge.token_type, charge.unit_price_per_million)
            draft.lines[key] = draft.lines.get(key, 0) + charge.quantity
    return {c: _finish(c, d, config, period) for c, d in sorted(drafts.items())}


def _finish(consumer: str, draft: _Draft, config: PricingConfig, period: str) -> Invoice:
    minor = config.minor_units
    lines = tuple(
        InvoiceLine(
            provider=provider,
            model=model,
            token_type=token_type,
            quantity=quantity,
            unit_price_per_million=price,
            amount=round_money(exact_amount(quantity, price), minor),
        )
        for (provider, model, token_type, price), quantity in sorted(
            draft.lines.items(), key=lambda kv: (kv[0][0], kv[0][1], _ORDER[kv[0][2]], kv[0][3])
        )
        if quantity
    )
    with localcontext(MONEY_CONTEXT):
        subtotal = round_money(sum((line.amount for line in lines), Decimal(0)), minor)
        percent = config.plan_for(consumer).markup_percent
        markup = round_money(subtotal * percent / Decimal(100), minor)
        total = subtotal + markup
    unpriced = tuple(
        UnpricedUsage(provider, model, *counts)
        for (provider, model), counts in sorted(draft.unpriced.items())
    )
    return Invoice(
        consumer=consumer,
        period=period,
        currency=config.currency,
        lines=lines,
        subtotal=subtotal,
        markup=markup,
        total=total,
        unpriced=unpriced,
        failed_requests=draft.failed,
    )
