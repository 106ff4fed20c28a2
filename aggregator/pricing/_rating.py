"""Rating: token quantities × the prices in force → exact ``Decimal`` charges.

A usage group (one row of the rating query) has one price by construction: its calls
share provider, models, price segment, time-of-day bucket and tier bucket. Its charge
per token type is ``quantity × unit price per million / 1,000,000``, exact (no rounding
here: rounding happens where an amount is emitted, see :func:`round_money`).
A group is *unpriced* when no price matches, or when it has tokens of a type with no
price (own or inherited): such usage is reported, never charged as $0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any

from meterline.aggregator.pricing._book import PriceBook, PriceMatch, RatingGrid
from meterline.aggregator.pricing._prices import MILLION, TOKEN_TYPES

MONEY_CONTEXT = Context(prec=60, rounding=ROUND_HALF_UP)
"""Enough digits that no product or sum of token counts and prices is ever rounded."""


def round_money(amount: Decimal, minor_units: int) -> Decimal:
    """Round half-up to the currency's minor unit (``2`` → cents)."""
    with localcontext(MONEY_CONTEXT):
        return amount.quantize(Decimal(1).scaleb(-minor_units), rounding=ROUND_HALF_UP)


def exact_amount(quantity: int, unit_price_per_million: Decimal) -> Decimal:
    """``quantity × price / 1e6`` without rounding."""
    with localcontext(MONEY_CONTEXT):
        return Decimal(quantity) * unit_price_per_million / MILLION


@dataclass(frozen=True)
class UsageGroup:
    """Calls that share one price: a row of the rating query."""

    consumer: str
    provider: str
    response_model: str
    request_model: str
    billable: bool
    """False for failed calls (non-2xx or ``error.type``)."""
    segment: int
    """Price segment (between change points of the involved prices)."""
    tod: int
    """Time-of-day bucket (0 unless the model has time-of-day prices)."""
    tier: int
    """How many tier thresholds of the grid the calls' input tokens exceed."""
    requests: int
    first_at: datetime
    """The earliest call (UTC): every call of the group has this call's price."""
    input_tokens: int
    """Total input tokens (cache included), for reports."""
    output_tokens: int
    """Total output tokens (reasoning included), for reports."""
    quantities: Mapping[str, int]
    """Disjoint quantities by token type (see :data:`TOKEN_TYPES`)."""
    extra: tuple[Any, ...] = field(default=())
    """Values of further group keys (``/v1/usage``)."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any], extra: tuple[Any, ...] = ()) -> UsageGroup:
        first_at = row["first_at"]
        if first_at.tzinfo is None:
            first_at = first_at.replace(tzinfo=UTC)
        return cls(
            consumer=row["consumer"],
            provider=row["provider"],
            response_model=row["response_model"],
            request_model=row["request_model"],
            billable=bool(row["billable"]),
            segment=int(row["segment"]),
            tod=int(row["tod"]),
            tier=int(row["tier"]),
            requests=int(row["requests"]),
            first_at=first_at,
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            quantities={t: int(row[t]) for t in TOKEN_TYPES},
            extra=extra,
        )


@dataclass(frozen=True)
class Charge:
    """One token type of a group, priced."""

    token_type: str
    quantity: int
    unit_price_per_million: Decimal

    @property
    def amount(self) -> Decimal:
        """Exact amount, not rounded."""
        return exact_amount(self.quantity, self.unit_price_per_million)


@dataclass(frozen=True)
class RatedGroup:
    """A group and its charges (``None``: unpriced)."""

    group: UsageGroup
    match: PriceMatch | None
    charges: tuple[Charge, ...] | None

    @property
    def cost(self) -> Decimal | None:
        """Exact cost before markup (``None``: unpriced)."""
        if self.charges is None:
            return None
        with localcontext(MONEY_CONTEXT):
            return sum((c.amount for c in self.charges), Decimal(0))


Cell = tuple[PriceMatch | None, tuple[Decimal | None, ...]]
"""A price cell's match and unit prices in :data:`TOKEN_TYPES` order."""


class Rater:
    """Prices usage groups of one rating query (one lookup per price cell: provider,
    models, segment, time-of-day bucket, tier bucket)."""

    def __init__(self, book: PriceBook, grid: RatingGrid) -> None:
        self.book = book
        self.grid = grid
        self._cache: dict[tuple[Any, ...], Cell] = {}

    def cell(
        self,
        provider: str,
        response_model: str,
        request_model: str,
        segment: int,
        tod: int,
        tier: int,
        first_at: datetime,
    ) -> Cell:
        """The match and the unit price of each token type (``None``: no price) for calls
        of a price cell; ``first_at`` is any call of the cell."""
        key = (provider, response_model, request_model, segment, tod, tier)
        cached = self._cache.get(key)
        if cached is None:
            if first_at.tzinfo is None:
                first_at = first_at.replace(tzinfo=UTC)
            match = self.book.match(provider, response_model, request_model, first_at)
            units: dict[str, Decimal] = (
                match.prices.unit_prices(self.grid.representative_input(tier))
                if match is not None
                else {}
            )
            cached = self._cache[key] = (match, tuple(units.get(t) for t in TOKEN_TYPES))
        return cached

    def rate(self, group: UsageGroup) -> RatedGroup:
        g = group
        match, units = self.cell(
            g.provider, g.response_model, g.request_model, g.segment, g.tod, g.tier, g.first_at
        )
        if match is None:
            return RatedGroup(group, None, None)
        charges: list[Charge] = []
        for token_type, price in zip(TOKEN_TYPES, units, strict=True):
            quantity = group.quantities.get(token_type, 0)
            if not quantity:
                continue
            if price is None:  # tokens of a type without a price: unpriced, never $0
                return RatedGroup(group, match, None)
            charges.append(Charge(token_type, quantity, price))
        return RatedGroup(group, match, tuple(charges))
